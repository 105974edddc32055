"""Typed, frozen run configuration: defaults < YAML < environment < --set.

Every key is a dotted ``section.field`` name; YAML sections map to the
dataclasses below, ``--set training.lr=3e-4`` and
``TRACKED_TRAIN_TRAINING_LR=3e-4`` address the same field. Validation happens
here, before anything is created, and fails with a :class:`ConfigError` whose
message is one line naming the key, the bad value and what is allowed. A
misspelt ``TRACKED_TRAIN_*`` variable is such an error too, not ignored.
MLflow's ``MLFLOW_EXPERIMENT_NAME`` names the experiment when nothing else does.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .typed_values import coerce

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


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass(frozen=True)
class RunConfig:
    name: str | None = None  # default: built from the key settings and a timestamp
    output_dir: str = "runs"


@dataclass(frozen=True)
class DataConfig:
    source: Literal["builtin", "text", "hf"] = "builtin"
    train_files: tuple[str, ...] = ()
    valid_files: tuple[str, ...] = ()
    val_split: float = field(default=0.05, metadata=_range(0.0, 0.5, lo_open=True))
    hf_name: str | None = None
    hf_config: str | None = None
    builtin_chars: int = field(default=3_000_000, metadata=_range(10_000, 1_000_000_000))
    builtin_seed: int = 0


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = field(default=1024, metadata=_range(300, 1_000_000))
    model_type: Literal["bpe", "unigram", "char", "word"] = "bpe"


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = field(default=256, metadata=_range(8, 65536))
    n_layers: int = field(default=4, metadata=_range(1, 1024))
    n_heads: int = field(default=8, metadata=_range(1, 1024))
    n_kv_heads: int | None = field(default=None, metadata=_range(1, 1024))  # None: = n_heads
    seq_len: int = field(default=128, metadata=_range(2, 1_000_000))
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.9))
    # The design (tracked_train/model.py): learned + layernorm + gelu is GPT-2's. LayerNorm, not RMSNorm,
    # by default: PyTorch's LayerNorm is one fused CPU kernel, and the step measured 5 % faster with it
    # (benchmarks/design_speed.py, docs/benchmarks.md).
    pos_encoding: Literal["rope", "learned"] = "rope"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    qk_norm: bool = False
    tie_embeddings: bool = True


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = field(default=16, metadata=_range(1, 1_000_000))
    grad_accum: int = field(default=1, metadata=_range(1, 100_000))
    max_steps: int = field(default=400, metadata=_range(1, 10**12))
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for the blocks' matrices, AdamW for the rest
    lr: float = field(default=1e-3, metadata=_range(0.0, 10.0, lo_open=True))
    # Where the schedule ends: min_lr if given (absolute), else lr * min_lr_ratio (nanoGPT's and HF's
    # cosine-with-min-lr convention), so a sweep over lr keeps the same shape of decay at every lr.
    min_lr: float | None = field(default=None, metadata=_range(0.0, 10.0))
    min_lr_ratio: float = field(default=0.1, metadata=_range(0.0, 1.0))
    warmup_steps: int = field(default=20, metadata=_range(0, 10**12))
    # After warmup: cosine to min_lr, or wsd (constant, then linear to min_lr over the last decay_frac
    # of the steps, or of the time budget). Either ends at max_steps, or where time_budget_s runs out.
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_frac: float = field(default=0.2, metadata=_range(0.0, 1.0, lo_open=True))
    weight_decay: float = field(default=0.1, metadata=_range(0.0, 10.0))
    grad_clip: float | None = field(default=1.0, metadata=_range(0.0, 1e6, lo_open=True))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # None (auto): on for CUDA; off on the CPU, where compiling costs more than it saves within a run of
    # minutes (measured, docs/benchmarks.md).
    compile: bool | None = None
    eval_every: int = field(default=50, metadata=_range(1, 10**12))
    eval_batches: int = field(default=10, metadata=_range(1, 100_000))
    checkpoint_every: int = field(default=50, metadata=_range(1, 10**12))
    # Besides best and last, keep the N newest periodic checkpoints as checkpoints/step-000500/ (None: none).
    keep_checkpoints: int | None = field(default=None, metadata=_range(1, 10**9))
    seed: int = field(default=1337, metadata=_range(0, 2**63 - 1))  # numpy and torch take 0 ... 2^63 - 1
    time_budget_s: float | None = field(default=None, metadata=_range(0.0, 1e9, lo_open=True))

    @property
    def final_lr(self) -> float:
        """The learning rate the schedule decays to: ``min_lr``, else ``lr * min_lr_ratio``."""
        return self.min_lr if self.min_lr is not None else self.lr * self.min_lr_ratio


@dataclass(frozen=True)
class EarlyStoppingConfig:
    # The metric followed for patience, the target, the best checkpoint and sweeps (None: the task's own,
    # val/loss for the language model), and whether lower (min) or higher (max) is better (None: the task's).
    monitor: str | None = None
    mode: Literal["min", "max"] | None = None
    patience: int | None = field(default=None, metadata=_range(1, 10**9))  # in evaluations (of a val/ monitor)
    min_delta: float = field(default=0.0, metadata=_range(0.0, 1e9))
    target: float | None = None  # stop once the monitor reaches it (at or below for min, at or above for max)
    target_loss: float | None = None  # the name of `target` before the monitor was configurable
    # Diverged when the smoothed train loss climbs this many times above its best.
    divergence_factor: float | None = field(default=3.0, metadata=_range(1.0, 1e9, lo_open=True))


@dataclass(frozen=True)
class TrackingConfig:
    trackers: tuple[str, ...] = ("jsonl", "mlflow")
    experiment: str = "tracked-train"
    # false: train even if the tracking server is down at start, spooling events.
    required: bool = True
    # Each tracker's own settings are its section, tracking.<name>: (its Settings dataclass; Config.tracker_args).


# The tracker settings that were tracking keys before each tracker had its own section: still read, with a
# one-line notice (not from a checkpoint or config.yaml of an older run, which cannot be edited).
DEPRECATED_KEYS = {
    "tracking.mlflow_uri": "tracking.mlflow.uri", "tracking.register_model": "tracking.mlflow.register_model",
    "tracking.log_model": "tracking.mlflow.log_model", "tracking.system_metrics": "tracking.mlflow.system_metrics",
    "tracking.wandb_project": "tracking.wandb.project", "tracking.wandb_entity": "tracking.wandb.entity",
    "tracking.wandb_group": "tracking.wandb.group", "tracking.wandb_tags": "tracking.wandb.tags",
    "tracking.webhook_url": "tracking.webhook.url", "tracking.webhook_format": "tracking.webhook.format",
}


@dataclass(frozen=True)
class LoggingConfig:
    # Steps between read-backs of the steps' loss and grad norm from the device, in one transfer (also at each
    # evaluation, checkpoint, stop and the end); every step's values are still logged at their own step. A
    # read-back makes the CPU wait for the GPU to finish its queue. None: 10 on CUDA, every step elsewhere
    # (cheap there). Checks on train/ values (divergence, a train/ target) happen at read-backs.
    every: int | None = field(default=None, metadata=_range(1, 1_000_000))

    def interval(self, device: str) -> int:
        if self.every is not None:
            return self.every
        return 10 if device.startswith("cuda") else 1


@dataclass(frozen=True)
class ConsoleConfig:
    progress: Literal["auto", "bar", "lines"] = "auto"
    # Peak FLOP/s of the accelerator for the MFU figure; None: known GPUs only.
    peak_tflops: float | None = field(default=None, metadata=_range(0.0, 1e9, lo_open=True))


@dataclass(frozen=True)
class Config:
    # The task: built-in name (lm), module.path:Class, path/to/file.py:Class or an entry point (tracked_train.task).
    task: str = "lm"
    # The task's own settings (its Settings dataclass), every one filled in: validated by `build`.
    task_args: Mapping[str, Any] = field(default_factory=dict)
    # Each tracker's own settings, tracking.<name>.<field> (its Settings dataclass): for every tracker the run
    # uses, every one filled in; validated by `build`.
    tracker_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    tracking: TrackingConfig = TrackingConfig()
    logging: LoggingConfig = LoggingConfig()
    console: ConsoleConfig = ConsoleConfig()

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (tuples as lists), as written to config.yaml, checkpoints and trackers.

        Secrets never leave the process: credentials in URIs are stripped and
        secret-looking keys redacted (pass credentials through the environment,
        e.g. MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).
        """
        from .redact import redact

        out: dict[str, Any] = {"task": self.task}
        if self.task_args:
            args = redact(dict(self.task_args))
            out["task_args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
        for sec in SECTIONS:
            if self.task != "lm" and sec in LM_SECTIONS:
                continue  # the language model's settings: another task has its own, in task_args
            values = redact({k: v for k, v in dataclasses.asdict(getattr(self, sec)).items()})
            out[sec] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
            if sec == "tracking":
                out[sec].update({name: _shown_settings(name, args) for name, args in self.tracker_args.items()})
        return out

    def flat(self) -> dict[str, Any]:
        """``{"task": "lm", "training.lr": 0.001, ...}``: the stable dotted names trackers log as params."""
        out: dict[str, Any] = {}
        for s, vals in self.to_dict().items():
            if not isinstance(vals, dict):
                out[s] = vals
                continue
            for k, v in vals.items():
                if isinstance(v, dict):  # a tracker's section: tracking.mlflow.uri
                    out.update({f"{s}.{k}.{name}": x for name, x in v.items()})
                else:
                    out[f"{s}.{k}"] = v
        return out

    def replace(self, **dotted: Any) -> Config:
        """A copy with dotted keys replaced by already-typed values (no validation)."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        trackers = {name: dict(args) for name, args in self.tracker_args.items()}
        for key, value in dotted.items():
            if key == "task":
                top["task"] = value
                continue
            if (parts := tracker_key(key)) is not None:
                trackers.setdefault(parts[0], {})[parts[1]] = value
                top["tracker_args"] = trackers
                continue
            sec, name = key.split(".", 1)
            sections.setdefault(sec, {})[name] = value
        if "task_args" in sections:
            top["task_args"] = {**self.task_args, **sections.pop("task_args")}
        return dataclasses.replace(
            self, **top, **{s: dataclasses.replace(getattr(self, s), **v) for s, v in sections.items()}
        )


# Keys whose values decide the model's shape: on resume they come from the checkpoint.
MODEL_SHAPE_KEYS = (
    "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.seq_len",
    "model.pos_encoding", "model.norm", "model.mlp", "model.qk_norm", "model.tie_embeddings",
    "tokenizer.vocab_size", "tokenizer.model_type",
)


# The sections of dotted keys (the task's and the trackers' own settings are handled apart: they declare them).
SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in ("task", "task_args", "tracker_args"))
# The built-in language model's own settings (task: lm); any other task declares its own in task_args.
LM_SECTIONS = ("data", "tokenizer", "model")
TASK_ARGS = "task_args."


def _known(key: str) -> bool:
    """A key `--set` and the environment may name: a field, a task's or tracker's setting, or an older name."""
    return key in FIELDS or key in DEPRECATED_KEYS or key.startswith(TASK_ARGS) or tracker_key(key) is not None


def tracker_key(key: str) -> tuple[str, str] | None:
    """``tracking.mlflow.uri`` -> ``("mlflow", "uri")``: a tracker's own setting; None for any other key."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "tracking" and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def _shown_settings(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """A tracker's settings as records hold them: tuples as lists, URI credentials stripped, secrets redacted
    (secret-looking names, and fields the tracker marks ``metadata={"secret": True}``)."""
    from .redact import REDACTED, redact

    shown = redact({k: list(v) if isinstance(v, tuple) else v for k, v in args.items()})
    try:
        from .trackers.base import settings_class

        secret = {f.name for f in dataclasses.fields(settings_class(name)) if f.metadata.get("secret")}
    except Exception:  # noqa: BLE001 - a plugin tracker not installed here: redact every value rather than leak one
        secret = set(shown)
    return {k: REDACTED if k in secret and v not in (None, "") else v for k, v in shown.items()}


def _field_types() -> dict[str, tuple[Any, dataclasses.Field]]:
    out = {"task": (str, next(f for f in dataclasses.fields(Config) if f.name == "task"))}
    for sec in (f for f in dataclasses.fields(Config) if f.name in SECTIONS):
        cls = sec.type if isinstance(sec.type, type) else typing.get_type_hints(Config)[sec.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{sec.name}.{f.name}"] = (hints[f.name], f)
    return out


FIELDS = _field_types()
# Longest first: were there sections `early` and `early_stopping`, TRACKED_TRAIN_EARLY_STOPPING_PATIENCE
# would belong to the second.
_SECTIONS_LONGEST_FIRST = sorted((*SECTIONS, "task_args"), key=len, reverse=True)


def _unknown_key(key: str) -> ConfigError:
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
    if not _known(key):
        raise _unknown_key(key)
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
        out.update(_dotted(sec, values))
    return out


def _dotted(sec: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A section's keys as dotted names; a tracker's own section nests one level: `tracking.mlflow.uri`."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if sec == "tracking" and isinstance(v, Mapping):
            out.update({f"tracking.{k}.{name}": x for name, x in v.items()})
        else:
            out[f"{sec}.{k}"] = v
    return out


def env_name(key: str) -> str:
    """``early_stopping.patience`` -> ``TRACKED_TRAIN_EARLY_STOPPING_PATIENCE``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _env_key(name: str) -> str | None:
    """``TRACKED_TRAIN_EARLY_STOPPING_PATIENCE`` -> ``early_stopping.patience``; None without a known section."""
    rest = name[len(ENV_PREFIX):].lower()
    if rest == "task":
        return "task"
    if rest.startswith("tracking_") and f"tracking.{rest[9:]}" not in FIELDS:
        from .trackers.base import available

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
        if key is None or not _known(key):
            raise _unknown_env(name)
        out[key] = parse_assignment(f"{key}={raw}")[1]
    return out


def build(layers: list[tuple[str, Mapping[str, Any]]], base: Config | None = None, strict: bool = True) -> Config:
    """Apply layers of dotted overrides in order (later wins) and validate.

    Each layer is ``(source, values)``; the source names where a bad value came
    from in the error message. ``strict`` False (a recorded run's config) keeps the settings of a tracker
    that is not installed here as they were recorded.
    """
    values: dict[str, Any] = {}
    task_args: dict[str, Any] = {}
    task_sources: dict[str, str] = {}
    tracker_args: dict[str, dict[str, Any]] = {}
    tracker_sources: dict[str, dict[str, str]] = {}
    for source, layer in layers:
        for key, value in layer.items():
            if key in DEPRECATED_KEYS:
                key = _renamed(key, source)
            if key.startswith(TASK_ARGS):  # checked against the task's own Settings below
                task_args[key[len(TASK_ARGS):]] = value
                task_sources[key[len(TASK_ARGS):]] = source
                continue
            if (parts := tracker_key(key)) is not None:  # checked against the tracker's own Settings below
                tracker_args.setdefault(parts[0], {})[parts[1]] = value
                tracker_sources.setdefault(parts[0], {})[parts[1]] = source
                continue
            if key not in FIELDS:
                raise _unknown_key(key)
            tp, f = FIELDS[key]
            values[key] = coerce(key, value, tp, f.metadata, source)
    base = base or Config()
    spec = values.get("task", base.task)
    if not spec.strip():
        raise ConfigError("task is empty; name a task: lm, module.path:Class or path/to/file.py:Class")
    kept = dict(base.task_args) if spec == base.task else {}  # another task's settings do not carry over
    values["task_args"] = _task_settings(spec, {**kept, **task_args}, task_sources)
    used = [t.partition("=")[0] for t in values.get("tracking.trackers", base.tracking.trackers)]
    trackers = _tracker_settings(used, base.tracker_args, tracker_args, tracker_sources, strict)
    cfg = base.replace(**{k: v for k, v in values.items() if k != "task_args"})
    cfg = dataclasses.replace(cfg, task_args=values["task_args"], tracker_args=trackers)
    validate(cfg)
    return cfg


_noticed: set[str] = set()


def _renamed(key: str, source: str) -> str:
    """A key from before each tracker had its own section: its new name, said once per process (not for a
    checkpoint's or an old run's config.yaml, which nobody should have to edit)."""
    new = DEPRECATED_KEYS[key]
    if source not in QUIET_SOURCES and key not in _noticed:
        import logging

        _noticed.add(key)
        hint = f"{env_name(new)}" if source == "environment" else new
        logging.getLogger("tracked_train").warning(
            "%s: %s is deprecated; write %s (the same setting)", source,
            env_name(key) if source == "environment" else key, hint)
    return new


QUIET_SOURCES = frozenset({"checkpoint", "the MLflow model", "config.yaml"})


def _tracker_settings(used: list[str], base: Mapping[str, Mapping[str, Any]], given: dict[str, dict[str, Any]],
                      sources: dict[str, dict[str, str]], strict: bool) -> dict[str, dict[str, Any]]:
    """Every setting of each tracker the run uses or configures, typed: defaults < ``base`` < ``given``."""
    from .errors import UserError
    from .trackers.base import settings_class
    from .typed_values import coerce_fields, defaults_of

    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([*used, *base, *given]):
        try:
            cls = settings_class(name)
        except UserError as e:
            if strict:
                where = "" if name in used else f" (in tracking.{name}.{next(iter(given.get(name, {'': 0})))})"
                raise ConfigError(f"{e}{where}") from None
            out[name] = {**base.get(name, {}), **given.get(name, {})}  # a recorded run's tracker not installed here
            continue
        typed = coerce_fields(cls, given.get(name, {}), f"tracking.{name}.", f"tracker {name}", sources.get(name))
        merged = {**defaults_of(cls), **base.get(name, {}), **typed}
        if merged:
            out[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
    return out


def _task_settings(spec: str, given: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """Every setting of the task, typed: its defaults, then ``given`` (validated like any key)."""
    if spec == "lm":  # its settings are the model, data and tokenizer sections (and importing it loads torch)
        if given:
            raise ConfigError(f"unknown task setting 'task_args.{next(iter(given))}': the lm task's settings are "
                              "the model., data. and tokenizer. keys")
        return {}
    from .task import coerce_settings, defaults

    return coerce_settings(spec, {**defaults(spec), **given}, sources)


def resolve(config_file: str | None, sets: list[str], cli: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> Config:
    """The one precedence rule: defaults < MLFLOW_EXPERIMENT_NAME < YAML < environment < CLI (--set, flags)."""
    env = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if env.get("MLFLOW_EXPERIMENT_NAME"):  # MLflow's own variable, honoured as MLflow users expect
        layers.append(("MLFLOW_EXPERIMENT_NAME", {"tracking.experiment": env["MLFLOW_EXPERIMENT_NAME"]}))
    if config_file:
        layers.append((str(config_file), load_yaml(config_file)))
    layers.append(("environment", env_overrides(env)))
    layers.append(("--set", dict(parse_assignment(s) for s in sets)))
    if cli:
        layers.append(("command line", {k: v for k, v in cli.items() if v is not None}))
    return build(layers)


def validate(cfg: Config) -> None:
    """Cross-field rules that no single field's type can express."""
    m, t, d = cfg.model, cfg.training, cfg.data
    if cfg.task != "lm":
        for sec in LM_SECTIONS:
            changed = [k for k, v in dataclasses.asdict(getattr(cfg, sec)).items()
                       if v != getattr(getattr(Config(), sec), k)]
            if changed:
                raise ConfigError(f"{sec}.{changed[0]} is a setting of the built-in language model (task lm); "
                                  f"task {cfg.task} takes its settings under task_args (see --print-config)")
    if cfg.run.name is not None:
        from .names import problem, sanitise

        why = problem(cfg.run.name)
        if why:
            raise ConfigError(f"run name {cfg.run.name[:60]!r}{'...' if len(cfg.run.name) > 60 else ''} {why}; "
                              f"it names a folder: use e.g. --run-name {sanitise(cfg.run.name)!r}")
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} must be divisible by model.n_heads={m.n_heads}")
    if m.pos_encoding == "rope" and (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"model.d_model={m.d_model} / model.n_heads={m.n_heads} gives heads of "
                          f"{m.d_model // m.n_heads} features; rotary positions need an even head size: change "
                          "either, or set model.pos_encoding=learned")
    kv = m.n_kv_heads or m.n_heads
    if m.n_heads % kv:
        raise ConfigError(f"model.n_heads={m.n_heads} must be divisible by model.n_kv_heads={kv}")
    if t.min_lr is not None and t.min_lr > t.lr:
        raise ConfigError(f"training.min_lr={t.min_lr:g} must not exceed training.lr={t.lr:g}; lower it, or clear it "
                          "(training.min_lr=) to end at lr * training.min_lr_ratio")
    if d.source == "text" and not d.train_files:
        raise ConfigError("data.source=text needs data.train_files; e.g. --set data.train_files=train.txt")
    if d.source == "hf" and not d.hf_name:
        raise ConfigError("data.source=hf needs data.hf_name; e.g. --set data.hf_name=wikitext")
    if t.precision == "fp16" and t.device == "cpu":
        raise ConfigError("training.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
    es = cfg.early_stopping
    if es.target is not None and es.target_loss is not None and es.target != es.target_loss:
        raise ConfigError(f"early_stopping.target={es.target:g} and early_stopping.target_loss={es.target_loss:g} "
                          "disagree; set only early_stopping.target (target_loss is its older name)")
    if es.monitor is not None and not es.monitor.startswith(("train/", "val/")):
        raise ConfigError(f"early_stopping.monitor={es.monitor!r} is not a logged metric; name one such as "
                          "val/loss, val/accuracy or train/loss")
    if not cfg.tracking.trackers:
        raise ConfigError("tracking.trackers is empty; name at least one tracker, e.g. jsonl")


def from_dict(nested: Mapping[str, Mapping[str, Any]], source: str = "checkpoint") -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (a checkpoint or config.yaml)."""
    flat: dict[str, Any] = {}
    for s, vals in nested.items():
        if s == "task":
            flat["task"] = vals
        elif not isinstance(vals, Mapping):
            raise ConfigError(f"{source}: section '{s}' is not a mapping of keys")
        else:
            flat.update(_dotted(s, vals))
    return build([(source, flat)], strict=False)


def to_yaml(cfg: Config) -> str:
    """The config as ``config.yaml`` holds it: sections in order, secrets redacted."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def dump_yaml(cfg: Config, path: Path) -> None:
    path.write_text(to_yaml(cfg))
