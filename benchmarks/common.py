"""What every benchmark script sets up: a scratch folder, quiet logs, a local MLflow server."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Regime:
    about: str
    overrides: dict = field(default_factory=dict)
    torch_threads: int | None = None  # None: torch's default (every core)

    def config(self) -> dict:
        return {**COMMON, **self.overrides}


# No evaluation or checkpoint inside the timed window; the run still ends with both.
COMMON = {"training.eval_every": 10**9, "training.checkpoint_every": 10**9, "training.warmup_steps": 5,
          "console.progress": "lines", "data.builtin_chars": 1_000_000, "training.eval_batches": 2}
TINY = {"training.max_steps": 600, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4,
        "model.seq_len": 64, "training.batch_size": 8, "tokenizer.vocab_size": 512}
REGIMES = {
    "default": Regime("the default 3.4 M-parameter model, ~0.2 s a step", {"training.max_steps": 60}),
    "tiny": Regime("d_model 64, 2 layers, seq 64, batch 8: ~11 ms a step, torch on both cores", TINY),
    # A GPU machine's CPU mostly waits on the GPU: torch on one core leaves the other to the rest,
    # as a GPU box's spare cores would.
    "tiny-1core": Regime("the tiny model with torch on 1 thread, the second core spare", TINY, torch_threads=1),
}


def steady_rate(step_times: list[float]) -> float:
    """Steps per second from the end times of consecutive steps, over steps 10 %..100 %.

    Start-up (imports, first-step allocations) stays out of the window.
    """
    first = len(step_times) // 10
    return (len(step_times) - 1 - first) / (step_times[-1] - step_times[first])


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def bench_env(prefix: str, server: bool = True) -> Iterator[tuple[Path, str | None]]:
    """Yields (scratch folder, MLflow server URI or None); stops the server however the block ends."""
    from tracked_train.console import setup_logging
    from tracked_train.testing import MlflowServer

    setup_logging(None)
    logging.getLogger("tracked_train").setLevel(logging.WARNING)  # progress lines would only add noise
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.setdefault("TRACKED_TRAIN_CACHE", str(work / "cache"))
    os.environ.setdefault("WANDB_MODE", "offline")  # no W&B server here; offline still runs its service process
    mlflow = None
    if server:
        (work / "server").mkdir()
        mlflow = MlflowServer(work / "server")
        mlflow.start()
    try:
        yield work, mlflow and mlflow.uri
    finally:
        if mlflow:
            mlflow.stop()
