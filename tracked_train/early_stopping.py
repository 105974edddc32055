"""When to stop, and why: every ending decided in one place, in one order, testable without training.

A run ends for one :class:`StopReason`. Each reason has a small condition
(:class:`Divergence`, :class:`Monitor`, :class:`Pruning`, :class:`TimeBudget`,
:class:`Interrupt`, :class:`Completion`) and :class:`Stopper` asks them in the
order of :func:`standard`, so when two hold at the same step the first one
names the stop. A condition sees what the loop logs (:meth:`Stopper.observe`:
any metric, train or validation) and the facts no metric holds
(:class:`Facts`: the clock, a signal, the step count).

Every decision is a :class:`Stop` with a reason code, a one-sentence detail a
human can read in a log or a tracker, and the step it happened at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Protocol


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


@dataclass(frozen=True)
class Facts:
    """What a step's end knows besides its metrics. Left at their defaults, only metrics decide."""

    step: int
    max_steps: int | None = None
    elapsed_s: float = 0.0
    out_of_time: bool = False  # this rank's clock or plan, or (under torchrun) another rank's: agreed by all
    planned_end: int | None = None  # a time budget's planned last step
    interrupted_by: str | None = None  # "SIGINT", "stop typed", ...; "" for a signal another rank received


class Condition(Protocol):
    """One way a run can end. ``observe`` sees every logged metric; ``check`` decides."""

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool) -> None: ...

    def check(self, facts: Facts) -> Stop | None: ...


class Divergence:
    """A non-finite train loss, or its moving average climbing ``factor`` times above its lowest."""

    key = "divergence"
    EMA_BETA = 0.9

    def __init__(self, factor: float | None = 3.0, metric: str = "train/loss"):
        self.factor, self.metric = factor, metric
        self.ema: float | None = None
        self.best_ema = math.inf
        self._stop: Stop | None = None

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool) -> None:
        if self.metric not in metrics or self._stop is not None:
            return
        loss = float(metrics[self.metric])
        if not math.isfinite(loss):
            self._stop = Stop(StopReason.DIVERGED, f"Training diverged at step {step}: the loss became {loss}.", step)
            return
        self.ema = loss if self.ema is None else self.EMA_BETA * self.ema + (1 - self.EMA_BETA) * loss
        self.best_ema = min(self.best_ema, self.ema)
        if self.factor and self.ema > self.factor * self.best_ema:
            self._stop = Stop(StopReason.DIVERGED, f"Training diverged at step {step}: the smoothed loss "
                              f"{self.ema:.3f} is over {self.factor:g}x its best {self.best_ema:.3f}.", step)

    def check(self, facts: Facts) -> Stop | None:
        return self._stop

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "best_ema": self.best_ema}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema, self.best_ema = state["ema"], state["best_ema"]


class Monitor:
    """Patience and a target on any logged metric, lower or higher being better (Lightning's EarlyStopping).

    - improvement: better than the best by more than ``min_delta``; it marks a new best checkpoint;
    - patience: ``patience`` observations in a row without improvement (evaluations, for a ``val/`` metric);
    - target: the metric at or beyond ``target`` (at or below for ``min``, at or above for ``max``);
    - a non-finite value of the monitored metric: diverged.
    """

    key = "monitor"

    def __init__(self, metric: str = "val/loss", mode: Literal["min", "max"] = "min", patience: int | None = None,
                 min_delta: float = 0.0, target: float | None = None):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.metric, self.mode, self.patience, self.min_delta, self.target = metric, mode, patience, min_delta, target
        self.best = math.inf if mode == "min" else -math.inf
        self.best_step: int | None = None
        self.bad_observations = 0
        self.improved = False  # whether the last observation was a new best
        self.last: float | None = None
        self._stop: Stop | None = None

    @property
    def has_best(self) -> bool:
        return self.best_step is not None

    def better(self, a: float, b: float) -> bool:
        """``a`` improves on ``b`` by more than ``min_delta``."""
        return a < b - self.min_delta if self.mode == "min" else a > b + self.min_delta

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool) -> None:
        if self.metric not in metrics or self._stop is not None:
            return
        value = float(metrics[self.metric])
        self.last = value
        if not math.isfinite(value):
            self.improved = False
            self._stop = Stop(StopReason.DIVERGED, f"Training diverged at step {step}: {self.metric} is {value}.",
                              step)
            return
        self.improved = self.better(value, self.best)
        if self.improved:
            self.best, self.best_step, self.bad_observations = value, step, 0
        else:
            self.bad_observations += 1
        word = "below" if self.mode == "min" else "above"
        if self.target is not None and (value <= self.target if self.mode == "min" else value >= self.target):
            self._stop = Stop(StopReason.TARGET_REACHED, f"Reached the target {self.metric} {self.target:g} at step "
                              f"{step} ({self.metric} {value:.4f}, at or {word} it).", step)
        elif self.patience is not None and self.bad_observations >= self.patience:
            what = "evaluations" if self.metric.startswith("val/") else "observations"
            self._stop = Stop(StopReason.PATIENCE, f"{self.metric} did not improve by more than {self.min_delta:g} "
                              f"for {self.patience} {what} ({self.mode}); best {self.best:.4f} at step "
                              f"{self.best_step}.", step)

    def check(self, facts: Facts) -> Stop | None:
        return self._stop

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "best": self.best, "best_step": self.best_step,
                "bad_observations": self.bad_observations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "best_loss" in state:  # checkpoints before the monitor was configurable: val/loss, min
            state = {"metric": "val/loss", "mode": "min", "best": state["best_loss"], "best_step": state["best_step"],
                     "bad_observations": state["evals_without_improvement"]}
        if (state["metric"], state["mode"]) != (self.metric, self.mode):
            return  # a resume that monitors another metric starts its record afresh
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad_observations = state["bad_observations"]


# After each evaluation: (step, validation metrics) -> a Stop that ends the run (a sweep's pruner), or None.
Judge = Callable[[int, dict[str, float]], "Stop | None"]


class Pruning:
    """A sweep's pruner, asked after every evaluation."""

    key = "pruning"

    def __init__(self, judge: Judge):
        self.judge = judge
        self._stop: Stop | None = None

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool) -> None:
        if evaluation and self._stop is None:
            self._stop = self.judge(step, dict(metrics))

    def check(self, facts: Facts) -> Stop | None:
        return self._stop


class TimeBudget:
    """The budget's seconds are used up, or the budget's planned steps are done (:mod:`tracked_train.schedule`)."""

    key = "time_budget"

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool) -> None:
        pass

    def due(self, step: int, elapsed_s: float, planned_end: int | None, max_steps: int) -> bool:
        """This rank's own view, before the ranks agree (:class:`Facts` ``out_of_time``)."""
        if self.budget_s is None:
            return False
        return elapsed_s >= self.budget_s or (planned_end is not None and planned_end <= step < max_steps)

    def check(self, facts: Facts) -> Stop | None:
        if self.budget_s is None or not facts.out_of_time:
            return None
        if facts.elapsed_s < self.budget_s and facts.planned_end is not None and facts.planned_end <= facts.step:
            return Stop(StopReason.TIME_BUDGET, f"Used the time budget of {self.budget_s:g} s: {facts.step} steps, "
                        f"as planned from the measured speed ({facts.elapsed_s:.1f} s).", facts.step)
        elapsed = max(facts.elapsed_s, self.budget_s)  # another rank's clock ran out: its budget is the figure
        return Stop(StopReason.TIME_BUDGET, f"Stopped at step {facts.step}: the time budget of {self.budget_s:g} s "
                    f"ran out ({elapsed:.1f} s elapsed).", facts.step)


class Interrupt:
    """Ctrl-C, SIGTERM, or ``stop`` typed at the terminal: the run saves ``last`` and can be resumed."""

    key = "interrupt"

    def __init__(self, run_dir: Any = "RUN_DIR"):
        self.run_dir = run_dir

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool) -> None:
        pass

    def check(self, facts: Facts) -> Stop | None:
        if facts.interrupted_by is None:
            return None
        return Stop(StopReason.INTERRUPTED, f"Interrupted by {facts.interrupted_by or 'a signal'} at step "
                    f"{facts.step}; resume with `tracked-train resume {self.run_dir}`.", facts.step)


class Completion:
    """All ``max_steps`` steps are done."""

    key = "completion"

    def __init__(self, max_steps: int):
        self.max_steps = max_steps

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool) -> None:
        pass

    def check(self, facts: Facts) -> Stop | None:
        if facts.max_steps is None or facts.step < self.max_steps:
            return None
        return completed(facts.step, self.max_steps)


class Stopper:
    """The conditions in their order of precedence; the first that holds names the stop."""

    def __init__(self, conditions: list[Condition]):
        self.conditions = conditions

    def observe(self, step: int, metrics: Mapping[str, float], evaluation: bool = False) -> None:
        for c in self.conditions:
            c.observe(step, metrics, evaluation)

    def decide(self, facts: Facts) -> Stop | None:
        stop = next((s for c in self.conditions if (s := c.check(facts)) is not None), None)
        if stop is not None and stop.step < facts.step:
            # Values read back from the device some steps late (`logging.every`): the run stops at the step
            # that learnt it, and the detail keeps the step it happened at.
            stop = Stop(stop.reason, f"{stop.detail.rstrip('.')} (read back at step {facts.step}).", facts.step)
        return stop

    def find(self, kind: type) -> Any:
        return next((c for c in self.conditions if isinstance(c, kind)), None)

    @property
    def monitor(self) -> Monitor:
        return self.find(Monitor)

    def state_dict(self) -> dict[str, Any]:
        return {c.key: c.state_dict() for c in self.conditions if hasattr(c, "state_dict")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "best_loss" in state:  # one flat dict, as checkpoints before the conditions were separate hold it
            state = {"monitor": state, "divergence": {"ema": state["ema"], "best_ema": state["best_ema"]}}
        for c in self.conditions:
            if hasattr(c, "load_state_dict") and c.key in state:
                c.load_state_dict(state[c.key])


def standard(*, monitor: str, mode: Literal["min", "max"], patience: int | None = None, min_delta: float = 0.0,
             target: float | None = None, divergence_factor: float | None = 3.0, time_budget_s: float | None = None,
             max_steps: int, judge: Judge | None = None, run_dir: Any = "RUN_DIR") -> Stopper:
    """Every way a run ends, first to last: diverged, target reached, patience, pruned, time budget,
    interrupted, completed."""
    conditions: list[Condition] = [Divergence(divergence_factor),
                                   Monitor(monitor, mode, patience, min_delta, target)]
    if judge is not None:
        conditions.append(Pruning(judge))
    conditions += [TimeBudget(time_budget_s), Interrupt(run_dir), Completion(max_steps)]
    return Stopper(conditions)


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
