"""The tiny tasks the tests run in their own process: a run takes a fraction of a second.

Loaded the way a user's task is, by its file (``task: tests/tiny_task.py:TinyTask``; conftest.task_spec writes
the spec), so keep its imports to what a task file may use: no test helpers, nothing from conftest.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import tracked_train
from tracked_train.data import DatasetInfo

W_TRUE = torch.tensor([1.0, -2.0, 0.5, 1.5])


def features(seed: int, first: int, count: int) -> torch.Tensor:
    """Examples [first, first + count) of the seed's stream, 4 features in [-1, 1): each a pure function of
    (seed, index) (splitmix64), so any batch can be recomputed on resume."""
    idx = np.arange(first, first + count, dtype=np.uint64)[:, None] * np.uint64(4) + np.arange(4, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = idx + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / 2**53 * 2 - 1).float()


@dataclass(frozen=True)
class TinySettings:
    hidden: int = field(default=8, metadata={"lo": 1, "hi": 64})
    b_weight: float = field(default=0.5, metadata={"lo": 0.0, "hi": 10.0})
    valid_examples: int = field(default=256, metadata={"lo": 1, "hi": 100_000})


class TinyTask(tracked_train.Task):
    """Is 4 features' weighted sum positive? A two-layer MLP with two heads: the class (loss ``a``, cross-entropy)
    and the sum itself (loss ``b``, squared error)."""

    Settings = TinySettings

    def __init__(self, cfg, settings: TinySettings):
        super().__init__(cfg, settings)
        self.valid = self.examples(features(cfg.training.seed + 1_000_003, 0, settings.valid_examples))

    @staticmethod
    def examples(x: torch.Tensor) -> dict[str, torch.Tensor]:
        score = x @ W_TRUE
        return {"x": x, "label": (score > 0).long(), "score": score}

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Linear(4, self.settings.hidden), torch.nn.Tanh(),
                                   torch.nn.Linear(self.settings.hidden, 3))

    def batch(self, position, size):
        # A test's way to stop a run mid-way: TINY_TASK_STOP_AT="sigint:POSITION" (a Ctrl-C) or "raise:POSITION"
        # (a second Ctrl-C: stopped at once, like a kill, with steps logged after the last checkpoint), or to
        # poison it: "nan:POSITION" (that batch's features are NaN, so its loss is).
        how, _, at = os.environ.get("TINY_TASK_STOP_AT", "").partition(":")
        x = features(self.cfg.training.seed, position, size)
        if at and position == int(at):
            if how == "sigint":
                signal.raise_signal(signal.SIGINT)
            elif how == "nan":
                x = torch.full_like(x, float("nan"))
            else:
                raise KeyboardInterrupt
        return self.examples(x)

    def losses(self, model, b):
        out = model(b["x"])
        return F.cross_entropy(out[:, :2], b["label"]), F.mse_loss(out[:, 2], b["score"]), out

    def loss(self, model, batch):
        a, b, _ = self.losses(model, batch)
        return tracked_train.Loss(a + self.settings.b_weight * b, {"a": a, "b": b})

    def evaluate(self, model):
        a, b, out = self.losses(model, self.valid)
        accuracy = (out[:, :2].argmax(-1) == self.valid["label"]).float().mean()
        return {"loss": float(a + self.settings.b_weight * b), "accuracy": float(accuracy)}


class AccuracyTask(TinyTask):
    """The same, following its accuracy (higher is better) unless the config says otherwise."""

    monitor, mode = "val/accuracy", "max"


@dataclass(frozen=True)
class OddSettings:
    at_least: int = field(default=1, metadata={"lo": 1})  # a bound on one side only
    sizes: tuple[int, ...] = (8, 16)


class OddTask(TinyTask):
    """Settings of other shapes: a range bounded on one side only, a tuple of integers."""

    Settings = OddSettings


class FragileTask(TinyTask):
    """Fails in setup (build_model) for hidden=3: a trial config no validation can know is bad."""

    def build_model(self):
        if self.settings.hidden == 3:
            raise RuntimeError("hidden=3 is not buildable")
        return super().build_model()


class SplitTask(TinyTask):
    """The tiny task, with a validation split for MLflow to link the checkpoints' metrics to."""

    def datasets(self):
        return (DatasetInfo("validation", "tiny-valid", "code", "features(seed + 1000003)", "ab" * 32, 256, 0),)
