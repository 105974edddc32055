"""Where the MLflow store is, and one way to open a client for it.

A tracking URI may carry credentials (``http://user:password@host``). MLflow
prints and logs the URI it is given ("View run at ..."), so the client never
sees them: they go to MLflow's credential variables
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) and the client
gets the URI without them.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import UserError
from ..redact import strip_userinfo

DEFAULT_URI = "sqlite:///mlflow.db"
_SCHEMES = {"http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks"}


def configured_uri(cfg: Any) -> str | None:
    """The run config's ``tracking.mlflow.uri`` (None when unset, or when the run does not use MLflow)."""
    return cfg.tracker_args.get("mlflow", {}).get("uri")


def tracking_uri(configured: str | None) -> str:
    """``tracking.mlflow.uri``, else ``MLFLOW_TRACKING_URI``, else the embedded store; bad schemes refused."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in _SCHEMES:
        raise UserError(f"MLflow tracking URI {strip_userinfo(uri)!r} has an unsupported scheme '{scheme}'; "
                        "use http(s)://host:port, sqlite:///file.db or a folder path")
    return uri


def setup(uri: str) -> str:
    """Prepare the process for talking to ``uri``; returns the URI to hand to MLflow (no credentials).

    Idempotent. Retries are the spool's job (a request that fails is retried
    later, not 7 times in a row while training waits); a request gets 10 s.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ... at" (a print)
    # Database creation and migration lines: ours is the only voice on the console.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    parts = urlsplit(uri) if "://" in uri else None
    # HTTP credentials move to MLflow's own variables; a database URI keeps its own (the driver needs them).
    if parts is not None and parts.scheme in ("http", "https") and (parts.username or parts.password):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
        return _without_userinfo(uri)
    return uri


def _without_userinfo(uri: str) -> str:
    """The URI to connect to without ``user:pw@`` (unlike ``strip_userinfo``, query values are kept: they are
    the connection's own, e.g. a database's ``sslmode``, and this URI is handed to MLflow, never shown)."""
    parts = urlsplit(uri)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def connect(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (credentials moved to MLflow's variables)."""
    from mlflow import MlflowClient

    return MlflowClient(setup(uri))


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise ConnectionError (with a redacted reason) when an http(s) server does not answer /health."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(_without_userinfo(uri).rstrip("/") + "/health", timeout=timeout_s).read()
    except urllib.error.HTTPError:
        return  # it answered (a proxy asking for credentials, say): MLflow's own calls tell the rest
    except (urllib.error.URLError, OSError) as e:
        from ..errors import describe

        reason = getattr(e, "reason", e)
        raise ConnectionError(describe(reason) if isinstance(reason, BaseException) else str(reason)) from None


def http_status(e: BaseException) -> int | None:
    """The HTTP status an MLflow error stands for (None for errors that are not MLflow's)."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        try:
            return int(e.get_http_status_code())
        except (TypeError, ValueError):
            return 500
    return None


def status_of(e: BaseException) -> int | None:
    """The HTTP status behind an error: of a response (requests' HTTPError) or of an MLflow error code."""
    response_status = getattr(getattr(e, "response", None), "status_code", None)
    return response_status if isinstance(response_status, int) else http_status(e)


def is_transient(e: BaseException) -> bool:
    """Worth retrying: no connection, a timeout, a server error (5xx) or too many requests (429)."""
    response_status = getattr(getattr(e, "response", None), "status_code", None)  # requests' HTTPError
    if isinstance(response_status, int):
        return response_status >= 500 or response_status in (408, 429)
    status = http_status(e)
    if status is not None:
        return status >= 500 or status == 429
    from ..errors import UserError

    # Anything else (a connection error of requests, botocore or another store's client) is retried:
    # dropping an event on a guess would lose it; a refusal we recognise is what gets set aside.
    return not isinstance(e, UserError)


def error_code(e: BaseException) -> str:
    return getattr(e, "error_code", "") or ""


# MLflow 3's UI opens an experiment on its GenAI overview unless it is marked as model training:
# then it opens on the runs table.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class ExperimentDeleted(Exception):
    """The experiment is at the server but deleted: restore it, or name another."""

    def __init__(self, name: str, experiment_id: str):
        super().__init__(f"MLflow experiment '{name}' is deleted")
        self.name, self.experiment_id = name, experiment_id


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, created as a model-training experiment when it is missing (the one way
    runs and sweeps make experiments). Of two processes creating it at once, the loser finds the winner's."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=EXPERIMENT_TAGS)
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise ExperimentDeleted(name, exp.experiment_id)
    return exp.experiment_id
