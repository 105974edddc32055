"""The MLflow tracker: a real tracking server or the embedded sqlite store.

Where: ``tracking.mlflow.uri``, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working folder (its settings: :class:`MlflowSettings`). The run is created (or, on
resume, reopened) synchronously in :meth:`MlflowTracker.start`, so a wrong URI
fails before training with exit code 2. Everything after that goes through a
:class:`~tracked_train.trackers.spool.Spool` in ``<run>/mlflow/``: the training
thread only appends, a sender thread hands batches to :class:`.sink.MlflowSink`,
and a server outage costs nothing but a later replay.

One run folder, one MLflow run: the run id lives in ``mlflow/state.json``, so
a run whose server was down at start (created later by the sender) is resumed
into that same run. Only an inexact resume (``--from best``, a changed config)
starts a new MLflow run: MLflow cannot delete the points the recomputed steps
would contradict. The old run's unsent events are kept in
``mlflow/previous/<run id>/`` for ``sync``.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, describe
from ..redact import redact, strip_userinfo
from ..trackers.base import Outcome, RunInfo, Tracker, settings_of
from ..trackers.snapshot import snapshot
from ..trackers.spool import QUARANTINE, REJECTED, SPOOL, STATE, Blocked, Sender, Spool
from . import system_metrics
from .client import DEFAULT_URI, tracking_uri
from .sink import MlflowSink, check_holds
from .store import local_store_path

if TYPE_CHECKING:
    from ..data import DatasetInfo

log = logging.getLogger("tracked_train")

PARAM_MAX = 6000  # MLflow's limit on a param value
PERIODIC = re.compile(r"checkpoints/step-\d+")  # training.keep_checkpoints: each becomes a Logged Model
FOLDER, PREVIOUS = "mlflow", "previous"


def system_tags(run_name: str, run_dir: Path) -> dict[str, str]:
    """MLflow's own system tags, as `mlflow run`/autologging would set them, plus versions."""
    import mlflow
    import torch

    from .. import __version__

    tags = {
        "mlflow.runName": run_name,
        "mlflow.source.name": "tracked-train",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
        "tracked_train.version": __version__,
        "tracked_train.run_dir": str(run_dir.resolve()),
        "torch.version": torch.__version__,
        "mlflow.version": mlflow.__version__,
        "python.version": platform.python_version(),
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def ui_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The run in the MLflow UI's model-training view (MLflow 3 opens the GenAI view without the parameter),
    with no credentials."""
    base = strip_userinfo(uri).split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class MlflowSettings:
    """``tracking.mlflow:``, the MLflow tracker's own settings."""

    # The tracking server or store; None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder.
    uri: str | None = None
    # MLflow Model Registry name for the best model (None: the Logged Model only, not registered).
    register_model: str | None = None
    # false: no MLflow Logged Model at the end (the best values are still run metrics). Sweeps and tests
    # save its upload; the checkpoints stay run artifacts either way.
    log_model: bool = True
    # MLflow's own system metrics monitor (CPU, memory, disk, network, GPU) on the MLflow run.
    system_metrics: bool = False


class MlflowTracker(Tracker):
    name = "mlflow"
    Settings = MlflowSettings

    def __init__(self) -> None:
        self.spool: Spool | None = None
        self.sender: Sender | None = None
        self.run_id: str | None = None
        self._last_step = 0
        self._skip_until: dict[str, int] = {}  # per metric: steps already spooled before a resume
        self._seq = 0
        self._continuing = False
        self._status_before: str | None = None  # a reopened run's status, restored if this attempt never trains
        self._uploads: dict[str, Path] = {}  # artifact path -> its newest snapshot not yet known sent
        self._register: str | None = None  # tracking.mlflow.register_model
        self._log_model = True  # tracking.mlflow.log_model
        self._monitor: Any = None  # MLflow's system metrics monitor (tracking.mlflow.system_metrics)
        self._val: tuple[int, int, dict[str, float]] = (-1, 0, {})  # (step, time, metrics) of the last evaluation
        self._val_split: dict[str, str] | None = None  # the validation dataset, as its metrics are linked to it

    # -- start ---------------------------------------------------------------------------------
    def start(self, run: RunInfo) -> None:
        tc: MlflowSettings = settings_of(self, run)
        self._register = tc.register_model
        self._log_model = tc.log_model
        uri = tracking_uri(tc.uri)
        experiment, required = run.config.tracking.experiment, run.config.tracking.required
        self.run_dir, self.run_name = run.run_dir, run.name
        folder = run.run_dir / FOLDER
        state = run.resume_state or {}
        previous = None
        if run.continuing and run.rewind:
            # MLflow cannot delete the points the recomputed steps contradict: continue in a new run.
            previous = spool_run_id(folder) or state.get("run_id")  # the spool knows best: a checkpoint may be older
        continuing = run.continuing and not run.rewind
        if not continuing and (folder / SPOOL).exists():
            _archive(folder)  # the old run's unsent events stay for `sync`
        self.spool = Spool(folder)
        tags = system_tags(run.name, run.run_dir)
        if previous:
            tags["resumed_from"] = previous
        if continuing:
            # This folder's spool names the run it sends to; a checkpoint may predate a rewind into a new run.
            self.run_id = self.spool.state.get("run_id") or state.get("run_id")
            # Created late or never: its create event is still in the spool, and stays the only one.
            awaiting_create = not self.run_id and any(e.get("k") == "create" for e in self.spool.events())
            self._continuing = bool(self.run_id) or awaiting_create
        if self._continuing:
            self._skip_until = self._spooled_steps()
            self._prune_uploads()
        self.spool.save_state(tracking_uri=strip_userinfo(uri), experiment=experiment, run_id=self.run_id)
        sink = MlflowSink(uri, run.run_dir, self.spool, experiment)
        client = None
        try:
            client = sink.connect()
            if self.run_id:
                self._reopen(client, run.start_step)
            elif not self._continuing:
                exp_id = sink.experiment_id(experiment)
                created = client.create_run(exp_id, run_name=run.name, tags=tags)
                self.run_id = created.info.run_id
                self.spool.save_state(run_id=self.run_id, experiment_id=exp_id)
                if previous:
                    log.warning("mlflow: steps after %d were logged to run %s with other values, and MLflow cannot "
                                "delete them: continuing in new run %s (tag resumed_from=%s)", run.start_step,
                                previous, self.run_id, previous)
        except UserError:
            self._undo_start(client, created=not self._continuing)
            raise
        except Blocked as e:
            raise UserError(str(e)) from None
        except BaseException as e:  # noqa: BLE001 - unreachable server, refused connection, bad store, Ctrl-C
            if not isinstance(e, Exception) or required:
                self._undo_start(client, created=not self._continuing)
            if not isinstance(e, Exception):
                raise
            if required:
                raise UserError(
                    f"MLflow tracking server {strip_userinfo(uri)} is not reachable ({describe(e, 200)}); start it "
                    "(e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix tracking.mlflow.uri / "
                    "MLFLOW_TRACKING_URI, or set tracking.required=false to train now and sync later"
                ) from None
            log.warning("MLflow at %s is not reachable (%s); training anyway, events are spooled to %s",
                        strip_userinfo(uri), describe(e, 200), self.spool.path)
            if tc.system_metrics:
                log.warning("mlflow: no system metrics in this attempt: MLflow's monitor sends to the run directly")
            if not self._continuing:
                self.spool.append({"k": "create", "t": _now_ms(), "experiment_name": experiment, "tags": tags})
            elif self.run_id:
                self.spool.append({"k": "tags", "tags": {"resumed_at_step": str(run.start_step)}})
        else:
            log.info("mlflow: run %s in experiment '%s' at %s", self.run_id or "(created when the server answers)",
                     experiment, strip_userinfo(uri))
            if self.run_id and uri.startswith(("http://", "https://")):
                exp_id = self.spool.state.get("experiment_id") or client.get_run(self.run_id).info.experiment_id
                log.info("mlflow: view it at %s", ui_link(uri, exp_id, self.run_id))
            _drain_previous(folder, uri, run.run_dir)
            if tc.system_metrics:
                self._monitor = system_metrics.start(uri, self.run_id, resuming=self._continuing)
        # Each request costs the server ~50 ms of CPU whatever its size: send in batches a few seconds apart.
        interval = float(os.environ.get("TRACKED_TRAIN_MLFLOW_SEND_INTERVAL_S", "1"))
        self.sender = Sender(self.spool, sink, "mlflow", interval_s=interval)
        self.sender.start()

    def _undo_start(self, client: Any, created: bool) -> None:
        """A start that failed half-way leaves nothing RUNNING: a run it created is deleted, one it reopened
        gets its status back (best effort: the server may be what failed)."""
        if client is None or not self.run_id:
            return
        try:
            if created:
                client.delete_run(self.run_id)
            elif self._status_before:
                client.set_terminated(self.run_id, self._status_before)
        except Exception as e:  # noqa: BLE001
            log.warning("mlflow: could not undo the start of run %s (%s)", self.run_id, describe(e))

    def _reopen(self, client: Any, start_step: int) -> None:
        """Continue the same run: repair a RUNNING left by a kill -9, skip steps the server already has."""
        from mlflow.exceptions import MlflowException

        from .client import is_transient

        try:
            found = client.get_run(self.run_id)
        except MlflowException as e:
            if is_transient(e):
                raise
            raise UserError(f"MLflow run {self.run_id} does not exist at {strip_userinfo(client.tracking_uri)}; "
                            "set MLFLOW_TRACKING_URI to the server that holds it, or resume with --fork") from None
        info = found.info
        if info.lifecycle_stage == "deleted":
            raise UserError(f"MLflow run {self.run_id} is deleted at {strip_userinfo(client.tracking_uri)}; "
                            f"restore it (`mlflow runs restore --run-id {self.run_id}`) or resume with --fork")
        # Before anything is written to it: a server that lost events it accepted gets none of this run's.
        check_holds(found.data.tags, self.run_id, self.spool.state.get("delivered", 0),
                    strip_userinfo(client.tracking_uri), self.run_dir)
        self._status_before = "KILLED" if info.status == "RUNNING" else info.status
        if info.status == "RUNNING":
            log.warning("mlflow: run %s was left RUNNING (its process was killed); marking it KILLED, then "
                        "resuming it", self.run_id)
            client.set_terminated(self.run_id, "KILLED")
        client.update_run(self.run_id, status="RUNNING")
        client.set_tag(self.run_id, "resumed_at_step", str(start_step))
        for key, step in self._server_steps(client).items():
            self._skip_until[key] = max(self._skip_until.get(key, 0), step)

    def _server_steps(self, client: Any) -> dict[str, int]:
        """Highest step the server holds for each metric (it receives them in order)."""
        keys = client.get_run(self.run_id).data.metrics
        return {k: max((m.step for m in client.get_metric_history(self.run_id, k)), default=0) for k in keys}

    def _spooled_steps(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.spool.events():
            if e.get("k") == "metrics" and isinstance(e.get("m"), dict) and isinstance(e.get("step"), int):
                for k in e["m"]:
                    out[k] = max(out.get(k, 0), e["step"])
        return out

    def _prune_uploads(self) -> None:
        """Of the uploads an earlier process left pending, keep only the newest snapshot per artifact path."""
        from ..trackers.snapshot import remove

        for _, e in self.spool.pending(limit=None):
            if e.get("k") == "artifact" and isinstance(e.get("src"), str):
                old = self._uploads.get(e.get("dst"))
                if old is not None:
                    remove(self.run_dir / old)
                self._uploads[e.get("dst")] = Path(e["src"])

    # -- logging (training thread: append and return) ---------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: ("" if v is None else str(v))[:PARAM_MAX] for k, v in redact(params).items()}
        self.spool.append({"k": "params", "p": clean})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._skip_until:
            metrics = {k: v for k, v in metrics.items() if step > self._skip_until.get(k, 0)}
            if not metrics:
                return
        self._last_step = step
        t = _now_ms()
        self.spool.append({"k": "metrics", "step": step, "t": t, "m": metrics})
        if any(k.startswith("val/") for k in metrics):
            self._val = (step, t, {k: v for k, v in metrics.items() if k.startswith("val/")})

    def log_datasets(self, datasets: Sequence[DatasetInfo]) -> None:
        self.spool.append({"k": "inputs", "d": [asdict(d) for d in datasets]})
        self._val_split = next(({"name": d.name, "digest": d.digest[:32]} for d in datasets
                                if d.context == "validation"), None)  # as _do_inputs names it

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        self._seq += 1
        src = Path(FOLDER) / "uploads" / f"{self._seq:06d}-{time.time_ns()}"
        snapshot(Path(local_path), self.run_dir / src)
        self.spool.append({"k": "artifact", "src": str(src), "dst": artifact_path})
        # During an outage a long run would keep one snapshot per checkpoint: keep the newest per path.
        old = self._uploads.get(artifact_path)
        if old is not None:
            self.sender.discard(self.run_dir / old)
        self._uploads[artifact_path] = src
        if self._log_model and PERIODIC.fullmatch(artifact_path):
            self._periodic_model(Path(local_path), artifact_path, metadata or {})
        self.sender.wake()

    def _periodic_model(self, folder: Path, artifact_path: str, metadata: dict[str, Any]) -> None:
        """A kept periodic checkpoint (training.keep_checkpoints) as a Logged Model of its step, with the
        validation metrics of that step linked to it and to the validation split."""
        step = metadata.get("step")
        if not isinstance(step, int):
            return
        val_step, t, val = self._val
        self._seq += 1
        src = Path(FOLDER) / "uploads" / f"{self._seq:06d}-{time.time_ns()}-model"
        snapshot(folder, self.run_dir / src)
        event = {"k": "model", "src": str(src), "step": step, "checkpoint": artifact_path.rsplit("/", 1)[1],
                 "register": None}
        if val_step == step and val:
            event.update(m=val, t=t, dataset=self._val_split)
        self.spool.append(event)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.spool.append({"k": "tags", "tags": {k: str(v)[:PARAM_MAX] for k, v in tags.items()}})

    # -- end ------------------------------------------------------------------------------------
    def finish(self, outcome: Outcome) -> None:
        if self.sender is None:
            return
        system_metrics.stop(self._monitor)
        self._monitor = None
        try:
            self._append_ending(outcome)
        except OSError as e:  # a full disk: the spool cannot take the ending, so say it to the server now
            log.error("mlflow: cannot write the spool (%s); ending run %s directly", describe(e), self.run_id)
            self._close(end_directly=(outcome.stop.reason.status, _ending_tags(outcome)))
            return
        self._close()

    def _append_ending(self, outcome: Outcome, model: bool = True) -> None:
        """The ending's events, in order: the final artifacts, the stop tags, the status the stop reason maps to."""
        self._final_artifacts(outcome, model)
        self.set_tags(_ending_tags(outcome))
        end = _now_ms() if outcome.ended_at is None else int(outcome.ended_at * 1000)
        self.spool.append({"k": "end", "status": outcome.stop.reason.status, "t": end})

    def _final_artifacts(self, outcome: Outcome, model: bool = True) -> None:
        """The loss figure, the best model (with the best values as metrics, searchable) and train.log.

        ``model`` False: the run holds this ending's model already (a repaired ending), so neither it nor its
        metrics are sent again.
        """
        self.spool.append({"k": "figure", "title": self.run_name})
        metrics, step = outcome.best_metrics(), outcome.best_step or 0
        if self._logs_model():
            if model:  # else the run holds this ending's model (and the metrics it carries) already
                self._seq += 1
                src = Path(FOLDER) / "uploads" / f"{self._seq:06d}-{time.time_ns()}-model"
                snapshot(self._best(), self.run_dir / src)
                self.spool.append({"k": "model", "src": str(src), "step": step, "m": metrics,
                                   "register": self._register})
        elif metrics:
            self.spool.append({"k": "metrics", "step": step, "t": _now_ms(), "m": metrics})
        log_file = self.run_dir / "train.log"
        if log_file.exists():
            self.log_artifact(log_file, "train.log")

    def _best(self) -> Path:
        return self.run_dir / "checkpoints" / "best"

    def _logs_model(self) -> bool:
        """Whether an ending logs the best checkpoint as the run's Logged Model."""
        return self._log_model and self._best().exists()

    def abort(self) -> None:
        """This attempt never trained: a new run is deleted, a reopened one gets its earlier status back."""
        if self.sender is None:
            return
        system_metrics.stop(self._monitor)
        self._monitor = None
        if self._continuing:
            self.spool.append({"k": "end", "status": self._status_before or "KILLED", "t": _now_ms()})
        else:
            self.spool.append({"k": "delete"})
        self._close()

    def repair_ending(self, run: RunInfo, outcome: Outcome) -> str | None:
        """Give the MLflow run this folder's spool names the ending ``outcome``, as :meth:`finish` would have.

        A process killed after the stop record and before its ``end`` event reached the spool leaves the run
        RUNNING (or with an older segment's stop tags) for good. What the process left unsent goes first: it may
        hold the ending. The repair goes through the spool too, so a server that fails half-way gets the rest
        from ``sync``; it is appended only once nothing is pending, so it is never appended twice.
        """
        folder = run.run_dir / FOLDER
        if not (folder / SPOOL).exists():
            return None  # this folder never had an MLflow run
        tc: MlflowSettings = settings_of(self, run)
        self._register, self._log_model = tc.register_model, tc.log_model
        self.run_dir, self.run_name = run.run_dir, run.name
        self.spool = Spool(folder)
        # Where the run lives: as a resume would reach it, else the server the spool recorded.
        uri = tc.uri or os.environ.get("MLFLOW_TRACKING_URI") or self.spool.state.get("tracking_uri")
        uri = tracking_uri(uri)
        try:
            store = local_store_path(uri)
            if store is not None and not store.exists():  # opening it would create an empty store
                log.warning("mlflow: cannot check that run %s has its ending: there is no MLflow store at %s; set "
                            "MLFLOW_TRACKING_URI to the one that holds it", self.spool.state.get("run_id"), store)
                return None
            sink = MlflowSink(uri, run.run_dir, self.spool, run.config.tracking.experiment)
            self.sender = Sender(self.spool, sink, "mlflow")  # never started: this thread sends
            return self._repair(sink, outcome)
        except Blocked as e:
            log.error("mlflow: %s", e)
        except Exception as e:  # noqa: BLE001 - unreachable or failing server: nothing is lost, sync retries
            log.warning("mlflow: could not check that run %s at %s has its ending (%s); `tracked-train sync %s` "
                        "does it when the server answers", self.spool.state.get("run_id") or "(not created yet)",
                        strip_userinfo(uri), describe(e, 200), run.run_dir)
        finally:
            self.spool.close()
            self.spool = self.sender = None
        return None

    def _repair(self, sink: MlflowSink, outcome: Outcome) -> str | None:
        self.sender.flush_once()
        self.run_id = self.spool.state.get("run_id")
        if not self.run_id:
            return None
        client = sink.connect()
        found = client.get_run(self.run_id)
        if found.info.lifecycle_stage == "deleted":
            return None  # deleted on purpose: not ours to bring back
        stop, tags, was = outcome.stop, found.data.tags, found.info.status
        if (was == stop.reason.status and tags.get("stop_reason") == stop.reason.value
                and tags.get("stop_step") == str(stop.step)):
            return None
        best_step = outcome.best_step or 0
        has_model = _has_model_at(found, best_step)
        self._append_ending(outcome, model=not has_model)
        try:
            self.sender.flush_once()
        except Exception as e:  # noqa: BLE001 - the ending waits in the spool, pending: sync sends it
            log.warning("mlflow: run %s was %s; its ending is in the spool but not on the server yet (%s); "
                        "`tracked-train sync %s` sends it", self.run_id, was, describe(e, 200), self.run_dir)
            return None
        line = (f"repaired: MLflow run {self.run_id} was {was}"
                f"{' without its stop tags' if was == stop.reason.status else ''}; marked "
                f"{stop.reason.status} ({stop.reason.value} at step {stop.step})")
        if self._logs_model() and not has_model:
            line += (f"; logged the best model (step {best_step})" if _has_model_at(client.get_run(self.run_id),
                                                                                    best_step) else
                     f"; the best model was not logged (why: {self.spool.folder / REJECTED})")
        return line

    def _close(self, end_directly: tuple[str, dict[str, str]] | None = None) -> None:
        self.sender.wake()
        # An unreachable server gets this long at the end; `tracked-train sync` sends the rest later.
        done = self.sender.close(timeout_s=float(os.environ.get("TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT", "30")))
        if end_directly is not None and self.run_id:
            status, tags = end_directly
            try:
                client = self.sender.sink.connect()
                for k, v in tags.items():
                    client.set_tag(self.run_id, k, str(v)[:PARAM_MAX])
                client.set_terminated(self.run_id, status)
            except Exception as e:  # noqa: BLE001 - the next resume repairs a RUNNING run
                log.error("mlflow: could not end run %s (%s); it stays RUNNING until the run is resumed",
                          self.run_id, describe(e))
        if not done:
            log.warning("mlflow: %d bytes of events are not on the server yet; send them with "
                        "`tracked-train sync %s`", self.spool.unsent(), self.run_dir)
        _report_set_aside(self.spool)
        self.spool.close()
        self.sender = None

    def state(self) -> dict[str, Any]:
        run_id = self.run_id or (self.spool.state.get("run_id") if self.spool else None)
        return {"run_id": run_id, "last_step": self._last_step,
                "tracking_uri": self.spool.state.get("tracking_uri") if self.spool else None}


def _has_model_at(run: Any, step: int) -> bool:
    """Whether an MLflow run has a Logged Model output at ``step`` (an ending logs the best one at the best step)."""
    return any(o.step == step for o in getattr(run.outputs, "model_outputs", None) or [])


def _ending_tags(outcome: Outcome) -> dict[str, str]:
    """The stop tags, and the stop's detail as the run's description in MLflow's UI."""
    return {**outcome.tags(), "mlflow.note.content": outcome.stop.detail}


def _report_set_aside(spool: Spool) -> tuple[int, int]:
    rejected, quarantined = spool.count(REJECTED), spool.count(QUARANTINE)
    if rejected:
        log.error("mlflow: %d events were refused by the server; they are in %s", rejected, spool.folder / REJECTED)
    if quarantined:
        log.error("mlflow: %d unreadable spool lines were set aside in %s", quarantined, spool.folder / QUARANTINE)
    return rejected, quarantined


def spool_run_id(folder: Path) -> str | None:
    """The MLflow run a spool folder sends to (None: not created yet, or no spool)."""
    import json

    try:
        return json.loads((folder / STATE).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def _archive(folder: Path) -> Path:
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


def _drain_previous(folder: Path, uri: str, run_dir: Path) -> None:
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
        r, q = _report_set_aside(spool)
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
    from ..runner import read_tracker_state
    from ..trackers import jsonl

    path = run_dir / jsonl.FILENAME
    stop = jsonl.last_stop(jsonl.read(path)) if path.exists() else None
    outcome = jsonl.outcome_of(stop) if stop else None
    last_attempt = read_tracker_state(run_dir)
    if outcome is None or (last_attempt is not None and MlflowTracker.name not in last_attempt):
        return
    try:
        cfg = folder_config(run_dir)
    except UserError:
        # Your own loop's config.yaml holds your params (tracked_train.Run), and its checkpoints are no model
        # a Logged Model is made from: the rest of the ending is repaired.
        cfg = Config().replace(**{"tracking.mlflow.log_model": False})
    cfg = cfg.replace(**{"tracking.mlflow.uri": uri})  # the server sync sends to
    line = MlflowTracker().repair_ending(RunInfo(run_dir.name, run_dir, cfg), outcome)
    if line:
        log.info("%s", line)
