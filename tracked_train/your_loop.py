"""Your own training loop, tracked: tracked-train's run folder, trackers, checkpoints and resume as a library.

::

    with tracked_train.Run("runs/exp1", config={"lr": 3e-4}, trackers=["mlflow"]) as run:
        saved = run.resume_state()                  # None for a new run, else what you last saved
        if saved: model.load_state_dict(saved["model"]); ...
        for step in range(run.start_step + 1, 1001):
            ...
            run.log({"train/loss": loss.item()}, step=step)
            if step % 100 == 0:
                run.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict()}, step=step)
            if run.should_stop:                     # SIGINT / SIGTERM: save and leave the loop
                break
        # leaving the block ends the run: completed, interrupted, or failed with the exception's text

Everything `tracked-train run` guarantees holds: the same run folder
(``metrics.jsonl``, ``trackers.json``, ``train.log``, ``checkpoints/``), events
spooled to disk and delivered through server outages (``tracked-train sync``
afterwards), secrets redacted, one process per folder, atomic checkpoints with
a manifest, loaded weights-only. A folder opened again (after a crash, a kill
-9, a finished run) continues the same tracked runs from its last checkpoint;
the steps logged after that checkpoint are logged again by the resumed loop and
every tracker keeps each step once. Under torchrun only rank 0 tracks; the
other ranks get the same object, whose tracking calls do nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .early_stopping import Stop, StopReason
from .errors import UserError, describe
from .your_loop_checks import MARK, check_folder, check_loadable, flatten, read_last

log = logging.getLogger("tracked_train")



class Run:
    """One tracked run of your own loop (see the module's docstring and docs/your-loop.md).

    ``config``: your hyperparameters, a mapping (nested mappings become dotted names); logged as params.
    ``trackers``: names as for ``tracking.trackers`` (``jsonl`` is always on). ``tracking``: other
    ``tracking.*`` settings without the prefix (``{"wandb": {"project": "x"}}``, or ``{"wandb.project": "x"}``);
    their environment variables (``TRACKED_TRAIN_TRACKING_EXPERIMENT``...) and ``MLFLOW_TRACKING_URI`` apply as
    for the CLI.
    ``loss_metric``: the metric whose first and latest values give the run's verdict. ``signals``: False
    leaves SIGINT / SIGTERM to a framework that handles them itself (Lightning does); ``should_stop`` then
    stays False. ``tracking_here``: False makes this process's tracking calls do nothing (another process of a
    distributed run tracks it); default: rank 0 of torchrun (``RANK``) tracks.
    """

    def __init__(self, run_dir: str | os.PathLike, config: Mapping[str, Any] | None = None, *,
                 trackers: Sequence[str] = ("jsonl",), experiment: str | None = None,
                 mlflow_uri: str | None = None, tracking: Mapping[str, Any] | None = None,
                 loss_metric: str = "train/loss", signals: bool = True, tracking_here: bool | None = None):
        self.run_dir = Path(run_dir)
        self._user_config = dict(config or {})
        self._trackers_given, self._experiment, self._mlflow_uri = list(trackers), experiment, mlflow_uri
        self._tracking = dict(tracking or {})
        self._loss_metric, self._signals = loss_metric, signals
        self.start_step = 0  # the step of the checkpoint this run resumed from (0: a new run)
        self._state: dict[str, Any] | None = None
        self._trackers: Any = None
        self._lock: Any = None
        self._interrupts: Any = None
        # torchrun: rank 0 tracks for the run; a framework that knows its own process index says (tracking_here)
        self._tracking_here = os.environ.get("RANK", "0") == "0" if tracking_here is None else tracking_here
        self._last_step = 0
        self._best_step: int | None = None
        self._best_val_loss: float | None = None
        self._first_losses: list[float] = []  # train/loss's first and latest values: the run's verdict
        self._recent_losses: list[float] = []
        self._step_values: dict[str, float] = {}  # what was logged at the latest step
        self._stop: Stop | None = None
        self._open = False

    # -- the run's life ----------------------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        self.end(exc)

    def start(self) -> Run:
        """Open the folder (a new run, or the same run continued) and start every tracker. Bad input: UserError."""
        if self._open:
            raise RuntimeError("this Run is already started")
        from .interrupts import Interrupts

        cfg, params = self._settings()
        if not self._tracking_here:
            self._state = read_last(self.run_dir) if self.run_dir.is_dir() else None
            self.start_step = self._state["step"] if self._state else 0
        else:
            self._open_folder(cfg, params)
        self._last_step = self.start_step
        summary = (self._state or {}).get("summary") or {}
        self._first_losses = list(summary.get("first_losses") or [])
        self._best_step, self._best_val_loss = summary.get("best_step"), summary.get("best_val_loss")
        if self._signals:
            self._interrupts = Interrupts("run.should_stop is now True: your loop decides when to stop").__enter__()
        self._open = True
        return self

    def _settings(self) -> tuple[Any, dict[str, Any]]:
        from . import config as config_mod
        from .redact import redact

        params = redact(flatten(self._user_config))
        given = {"tracking.trackers": self._trackers_given or None, "tracking.experiment": self._experiment,
                 "tracking.mlflow.uri": self._mlflow_uri,
                 **{f"tracking.{k}": v for k, v in flatten(self._tracking).items()},  # {"wandb": {"project": ..}}
                 "run.name": self.run_dir.name or None, "run.output_dir": str(self.run_dir.parent)}
        config_mod.check_env(os.environ)
        cfg = config_mod.resolve(None, [], given)
        # The Logged Model is made from a `tracked-train run` checkpoint; yours is your own dict: it stays files.
        return cfg.replace(**{"tracking.mlflow.log_model": False}), params

    def _open_folder(self, cfg: Any, params: dict[str, Any]) -> None:
        import yaml

        from .checkpoint import clean
        from .console import setup_logging
        from .lock import RunLock
        from .run_folder import read_tracker_state, write_tracker_state
        from .trackers import RunInfo, Trackers

        Trackers.from_specs(cfg.tracking.trackers)  # an unknown tracker name fails before any folder
        new = check_folder(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the run folder {self.run_dir} ({e.strerror or describe(e)}); "
                            "give a writable path") from None
        self._lock = RunLock(self.run_dir).acquire()
        trackers, started = Trackers.from_specs(cfg.tracking.trackers), False
        try:
            clean(self.run_dir / "checkpoints")  # what a save cut by a kill left behind
            self._state = read_last(self.run_dir)
            self.start_step = self._state["step"] if self._state else 0
            # trackers.json is rewritten at every checkpoint and before the ending, so it is at least as new as
            # the checkpoint's copy: a W&B run knows it holds the steps logged after the checkpoint, say.
            tracker_state = read_tracker_state(self.run_dir)
            if self._state and self._state.get("trackers"):
                newer = {k: v for k, v in (tracker_state or {}).items() if v}
                tracker_state = {**self._state["trackers"], **newer}
            setup_logging(self.run_dir / "train.log")
            if new:
                (self.run_dir / "config.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            continuing = tracker_state is not None
            trackers.start(RunInfo.of(cfg, self.run_dir.name, self.run_dir, params, start_step=self.start_step,
                                      resume_state=tracker_state, continuing=continuing))
            started = True
            write_tracker_state(self.run_dir, trackers)
            if not continuing:
                trackers.log_params(params)
                trackers.log_artifact(self.run_dir / "config.yaml", "config.yaml")
        except BaseException:
            if started:
                trackers.abort()
            self._lock.release()
            setup_logging(None)
            if new:
                shutil.rmtree(self.run_dir, ignore_errors=True)  # nothing half-made stays
            raise
        self._trackers = trackers
        if self._state:
            log.info("run %s: continuing from the checkpoint of step %d", self.run_dir, self.start_step)
        else:
            log.info("run %s: %s", self.run_dir, "started" if new else "started again (no checkpoint yet)")

    def end(self, exc: BaseException | None = None) -> None:
        """End the run on every tracker: ``stop()``'s reason, else interrupted (a signal), failed (``exc``) or
        completed. Called by the ``with`` block; call it yourself without one."""
        if not self._open:
            return
        self._open = False
        from .early_stopping import verdict
        from .interrupts import Deferred

        if self._interrupts is not None:
            self._interrupts.__exit__(None, None, None)
        if not self._tracking_here:
            return
        stop = self._decide(exc)
        try:
            from .trackers import Outcome

            first, recent = self._first_losses, self._recent_losses
            initial, final = (sum(first) / len(first) if first else None), (sum(recent) / len(recent) if recent
                                                                            else None)
            drop, word = verdict(initial, final) if initial is not None and final is not None else (0.0, "not learning")
            outcome = Outcome(stop, self._best_step, self._best_val_loss, initial, final, drop, word)
            from .run_folder import write_tracker_state

            with Deferred():  # a signal now waits until every tracker holds the ending
                write_tracker_state(self.run_dir, self._trackers)  # what each holds, for a folder opened again
                self._trackers.finish(outcome)
            log.info("stopped: %s [stop_reason=%s]", stop.detail, stop.reason)
        finally:
            self._lock.release()
            from .console import setup_logging

            setup_logging(None)

    def _decide(self, exc: BaseException | None) -> Stop:
        from .redact import redact_text

        step = self._last_step
        if isinstance(exc, KeyboardInterrupt):
            return Stop(StopReason.INTERRUPTED, f"Interrupted at step {step} (KeyboardInterrupt); "
                        f"open the folder again to continue from its last checkpoint.", step)
        if exc is not None:
            return Stop(StopReason.FAILED, redact_text(f"Failed at step {step}: {type(exc).__name__}: "
                                                       f"{describe(exc)}"), step)
        if self._stop is not None:
            return self._stop
        if self._interrupts is not None and self._interrupts.requested:
            return Stop(StopReason.INTERRUPTED, f"Interrupted by {self._interrupts.requested} at step {step}; "
                        f"open the folder again to continue from its last checkpoint.", step)
        return Stop(StopReason.COMPLETED, f"Finished at step {step}.", step)

    # -- during the run -------------------------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        """True once SIGINT or SIGTERM (or ``stop`` typed at the terminal) asked the run to stop: save and leave
        the loop. A second Ctrl-C raises KeyboardInterrupt at once."""
        return bool(self._interrupts and self._interrupts.requested)

    def resume_state(self) -> Any:
        """What the last :meth:`save_checkpoint` saved (tensors on the CPU), or None for a new run."""
        return self._state["state"] if self._state else None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log ``metrics`` (numbers, or one-element tensors) at ``step``; steps never go back."""
        self._check_open()
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step {step!r} is not a step: give a whole number, 0 or more")
        if step < self._last_step:
            raise ValueError(f"step {step} comes after step {self._last_step}: steps only go forward "
                             "(several calls may share one)")
        if self._state and step <= self.start_step:
            raise ValueError(f"step {step} is in the checkpoint this run continued from (step {self.start_step}); "
                             f"continue at run.start_step + 1 = {self.start_step + 1}")
        values = {}
        for k, v in metrics.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"metric name {k!r} is not a name: use a non-empty string such as 'train/loss'")
            try:
                values[k] = float(v)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"metric {k!r} is a {type(v).__name__}, not a number") from None
        if step != self._last_step:
            self._step_values = {}
        self._last_step = step
        self._step_values.update(values)
        if self._loss_metric in values:
            if len(self._first_losses) < 10:
                self._first_losses.append(values[self._loss_metric])
            self._recent_losses = [*self._recent_losses[-9:], values[self._loss_metric]]
        if self._tracking_here and values:
            self._trackers.log_metrics(values, step)

    def save_checkpoint(self, state: Mapping[str, Any], step: int | None = None, best: bool = False,
                        metrics: Mapping[str, float] | None = None) -> None:
        """Save ``state`` atomically as ``checkpoints/last`` (and ``checkpoints/best`` when ``best``), upload it.

        ``state`` holds tensors, numbers, strings, and dicts / lists / tuples of them (a ``state_dict()`` is
        one): checkpoints load weights-only, so no pickled object can run code when a run is continued.
        """
        from . import checkpoint
        from .run_folder import write_tracker_state

        self._check_open()
        step = self._last_step if step is None else step
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step {step!r} is not a step: give a whole number, 0 or more")
        check_loadable(state)
        if not self._tracking_here:
            return
        self._last_step = max(self._last_step, step)
        if best:
            self._best_step = step
            given = {**self._step_values, **(metrics or {})}
            self._best_val_loss = float(given["val/loss"]) if "val/loss" in given else None
        summary = {"first_losses": self._first_losses, "best_step": self._best_step,
                   "best_val_loss": self._best_val_loss}
        full = {"format_version": checkpoint.FORMAT_VERSION, MARK: True, "step": step, "state": dict(state),
                "trackers": self._trackers.state(), "summary": summary}
        meta = {"step": step, **{k.replace("/", "_"): float(v) for k, v in (metrics or {}).items()}}
        folder = self.run_dir / "checkpoints" / "last"
        checkpoint.save(folder, full, {})
        write_tracker_state(self.run_dir, self._trackers)
        self._trackers.log_artifact(folder, "checkpoints/last", meta)
        if best:
            checkpoint.save_copy(folder, self.run_dir / "checkpoints" / "best")
            self._trackers.log_artifact(self.run_dir / "checkpoints" / "best", "checkpoints/best", meta)

    def stop(self, reason: str | StopReason, detail: str = "") -> None:
        """Say why the run ends (a :class:`~tracked_train.early_stopping.StopReason` or its value, e.g.
        ``"target_reached"``); recorded on every tracker when the run ends."""
        self._check_open()
        try:
            reason = StopReason(reason)
        except ValueError:
            raise ValueError(f"unknown stop reason {reason!r}; use one of "
                             f"{', '.join(r.value for r in StopReason)}") from None
        self._stop = Stop(reason, detail or f"Stopped ({reason}) at step {self._last_step}.", self._last_step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log more hyperparameters after the start (``config`` is logged at the start), flattened and redacted as
        ``config`` is. A name already logged keeps its first value on MLflow: give each name once."""
        from .redact import redact

        self._check_open()
        flat = redact(flatten(params))
        if self._tracking_here and flat:
            self._trackers.log_params(flat)

    def log_artifact(self, path: str | os.PathLike, name: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Upload the file or folder ``path`` as the MLflow run's artifact ``name`` (``"model/best"``; W&B keeps only
        the run's own checkpoints); a later call with the same name replaces it. The files are snapshotted (hard
        links) now, so they may be deleted or replaced as soon as this returns."""
        self._check_open()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        if (not isinstance(name, str) or not name.strip("/") or name.startswith("/")
                or ".." in Path(name).parts or "\\" in name):
            raise ValueError(f"artifact name {name!r} is not a name: use a relative path such as 'model/best' "
                             "(no '..', not absolute)")
        if self._tracking_here:
            self._trackers.log_artifact(path, name.strip("/"), dict(metadata or {}))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._check_open()
        if self._tracking_here:
            self._trackers.set_tags({str(k): str(v) for k, v in tags.items()})

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this Run is not started: use `with tracked_train.Run(...) as run:` or run.start()")
