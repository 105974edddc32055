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
would contradict (the old run's spool: :mod:`.sync`). The ending and its
repair: :mod:`.ending`.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, describe
from ..redact import redact, strip_userinfo
from ..trackers.base import Outcome, RunInfo, Tracker, settings_of
from ..trackers.spool import SPOOL, Blocked, Sender, Spool
from . import ending, system_metrics
from .client import tracking_uri
from .events import PARAM_MAX, Create, Delete, End, Event, Inputs, Metrics, Model, Params, Tags, now_ms, readable
from .sink import MlflowSink, check_holds
from .sync import FOLDER, archive, drain_previous, spool_run_id
from .uploads import Uploads

if TYPE_CHECKING:
    from ..data import DatasetInfo

# Also read from here by earlier callers: the run id of a spool folder, and `tracked-train sync`.
log = logging.getLogger("tracked_train")

PERIODIC = re.compile(r"checkpoints/step-\d+")  # training.keep_checkpoints: each becomes a Logged Model


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
        self._continuing = False
        self._status_before: str | None = None  # a reopened run's status, restored if this attempt never trains
        self.uploads: Uploads | None = None  # the snapshots the spool's upload events name
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
        experiment, required = run.experiment, run.required
        self.run_dir, self.run_name = run.run_dir, run.name
        folder = run.run_dir / FOLDER
        state = run.resume_state or {}
        previous = None
        if run.continuing and run.rewind:
            # MLflow cannot delete the points the recomputed steps contradict: continue in a new run.
            previous = spool_run_id(folder) or state.get("run_id")  # the spool knows best: a checkpoint may be older
        continuing = run.continuing and not run.rewind
        if not continuing and (folder / SPOOL).exists():
            archive(folder)  # the old run's unsent events stay for `sync`
        self.spool = Spool(folder)
        self.uploads = Uploads(self.spool, run.run_dir, lambda path: self.sender.discard(path))
        tags = system_tags(run.name, run.run_dir)
        if previous:
            tags["resumed_from"] = previous
        if continuing:
            # This folder's spool names the run it sends to; a checkpoint may predate a rewind into a new run.
            self.run_id = self.spool.state.get("run_id") or state.get("run_id")
            # Created late or never: its create event is still in the spool, and stays the only one.
            awaiting_create = not self.run_id and any(isinstance(e, Create) for e in readable(self.spool.events()))
            self._continuing = bool(self.run_id) or awaiting_create
        if self._continuing:
            self._skip_until = self._spooled_steps()
            self.uploads.adopt_pending()
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
                self.spool.append(Create(now_ms(), tags, experiment))
            elif self.run_id:
                self.spool.append(Tags({"resumed_at_step": str(run.start_step)}))
        else:
            log.info("mlflow: run %s in experiment '%s' at %s", self.run_id or "(created when the server answers)",
                     experiment, strip_userinfo(uri))
            if self.run_id and uri.startswith(("http://", "https://")):
                exp_id = self.spool.state.get("experiment_id") or client.get_run(self.run_id).info.experiment_id
                log.info("mlflow: view it at %s", ui_link(uri, exp_id, self.run_id))
            drain_previous(folder, uri, run.run_dir)
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
        for e in readable(self.spool.events()):
            if isinstance(e, Metrics):
                for k in e.values:
                    out[k] = max(out.get(k, 0), e.step)
        return out

    # -- logging (training thread: append and return) ---------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: ("" if v is None else str(v))[:PARAM_MAX] for k, v in redact(params).items()}
        self.spool.append(Params(clean))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._skip_until:
            metrics = {k: v for k, v in metrics.items() if step > self._skip_until.get(k, 0)}
            if not metrics:
                return
        self._last_step = step
        t = now_ms()
        self.spool.append(Metrics(step, t, metrics))
        if any(k.startswith("val/") for k in metrics):
            self._val = (step, t, {k: v for k, v in metrics.items() if k.startswith("val/")})

    def log_datasets(self, datasets: Sequence[DatasetInfo]) -> None:
        self.spool.append(Inputs([asdict(d) for d in datasets]))
        self._val_split = next(({"name": d.name, "digest": d.digest[:32]} for d in datasets
                                if d.context == "validation"), None)  # as the sink names it at the server

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        self.uploads.artifact(Path(local_path), artifact_path)
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
        src = self.uploads.snapshot(folder, model=True)
        event = Model(src, step, checkpoint=artifact_path.rsplit("/", 1)[1])
        if val_step == step and val:
            event = replace(event, metrics=val, time_ms=t, dataset=self._val_split)
        self.spool.append(event)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.spool.append(Tags.of(tags))

    # -- end ------------------------------------------------------------------------------------
    def finish(self, outcome: Outcome) -> None:
        if self.sender is None:
            return
        system_metrics.stop(self._monitor)
        self._monitor = None
        try:
            ending.append(self.uploads, outcome, self.run_name, self._register, self._log_model)
        except OSError as e:  # a full disk: the spool cannot take the ending, so say it to the server now
            log.error("mlflow: cannot write the spool (%s); ending run %s directly", describe(e), self.run_id)
            self._close(end_directly=(outcome.stop.reason.status, ending.stop_tags(outcome)))
            return
        self._close()

    def abort(self) -> None:
        """This attempt never trained: a new run is deleted, a reopened one gets its earlier status back."""
        if self.sender is None:
            return
        system_metrics.stop(self._monitor)
        self._monitor = None
        event: Event = End(self._status_before or "KILLED", now_ms()) if self._continuing else Delete()
        self.spool.append(event)
        self._close()

    def repair_ending(self, run: RunInfo, outcome: Outcome) -> str | None:
        """Give the MLflow run this folder's spool names the ending ``outcome``, as :meth:`finish` would have
        (a process killed before its ending reached the spool left it RUNNING): see :func:`.ending.repair`."""
        tc: MlflowSettings = settings_of(self, run)
        return ending.repair(run, outcome, tc.uri, tc.register_model, tc.log_model)

    def _close(self, end_directly: tuple[str, dict[str, str]] | None = None) -> None:
        ending.close(self.spool, self.sender, self.run_id, self.run_dir, end_directly)
        self.sender = None

    @staticmethod
    def run_id_in(run_dir: Path) -> str | None:
        """The MLflow run a folder's spool sends to: known once the server answered, which may be after
        ``trackers.json`` was written (a server down at start); read by ``run_folder.tracked_run_id``."""
        return spool_run_id(run_dir / FOLDER)

    def state(self) -> dict[str, Any]:
        run_id = self.run_id or (self.spool.state.get("run_id") if self.spool else None)
        return {"run_id": run_id, "last_step": self._last_step,
                "tracking_uri": self.spool.state.get("tracking_uri") if self.spool else None}

