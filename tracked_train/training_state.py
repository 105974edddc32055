"""What a checkpoint carries about the loop besides the tensors: progress, and every random generator's state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import schedule


@dataclass
class LoopState:
    """Everything about progress that a checkpoint must carry besides the tensors."""

    step: int = 0
    tokens_seen: int = 0
    data_position: int = 0  # training sequences consumed: where the data order resumes
    elapsed_s: float = 0.0  # training time across resumes, for the time budget
    first_losses: list[float] = field(default_factory=list)
    recent_losses: list[float] = field(default_factory=list)
    last_eval_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)  # the evaluation that made checkpoints/best
    plan: schedule.Plan | None = None  # a time budget's step plan (None: the schedule runs over max_steps)
    pace_from: tuple[int, float] | None = None  # (step, elapsed_s) after the first step: speed is measured from here

    def __post_init__(self) -> None:
        if isinstance(self.plan, dict):  # as asdict() saved it in a checkpoint
            self.plan = schedule.Plan(**self.plan)

    def record_loss(self, loss: float) -> None:
        if len(self.first_losses) < 5:
            self.first_losses.append(loss)
        self.recent_losses = (self.recent_losses + [loss])[-10:]


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
