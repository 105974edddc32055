"""PyTorch Lightning, tracked: a ``Logger`` on :class:`tracked_train.Run`.

::

    logger = TrackedTrainLogger("runs/exp1", trackers=["mlflow"])
    trainer = L.Trainer(logger=logger, callbacks=[EarlyStopping("val_loss", patience=2),
                                                  ModelCheckpoint(monitor="val_loss", save_last=True)])
    trainer.fit(model, train_loader, val_loader, ckpt_path="last")  # "last": continue when there is a checkpoint

The run starts with the fit: ``self.save_hyperparameters()``'s values (and ``config``) are its params. Every metric
Lightning logs goes to every tracker at Lightning's step, each step once, a resumed fit included: a fit continued
from a checkpoint (``ckpt_path``) continues the same tracked runs (the same MLflow run). Lightning's checkpoints go
to ``RUN_DIR/lightning/checkpoints``; each one saved is recorded in the run folder's ``checkpoints/last`` (and
``best``) and uploaded to MLflow as ``lightning/last.ckpt`` (and ``lightning/best.ckpt``). The run ends with the
reason the fit ended: ``EarlyStopping``'s (``patience``, ``target_reached`` for its ``stopping_threshold``,
``diverged`` for its ``divergence_threshold`` or a non-finite metric), ``completed``, ``interrupted`` (Ctrl-C,
SIGTERM), or ``failed`` with the exception's type and message.

Uses ``lightning.pytorch``, else ``pytorch_lightning``. Metrics of ``trainer.validate/test/predict`` outside a fit
are not tracked (the run ends with the fit).
"""

from __future__ import annotations

import logging
import os
import sys
from argparse import Namespace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from lightning.pytorch.loggers.logger import Logger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
except ImportError:  # the standalone package: pip install pytorch-lightning
    from pytorch_lightning.loggers.logger import Logger  # type: ignore[no-redef]
    from pytorch_lightning.utilities.rank_zero import rank_zero_only  # type: ignore[no-redef]

from ..your_loop import Run
from ._common import number, trackable

log = logging.getLogger("tracked_train")

__all__ = ["TrackedTrainLogger"]

# EarlyStopping.stopping_reason (Lightning 2.6; earlier versions: see _early_stop) -> our stop reasons
REASONS = {"PATIENCE_EXHAUSTED": "patience", "STOPPING_THRESHOLD": "target_reached",
           "DIVERGENCE_THRESHOLD": "diverged", "NON_FINITE_METRIC": "diverged"}


class TrackedTrainLogger(Logger):
    """Track a Lightning fit in ``run_dir``: ``Trainer(logger=TrackedTrainLogger("runs/exp1", trackers=["mlflow"]))``.

    ``config``: more params, added to the LightningModule's hyperparameters. ``trackers``, ``experiment``,
    ``mlflow_uri``, ``tracking``: as for :class:`tracked_train.Run`. ``loss_metric``: the logged name of the
    training loss (the run's verdict is made from it). ``upload_checkpoints``: False keeps Lightning's checkpoint
    files off the trackers (a large model's).
    """

    def __init__(self, run_dir: str | os.PathLike, config: Mapping[str, Any] | None = None, *,
                 trackers: Sequence[str] = ("jsonl",), experiment: str | None = None, mlflow_uri: str | None = None,
                 tracking: Mapping[str, Any] | None = None, loss_metric: str = "train_loss",
                 upload_checkpoints: bool = True):
        super().__init__()
        if isinstance(trackers, str):
            raise TypeError(f"trackers={trackers!r} is a string; give a list, e.g. trackers=[{trackers!r}]")
        self.run_dir = Path(run_dir)
        self._config = dict(config or {})
        # Lightning handles SIGINT and SIGTERM itself (it stops the fit and calls finalize): the Run leaves them be.
        self._run_args: dict[str, Any] = {"trackers": list(trackers), "experiment": experiment,
                                          "mlflow_uri": mlflow_uri, "tracking": tracking,
                                          "loss_metric": loss_metric, "signals": False}
        self.upload_checkpoints = upload_checkpoints
        self._hparams: dict[str, Any] = {}
        self._run: Run | None = None
        self._active = False
        self._trainer: Any = None  # Lightning hands it over in log_graph(model): model.trainer
        self._last_step = -1
        self._saved_step = -1  # the step of the run's latest checkpoint: later logs may not go below it
        self._at_step: dict[str, float] = {}  # what was logged at the latest step
        self._best_recorded: str | None = None
        self._warned: set[str] = set()

    # -- what Lightning asks of a logger ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def version(self) -> str:
        return "lightning"

    @property
    def save_dir(self) -> str:
        # ModelCheckpoint's default folder is SAVE_DIR/NAME/VERSION/checkpoints: RUN_DIR/lightning/checkpoints.
        return str(self.run_dir.parent)

    @property
    def run(self) -> Run:
        """The tracked run (started if it was not): ``logger.run.set_tags(...)`` from your LightningModule."""
        return self._open()

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        values = trackable(vars(params) if isinstance(params, Namespace) else dict(params))
        fresh = {k: v for k, v in values.items() if k not in self._hparams}
        self._hparams.update(values)
        if self._active and self._run is not None and fresh:
            self._run.log_params(fresh)  # given after the run started (else they are its config)

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        # Called at the start of every fit/validate/test, after log_hyperparams: the one hook that shows the Trainer,
        # whose EarlyStopping callbacks say why a fit stopped.
        self._trainer = getattr(model, "_trainer", None) or self._trainer
        if self._fitting():
            self._open()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self._fitting():
            self._warn_once("stage", "TrackedTrainLogger tracks trainer.fit(); metrics of validate/test/predict "
                                     "outside a fit are not tracked")
            return
        run = self._open()
        step = max(self._last_step, run.start_step, 0) if step is None else int(step)
        if run.resume_state() is not None and step <= run.start_step:
            return  # logged before the checkpoint this fit continued from: every step once
        if step < max(self._last_step, self._saved_step):
            self._warn_once("back", f"Lightning logged step {step} after step {max(self._last_step, self._saved_step)};"
                                    " metrics at earlier steps are not tracked")
            return
        values = {k: x for k, v in metrics.items() if (x := number(v)) is not None}
        if step == self._last_step:  # Lightning logs `epoch` with the training and again with the validation
            values = {k: v for k, v in values.items() if self._at_step.get(k) != v}  # metrics: once is enough
        else:
            self._at_step = {}
        if values:
            run.log(values, step=step)
            self._last_step = step
            self._at_step.update(values)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if not self._fitting():
            return
        run = self._open()
        saved = (getattr(checkpoint_callback, "_last_checkpoint_saved", "") or
                 getattr(checkpoint_callback, "last_model_path", "") or
                 getattr(checkpoint_callback, "best_model_path", ""))
        best_path = getattr(checkpoint_callback, "best_model_path", "") if checkpoint_callback.monitor else ""
        best = bool(best_path) and best_path != self._best_recorded  # the best changed: this save made it
        metrics = None
        score = number(getattr(checkpoint_callback, "best_model_score", None))
        if best and score is not None:
            metrics = {checkpoint_callback.monitor: score}
        step = self._trainer_step()
        if step is not None:
            step = max(step, self._last_step, 0)
        # What resumes the model is Lightning's checkpoint file; the run's checkpoint records which one, and the
        # trackers' state at this step, so that a resumed fit continues the run exactly once per step.
        run.save_checkpoint({"global_step": getattr(self._trainer, "global_step", step or 0), "ckpt_path": saved,
                             "best_model_path": best_path}, step=step, best=best, metrics=metrics)
        self._saved_step = max(self._saved_step, self._last_step if step is None else step)
        if best:
            self._best_recorded = best_path
        if self.upload_checkpoints:
            if saved and Path(saved).is_file():
                run.log_artifact(saved, "lightning/last.ckpt", {"file": Path(saved).name})
            if best and Path(best_path).is_file():
                run.log_artifact(best_path, "lightning/best.ckpt", {"file": Path(best_path).name})

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if not self._active or self._run is None:
            return
        run, step = self._run, max(self._last_step, 0)
        if status == "success":
            stop = self._early_stop()
            if stop is not None:
                run.stop(*stop)
            self._end(None)
        elif status == "failed":
            # Lightning calls this from inside its `except`: the exception in flight is what ended the fit.
            exc = sys.exc_info()[1]
            if type(exc).__name__ == "SIGTERMException":  # Lightning's answer to SIGTERM: stop after the step
                run.stop("interrupted", f"Interrupted by SIGTERM at step {step}; fit again from the last "
                                        "checkpoint (ckpt_path='last') to continue.")
                self._end(None)
            else:  # KeyboardInterrupt ends it `interrupted`, anything else `failed` with what was raised
                self._end(exc if exc is not None else RuntimeError("the Lightning Trainer reported a failed fit"))
        else:  # "finished": SLURM's requeue signal; the fit goes on in the requeued job
            run.stop("interrupted", f"Interrupted at step {step} ({status}: requeued); the requeued fit continues "
                                    "the run.")
            self._end(None)

    # -- helpers --------------------------------------------------------------------------------------------
    def _open(self) -> Run:
        if self._active and self._run is not None:
            return self._run
        # `logger.run` on another DDP rank makes the same calls, tracking nothing.
        run = Run(self.run_dir, {**self._hparams, **self._config}, **self._run_args,
                  tracking_here=rank_zero_only.rank == 0)
        run.start()
        self._run, self._active, self._best_recorded = run, True, None
        self._last_step = self._saved_step = -1
        return run

    def _end(self, exc: BaseException | None) -> None:
        if self._active and self._run is not None:
            self._active = False
            self._run.end(exc)

    def _fitting(self) -> bool:
        fn = getattr(getattr(self._trainer, "state", None), "fn", None)
        return fn is None or getattr(fn, "value", fn) == "fit"  # no Trainer seen yet: a fit, as far as we know

    def _trainer_step(self) -> int | None:
        """The last step that a fit resumed from the checkpoint being saved now does not log again; None: unknown
        (the last logged step is used).

        Lightning logs a batch at ``_batches_that_stepped`` and counts the batch once it is done. Inside a batch
        (after its optimizer step: a save every N steps, or a validation inside the epoch) the count is one behind
        the global step; the batch logs at the count, and a resumed fit starts at the count + 1. After the batch
        (a save at an epoch's end) they are equal; the epoch's own metrics still log at the count - 1, and a resumed
        fit starts at the count.
        """
        trainer = self._trainer
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        counted, global_step = getattr(loop, "_batches_that_stepped", None), getattr(trainer, "global_step", None)
        module = getattr(trainer, "lightning_module", None)
        if not (isinstance(counted, int) and isinstance(global_step, int)
                and getattr(module, "automatic_optimization", False)):
            return None  # manual optimization: the global step counts each optimizer's steps
        return counted if counted < global_step else counted - 1

    def _early_stop(self) -> tuple[str, str] | None:
        """Why EarlyStopping ended the fit, as (reason, detail); None when none did."""
        trainer = self._trainer
        if trainer is None or not getattr(trainer, "should_stop", True):
            return None
        step = max(self._last_step, 0)
        for es in getattr(trainer, "early_stopping_callbacks", None) or []:
            found = getattr(es, "stopping_reason", None)
            if found is not None:  # Lightning 2.6 says why
                reason = REASONS.get(getattr(found, "name", str(found)))
                message = (getattr(es, "stopping_reason_message", None) or "").replace(
                    " Signaling Trainer to stop.", "")
            elif getattr(es, "stopped_epoch", 0) > 0 and getattr(es, "wait_count", 0) >= getattr(es, "patience", 1):
                reason = "patience"  # older versions: only the epoch it stopped at, and its patience used up
                message = f"{es.monitor} did not improve in the last {es.wait_count} checks."
            else:
                continue
            if reason is not None:
                return reason, (f"Stopped at step {step} (epoch {es.stopped_epoch}) by EarlyStopping: "
                                f"{message or reason}")
        return None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
