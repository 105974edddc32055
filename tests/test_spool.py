"""The spool and its sender on their own: damaged files, failing sinks, bounded uploads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from conftest import free_port, wait_until

from tracked_train.trackers.spool import Blocked, Sender, Spool


def test_a_torn_last_line_is_terminated_on_reopen_and_the_next_event_survives(tmp_path):
    spool = Spool(tmp_path)
    spool.append({"k": "tags", "tags": {"a": "1"}})
    spool.close()
    with open(tmp_path / "spool.jsonl", "a") as f:
        f.write('{"k": "metrics", "st')  # a kill or a full disk cut this line
    spool = Spool(tmp_path)
    spool.append({"k": "tags", "tags": {"b": "2"}})
    events = [e for _, e in spool.pending()]
    assert events == [{"k": "tags", "tags": {"a": "1"}}, {"k": "tags", "tags": {"b": "2"}}]
    quarantined = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantined] == ['{"k": "metrics", "st']


def test_unreadable_lines_never_block_what_follows(tmp_path):
    spool = Spool(tmp_path)
    with open(tmp_path / "spool.jsonl", "a") as f:
        f.write("garbage\n\xff\n[]\n")
    spool.append({"k": "tags", "tags": {"ok": "1"}})
    got: list = []

    def sink(batch):
        got.extend(e for _, e in batch)
        spool.ack(batch[-1][0])

    assert Sender(spool, sink, "test").flush_once()
    assert got == [{"k": "tags", "tags": {"ok": "1"}}] and spool.unsent() == 0
    assert spool.count("quarantine.jsonl") == 3


def test_the_sender_survives_errors_without_a_message_and_blocked_backends(tmp_path):
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append({"k": "tags", "tags": {"i": str(i)}})
    failures = [RuntimeError(), Blocked("run gone"), ValueError("")]  # empty texts exist
    delivered = threading.Event()

    def sink(batch):
        if failures:
            raise failures.pop(0)
        spool.ack(batch[-1][0])
        delivered.set()

    sender = Sender(spool, sink, "test", interval_s=0.01)
    sender.start()
    while failures:  # each failure is followed by a retry on the same thread
        left = len(failures)
        sender.wake()
        wait_until(lambda left=left: len(failures) < left, "a retry", 60)
    assert sender.close(timeout_s=60)
    assert delivered.is_set() and spool.unsent() == 0


def test_uploads_stay_one_per_path_while_the_server_is_down(tmp_path):
    from tracked_train import config
    from tracked_train.mlflow.tracker import MlflowTracker
    from tracked_train.trackers import RunInfo

    cfg = config.resolve(None, [f"tracking.mlflow.uri=http://127.0.0.1:{free_port()}",
                                "tracking.required=false"], None)
    tracker = MlflowTracker()
    tracker.start(RunInfo.of(cfg, "r", tmp_path))
    ckpt = tmp_path / "ckpt"
    for i in range(5):  # five checkpoints while the server is away
        ckpt.mkdir(exist_ok=True)
        (ckpt / "checkpoint.pt").write_bytes(bytes(1000) + bytes([i]))
        tracker.log_artifact(ckpt, "checkpoints/last")
    uploads = tmp_path / "mlflow" / "uploads"
    tracker.sender.wake()
    wait_until(lambda: len(list(uploads.iterdir())) == 1, "superseded snapshots to go", 60)
    newest = next(uploads.iterdir())
    assert (newest / "checkpoint.pt").read_bytes()[-1] == 4
    events = [json.loads(line) for line in (tmp_path / "mlflow" / "spool.jsonl").read_text().splitlines()]
    assert [e["k"] for e in events].count("artifact") == 5  # every event is kept, in order
    tracker.sender.close(timeout_s=0)
    tracker.spool.close()


def test_a_pump_whose_log_call_fails_keeps_running(tmp_path):
    from tracked_train.trackers.wandb_tracker import _MetricPump

    class FailingThenFine:  # stands in for a wandb Run: the pump's own thread is what is tested
        def __init__(self):
            self.rows = []

        def log(self, row, step):
            if step == 1:
                raise Exception()  # noqa: TRY002 - an exception with no text
            self.rows.append(step)

    run = FailingThenFine()
    pump = _MetricPump(run)
    for step in (1, 2, 3):
        pump.put(({"x": step}, step))
    pump.close()
    assert run.rows == [2, 3] and pump.lost == 1


def test_spool_state_damage_resends_instead_of_crashing(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append({"k": "tags", "tags": {"a": "1"}})
    spool.close()
    (tmp_path / "state.json").write_text("{not json")
    spool = Spool(tmp_path)
    assert spool.state["acked"] == 0 and len(spool.pending()) == 1


def test_a_state_beyond_the_spool_is_treated_as_damaged(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append({"k": "tags", "tags": {"a": "1"}})
    spool.close()
    (tmp_path / "state.json").write_text(json.dumps({"acked": 10_000}))
    assert Spool(tmp_path).unsent() > 0  # resent, never skipped


def test_events_with_malformed_fields_are_bad_events_not_retried_forever():
    import pytest

    from tracked_train.mlflow.events import Inputs, Metrics, decode
    from tracked_train.trackers.spool import BadEvent

    for event in ({"k": "params", "p": None}, {"k": "artifact", "src": 5, "dst": "x"},
                  {"k": "metrics", "step": "1", "t": 1, "m": {}}, {"k": "metrics", "step": 1, "t": 1, "m": {"a": "x"}},
                  {"k": "nope"}, {"k": "inputs", "d": [{"context": "training"}]}, {"k": "inputs", "d": ["x"]},
                  {"k": "model", "src": "s", "m": {"best/val_loss": "low"}}, {"k": ["metrics"]}):
        with pytest.raises(BadEvent):
            decode(event)
    assert decode({"k": "metrics", "step": 1, "t": 1, "m": {"a": 1.5}}) == Metrics(1, 1, {"a": 1.5})
    split = {"context": "training", "name": "n", "source_type": "code", "source": "s", "digest": "ab", "lines": 1,
             "chars": 2}
    assert decode({"k": "inputs", "d": [split]}) == Inputs([split])


def test_spool_lines_as_earlier_versions_wrote_them_are_read_back_and_written_the_same():
    from tracked_train.mlflow.events import decode

    split = {"context": "validation", "name": "v", "source_type": "code", "source": "s", "digest": "ab",
             "lines": 1, "chars": 2}
    lines = [{"k": "create", "t": 1, "experiment_name": "e", "tags": {"mlflow.runName": "r"}},
             {"k": "params", "p": {"a": "1"}}, {"k": "metrics", "step": 2, "t": 3, "m": {"loss": 0.5}},
             {"k": "tags", "tags": {"b": "2"}}, {"k": "inputs", "d": [split]},
             {"k": "artifact", "src": "mlflow/uploads/000001-1", "dst": "train.log"},
             {"k": "model", "src": "mlflow/uploads/000002-2-model", "step": 4, "m": {"best/val_loss": 1.0},
              "register": None},
             {"k": "model", "src": "mlflow/uploads/000003-3-model", "step": 5, "checkpoint": "step-000005",
              "register": None, "m": {"val/loss": 1.0}, "t": 6, "dataset": {"name": "v", "digest": "ab"}},
             {"k": "figure", "title": "r"}, {"k": "delete"}, {"k": "end", "status": "FINISHED", "t": 7}]
    for line in lines:
        assert decode(line).to_json() == line
