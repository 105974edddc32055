"""What every benchmark script sets up: a scratch folder, quiet logs, a local MLflow server."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
