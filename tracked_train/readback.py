"""Steps trained but not yet read back: each step's loss and grad norm stay on the device until a read-back.

Reading a value from a GPU makes the CPU wait until the GPU has done everything queued, so the next step's
work cannot be queued meanwhile: one ``.item()`` per step costs a large share of a fast GPU's time on small
models. The loop adds each step's device values to a :class:`Window` and, every ``logging.every`` steps (and
wherever it must know them: an evaluation, a checkpoint, a stop, the end), :meth:`Window.take` reads them
all in one transfer; every step is then logged at its own step, as if it had been read at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from . import distributed


@dataclass
class Row:
    step: int
    host: dict[str, float]  # what the host knew at the step (lr, tokens seen)
    values: torch.Tensor  # [loss, *parts, grad norm], on the device
    parts: list[str]


@dataclass
class Window:
    rows: list[Row] = field(default_factory=list)
    t0: float = 0.0  # when the window's first step began

    def start_step(self) -> None:
        """Called as each step begins: the window's clock starts at its first step, so the evaluations and
        checkpoints between two windows are not counted in its tokens/s."""
        if not self.rows:
            self.t0 = time.perf_counter()

    def add(self, step: int, host: dict[str, float], values: torch.Tensor, parts: list[str]) -> None:
        self.rows.append(Row(step, host, values, parts))

    def take(self) -> tuple[list[tuple[int, dict[str, Any]]], float]:
        """(step, {"loss", "parts", "grad_norm", **host}) of every pending step, oldest first, and the seconds
        the window's steps took. Under torchrun the losses are averaged over the ranks (every rank reads back
        at the same steps, so this collective is always matched)."""
        if not self.rows:
            return [], 0.0
        flat = torch.cat([r.values for r in self.rows]).cpu().tolist()  # the one wait for the device
        seconds = time.perf_counter() - self.t0
        out, at = [], 0
        for r in self.rows:
            *losses, grad_norm = flat[at:at + len(r.values)]
            at += len(r.values)
            out.append((r.step, losses, grad_norm, r))
        dist = distributed.current()
        if dist.enabled:  # the gradient (so its norm) is already the same on every rank; the losses are not
            summed = distributed.all_reduce([v for _, losses, _, _ in out for v in losses])
            at = 0
            for _, losses, _, _ in out:
                losses[:] = [v / dist.world_size for v in summed[at:at + len(losses)]]
                at += len(losses)
        self.rows = []
        return [(step, {"loss": losses[0], "parts": dict(zip(r.parts, losses[1:])), "grad_norm": grad_norm,
                        **r.host}) for step, losses, grad_norm, r in out], max(seconds, 1e-9)
