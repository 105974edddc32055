"""The learning-rate schedule: linear warmup, then cosine or warmup-stable-decay, over steps or a time budget.

After ``warmup_steps`` the schedule is a function of *progress*, 0 to 1. A
:class:`Plan` says how progress advances with the step: it is ``anchor_progress``
at ``anchor_step`` and reaches 1 at ``end_step``, linearly.

Without a time budget there is one plan: progress 0 at the end of warmup, 1 at
``max_steps`` (the classic step schedule). With ``training.time_budget_s`` nobody
knows in advance how many steps fit, and a schedule laid over ``max_steps`` would
stop with the learning rate still near its peak. So the loop plans: from the
measured seconds per step (evaluations and checkpoints included) it sets
``end_step`` where the budget runs out, and re-plans as it goes (:func:`replan`).
A re-plan keeps the progress already made and changes only how fast the rest is
covered, so the learning rate never jumps. The plan is loop state, saved in every
checkpoint: a resumed run continues the very plan its checkpoint holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainingConfig

# Plan from the budget once this fraction of it is spent (the first steps' speed is not yet typical) ...
FIRST_PLAN_AT = 0.02
# ... and re-plan at each evaluation, and at least every this fraction of the budget.
REPLAN_EVERY = 0.05


@dataclass
class Plan:
    anchor_step: int
    anchor_progress: float
    end_step: int
    made_at_s: float = 0.0  # training seconds when this plan was made

    def progress(self, step: int) -> float:
        if step <= self.anchor_step:
            return self.anchor_progress
        span = max(1, self.end_step - self.anchor_step)
        return min(1.0, self.anchor_progress + (step - self.anchor_step) * (1.0 - self.anchor_progress) / span)


def step_plan(t: TrainingConfig) -> Plan:
    """The plan without a time budget: progress 0 when warmup ends, 1 at ``max_steps``."""
    return Plan(t.warmup_steps, 0.0, t.max_steps)


def lr_at(step: int, t: TrainingConfig, plan: Plan | None = None) -> float:
    """Linear warmup over ``warmup_steps``, then cosine, or constant and a linear decay over the last
    ``decay_frac`` of the run (``wsd``), down to
    ``final_lr`` (min_lr, else lr * min_lr_ratio) when the plan's progress reaches 1."""
    if step <= t.warmup_steps:
        return t.lr * step / t.warmup_steps
    p = (plan or step_plan(t)).progress(step)
    if t.schedule == "wsd":
        return t.lr if p <= 1.0 - t.decay_frac else t.final_lr + (t.lr - t.final_lr) * (1.0 - p) / t.decay_frac
    return t.final_lr + 0.5 * (t.lr - t.final_lr) * (1.0 + math.cos(math.pi * p))


def due(plan: Plan | None, step: int, elapsed_s: float, budget_s: float, evaluated: bool) -> bool:
    """Whether a budgeted run should (re-)plan after ``step``."""
    if plan is None:
        return step >= 3 and elapsed_s >= FIRST_PLAN_AT * budget_s
    return evaluated or elapsed_s - plan.made_at_s >= REPLAN_EVERY * budget_s


def replan(plan: Plan | None, step: int, elapsed_s: float, s_per_step: float, budget_s: float,
           reserve_s: float, t: TrainingConfig) -> Plan:
    """The plan that ends where the budget does, at the current pace.

    ``reserve_s`` is kept for what follows the last step (a final evaluation and
    checkpoint). Progress at ``step`` is kept, so the learning rate is continuous.
    """
    left = max(0.0, budget_s - elapsed_s - reserve_s)
    end = min(t.max_steps, step + max(1, int(left / max(s_per_step, 1e-9))))
    if step < t.warmup_steps:
        return Plan(t.warmup_steps, 0.0, max(end, t.warmup_steps + 1), elapsed_s)
    current = (plan or step_plan(t)).progress(step)
    return Plan(step, current, end, elapsed_s)
