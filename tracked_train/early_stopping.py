"""When to stop, and why, decided in one place and testable without training.

Every decision is a :class:`Stop` with a reason code, a one-sentence detail a
human can read in a log or a tracker, and the step it happened at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class StopReason(str, Enum):
    """Why a run stopped; each reason carries the process exit code and the run status trackers record."""

    COMPLETED = "completed"
    PATIENCE = "patience"
    TARGET_REACHED = "target_reached"
    TIME_BUDGET = "time_budget"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"  # a sweep's pruner judged the run hopeless against the other trials
    FAILED = "failed"

    def __str__(self) -> str:  # "patience", not "StopReason.PATIENCE", in messages and tags
        return self.value

    @property
    def exit_code(self) -> int:
        return {StopReason.DIVERGED: 1, StopReason.FAILED: 1, StopReason.INTERRUPTED: 130}.get(self, 0)

    @property
    def status(self) -> str:
        """The run's end status in MLflow's words (W&B takes the exit code)."""
        return {StopReason.DIVERGED: "FAILED", StopReason.FAILED: "FAILED",
                StopReason.INTERRUPTED: "KILLED"}.get(self, "FINISHED")


@dataclass(frozen=True)
class Stop:
    reason: StopReason
    detail: str
    step: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", StopReason(self.reason))  # accept the plain string too

    @property
    def exit_code(self) -> int:
        return self.reason.exit_code


class EarlyStopping:
    """Patience on validation loss, a target loss, divergence and a time budget.

    - patience: stop after ``patience`` evaluations in a row without improving
      the best validation loss by more than ``min_delta``;
    - target: stop as soon as validation loss is at or below ``target_loss``;
    - divergence: a non-finite train loss, or an exponential moving average of
      the train loss above ``divergence_factor`` times its lowest value;
    - time budget: checked by the loop with :meth:`check_time`.
    """

    EMA_BETA = 0.9

    def __init__(self, patience: int | None = None, min_delta: float = 0.0,
                 target_loss: float | None = None, divergence_factor: float | None = 3.0):
        self.patience, self.min_delta = patience, min_delta
        self.target_loss, self.divergence_factor = target_loss, divergence_factor
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.ema: float | None = None
        self.best_ema = math.inf

    def on_train_loss(self, step: int, loss: float) -> Stop | None:
        if not math.isfinite(loss):
            return Stop(StopReason.DIVERGED, f"Training diverged at step {step}: the loss became {loss}.", step)
        self.ema = loss if self.ema is None else self.EMA_BETA * self.ema + (1 - self.EMA_BETA) * loss
        self.best_ema = min(self.best_ema, self.ema)
        if self.divergence_factor and self.ema > self.divergence_factor * self.best_ema:
            return Stop(StopReason.DIVERGED, f"Training diverged at step {step}: the smoothed loss {self.ema:.3f} is "
                        f"over {self.divergence_factor:g}x its best {self.best_ema:.3f}.", step)
        return None

    def on_eval(self, step: int, val_loss: float) -> tuple[bool, Stop | None]:
        """Record an evaluation; return (is it a new best?, stop decision)."""
        if not math.isfinite(val_loss):
            return False, Stop(StopReason.DIVERGED,
                               f"Training diverged at step {step}: validation loss is {val_loss}.", step)
        improved = val_loss < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.best_step = val_loss, step
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        if self.target_loss is not None and val_loss <= self.target_loss:
            return improved, Stop(StopReason.TARGET_REACHED, f"Reached the target validation loss {self.target_loss:g} "
                                  f"at step {step} (val loss {val_loss:.4f}).", step)
        if self.patience is not None and self.evals_without_improvement >= self.patience:
            return improved, Stop(StopReason.PATIENCE,
                                  f"Validation loss did not improve by more than {self.min_delta:g} for "
                                  f"{self.patience} evaluations; best {self.best_loss:.4f} at step {self.best_step}.",
                                  step)
        return improved, None

    @staticmethod
    def check_time(step: int, elapsed_s: float, budget_s: float | None) -> Stop | None:
        if budget_s is not None and elapsed_s >= budget_s:
            return Stop(StopReason.TIME_BUDGET, f"Stopped at step {step}: the time budget of {budget_s:g} s ran out "
                        f"({elapsed_s:.1f} s elapsed).", step)
        return None

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step,
                "evals_without_improvement": self.evals_without_improvement,
                "ema": self.ema, "best_ema": self.best_ema}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss = state["best_loss"]
        self.best_step = state["best_step"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.ema, self.best_ema = state["ema"], state["best_ema"]


def completed(step: int, max_steps: int) -> Stop:
    return Stop(StopReason.COMPLETED, f"Completed all {max_steps} steps.", step)


def verdict(initial_loss: float, final_loss: float) -> tuple[float, str]:
    """(decrease in %, "learning well" | "learning slowly" | "not learning")."""
    if not (math.isfinite(initial_loss) and math.isfinite(final_loss)) or initial_loss <= 0:
        return 0.0, "not learning"
    drop = 100.0 * (initial_loss - final_loss) / initial_loss
    if drop >= 20:
        return drop, "learning well"
    if drop >= 3:
        return drop, "learning slowly"
    return drop, "not learning"
