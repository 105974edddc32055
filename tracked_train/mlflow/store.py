"""Reading runs and checkpoints back from an MLflow store (``resume``, ``generate``, ``runs``, ``compare``).

A checkpoint fetched from a server is untrusted: every artifact path must stay
inside the download folder and the files must match the manifest (loading is
weights-only, see :mod:`tracked_train.checkpoint`). An embedded store that
does not exist is no store: opening ``sqlite:///mlflow.db`` would create it.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, NoCheckpoint, UserError
from ..redact import strip_userinfo
from .client import check_reachable, connect, is_transient, tracking_uri

RUN_ID = re.compile(r"[0-9a-f]{32}")


def open_client(uri: str | None) -> tuple[Any, str]:
    """(client, uri) for ``uri`` (else MLFLOW_TRACKING_URI, else the embedded default), or exit 2."""
    uri = tracking_uri(uri)
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise UserError(f"there is no MLflow store at {strip_userinfo(uri)} (no such file); set "
                        "MLFLOW_TRACKING_URI to the server or store that holds the run")
    try:
        check_reachable(uri)
    except ConnectionError as e:
        raise UserError(f"MLflow tracking server {strip_userinfo(uri)} is not reachable ({e}); "
                        "set MLFLOW_TRACKING_URI to the server that holds the run") from None
    return connect(uri), uri


def get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if is_transient(e):
            raise UserError(f"MLflow at {strip_userinfo(client.tracking_uri)} failed to answer for run {run_id}; "
                            "try again when it is up") from None
        raise UserError(f"MLflow run {run_id} not found at {strip_userinfo(client.tracking_uri)}; check the id and "
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


def download_checkpoint(client: Any, run_id: str, which: str, dest: Path) -> Path:
    """Download ``checkpoints/<which>`` of an MLflow run into ``dest`` and verify it."""
    try:
        return _download(client, run_id, which, dest)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the server or its artifact store failed mid-download
        from ..errors import describe

        raise UserError(f"downloading checkpoints/{which} of MLflow run {run_id} from "
                        f"{strip_userinfo(client.tracking_uri)} failed ({describe(e)}); try again") from None


def _download(client: Any, run_id: str, which: str, dest: Path) -> Path:
    from .. import checkpoint

    prefix = f"checkpoints/{which}"
    entries = client.list_artifacts(run_id, prefix)
    if not entries:
        raise NoCheckpoint(f"MLflow run {run_id} has no {prefix} artifact; nothing to resume from")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.is_dir:
            raise CheckpointError(f"unexpected folder {entry.path!r} in {prefix}; refused")
        target = _safe_join(dest, entry.path, prefix)
        scratch = tempfile.mkdtemp(dir=dest.parent)
        try:
            local = client.download_artifacts(run_id, entry.path, scratch)
            Path(local).replace(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    checkpoint.verify(dest)
    return dest


def local_store_path(uri: str) -> Path | None:
    """The file or folder behind a sqlite/file/plain-path URI; None for a server."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    return None if "://" in uri else Path(uri)


def _all(search: Callable[..., Any]) -> list:
    """Every page of an MLflow search call."""
    out, token = [], None
    while True:
        page = search(page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


class Store:
    """The MLflow store of ``MLFLOW_TRACKING_URI`` (or the embedded default), opened on first use."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = tracking_uri(uri)
        self._client: Any = None

    @property
    def where(self) -> str:
        return strip_userinfo(self.uri)

    def exists(self) -> bool:
        """False for a file store (sqlite, folder) that is not there: opening it would create it."""
        path = local_store_path(self.uri)
        return path is None or path.exists()

    def client(self) -> Any:
        """An MlflowClient, or UserError when the store is absent or the server unreachable."""
        if self._client is None:
            self._client, _ = open_client(self.uri)
        return self._client

    def experiment_runs(self, experiment: str) -> list[Any] | None:
        """The experiment's active runs, newest first; None when the experiment does not exist."""
        client = self.client()
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage == "deleted":
            return None
        return _all(lambda **kw: client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000, **kw))

    def get(self, run_id: str) -> Any:
        return get_run(self.client(), run_id)

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's points by step (the last value logged at a step wins)."""
        return sorted({m.step: m.value for m in self.client().get_metric_history(run_id, key)}.items())

    def find(self, ref: str) -> Any | None:
        """A run by id, else by name across the active experiments (ambiguous names are refused)."""
        if not self.exists():
            return None
        client = self.client()
        if RUN_ID.fullmatch(ref):
            from mlflow.exceptions import MlflowException

            try:
                return client.get_run(ref)
            except MlflowException:
                pass  # not an id after all: try it as a name
        quote = "'" if "'" not in ref else '"'
        if quote in ref:
            return None  # a name with both quote kinds cannot be written in MLflow's filter syntax
        exps = {e.experiment_id: e.name for e in _all(client.search_experiments)}
        if not exps:
            return None
        found = list(_all(lambda **kw: client.search_runs(
            list(exps), filter_string=f"attributes.run_name = {quote}{ref}{quote}", **kw)))
        if len(found) > 1:
            which = ", ".join(f"{r.info.run_id} in '{exps.get(r.info.experiment_id)}'" for r in found[:5])
            raise UserError(f"{len(found)} MLflow runs are named {ref!r} ({which}); pass a run id instead")
        return found[0] if found else None
