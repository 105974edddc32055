"""The tracker contract, its registry, and the fan-out the training loop talks to.

A tracker is a small class with six methods. The loop never imports a tracking
library; it calls :class:`Trackers`, which forwards each call to every tracker
the user named. Contract for implementers:

- ``start`` may fail (bad credentials, unreachable server): raise
  :class:`~tracked_train.errors.UserError` with what to do, and the run exits 2
  before training starts.
- every other method is called from the training thread and must return
  promptly: do network or disk-heavy work on a background thread, batched.
- ``log_metrics`` is called with strictly increasing steps (several calls may
  share a step); never re-log a step that ``state()`` said was logged.
- ``state()`` is stored in every checkpoint and handed back as
  ``RunInfo.resume_state`` on resume, so a backend can continue the same run.
- ``finish`` flushes everything and ends the run with the outcome's status.

A tracker's own settings are a frozen dataclass, its ``Settings`` (as a task's): the config's section
``tracking.<name>:`` (``--set tracking.<name>.<field>=...``, ``TRACKED_TRAIN_TRACKING_<NAME>_<FIELD>``), typed
and validated before anything is made, and handed to ``start`` as ``RunInfo.settings``. A field whose
``metadata`` has ``"secret": True`` is redacted wherever the config is recorded.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import Config
    from ..data import DatasetInfo
    from ..early_stopping import Stop

log = logging.getLogger("tracked_train")


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told at start: the run's facts and its own settings, not the whole config.

    - a new run: ``continuing`` False, ``start_step`` 0;
    - an exact resume (same config, from ``last``, or a folder with no checkpoint
      yet): ``continuing``; the steps after ``start_step`` are recomputed with the
      values already logged, so a backend skips the ones it holds;
    - an inexact resume (``--from best``, a changed config): ``continuing`` and
      ``rewind``; the steps after ``start_step`` get new values, so a backend must
      drop what it holds after ``start_step`` or continue in a new run.

    :meth:`of` makes one from a tracked-train config; your own loop's Run passes your config as ``params``.
    """

    name: str
    run_dir: Path
    # The run's params as trackers show them (W&B's config, TensorBoard's hparams, MLflow's params): flat dotted
    # names, secrets redacted; tracked-train's config (Config.flat()), or your own loop's config.
    params: Mapping[str, Any]
    start_step: int = 0  # > 0 when resuming: the checkpoint's step
    resume_state: dict | None = None  # this tracker's state() from the checkpoint
    continuing: bool = False
    rewind: bool = False
    experiment: str = "tracked-train"  # tracking.experiment: the experiment / project runs are grouped in
    required: bool = True  # tracking.required: a tracker that cannot start fails the run (else it catches up)
    max_steps: int | None = None  # the step the run ends at if nothing stops it first (None: no fixed end)
    monitor: str = "val/loss"  # the metric the best checkpoint and early stopping follow, and its direction
    mode: str = "min"
    patience: int | None = None  # evaluations without improvement that stop the run (None: never)
    min_delta: float = 0.0  # what counts as an improvement
    settings: Any = None  # the tracker's own Settings instance (tracking.<name>:), set for each tracker at start
    # Every tracker's own settings as configured (tracking.<name>.<field>), from which ``settings`` is made.
    tracker_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: Config, name: str, run_dir: Path, params: Mapping[str, Any] | None = None,
           **more: Any) -> RunInfo:
        """The facts of a run, read from its config; ``params`` (your own loop's config) replace its keys."""
        from ..task import monitor_of

        metric, mode = monitor_of(cfg)
        es = cfg.early_stopping
        return cls(name, run_dir, cfg.flat() if params is None else params, experiment=cfg.tracking.experiment,
                   required=cfg.tracking.required, max_steps=cfg.training.max_steps, monitor=metric, mode=mode,
                   patience=es.patience, min_delta=es.min_delta, tracker_settings=cfg.tracker_args, **more)


@dataclass(frozen=True)
class Outcome:
    stop: Stop
    best_step: int | None = None
    best_val_loss: float | None = None
    initial_loss: float | None = None
    final_loss: float | None = None
    decrease_pct: float = 0.0
    verdict: str = "not learning"
    best_val_nats_per_char: float | None = None
    monitor: str = "val/loss"  # the metric the best checkpoint and early stopping follow
    mode: str = "min"
    best_value: float | None = None  # the monitor's best value (at best_step)
    ended_at: float | None = None  # epoch seconds: set when an ending is replayed from its stop record (else: now)
    best_val_bpb: float | None = None  # val/bpb at best_step (bits per UTF-8 byte: comparable across tokenizers)

    def best_metrics(self) -> dict[str, float]:
        """The best checkpoint's values, as metrics a tracker can filter and sort runs by."""
        if self.best_step is None:
            return {}
        out = {"best/step": float(self.best_step)}
        if self.best_val_loss is not None:
            out["best/val_loss"] = self.best_val_loss
        if self.best_val_nats_per_char is not None:
            out["best/val_nats_per_char"] = self.best_val_nats_per_char
        if self.best_val_bpb is not None:
            out["best/val_bpb"] = self.best_val_bpb
        if self.best_value is not None:  # e.g. best/val_accuracy (for val/loss: best/val_loss again)
            out["best/" + self.monitor.replace("/", "_")] = self.best_value
        return out

    def tags(self) -> dict[str, str]:
        """The end-of-run tags every backend records under the same names."""
        return {
            "stop_reason": self.stop.reason.value, "stop_detail": self.stop.detail, "stop_step": str(self.stop.step),
            "best_step": "" if self.best_step is None else str(self.best_step),
            "best_val_loss": "" if self.best_val_loss is None else f"{self.best_val_loss:.6g}",
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class NoSettings:
    """A tracker without settings of its own: ``tracking.<name>:`` must stay empty."""


class Tracker(ABC):
    name: ClassVar[str]
    Settings: ClassVar[type] = NoSettings

    @abstractmethod
    def start(self, run: RunInfo) -> None: ...

    @abstractmethod
    def log_params(self, params: dict[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        """Store a file or folder as ``artifact_path``; a later call with the same path replaces it."""

    @abstractmethod
    def set_tags(self, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def finish(self, outcome: Outcome) -> None: ...

    def log_datasets(self, datasets: Sequence[DatasetInfo]) -> None:
        """Record the training and validation data (once per tracked run); backends without datasets skip it."""

    def state(self) -> dict[str, Any]:
        return {}

    def abort(self) -> None:
        """End a started run that never trained (another tracker failed to start)."""

    def repair_ending(self, run: RunInfo, outcome: Outcome) -> str | None:
        """Give this backend's run the ending ``metrics.jsonl`` records, where the process died before
        ``finish`` reached it (kill -9 while the trackers finished): called by ``resume`` and ``sync`` with the
        run folder locked, on a tracker that was never started. Returns one line saying what was repaired, or
        None when nothing was. Backends with no run status of their own have nothing to repair."""
        return None


# name -> "module:Class", imported only when a run asks for it (keeps --help instant).
_BUILTIN: dict[str, str] = {
    "jsonl": "tracked_train.trackers.jsonl:JsonlTracker",
    "null": "tracked_train.trackers.null:NullTracker",
    "mlflow": "tracked_train.mlflow.tracker:MlflowTracker",
    "wandb": "tracked_train.trackers.wandb_tracker:WandbTracker",
    "webhook": "tracked_train.trackers.webhook:WebhookTracker",
    "tensorboard": "tracked_train.trackers.tensorboard_tracker:TensorboardTracker",
    "trackio": "tracked_train.trackers.trackio_tracker:TrackioTracker",
}
_REGISTERED: dict[str, Callable[..., Tracker]] = {}
ENTRY_POINT_GROUP = "tracked_train.trackers"


def register(name: str) -> Callable[[type[Tracker]], type[Tracker]]:
    """Class decorator registering a tracker under ``name``."""
    def deco(cls: type[Tracker]) -> type[Tracker]:
        _REGISTERED[name] = cls
        return cls
    return deco


def available() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({*_BUILTIN, *_REGISTERED, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def tracker_class(name: str) -> Callable[..., Tracker]:
    """The class (or factory) registered as ``name``: built-in, ``@register``'d, or an entry point."""
    factory = _REGISTERED.get(name)
    if factory is None and name in _BUILTIN:
        module, cls = _BUILTIN[name].split(":")
        factory = getattr(importlib.import_module(module), cls)
    if factory is None:
        from importlib.metadata import entry_points

        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if eps:
            factory = eps[0].load()
    if factory is None:
        raise UserError(f"unknown tracker '{name}'; available: {', '.join(available())}")
    return factory


def settings_class(name: str) -> type:
    """The dataclass of tracker ``name``'s own settings (:class:`NoSettings` for none)."""
    import dataclasses

    s = getattr(tracker_class(name), "Settings", NoSettings)
    if not dataclasses.is_dataclass(s):
        raise UserError(f"tracker {name}: Settings must be a dataclass of the tracker's settings")
    return s


def create(spec: str) -> Tracker:
    """``"mlflow"`` or ``"webhook=https://..."`` -> a tracker instance."""
    name, _, arg = spec.partition("=")
    factory = tracker_class(name)
    return factory(arg) if arg else factory()


def settings_of(tracker: Any, run: RunInfo) -> Any:
    """``tracker``'s own Settings for ``run``: as ``start`` was handed them, else its defaults and the run config's
    ``tracking.<name>:`` (a tracker started outside :class:`Trackers`, e.g. to repair a run's ending)."""
    if run.settings is not None:
        return run.settings
    return getattr(tracker, "Settings", NoSettings)(**run.tracker_settings.get(tracker.name, {}))


class Trackers:
    """Fans every call out to each tracker; the only tracking object the loop sees.

    A tracker that fails while logging is reported once and the others go on:
    losing one backend must not cost the run (its failure is in the log and in
    the end summary). ``start`` failures propagate.
    """

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self._warned: set[str] = set()

    @classmethod
    def from_specs(cls, specs: tuple[str, ...] | list[str]) -> Trackers:
        names = list(dict.fromkeys(specs))
        # metrics.jsonl is the run folder's record: always on, unless the user asked
        # for `null` (nothing at all), the baseline of the overhead benchmarks.
        if "jsonl" not in names and "null" not in names:
            names.insert(0, "jsonl")
        return cls([create(s) for s in names])

    def _each(self, method: str, *args: Any) -> None:
        for t in self.trackers:
            try:
                getattr(t, method)(*args)
            except Exception as e:  # noqa: BLE001 - one backend's failure must not stop training
                if t.name not in self._warned:
                    self._warned.add(t.name)
                    log.warning("tracker %s failed in %s: %s (further errors from it are not shown)",
                                t.name, method, e)

    def start(self, run: RunInfo) -> None:
        started = []
        for t in self.trackers:
            state = (run.resume_state or {}).get(t.name)
            try:
                t.start(replace(run, resume_state=state, settings=settings_of(t, run)))
            except BaseException:
                for s in started:  # leave no run half-open on a server
                    s.abort()
                raise
            started.append(t)

    def log_params(self, params: dict[str, Any]) -> None:
        for t in self.trackers:  # once, before training: a refusal is bad input (exit 2), not an outage
            t.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        self._each("log_artifact", local_path, artifact_path, metadata)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._each("set_tags", tags)

    def log_datasets(self, datasets: Sequence[DatasetInfo]) -> None:
        self._each("log_datasets", datasets)

    def finish(self, outcome: Outcome) -> None:
        self._each("finish", outcome)

    def abort(self) -> None:
        self._each("abort")

    def state(self) -> dict[str, dict[str, Any]]:
        return {t.name: t.state() for t in self.trackers}
