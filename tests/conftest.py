"""Shared helpers: the tiny model every end-to-end test trains, a CLI runner, a real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracked_train.testing import MlflowServer, free_port, wait_until  # noqa: F401 - re-exported to tests

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shakespeare"

# A model small enough to step in a few ms on 2 CPU cores.
TINY = [
    "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=64",
    "tokenizer.vocab_size=384", "data.builtin_chars=120000", "training.batch_size=8",
    "training.warmup_steps=5", "training.eval_batches=4", "console.progress=lines",
    "tracking.trackers=jsonl", "training.precision=fp32",  # bf16 autocast costs more than it saves this small
]


# For training processes started side by side: one thread each. Two processes with two OpenMP threads each on
# two cores step several times slower than one thread each (threads spin waiting for a descheduled peer).
# Runs whose losses or weights are compared bit for bit all get it: the thread count can change the last bits.
SIDE_BY_SIDE = {"OMP_NUM_THREADS": "1"}


def sets(*pairs: str) -> list[str]:
    out = []
    for p in (*TINY, *pairs):
        out += ["--set", p]
    return out


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """One tokenizer/token cache for the whole session (tokenizers train once)."""
    os.environ["TRACKED_TRAIN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)  # it names the experiment of every run the tests start


@pytest.fixture(autouse=True)
def _package_logger_as_found():
    """In-process CLI calls (click's CliRunner) set the package's logger up for a terminal; caplog in the
    tests after them needs it as it was."""
    import logging

    log = logging.getLogger("tracked_train")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    yield
    log.handlers[:] = handlers
    log.propagate, log.level = propagate, level


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m tracked_train ARGS`` in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "tracked_train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def metric_lines(run_dir: Path, name: str = "train/loss") -> list[tuple[int, float]]:
    return [(r["step"], r[name]) for r in records(run_dir) if name in r]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()
