"""``TRACKED_TRAIN_*`` environment variables: config keys (``TRACKED_TRAIN_TRAINING_LR``) and the few
variables that are not keys, each checked before anything is created."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .keys import known, parse_assignment
from .sections import FIELDS, SECTIONS

ENV_PREFIX = "TRACKED_TRAIN_"
# The TRACKED_TRAIN_* variables the package reads that are not config keys. Every other one must
# name a key (a typo is an error, not silently ignored), so a new variable of this kind goes here.
NOT_CONFIG_ENV = frozenset({
    "TRACKED_TRAIN_CACHE",  # tokenizer and token cache folder (tokenizer.py)
    "TRACKED_TRAIN_MLFLOW_SEND_INTERVAL_S",  # MLflow sender's batching interval (mlflow/tracker.py)
    "TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT",  # how long a run's end waits for the MLflow server
    "TRACKED_TRAIN_WEBHOOK_URL",  # the webhook's URL: a secret, so not a config value (trackers/webhook.py)
    "TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT",  # how long a run's end waits for the webhook
    "TRACKED_TRAIN_SCREENSHOT_DIR",  # where tests/test_mlflow_ui.py copies its screenshot (the test's children see it)
})


# Longest first: were there sections `early` and `early_stopping`, TRACKED_TRAIN_EARLY_STOPPING_PATIENCE
# would belong to the second.
_SECTIONS_LONGEST_FIRST = sorted((*SECTIONS, "task_args"), key=len, reverse=True)


def env_name(key: str) -> str:
    """``early_stopping.patience`` -> ``TRACKED_TRAIN_EARLY_STOPPING_PATIENCE``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _env_key(name: str) -> str | None:
    """``TRACKED_TRAIN_EARLY_STOPPING_PATIENCE`` -> ``early_stopping.patience``; None without a known section."""
    rest = name[len(ENV_PREFIX):].lower()
    if rest == "task":
        return "task"
    if rest.startswith("tracking_") and f"tracking.{rest[9:]}" not in FIELDS:
        from ..trackers.base import available

        # TRACKED_TRAIN_TRACKING_MLFLOW_URI: tracker `mlflow`, setting `uri` (longest tracker name first)
        for tracker in sorted(available(), key=len, reverse=True):
            if rest[9:].startswith(f"{tracker}_"):
                return f"tracking.{tracker}.{rest[9 + len(tracker) + 1:]}"
    for sec in _SECTIONS_LONGEST_FIRST:
        if rest.startswith(f"{sec}_"):
            return f"{sec}.{rest[len(sec) + 1:]}"
    return None


def _unknown_env(name: str) -> ConfigError:
    # Compared without the common prefix, which would make every name look alike.
    known = {env_name(k)[len(ENV_PREFIX):]: k for k in FIELDS} | {v[len(ENV_PREFIX):]: None for v in NOT_CONFIG_ENV}
    close = difflib.get_close_matches(name[len(ENV_PREFIX):], known, n=1, cutoff=0.6)
    if close:
        key = known[close[0]]
        hint = f" (did you mean {ENV_PREFIX}{close[0]}{f', for {key}' if key else ''}?)"
    else:
        hint = f"; {ENV_PREFIX}<SECTION>_<KEY> sets a config key, e.g. {env_name('training.lr')} for training.lr"
    return ConfigError(f"unknown environment variable {name}{hint}")


# The numeric NOT_CONFIG_ENV variables: (lowest allowed, whether that bound itself is allowed).
_ENV_SECONDS = {"TRACKED_TRAIN_MLFLOW_SEND_INTERVAL_S": (0.0, False), "TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT": (0.0, True),
                "TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT": (0.0, True)}


def check_env(environ: Mapping[str, str]) -> None:
    """The variables the package reads that are not config keys: a bad value is bad input, said before anything
    is created (not an internal error mid-run)."""
    for name, (lo, inclusive) in _ENV_SECONDS.items():
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < lo or (value == lo and not inclusive):
            raise ConfigError(f"environment: {name}={raw!r} is invalid: expected a number of seconds "
                              f"{'at least' if inclusive else 'over'} {lo:g}; fix or unset it")
    cache = environ.get("TRACKED_TRAIN_CACHE")
    if cache:
        try:
            Path(cache).mkdir(parents=True, exist_ok=True)
            ok = os.access(cache, os.W_OK | os.X_OK)
        except OSError:
            ok = False
        if not ok:
            raise ConfigError(f"environment: TRACKED_TRAIN_CACHE={cache!r} is not a folder this process can create "
                              "and write; point it at a writable folder or unset it")


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``TRACKED_TRAIN_TRAINING_MAX_STEPS=50`` -> ``{"training.max_steps": 50}``; unknown names are errors."""
    check_env(environ)
    out = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG_ENV:
            continue
        key = _env_key(name)
        if key is None or not known(key):
            raise _unknown_env(name)
        out[key] = parse_assignment(f"{key}={raw}")[1]
    return out
