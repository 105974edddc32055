"""The end of an MLflow run: its last events, the last of its spool, and the repair of an ending never sent.

The ending goes through the spool like any event, in order: the loss figure, the best model (with the best
values as its metrics, searchable), ``train.log``, the stop tags, then the status the stop reason maps to.
A process killed before its ending reached the spool leaves the run RUNNING (or with an older segment's stop
tags): :func:`repair` gives it that ending later, for ``resume`` and ``sync``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import describe
from ..redact import strip_userinfo
from ..trackers.base import Outcome, RunInfo
from ..trackers.spool import REJECTED, SPOOL, Blocked, Sender, Spool
from .client import tracking_uri
from .events import PARAM_MAX, End, Figure, Metrics, Model, Tags, now_ms
from .sink import MlflowSink
from .store import local_store_path
from .sync import FOLDER, report_set_aside
from .uploads import Uploads

log = logging.getLogger("tracked_train")


def stop_tags(outcome: Outcome) -> dict[str, str]:
    """The stop tags, and the stop's detail as the run's description in MLflow's UI."""
    return {**outcome.tags(), "mlflow.note.content": outcome.stop.detail}


def logs_model(run_dir: Path, log_model: bool) -> bool:
    """Whether an ending logs the best checkpoint as the run's Logged Model (``log_model``: the setting)."""
    return log_model and (run_dir / "checkpoints" / "best").exists()


def append(uploads: Uploads, outcome: Outcome, run_name: str, register: str | None, log_model: bool,
           model: bool = True) -> None:
    """Append the ending's events to ``uploads``' spool (see the module's docstring).

    ``register``, ``log_model``: tracking.mlflow.register_model and log_model. ``model`` False: the run holds
    this ending's model already (a repaired ending), so neither it nor its metrics are sent again.
    """
    spool, run_dir = uploads.spool, uploads.run_dir
    spool.append(Figure(run_name))
    metrics, step = outcome.best_metrics(), outcome.best_step or 0
    if logs_model(run_dir, log_model):
        if model:  # else the run holds this ending's model (and the metrics it carries) already
            src = uploads.snapshot(run_dir / "checkpoints" / "best", model=True)
            spool.append(Model(src, step, metrics, register))
    elif metrics:
        spool.append(Metrics(step, now_ms(), metrics))
    log_file = run_dir / "train.log"
    if log_file.exists():
        uploads.artifact(log_file, "train.log")
    spool.append(Tags.of(stop_tags(outcome)))
    end = now_ms() if outcome.ended_at is None else int(outcome.ended_at * 1000)
    spool.append(End(outcome.stop.reason.status, end))


def close(spool: Spool, sender: Sender, run_id: str | None, run_dir: Path,
          end_directly: tuple[str, dict[str, str]] | None = None) -> None:
    """Send what the spool holds (an unreachable server gets a while), then close it.

    ``end_directly`` (status, tags): the spool could not take the ending (a full disk), so the run gets them
    from here, straight from the server.
    """
    sender.wake()
    # An unreachable server gets this long at the end; `tracked-train sync` sends the rest later.
    done = sender.close(timeout_s=float(os.environ.get("TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT", "30")))
    if end_directly is not None and run_id:
        status, tags = end_directly
        try:
            client = sender.sink.connect()
            for k, v in tags.items():
                client.set_tag(run_id, k, str(v)[:PARAM_MAX])
            client.set_terminated(run_id, status)
        except Exception as e:  # noqa: BLE001 - the next resume repairs a RUNNING run
            log.error("mlflow: could not end run %s (%s); it stays RUNNING until the run is resumed", run_id,
                      describe(e))
    if not done:
        log.warning("mlflow: %d bytes of events are not on the server yet; send them with "
                    "`tracked-train sync %s`", spool.unsent(), run_dir)
    report_set_aside(spool)
    spool.close()


def repair(run: RunInfo, outcome: Outcome, uri: str | None, register: str | None, log_model: bool) -> str | None:
    """Give the MLflow run ``run``'s spool names the ending ``outcome``, as the tracker's finish would have;
    returns what was repaired (None: nothing was, or it could not be checked, which is logged).

    What the process left unsent goes first: it may hold the ending. The repair goes through the spool too,
    so a server that fails half-way gets the rest from ``sync``; it is appended only once nothing is pending,
    so it is never appended twice. ``uri``, ``register``, ``log_model``: the tracker's settings.
    """
    folder = run.run_dir / FOLDER
    if not (folder / SPOOL).exists():
        return None  # this folder never had an MLflow run
    spool = Spool(folder)
    # Where the run lives: as a resume would reach it, else the server the spool recorded.
    uri = tracking_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or spool.state.get("tracking_uri"))
    try:
        store = local_store_path(uri)
        if store is not None and not store.exists():  # opening it would create an empty store
            log.warning("mlflow: cannot check that run %s has its ending: there is no MLflow store at %s; set "
                        "MLFLOW_TRACKING_URI to the one that holds it", spool.state.get("run_id"), store)
            return None
        sink = MlflowSink(uri, run.run_dir, spool, run.experiment)
        sender = Sender(spool, sink, "mlflow")  # never started: this thread sends
        uploads = Uploads(spool, run.run_dir, sender.discard)
        return _repair(sender, sink, uploads, outcome, run.name, register, log_model)
    except Blocked as e:
        log.error("mlflow: %s", e)
    except Exception as e:  # noqa: BLE001 - unreachable or failing server: nothing is lost, sync retries
        log.warning("mlflow: could not check that run %s at %s has its ending (%s); `tracked-train sync %s` "
                    "does it when the server answers", spool.state.get("run_id") or "(not created yet)",
                    strip_userinfo(uri), describe(e, 200), run.run_dir)
    finally:
        spool.close()
    return None


def _repair(sender: Sender, sink: MlflowSink, uploads: Uploads, outcome: Outcome, run_name: str,
            register: str | None, log_model: bool) -> str | None:
    spool, run_dir = uploads.spool, uploads.run_dir
    sender.flush_once()
    run_id = spool.state.get("run_id")
    if not run_id:
        return None
    client = sink.connect()
    found = client.get_run(run_id)
    if found.info.lifecycle_stage == "deleted":
        return None  # deleted on purpose: not ours to bring back
    stop, tags, was = outcome.stop, found.data.tags, found.info.status
    if (was == stop.reason.status and tags.get("stop_reason") == stop.reason.value
            and tags.get("stop_step") == str(stop.step)):
        return None
    best_step = outcome.best_step or 0
    has_model = _has_model_at(found, best_step)
    append(uploads, outcome, run_name, register, log_model, model=not has_model)
    try:
        sender.flush_once()
    except Exception as e:  # noqa: BLE001 - the ending waits in the spool, pending: sync sends it
        log.warning("mlflow: run %s was %s; its ending is in the spool but not on the server yet (%s); "
                    "`tracked-train sync %s` sends it", run_id, was, describe(e, 200), run_dir)
        return None
    line = (f"repaired: MLflow run {run_id} was {was}"
            f"{' without its stop tags' if was == stop.reason.status else ''}; marked "
            f"{stop.reason.status} ({stop.reason.value} at step {stop.step})")
    if logs_model(run_dir, log_model) and not has_model:
        line += (f"; logged the best model (step {best_step})" if _has_model_at(client.get_run(run_id), best_step)
                 else f"; the best model was not logged (why: {spool.folder / REJECTED})")
    return line


def _has_model_at(run: Any, step: int) -> bool:
    """Whether an MLflow run has a Logged Model output at ``step`` (an ending logs the best one at the best step)."""
    return any(o.step == step for o in getattr(run.outputs, "model_outputs", None) or [])
