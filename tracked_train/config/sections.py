"""The run configuration's sections: typed, frozen dataclasses, one per YAML section, and the dotted key
names (``section.field``) they answer to. Reading them from YAML, the environment and ``--set`` is in
:mod:`.keys` and :mod:`.environment`; layering and validation in :mod:`.layers`."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


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
        from ..redact import redact

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


def tracker_key(key: str) -> tuple[str, str] | None:
    """``tracking.mlflow.uri`` -> ``("mlflow", "uri")``: a tracker's own setting; None for any other key."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "tracking" and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def _shown_settings(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """A tracker's settings as records hold them: tuples as lists, URI credentials stripped, secrets redacted
    (secret-looking names, and fields the tracker marks ``metadata={"secret": True}``)."""
    from ..redact import REDACTED, redact

    shown = redact({k: list(v) if isinstance(v, tuple) else v for k, v in args.items()})
    try:
        from ..trackers.base import settings_class

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
