"""Where a checkpoint comes from: a run folder, a checkpoint folder, or a tracking server.

References users can pass to `resume`, `generate` and `run --init-from`:

    runs/my-run                  a run folder (local)
    runs/my-run/checkpoints/best a checkpoint folder
    mlflow:RUN_ID | runs:/RUN_ID an MLflow run (MLFLOW_TRACKING_URI / tracking.mlflow_uri)

A checkpoint fetched from a server is untrusted: every artifact path must stay
inside the download folder, the files must match the manifest, and loading is
weights-only (see :mod:`tracked_train.checkpoint`).
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from .errors import CheckpointError, UserError

log = logging.getLogger("tracked_train")


@dataclass(frozen=True)
class Ref:
    kind: str  # "local" | "mlflow"
    value: str  # a path, or a run id


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


def mlflow_client(uri: str | None):
    """A client for ``uri`` (else MLFLOW_TRACKING_URI, else the embedded default), or exit 2."""
    import os

    from .trackers.mlflow_tracker import _check_reachable, tracking_uri

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(uri)
    try:
        _check_reachable(uri)
    except ConnectionError as e:
        from .redact import strip_userinfo

        raise UserError(f"MLflow tracking server {strip_userinfo(uri)} is not reachable ({e}); "
                        "set MLFLOW_TRACKING_URI to the server that holds the run") from None
    from mlflow import MlflowClient

    return MlflowClient(uri), uri


def get_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise UserError(f"MLflow run {run_id} not found at {client.tracking_uri}; check the id and "
                        "MLFLOW_TRACKING_URI") from None


def _safe_join(root: Path, artifact_path: str, prefix: str) -> Path:
    """``root/artifact_path`` relative to ``prefix``, refusing anything that would escape ``root``."""
    norm = posixpath.normpath(artifact_path)
    if (artifact_path.startswith("/") or "\\" in artifact_path or norm.startswith("..")
            or not norm.startswith(prefix.rstrip("/") + "/")):
        raise CheckpointError(f"artifact path {artifact_path!r} escapes {prefix!r}; refused")
    rel = norm[len(prefix.rstrip("/")) + 1:]
    if not rel or rel.startswith(("/", "..")) or "/" in rel:
        raise CheckpointError(f"artifact path {artifact_path!r} is not a file of {prefix!r}; refused")
    target = (root / rel).resolve()
    if root.resolve() not in target.parents:
        raise CheckpointError(f"artifact path {artifact_path!r} escapes the download folder; refused")
    return target


def download_checkpoint(client, run_id: str, which: str, dest: Path) -> Path:
    """Download ``checkpoints/<which>`` of an MLflow run into ``dest`` and verify it."""
    prefix = f"checkpoints/{which}"
    entries = client.list_artifacts(run_id, prefix)
    if not entries:
        raise CheckpointError(f"MLflow run {run_id} has no {prefix} artifact; nothing to resume from")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.is_dir:
            raise CheckpointError(f"unexpected folder {entry.path!r} in {prefix}; refused")
        target = _safe_join(dest, entry.path, prefix)
        local = client.download_artifacts(run_id, entry.path, tempfile.mkdtemp(dir=dest.parent))
        Path(local).replace(target)
    checkpoint.verify(dest)
    return dest


def fetch(ref: str, which: str = "last", mlflow_uri: str | None = None,
          workdir: Path | None = None) -> tuple[Path, dict]:
    """A verified local checkpoint folder for ``ref`` plus where it came from.

    ``which`` is ``last`` or ``best``; for a server, a damaged ``last`` (an
    upload cut by a kill) falls back to ``best``.
    """
    r = parse(ref)
    if r.kind == "local":
        path = Path(r.value)
        if (path / "checkpoints").is_dir():
            return path / "checkpoints" / which, {"kind": "local", "run_dir": path}
        if (path / checkpoint.MANIFEST).is_file() or (path.parent / checkpoint.MANIFEST).is_file():
            return (path if path.is_dir() else path.parent), {"kind": "local", "run_dir": None}
        raise UserError(f"no run folder or checkpoint at {ref}; pass a run folder, a checkpoint folder, "
                        "mlflow:RUN_ID or runs:/RUN_ID")
    client, uri = mlflow_client(mlflow_uri)
    run = get_run(client, r.value)
    root = Path(tempfile.mkdtemp(prefix="tracked-train-", dir=workdir))
    origin = {"kind": "mlflow", "run_id": r.value, "uri": uri, "run": run, "client": client}
    try:
        return download_checkpoint(client, r.value, which, root / which), origin
    except CheckpointError as e:
        if which != "last":
            raise
        log.warning("checkpoints/last on the server is unusable (%s); trying checkpoints/best", e)
        return download_checkpoint(client, r.value, "best", root / "best"), origin
