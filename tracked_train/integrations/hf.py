"""The Hugging Face ``Trainer``, tracked: a ``TrainerCallback`` on :class:`tracked_train.Run`.

::

    tracking = TrackedTrainCallback("runs/exp1", trackers=["mlflow"])
    trainer = Trainer(model, args, ..., callbacks=[tracking, EarlyStoppingCallback(2)])  # args: report_to="none"
    with tracking:  # an exception in train() ends the run FAILED (the Trainer has no hook for it)
        trainer.train(resume_from_checkpoint=last_checkpoint_or_None)

The run starts when training does: the Trainer's arguments and the model's config are its params. Every logged
metric goes to every tracker at the Trainer's global step (``loss`` as ``train/loss``, ``learning_rate`` as
``train/lr``, ``eval_*`` as ``val/*``). Each checkpoint the Trainer saves is recorded in the run folder's
``checkpoints/last`` (and ``best``) and its folder uploaded to MLflow as ``hf_checkpoint/last`` (and ``best``).
A Trainer resumed from its checkpoint continues the same tracked runs (the same MLflow run) and each step is
logged once. The run ends with the reason training ended: ``patience`` when ``EarlyStoppingCallback`` stopped it,
``completed`` at ``max_steps``, ``interrupted`` after SIGINT / SIGTERM (the Trainer saves a checkpoint and stops
after the current step), ``failed`` when ``train()`` raised inside the ``with`` block.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import UserError
from ..your_loop import Run
from ._common import number, trackable

log = logging.getLogger("tracked_train")

__all__ = ["TrackedTrainCallback", "metric_name"]

NAMES = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm"}


def metric_name(hf_name: str) -> str:
    """The tracked name of a metric the Trainer logs: ``loss`` -> ``train/loss``, ``eval_loss`` -> ``val/loss``,
    ``test_loss`` -> ``test/loss``, anything else ``train/NAME``."""
    if hf_name in NAMES:
        return NAMES[hf_name]
    for prefix, group in (("eval_", "val/"), ("test_", "test/")):
        if hf_name.startswith(prefix) and len(hf_name) > len(prefix):
            return group + hf_name[len(prefix):]
    return "train/" + hf_name


class TrackedTrainCallback(TrainerCallback):
    """Track a Hugging Face ``Trainer`` run in ``run_dir`` (a folder of its own, outside ``output_dir``).

    ``config``: more params, added to the Trainer's arguments and the model's config (``model.*``).
    ``trackers``, ``experiment``, ``mlflow_uri``, ``tracking``: as for :class:`tracked_train.Run`.
    ``upload_checkpoints``: False keeps the Trainer's checkpoint folders off the trackers (a large model's).
    Use the callback as a context manager around ``trainer.train()`` (and ``trainer.evaluate()``): without it an
    exception leaves the run as a kill -9 would, RUNNING until its folder is opened again.
    """

    def __init__(self, run_dir: str | os.PathLike, config: Mapping[str, Any] | None = None, *,
                 trackers: Sequence[str] = ("jsonl",), experiment: str | None = None, mlflow_uri: str | None = None,
                 tracking: Mapping[str, Any] | None = None, upload_checkpoints: bool = True):
        if isinstance(trackers, str):
            raise TypeError(f"trackers={trackers!r} is a string; give a list, e.g. trackers=[{trackers!r}]")
        self.run_dir = Path(run_dir)
        self._config = dict(config or {})
        self._run_args: dict[str, Any] = {"trackers": list(trackers), "experiment": experiment,
                                          "mlflow_uri": mlflow_uri, "tracking": tracking}
        self.upload_checkpoints = upload_checkpoints
        self.run: Run | None = None  # the tracked run while it is open: run.set_tags(...), run.log(...)
        self._active = False
        self._in_with = False
        self._last_step = -1
        self._eval_step: int | None = None  # the step of the latest evaluation: did a stop follow one?
        self._eval_metrics: dict[str, float] = {}
        self._warned: set[str] = set()

    # -- the `with` block: the only place an exception in train() can be seen ------------------------------
    def __enter__(self) -> TrackedTrainCallback:
        self._in_with = True
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        self._in_with = False
        self._end(exc)

    # -- the Trainer's events -------------------------------------------------------------------------------
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self._check_folders(args)  # at Trainer(...), before anything trains

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        run = self._open(args, model)
        saved, step = run.start_step, state.global_step
        if run.resume_state() is not None and step != saved:
            if step < saved:
                log.warning("the Trainer starts at step %d, but run %s holds every step up to %d (its last "
                            "checkpoint): steps up to %d are not logged again; resume the Trainer from its last "
                            "checkpoint, or give a new run folder", step, self.run_dir, saved, saved)
            else:
                log.warning("the Trainer resumes at step %d, after run %s's last checkpoint (step %d): the steps "
                            "between stay on the servers that had them but not in metrics.jsonl", step,
                            self.run_dir, saved)
        self._last_step = max(self._last_step, step)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, Any] | None = None, model: Any = None, **kwargs: Any) -> None:
        if not self._active and not self._in_with:
            self._warn_once("outside", "metrics logged outside trainer.train() are not tracked: put "
                                       "`with <the TrackedTrainCallback>:` around train() and evaluate() to "
                                       "track them too")
            return
        run = self._open(args, model)
        step = state.global_step
        if run.resume_state() is not None and step <= run.start_step:
            return  # logged before the checkpoint this run continued from: every step once
        if step < self._last_step:
            self._warn_once("back", f"the Trainer logged step {step} after step {self._last_step}; metrics at "
                                    "earlier steps are not tracked")
            return
        metrics = {}
        for k, v in (logs or {}).items():
            value = number(v)
            if value is not None:
                metrics[metric_name(k)] = value
        if metrics:
            run.log(metrics, step=step)
            self._last_step = step

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._eval_step = state.global_step
        self._eval_metrics = {metric_name(k): x for k, v in (metrics or {}).items()
                              if k.startswith("eval_") and (x := number(v)) is not None}

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self._active and self.run is not None and self.run.should_stop and not control.should_training_stop:
            # SIGINT / SIGTERM: the Run only sets a flag; the Trainer saves a checkpoint and leaves after this step.
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if not self._active or self.run is None:
            return
        step = state.global_step
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        best = bool(state.best_model_checkpoint) and Path(state.best_model_checkpoint).name == folder.name
        metrics = self._eval_metrics if self._eval_step == step else None
        # What resumes the model is the Trainer's own checkpoint folder; the run's checkpoint records which one,
        # and the trackers' state at this step, so that the run continues from here exactly once per step.
        self.run.save_checkpoint({"global_step": step, "hf_checkpoint": folder.name,
                                  "hf_output_dir": str(args.output_dir)}, step=step, best=best, metrics=metrics)
        if self.upload_checkpoints and folder.is_dir():
            meta = {"step": step, "hf_checkpoint": folder.name}
            self.run.log_artifact(folder, "hf_checkpoint/last", meta)
            if best:
                self.run.log_artifact(folder, "hf_checkpoint/best", meta)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if not self._active or self.run is None:
            return
        step = state.global_step
        if not self.run.should_stop and control.should_training_stop and step < state.max_steps:
            if self._eval_step == step and args.metric_for_best_model:
                # EarlyStoppingCallback stops right after an evaluation that used up its patience.
                name = args.metric_for_best_model
                name = metric_name(name if name.startswith("eval_") else f"eval_{name}")
                best = "" if state.best_metric is None else f" on its best, {state.best_metric:.6g}"
                at = getattr(state, "best_global_step", None)
                self.run.stop("patience", f"Stopped at step {step} of {state.max_steps} by EarlyStoppingCallback: "
                                          f"{name} did not improve{best}" + (f" at step {at}" if at else "") + ".")
            else:
                self.run.stop("completed", f"Stopped at step {step} of {state.max_steps} by a callback "
                                           "(control.should_training_stop).")
        if not self._in_with:
            self._end(None)

    # -- helpers --------------------------------------------------------------------------------------------
    def _open(self, args: TrainingArguments, model: Any) -> Run:
        if self._active and self.run is not None:
            return self.run
        self._check_folders(args)
        config: dict[str, Any] = trackable(args.to_dict())
        model_config = getattr(model, "config", None)
        if hasattr(model_config, "to_dict"):
            config["model"] = trackable(model_config.to_dict())
        config.update(self._config)
        # Another process of a distributed Trainer makes the same calls, tracking nothing.
        run = Run(self.run_dir, config, **self._run_args, tracking_here=args.process_index == 0)
        run.start()
        self.run, self._active, self._last_step = run, True, -1
        return run

    def _end(self, exc: BaseException | None) -> None:
        if self._active and self.run is not None:
            self._active = False
            self.run.end(exc)

    def _check_folders(self, args: TrainingArguments) -> None:
        out, run = Path(args.output_dir or ".").resolve(), self.run_dir.resolve()
        if out == run or run in out.parents:
            raise UserError(f"the Trainer's output_dir {args.output_dir} is inside the run folder {self.run_dir}; "
                            "give them separate folders (e.g. output_dir='hf-checkpoints/exp1' and "
                            "run folder 'runs/exp1')")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
