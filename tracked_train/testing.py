"""Helpers for tests and benchmarks: a real local MLflow server, polling with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # The job runner (huey workers) serves GenAI jobs a training tracker never uses: skip its processes.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

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

    def client(self):  # noqa: ANN201 - mlflow is imported lazily
        from mlflow import MlflowClient

        return MlflowClient(self.uri)


