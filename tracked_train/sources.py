"""Where a checkpoint comes from: a run folder, a checkpoint folder, or a tracking server.

References users can pass to `resume`, `generate` and `run --init-from`:

    runs/my-run                  a run folder (local)
    runs/my-run/checkpoints/best a checkpoint folder
    mlflow:RUN_ID | runs:/RUN_ID an MLflow run (MLFLOW_TRACKING_URI / tracking.mlflow.uri)

A checkpoint fetched from a server is untrusted (see :mod:`tracked_train.mlflow.store`);
its download lives in a temporary folder that :func:`fetched` removes on every exit path.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint
from .errors import CheckpointError, NoCheckpoint, UserError
from .run_folder import is_run_folder

log = logging.getLogger("tracked_train")


@dataclass(frozen=True)
class Ref:
    kind: str  # "local" | "mlflow"
    value: str  # a path, or a run id


@dataclass(frozen=True)
class Origin:
    """Where a fetched checkpoint came from: a local folder, or a tracked run on a tracker's server (whose name,
    status and stop tags are untrusted text from that server)."""

    run_dir: Path | None = None  # the run folder; None for a bare checkpoint folder or a server's run
    tracker: str | None = None  # the tracker whose server holds the run (mlflow); None when local
    run_id: str | None = None
    uri: str | None = None  # that server, as the tracker's `uri` setting names it
    name: str | None = None
    status: str | None = None  # FINISHED, FAILED, KILLED, RUNNING
    stop_reason: str | None = None
    stop_step: str | None = None


def parse(ref: str) -> Ref:
    if ref.startswith("mlflow:"):
        return Ref("mlflow", _run_id(ref[len("mlflow:"):], ref))
    if ref.startswith("runs:/"):
        return Ref("mlflow", _run_id(ref[len("runs:/"):].split("/")[0], ref))
    if ref.startswith("wandb:"):
        raise UserError(f"{ref}: resuming from W&B needs its artifact API online, which this build does not "
                        "support yet; resume from the run folder or from MLflow")
    return Ref("local", ref)


def _run_id(value: str, ref: str) -> str:
    if not value or not value.replace("-", "").isalnum():
        raise UserError(f"{ref!r} is not an MLflow run reference; write mlflow:RUN_ID or runs:/RUN_ID")
    return value


@contextlib.contextmanager
def fetched(ref: str, which: str = "last", mlflow_uri: str | None = None) -> Iterator[tuple[Path, Origin]]:
    """A verified local checkpoint folder for ``ref`` plus where it came from; downloads removed after.

    ``which`` is ``last`` or ``best``; for a server, a damaged ``last`` (an
    upload cut by a kill) falls back to ``best``.
    """
    r = parse(ref)
    if r.kind == "local":
        yield _local(r.value, which)
        return
    from .mlflow.store import download_checkpoint, get_run, open_client

    client, uri = open_client(mlflow_uri)
    run = get_run(client, r.value)
    root = Path(tempfile.mkdtemp(prefix="tracked-train-"))
    tags = run.data.tags
    origin = Origin(tracker="mlflow", run_id=r.value, uri=uri, name=run.info.run_name, status=run.info.status,
                    stop_reason=tags.get("stop_reason"), stop_step=tags.get("stop_step"))
    try:
        try:
            folder = download_checkpoint(client, r.value, which, root / which)
        except CheckpointError as e:
            if which != "last":
                raise
            log.warning("checkpoints/last on the server is unusable (%s); trying checkpoints/best", e)
            folder = download_checkpoint(client, r.value, "best", root / "best")
        yield folder, origin
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _local(value: str, which: str) -> tuple[Path, Origin]:
    path = Path(value)
    if is_run_folder(path):
        return checkpoint.find(path / "checkpoints", which), Origin(run_dir=path)
    if (path / checkpoint.MANIFEST).is_file() or (path.parent / checkpoint.MANIFEST).is_file():
        return (path if path.is_dir() else path.parent), Origin()
    raise UserError(f"no run folder or checkpoint at {value}; pass a run folder, a checkpoint folder, "
                    "mlflow:RUN_ID or runs:/RUN_ID")


def init_weights(source: str, mlflow_uri: str | None) -> dict[str, Any]:
    """The checkpoint state behind ``run --init-from`` and ``generate``: best if there is one, else last."""
    problems = []
    for which in ("best", "last"):
        try:
            with fetched(source, which, mlflow_uri) as (folder, _):
                return checkpoint.load(folder)
        except CheckpointError as e:
            problems.append(str(e))
            if which == "best" and not isinstance(e, NoCheckpoint):
                log.warning("best checkpoint unusable (%s); using last", e)
    raise UserError(problems[-1])


def load_model(source: str | Path) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from ``source``'s best checkpoint (else last), verified, weights-only.

    For a task other than the language model, the second value is the task (with its settings and state).
    """
    model, task = checkpoint.restore_task(init_weights(str(source), None), str(source))
    return model, task.tokenizer if task.cfg.task == "lm" else task
