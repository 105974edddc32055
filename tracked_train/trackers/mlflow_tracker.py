"""MLflow backend: a real tracking server or the embedded sqlite store.

Where: ``tracking.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working folder. The run is created (or, on
resume, reopened) synchronously in :meth:`start`, so a wrong URI fails before
training with exit code 2. Everything after that goes through a
:class:`~tracked_train.trackers.spool.Spool` in ``<run>/mlflow/``: the training
thread only appends, a sender thread batches into ``log_batch`` calls and
uploads artifacts, and a server outage costs nothing but a later replay.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..redact import redact, strip_userinfo
from .base import Outcome, RunInfo, Tracker
from .snapshot import remove, snapshot
from .spool import Sender, Spool

log = logging.getLogger("tracked_train")

DEFAULT_URI = "sqlite:///mlflow.db"
_SCHEMES = {"http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks"}
STATUS = {"completed": "FINISHED", "patience": "FINISHED", "target_reached": "FINISHED",
          "time_budget": "FINISHED", "interrupted": "KILLED", "failed": "FAILED", "diverged": "FAILED"}
PARAM_MAX = 6000  # MLflow's limit on a param value


def tracking_uri(configured: str | None) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in _SCHEMES:
        raise UserError(f"MLflow tracking URI {strip_userinfo(uri)!r} has an unsupported scheme '{scheme}'; "
                        "use http(s)://host:port, sqlite:///file.db or a folder path")
    return uri


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(strip_userinfo(uri).rstrip("/") + "/health", timeout=timeout_s).read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"{reason}") from None


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


class MlflowSink:
    """Sends spooled events to MLflow (runs on the sender thread, or in `sync`)."""

    def __init__(self, uri: str, run_dir: Path, spool: Spool):
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.run_dir, self.spool = run_dir, spool

    @property
    def run_id(self) -> str:
        return self.spool.state["run_id"]

    def __call__(self, events: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics: list = []
        params: list = []
        tags: list = []

        def flush_batch() -> None:
            while metrics or params or tags:
                self._guard("log_batch", self.client.log_batch, self.run_id,
                            metrics[:1000], params[:100], tags[:100])
                del metrics[:1000], params[:100], tags[:100]

        superseded = self._superseded(events)
        for i, e in enumerate(events):
            kind = e["k"]
            if kind == "metrics":
                metrics.extend(Metric(k, float(v), e["t"], e["step"]) for k, v in e["m"].items())
            elif kind == "params":
                params.extend(Param(k, v) for k, v in e["p"].items())
            elif kind == "tags":
                tags.extend(RunTag(k, v) for k, v in e["tags"].items())
            else:
                flush_batch()
                if i not in superseded:
                    self._guard(kind, getattr(self, f"_do_{kind}"), e)
                if "src" in e:
                    remove(self.run_dir / e["src"])
            if len(metrics) >= 1000 or len(params) >= 100 or len(tags) >= 100:
                flush_batch()
        flush_batch()

    def _guard(self, what: str, op: Callable[..., Any], *args: Any) -> None:
        """Run ``op``; an outage propagates (retry later), a refusal by a live server is reported and skipped.

        Retrying what a reachable server rejects would block every later event forever.
        """
        try:
            op(*args)
        except Exception as e:
            if not self._reachable():
                raise
            log.error("mlflow: the server refused %s, skipped: %s", what, str(e).splitlines()[0][:300])

    def _reachable(self) -> bool:
        try:
            _check_reachable(self.client.tracking_uri, timeout_s=3)
            return True
        except ConnectionError:
            return False

    @staticmethod
    def _superseded(events: list[dict[str, Any]]) -> set[int]:
        """Artifact uploads a later upload to the same path replaces: skip them (e.g. old `last`)."""
        latest: dict[str, int] = {}
        for i, e in enumerate(events):
            if e["k"] == "artifact":
                latest[e["dst"]] = i
        return {i for i, e in enumerate(events) if e["k"] == "artifact" and latest[e["dst"]] != i}

    def _do_create(self, e: dict[str, Any]) -> None:
        if self.spool.state.get("run_id"):
            return
        run = self.client.create_run(e["experiment_id"], start_time=e["t"], tags=e["tags"],
                                     run_name=e["tags"]["mlflow.runName"])
        self.spool.save_state(run_id=run.info.run_id)

    def _do_artifact(self, e: dict[str, Any]) -> None:
        src = self.run_dir / e["src"]
        if src.is_dir():
            # Files first, manifest last: a half-finished upload never looks complete.
            files = sorted(src.iterdir(), key=lambda p: p.name == "manifest.json")
            for f in files:
                self.client.log_artifact(self.run_id, str(f), e["dst"])
        else:
            dst_dir, name = os.path.split(e["dst"])
            if name != src.name:
                with tempfile.TemporaryDirectory() as tmp:
                    shutil.copy2(src, Path(tmp) / name)
                    self.client.log_artifact(self.run_id, str(Path(tmp) / name), dst_dir or None)
            else:
                self.client.log_artifact(self.run_id, str(src), dst_dir or None)

    def _do_model(self, e: dict[str, Any]) -> None:
        import mlflow.pytorch

        from ..generate import load_model

        model, tok = load_model(self.run_dir / e["src"])
        with tempfile.TemporaryDirectory() as tmp:
            tok_file = Path(tmp) / "tokenizer.model"
            tok_file.write_bytes(tok.model_bytes)
            mlflow.pytorch.save_model(model, str(Path(tmp) / "model"), extra_files=[str(tok_file)],
                                      serialization_format="pickle",
                                      pip_requirements=[f"torch=={_torch_version()}", "sentencepiece",
                                                        "tracked-train"])
            self.client.log_artifacts(self.run_id, str(Path(tmp) / "model"), "model")

    def _do_figure(self, e: dict[str, Any]) -> None:
        import matplotlib.pyplot as plt

        from ..plots import loss_figure

        records = [{"step": ev["step"], **ev["m"]} for ev in self.spool.events() if ev["k"] == "metrics"]
        fig = loss_figure(records, e.get("title", ""))
        try:
            self.client.log_figure(self.run_id, fig, "loss_curve.png")
        finally:
            plt.close(fig)

    def _do_delete(self, e: dict[str, Any]) -> None:
        self.client.delete_run(self.run_id)

    def _do_end(self, e: dict[str, Any]) -> None:
        self.client.set_terminated(self.run_id, e["status"], end_time=e["t"])


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self) -> None:
        self.spool: Spool | None = None
        self.sender: Sender | None = None
        self.run_id: str | None = None
        self._last_step = 0
        self._skip_until: dict[str, int] = {}  # per metric: steps already spooled before a resume
        self._seq = 0
        self._resuming = False

    # -- start ---------------------------------------------------------------------------------
    def start(self, run: RunInfo) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # retries are the spool's job
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # We save the flavor with pickle on purpose (pt2 needs an input example); say so once, in the docs.
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        tc = run.config.tracking
        uri = tracking_uri(tc.mlflow_uri)
        self.run_dir, self.run_name = run.run_dir, run.name
        self.spool = Spool(run.run_dir / "mlflow")
        resuming = self._resuming = bool(run.resume_state and run.resume_state.get("run_id"))
        if resuming:
            self.run_id = run.resume_state["run_id"]
            self._skip_until = self._spooled_steps()
        self.spool.save_state(tracking_uri=strip_userinfo(uri), experiment=tc.experiment,
                              **({"run_id": self.run_id} if resuming else {}))
        sink: Any = None
        try:
            _check_reachable(uri)
            sink = MlflowSink(uri, run.run_dir, self.spool)
            if resuming:
                self._reopen(sink.client, run.start_step)
            else:
                exp_id = self._experiment(sink.client, tc.experiment)
                created = sink.client.create_run(exp_id, run_name=run.name,
                                                 tags=system_tags(run.name, run.run_dir))
                self.run_id = created.info.run_id
                self.spool.save_state(run_id=self.run_id, experiment_id=exp_id)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - unreachable server, refused connection, bad store
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            if tc.required:
                raise UserError(
                    f"MLflow tracking server {strip_userinfo(uri)} is not reachable ({why}); start it "
                    "(e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix tracking.mlflow_uri / "
                    "MLFLOW_TRACKING_URI, or set tracking.required=false to train now and sync later"
                ) from None
            log.warning("MLflow at %s is not reachable (%s); training anyway, events are spooled to %s",
                        strip_userinfo(uri), why, self.spool.path)
            sink = None
            if not resuming:
                self.spool.append({"k": "create", "t": _now_ms(), "experiment_name": tc.experiment,
                                   "tags": system_tags(run.name, run.run_dir)})
        if sink is not None:
            log.info("mlflow: run %s in experiment '%s' at %s", self.run_id, tc.experiment, strip_userinfo(uri))
        # Each request costs the server ~50 ms of CPU whatever its size: send in batches a few seconds apart.
        interval = float(os.environ.get("TRACKED_TRAIN_MLFLOW_SEND_INTERVAL_S", "1"))
        self.sender = Sender(self.spool, sink or _LazySink(uri, run.run_dir, self.spool, tc.experiment), "mlflow",
                             interval_s=interval)
        self.sender.start()

    @staticmethod
    def _experiment(client, name: str) -> str:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return client.create_experiment(name)
        if exp.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment '{name}' is deleted; restore it (`mlflow experiments restore "
                            f"--experiment-id {exp.experiment_id}`) or choose another tracking.experiment")
        return exp.experiment_id

    def _reopen(self, client, start_step: int) -> None:
        """Continue the same run: repair a RUNNING left by a kill -9, skip steps the server already has."""
        from mlflow.exceptions import MlflowException

        try:
            info = client.get_run(self.run_id).info
        except MlflowException:
            raise UserError(f"MLflow run {self.run_id} does not exist at {strip_userinfo(client.tracking_uri)}; "
                            "set MLFLOW_TRACKING_URI to the server that holds it, or resume with --fork") from None
        if info.status == "RUNNING":
            log.warning("mlflow: run %s was left RUNNING (its process was killed); marking it KILLED, then "
                        "resuming it", self.run_id)
            client.set_terminated(self.run_id, "KILLED")
        client.update_run(self.run_id, status="RUNNING")
        client.set_tag(self.run_id, "resumed_at_step", str(start_step))
        for key, step in self._server_steps(client).items():
            self._skip_until[key] = max(self._skip_until.get(key, 0), step)

    def _server_steps(self, client) -> dict[str, int]:
        """Highest step the server holds for each metric (it receives them in order)."""
        keys = client.get_run(self.run_id).data.metrics
        return {k: max((m.step for m in client.get_metric_history(self.run_id, k)), default=0) for k in keys}

    def _spooled_steps(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.spool.events():
            if e["k"] == "metrics":
                for k in e["m"]:
                    out[k] = max(out.get(k, 0), e["step"])
        return out

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
        self.spool.append({"k": "metrics", "step": step, "t": _now_ms(), "m": metrics})

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        self._seq += 1
        src = Path("mlflow") / "uploads" / f"{self._seq:06d}-{time.time_ns()}"
        snapshot(Path(local_path), self.run_dir / src)
        self.spool.append({"k": "artifact", "src": str(src), "dst": artifact_path})
        self.sender.wake()

    def set_tags(self, tags: dict[str, str]) -> None:
        self.spool.append({"k": "tags", "tags": {k: str(v)[:PARAM_MAX] for k, v in tags.items()}})

    # -- end ------------------------------------------------------------------------------------
    def finish(self, outcome: Outcome) -> None:
        if self.sender is None:
            return
        stop = outcome.stop
        best = self.run_dir / "checkpoints" / "best"
        self.spool.append({"k": "figure", "title": self.run_name})
        if best.exists():
            self._seq += 1
            src = Path("mlflow") / "uploads" / f"{self._seq:06d}-model"
            snapshot(best, self.run_dir / src)
            self.spool.append({"k": "model", "src": str(src)})
        log_file = self.run_dir / "train.log"
        if log_file.exists():
            self.log_artifact(log_file, "train.log")
        self.set_tags({**outcome.tags(), "mlflow.note.content": stop.detail})
        self.spool.append({"k": "end", "status": STATUS[stop.reason], "t": _now_ms()})
        self._close()

    def abort(self) -> None:
        """The run never trained (bad input found after start): a new run is deleted, a resumed one KILLED."""
        if self.sender is None:
            return
        if self._resuming:
            self.spool.append({"k": "end", "status": "KILLED", "t": _now_ms()})
        else:
            self.spool.append({"k": "delete"})
        self._close()

    def _close(self) -> None:
        self.sender.wake()
        # An unreachable server gets this long at the end; `tracked-train sync` sends the rest later.
        done = self.sender.close(timeout_s=float(os.environ.get("TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT", "30")))
        if not done:
            log.warning("mlflow: %d bytes of events are not on the server yet; send them with "
                        "`tracked-train sync %s`", self.spool.unsent(), self.run_dir)
        self.spool.close()
        self.sender = None

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "last_step": self._last_step,
                "tracking_uri": self.spool.state.get("tracking_uri") if self.spool else None}


class _LazySink:
    """A sink for a server that was down at start: connects (and creates the run) on first use."""

    def __init__(self, uri: str, run_dir: Path, spool: Spool, experiment: str):
        self.uri, self.run_dir, self.spool, self.experiment = uri, run_dir, spool, experiment
        self._sink: MlflowSink | None = None

    def __call__(self, events: list[dict[str, Any]]) -> None:
        if self._sink is None:
            _check_reachable(self.uri)
            sink = MlflowSink(self.uri, self.run_dir, self.spool)
            if not self.spool.state.get("run_id"):
                exp_id = MlflowTracker._experiment(sink.client, self.experiment)
                for e in events:
                    if e["k"] == "create":
                        e["experiment_id"] = exp_id
            self._sink = sink
        self._sink(events)


def sync(run_dir: Path) -> tuple[bool, int]:
    """Send what a finished (or killed) process left in ``run_dir``'s MLflow spool.

    Returns (everything sent?, bytes left).
    """
    folder = Path(run_dir) / "mlflow"
    if not (folder / "spool.jsonl").exists():
        raise UserError(f"{run_dir} has no MLflow spool (mlflow/spool.jsonl); was it run with --tracker mlflow?")
    spool = Spool(folder)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or spool.state.get("tracking_uri") or DEFAULT_URI
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        sink = _LazySink(uri, Path(run_dir), spool, spool.state.get("experiment", "tracked-train"))
        done = Sender(spool, sink, "mlflow").flush_once()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        log.warning("mlflow: sync to %s failed (%s)", strip_userinfo(uri), why)
        done = False
    left = spool.unsent()
    spool.close()
    return done, left

