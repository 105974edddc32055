"""Config keys from text: ``--set KEY=VALUE``, a YAML file's sections, the older names of renamed keys."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .sections import FIELDS, TASK_ARGS, tracker_key

# The tracker settings that were tracking keys before each tracker had its own section: still read, with a
# one-line notice (not from a checkpoint or config.yaml of an older run, which cannot be edited).
DEPRECATED_KEYS = {
    "tracking.mlflow_uri": "tracking.mlflow.uri", "tracking.register_model": "tracking.mlflow.register_model",
    "tracking.log_model": "tracking.mlflow.log_model", "tracking.system_metrics": "tracking.mlflow.system_metrics",
    "tracking.wandb_project": "tracking.wandb.project", "tracking.wandb_entity": "tracking.wandb.entity",
    "tracking.wandb_group": "tracking.wandb.group", "tracking.wandb_tags": "tracking.wandb.tags",
    "tracking.webhook_url": "tracking.webhook.url", "tracking.webhook_format": "tracking.webhook.format",
}



def known(key: str) -> bool:
    """A key `--set` and the environment may name: a field, a task's or tracker's setting, or an older name."""
    return key in FIELDS or key in DEPRECATED_KEYS or key.startswith(TASK_ARGS) or tracker_key(key) is not None



def unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else "; see `tracked-train run --help` for the keys"
    return ConfigError(f"unknown config key '{key}'{hint}")


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"training.lr=3e-4"`` -> ``("training.lr", 0.0003)``; values parse as YAML scalars."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not KEY=VALUE; write e.g. --set training.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not known(key):
        raise unknown_key(key)
    if raw.strip() == "":
        return key, None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict):  # "a: b" parses as a mapping; the user meant the text
        value = raw
    return key, value


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config into dotted keys, reporting syntax errors with their line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing YAML file to --config")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}:{where}: malformed YAML ({problem}); fix the file's syntax") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected sections like 'training:' at the top level, found {type(doc).__name__}")
    out: dict[str, Any] = {}
    for sec, values in doc.items():
        if sec == "task" and not isinstance(values, dict):  # `task: module:Class`, the one top-level value
            out["task"] = values
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: section '{sec}' must be a mapping of keys, e.g. '{sec}:\\n  key: value'")
        out.update(dotted(sec, values))
    return out


def dotted(sec: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A section's keys as dotted names; a tracker's own section nests one level: `tracking.mlflow.uri`."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if sec == "tracking" and isinstance(v, Mapping):
            out.update({f"tracking.{k}.{name}": x for name, x in v.items()})
        else:
            out[f"{sec}.{k}"] = v
    return out
