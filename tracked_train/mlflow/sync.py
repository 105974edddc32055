"""A run folder's MLflow spools, and ``tracked-train sync``: sending what its processes left unsent.

The current run's spool is ``<run>/mlflow/``. An inexact resume (``--from best``, a changed config) continues
in a new MLflow run: the old run's spool, with its unsent events, moves to ``mlflow/previous/<run id>/``, where
the next start (best effort) or ``sync`` sends it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..errors import UserError, describe
from ..redact import strip_userinfo
from ..trackers.spool import QUARANTINE, REJECTED, SPOOL, STATE, Blocked, Sender, Spool
from .client import DEFAULT_URI
from .sink import MlflowSink

log = logging.getLogger("tracked_train")

FOLDER, PREVIOUS = "mlflow", "previous"
TRACKER = "mlflow"  # the MLflow tracker's name: in trackers.json, and in the tracker registry


def spool_run_id(folder: Path) -> str | None:
    """The MLflow run a spool folder sends to (None: not created yet, or no spool)."""
    try:
        return json.loads((folder / STATE).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def archive(folder: Path) -> Path:
    """Move a spool (not its uploads, which its events name) to ``previous/<run id>/``."""
    run_id = spool_run_id(folder)
    dest = folder / PREVIOUS / (run_id or f"uncreated-{time.strftime('%Y%m%d-%H%M%S')}")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (SPOOL, STATE, REJECTED, QUARANTINE):
        if (folder / name).exists():
            os.replace(folder / name, dest / name)
    return dest


def spool_folders(run_dir: Path) -> list[Path]:
    """Every MLflow spool of a run folder: earlier runs' (after inexact resumes) first, then the current."""
    folder = Path(run_dir) / FOLDER
    previous = sorted(p for p in (folder / PREVIOUS).glob("*") if (p / SPOOL).exists())
    return previous + ([folder] if (folder / SPOOL).exists() else [])


def report_set_aside(spool: Spool) -> tuple[int, int]:
    """Say how many events the server refused and how many spool lines were unreadable; returns both."""
    rejected, quarantined = spool.count(REJECTED), spool.count(QUARANTINE)
    if rejected:
        log.error("mlflow: %d events were refused by the server; they are in %s", rejected, spool.folder / REJECTED)
    if quarantined:
        log.error("mlflow: %d unreadable spool lines were set aside in %s", quarantined, spool.folder / QUARANTINE)
    return rejected, quarantined


def drain_previous(folder: Path, uri: str, run_dir: Path) -> None:
    """Best effort at start: send what earlier runs of this folder left unsent (else `sync` does)."""
    for prev in sorted(p for p in (folder / PREVIOUS).glob("*") if (p / SPOOL).exists()):
        spool = Spool(prev)
        try:
            sink = MlflowSink(uri, run_dir, spool)
            if spool.unsent():
                Sender(spool, sink, "mlflow").flush_once()
            run_id = spool.state.get("run_id")
            if run_id and spool.unsent() == 0 and sink.connect().get_run(run_id).info.status == "RUNNING":
                sink.client.set_terminated(run_id, "KILLED")  # a kill -9 left it; we hold the folder's lock
        except Exception as e:  # noqa: BLE001 - never worth failing a start for
            log.warning("mlflow: %d bytes for earlier run %s are still unsent (%s); `tracked-train sync %s` "
                        "sends them", spool.unsent(), spool.state.get("run_id"), describe(e), run_dir)
        finally:
            spool.close()


def sync(run_dir: Path) -> tuple[bool, int, int, int]:
    """Send what processes left in ``run_dir``'s MLflow spools.

    Returns (everything sent?, bytes left, events rejected, lines quarantined).
    The server is ``MLFLOW_TRACKING_URI`` when set, else the one the run used.
    """
    folders = spool_folders(run_dir)
    if not folders:
        raise UserError(f"{run_dir} has no MLflow spool (mlflow/spool.jsonl); was it run with --tracker mlflow?")
    done, left, rejected, quarantined = True, 0, 0, 0
    for folder in folders:
        spool = Spool(folder)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or spool.state.get("tracking_uri") or DEFAULT_URI
        try:
            Sender(spool, MlflowSink(uri, Path(run_dir), spool), "mlflow").flush_once()
        except Blocked as e:
            log.error("mlflow: %s", e)
        except Exception as e:  # noqa: BLE001 - unreachable: report, the events stay pending
            log.warning("mlflow: sync to %s failed (%s)", strip_userinfo(uri), describe(e, 200))
        current = folder == Path(run_dir) / FOLDER
        if current and spool.unsent() == 0:
            spool.close()  # the repair opens the spool itself
            _repair_current(Path(run_dir), uri)
            spool = Spool(folder)
        r, q = report_set_aside(spool)
        left += spool.unsent()
        done = done and spool.unsent() == 0
        rejected, quarantined = rejected + r, quarantined + q
        spool.close()
    return done, left, rejected, quarantined


def _repair_current(run_dir: Path, uri: str) -> None:
    """The current MLflow run gets the ending ``metrics.jsonl`` records, if its process died before it could.

    Only when this folder's last attempt ran with MLflow (``trackers.json``): a stop recorded by an attempt
    without it is not this MLflow run's. No stop record: the run has not ended and stays as it is.
    """
    from ..config import Config
    from ..resume import folder_config
    from ..run_folder import read_tracker_state
    from ..trackers import jsonl
    from ..trackers.base import RunInfo, create

    path = run_dir / jsonl.FILENAME
    stop = jsonl.last_stop(jsonl.read(path)) if path.exists() else None
    outcome = jsonl.outcome_of(stop) if stop else None
    last_attempt = read_tracker_state(run_dir)
    if outcome is None or (last_attempt is not None and TRACKER not in last_attempt):
        return
    try:
        cfg = folder_config(run_dir)
    except UserError:
        # Your own loop's config.yaml holds your params (tracked_train.Run), and its checkpoints are no model
        # a Logged Model is made from: the rest of the ending is repaired.
        cfg = Config().replace(**{"tracking.mlflow.log_model": False})
    cfg = cfg.replace(**{"tracking.mlflow.uri": uri})  # the server sync sends to
    # The tracker by its registered name, as `resume` repairs every tracker's ending: the tracker module uses
    # this one's spool folders, so importing it here would make the two a cycle.
    line = create(TRACKER).repair_ending(RunInfo.of(cfg, run_dir.name, run_dir), outcome)
    if line:
        log.info("%s", line)
