"""The pruner's side of a trial: each evaluation reported to Optuna, the run stopped when it says so."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from .. import distributed
from ..early_stopping import Stop, StopReason
from ..errors import describe
from ..task import monitor_of

if TYPE_CHECKING:
    from .plan import Worker

log = logging.getLogger("tracked_train")


class Judge:
    """Reports each evaluation's monitored metric to the trial and stops the run when the pruner says so.

    The metric and its direction are the run's (early_stopping.monitor / mode, else the task's own).
    Under torchrun only rank 0 talks to Optuna; every rank calls the judge after
    the same evaluation and gets rank 0's decision.
    """

    def __init__(self, w: Worker | None = None, trial: Any = None):
        self.w, self.trial = w, trial
        self.metric, self.mode = monitor_of(w.plan.base) if w is not None else ("val/loss", "min")
        self.best = math.inf if self.mode == "min" else -math.inf
        self.pruned: str | None = None

    def __call__(self, step: int, val: dict[str, float]) -> Stop | None:
        detail = None
        if self.w is not None and self.metric in val:
            detail = self._judge(step, val[self.metric])
        detail = distributed.broadcast(detail)
        if detail is None:
            return None
        self.pruned = detail
        return Stop(StopReason.PRUNED, detail, step)

    def replay(self, step: int, value: float) -> None:
        """An evaluation from before a resume: reported to the trial, never a reason to prune it now."""
        if math.isfinite(value):
            self.best = min(self.best, value) if self.mode == "min" else max(self.best, value)
        try:
            self.trial.report(value, step)
        except Exception as e:  # noqa: BLE001 - as in _judge: the database may be busy
            log.warning("sweep: could not report step %d to the study (%s)", step, describe(e))

    def _judge(self, step: int, loss: float) -> str | None:
        from .study import pruned_detail

        if math.isfinite(loss):
            self.best = min(self.best, loss) if self.mode == "min" else max(self.best, loss)
        try:
            self.trial.report(loss, step)
            # The last evaluation is the run's end anyway: a verdict there would only relabel a finished trial.
            if step >= self.w.plan.base.training.max_steps or not self.trial.should_prune():
                return None
            return pruned_detail(self.w.optuna, self.w.study, self.w.plan.o.pruner, step, loss, self.metric)
        except Exception as e:  # noqa: BLE001 - a busy database must not cost the trial: judged at the next eval
            log.warning("sweep: could not report step %d to the study (%s)", step, describe(e))
            return None
