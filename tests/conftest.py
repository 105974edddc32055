"""Shared helpers: the tiny model every end-to-end test trains, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shakespeare"

# A model small enough to step in a few ms on 2 CPU cores.
TINY = [
    "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=64",
    "tokenizer.vocab_size=384", "data.builtin_chars=120000", "training.batch_size=8",
    "training.warmup_steps=5", "training.eval_batches=4", "console.progress=lines",
    "tracking.trackers=jsonl",
]


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


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m tracked_train ARGS`` in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "tracked_train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def metric_lines(run_dir: Path, name: str = "train/loss") -> list[tuple[int, float]]:
    return [(r["step"], r[name]) for r in records(run_dir) if name in r]


def wait_until(predicate, what: str, deadline_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` at the deadline (or if ``proc`` exits)."""
    import threading
    import time

    tick = threading.Event()
    end = time.monotonic() + deadline_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        tick.wait(0.01)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (sqlite store, local artifacts) in its own process group."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import urllib.request

        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{self.uri}/health", timeout=1).status == 200
            except OSError:
                return False

        wait_until(healthy, "the MLflow server to answer /health", 120, self.proc)

    def stop(self) -> None:
        """Kill the whole process group (the server forks workers)."""
        import signal

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.uri)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()
