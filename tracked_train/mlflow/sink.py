"""Spooled events -> an MLflow server: runs on the sender thread, or in ``tracked-train sync``.

What happens to an event the server does not take depends on why:

- transient (no connection, a timeout, HTTP 5xx or 429): raised, so the
  event and everything after it stay pending and are retried;
- the run (or its experiment) is missing or deleted on that server, or the
  server refuses us as a user: :class:`Blocked`, nothing more is sent and
  everything stays pending (a wrong server, or one restored later);
- the server refuses this one event for good (an invalid name, a changed
  param): it goes to ``rejected.jsonl`` with the reason, and the rest goes on.

Acknowledgements follow delivery: each group of events is acknowledged only
after the server accepted it.

The server must be the one that acknowledged: each batch also sets the run's
``tracked_train.delivered`` tag to the spool offset it reaches, and the spool
records the last one accepted. Before every batch the tag is read back: a server holding a lower
mark lost events it had accepted (its database was restored from an older
backup, or another one answers at the address) and is :class:`Blocked`, so it
never gets the rest of the run with a hole in it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import describe
from ..redact import strip_userinfo
from ..trackers.snapshot import remove
from ..trackers.spool import BadEvent, Blocked, Spool
from .client import ExperimentDeleted, check_reachable, connect, experiment_id, is_transient, status_of
from .events import Artifact, Create, Delete, End, Event, Figure, Inputs, Metrics, Model, Params, Tags, decode, readable

log = logging.getLogger("tracked_train")

# Consecutive events of these kinds go to the server as one log_batch, within MLflow's limits per request.
BATCH_LIMITS: dict[type[Metrics | Params | Tags], int] = {Metrics: 1000, Params: 100, Tags: 99}
UPLOADS = (Artifact, Model)  # events whose snapshot (src) is removed once the server has it
# The spool offset a run's server has accepted events through (see the module's docstring).
MARK_TAG = "tracked_train.delivered"


class MlflowSink:
    def __init__(self, uri: str, run_dir: Path, spool: Spool, experiment: str | None = None):
        self.uri, self.run_dir, self.spool = uri, Path(run_dir), spool
        self.experiment = experiment or spool.state.get("experiment") or "tracked-train"
        self.client: Any = None
        # How each event that is not part of a log_batch is sent, by its type.
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            Create: self._create, Artifact: self._artifact, Model: self._model, Inputs: self._inputs,
            Figure: self._figure, Delete: self._delete, End: self._end}

    @property
    def where(self) -> str:
        return strip_userinfo(self.uri)

    def connect(self) -> Any:
        if self.client is None:
            check_reachable(self.uri)
            self.client = connect(self.uri)
        return self.client

    @property
    def run_id(self) -> str | None:
        return self.spool.state.get("run_id")

    # -- a batch --------------------------------------------------------------------------------
    def __call__(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        self.connect()
        # Every batch (one GET, batches are a second or more apart): a server swapped between two batches
        # without a failure seen in between (this process was stopped meanwhile) is caught too.
        self._run_missing(check_mark=True)  # gone, deleted or behind there: Blocked, with what to do
        group: list[tuple[int, Metrics | Params | Tags]] = []  # consecutive metrics/params/tags: one log_batch
        size = dict.fromkeys(BATCH_LIMITS, 0)
        for offset, raw in batch:
            try:
                event = decode(raw)
            except BadEvent as why:
                self._send_group(group)
                group, size = [], dict.fromkeys(BATCH_LIMITS, 0)
                self.spool.quarantine(_line(raw), str(why), offset)
                self.spool.ack(offset)
                continue
            if isinstance(event, (Metrics, Params, Tags)):
                kind, n = type(event), len(event.values)
                if size[kind] + n > BATCH_LIMITS[kind]:
                    self._send_group(group)
                    group, size = [], dict.fromkeys(BATCH_LIMITS, 0)
                group.append((offset, event))
                size[kind] += n
                continue
            self._send_group(group)
            group, size = [], dict.fromkeys(BATCH_LIMITS, 0)
            # A refused create is neither rejected nor acknowledged: without its run nothing after it could be
            # sent, so the sending stops (Blocked) with everything pending.
            creates = isinstance(event, Create)
            send = self._handlers[type(event)]
            delivered = self._deliver(event.kind, lambda send=send, event=event: send(event), [event],
                                      reject=not creates)
            if creates and not delivered:
                raise Blocked(f"MLflow at {self.where} refuses to create the run; see the error above")
            if isinstance(event, UPLOADS) and delivered:
                remove(self.run_dir / event.src)  # a rejected upload keeps its snapshot, named in rejected.jsonl
            self.spool.ack(offset)
        self._send_group(group)

    def _send_group(self, group: list[tuple[int, Metrics | Params | Tags]]) -> None:
        if not group:
            return
        events, mark = [e for _, e in group], group[-1][0]
        if self._deliver("log_batch", lambda: self._log_batch(events, mark), events, reject=False):
            self._delivered(mark)
            return
        # Refused as a whole: find the events the server refuses, deliver the others.
        for offset, e in group:
            if self._deliver("log_batch", lambda e=e, offset=offset: self._log_batch([e], offset), [e]):
                self._delivered(offset)
            else:
                self.spool.ack(offset)

    def _delivered(self, offset: int) -> None:
        """Accepted through ``offset``, the server's mark now says so too."""
        self.spool.save_state(delivered=offset, acked=max(offset, self.spool.state["acked"]))  # one write

    def _deliver(self, what: str, op: Callable[[], None], events: list[Event], reject: bool = True) -> bool:
        """Run ``op``: True when the server took it; a refusal of these events is rejected (or returned False)."""
        try:
            op()
            return True
        except (Blocked, BadEvent):
            raise
        except Exception as e:  # noqa: BLE001 - sorted below: retry, stop sending, or set aside
            if is_transient(e) or self._run_missing() or status_of(e) in (401, 403):
                if status_of(e) in (401, 403):
                    raise Blocked(f"MLflow at {self.where} refuses us ({describe(e)}); check "
                                  "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD") from None
                raise
            if not reject:
                return False
            why = describe(e, 500)
            log.error("mlflow: the server refused %s; kept in %s: %s", what, self.spool.folder / "rejected.jsonl",
                      why)
            for ev in events:
                self.spool.reject(ev.to_json(), why)
            return False

    def _run_missing(self, check_mark: bool = False) -> bool:
        """Raise :class:`Blocked` when the run or its experiment is gone from this server; else False."""
        from mlflow.exceptions import MlflowException

        if not self.run_id:
            return False
        try:
            run = self.client.get_run(self.run_id)
        except MlflowException as e:
            if is_transient(e):
                raise
            raise Blocked(f"run {self.run_id} does not exist at {self.where} (a different server, or its "
                          "database was reset); set MLFLOW_TRACKING_URI to the server that holds it and run "
                          f"`tracked-train sync {self.run_dir}`") from None
        info = run.info
        if info.lifecycle_stage == "deleted":
            raise Blocked(f"run {self.run_id} is deleted at {self.where}; restore it (`mlflow runs restore "
                          f"--run-id {self.run_id}` or its experiment) and run `tracked-train sync {self.run_dir}`")
        if check_mark:
            check_holds(run.data.tags, self.run_id, self.spool.state.get("delivered", 0), self.where, self.run_dir)
        return False

    # -- event kinds ----------------------------------------------------------------------------------
    def _log_batch(self, events: list[Metrics | Params | Tags], mark: int) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics, params, tags = [], [], [RunTag(MARK_TAG, str(mark))]  # in the same request: accepted together
        for e in events:
            if isinstance(e, Metrics):
                metrics += [Metric(k, float(v), e.time_ms, e.step) for k, v in e.values.items()]
            elif isinstance(e, Params):
                params += [Param(k, str(v)) for k, v in e.values.items()]
            else:
                tags += [RunTag(k, str(v)) for k, v in e.values.items()]
        self._require_run()
        self.client.log_batch(self.run_id, metrics, params, tags)

    def _require_run(self) -> None:
        if not self.run_id:
            raise Blocked("the spool has no MLflow run to send to (its create event is missing); "
                          "resume the run to create one")

    def _create(self, e: Create) -> None:
        if self.run_id:
            return
        exp_id = self.experiment_id(e.experiment or self.experiment)
        run = self.client.create_run(exp_id, start_time=e.time_ms, tags=e.tags, run_name=e.tags.get("mlflow.runName"))
        self.spool.save_state(run_id=run.info.run_id, experiment_id=exp_id)
        log.info("mlflow: created run %s at %s", run.info.run_id, self.where)

    def experiment_id(self, name: str) -> str:
        try:
            return experiment_id(self.client, name)
        except ExperimentDeleted as e:
            raise Blocked(f"MLflow experiment '{name}' is deleted at {self.where}; restore it (`mlflow experiments "
                          f"restore --experiment-id {e.experiment_id}`) and run `tracked-train sync {self.run_dir}`"
                          ) from None

    def _artifact(self, e: Artifact) -> None:
        self._require_run()
        src = self.run_dir / e.src
        if not src.exists():
            log.debug("mlflow: %s was superseded by a newer upload of %s", e.src, e.dst)
            return
        if src.is_dir():
            # Files first, manifest last: a half-finished upload never looks complete.
            for f in sorted(src.iterdir(), key=lambda p: p.name == "manifest.json"):
                self.client.log_artifact(self.run_id, str(f), e.dst)
            return
        dst_dir, name = os.path.split(e.dst)
        if name != src.name:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(src, Path(tmp) / name)
                self.client.log_artifact(self.run_id, str(Path(tmp) / name), dst_dir or None)
        else:
            self.client.log_artifact(self.run_id, str(src), dst_dir or None)

    def _model(self, e: Model) -> None:
        from .logged_model import log_model

        self._require_run()
        if not (self.run_dir / e.src).exists():
            return
        # A damaged snapshot raises CheckpointError, a refusal: the event is set aside in rejected.jsonl.
        dataset = e.dataset
        if dataset is not None and not all(isinstance(dataset.get(f), str) for f in ("name", "digest")):
            dataset = None
        periodic = e.checkpoint  # training.keep_checkpoints: checkpoints/step-000500
        model_id = log_model(self.client, self.run_id, self.run_dir / e.src, e.src, e.metrics or {}, e.step,
                             e.register, name=periodic or "model", timestamp=e.time_ms, dataset=dataset)
        log.info("mlflow: logged %s as models:/%s", f"checkpoints/{periodic}" if periodic else "the best model",
                 model_id)

    def _inputs(self, e: Inputs) -> None:
        """The data splits as MLflow dataset inputs (name, source, digest; context training/validation)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        self._require_run()
        inputs = []
        for d in e.splits:
            profile = json.dumps({"lines": d["lines"], "chars": d["chars"], "sha256": d["digest"]})
            # MLflow keeps at most 36 characters of a digest; the full sha256 is in the profile.
            dataset = Dataset(d["name"], d["digest"][:32], d["source_type"], json.dumps({"uri": d["source"]}),
                              profile=profile)
            inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", d["context"])]))
        self.client.log_inputs(self.run_id, datasets=inputs)

    def _figure(self, e: Figure) -> None:
        from ..plots import close, loss_figure

        self._require_run()
        records = [{"step": ev.step, **ev.values} for ev in readable(self.spool.events()) if isinstance(ev, Metrics)]
        fig = loss_figure(records, e.title)
        try:
            self.client.log_figure(self.run_id, fig, "loss_curve.png")
        finally:
            close(fig)

    def _delete(self, e: Delete) -> None:
        from mlflow.exceptions import MlflowException

        if not self.run_id:
            return  # never created: nothing to delete
        try:
            self.client.delete_run(self.run_id)
        except MlflowException as ex:
            if is_transient(ex):
                raise
            log.info("mlflow: run %s was already gone (%s)", self.run_id, describe(ex))

    def _end(self, e: End) -> None:
        self._require_run()
        self.client.set_terminated(self.run_id, e.status, end_time=e.time_ms)


def check_holds(tags: dict[str, str], run_id: str | None, delivered: int, where: str, run_dir: Path) -> None:
    """Raise :class:`Blocked` when run ``run_id``'s ``tags`` at the server say it holds fewer of its events than
    a server at this address accepted (``delivered``, the spool offset recorded after each accepted batch)."""
    if not run_id or not delivered:
        return  # nothing accepted yet (or a spool from before the mark): nothing to compare
    try:
        held = int(tags.get(MARK_TAG, 0))
    except ValueError:
        held = 0
    if held < delivered:
        raise Blocked(f"the MLflow server at {where} holds fewer of this run's events than it acknowledged "
                      f"(run {run_id} is marked delivered through spool byte {held}, not {delivered}): its "
                      "database was restored from an older backup, or another server answers there. Nothing more "
                      "is sent to it; with the server that holds the run back at MLFLOW_TRACKING_URI, run "
                      f"`tracked-train sync {run_dir}`")


def _line(e: Any) -> str:
    import json

    try:
        return json.dumps(e)
    except (TypeError, ValueError):
        return repr(e)
