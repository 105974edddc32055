"""The tracker contract itself: registry, fan-out, jsonl truncation on resume."""

from __future__ import annotations

import json

import pytest

from tracked_train.config import Config
from tracked_train.early_stopping import Stop
from tracked_train.errors import UserError
from tracked_train.trackers import Outcome, RunInfo, Tracker, Trackers, available, create, register
from tracked_train.trackers.jsonl import JsonlTracker, truncate_after


class Recorder(Tracker):
    name = "recorder"

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def _record(self, *call):
        if self.fail:
            raise ConnectionError("server gone")
        self.calls.append(call)

    def start(self, run):
        self.calls.append(("start", run.start_step, run.resume_state))

    def log_params(self, params):
        self._record("params", params)

    def log_metrics(self, metrics, step):
        self._record("metrics", step, metrics)

    def log_artifact(self, local_path, artifact_path, metadata=None):
        self._record("artifact", artifact_path)

    def set_tags(self, tags):
        self._record("tags", tags)

    def finish(self, outcome):
        self._record("finish", outcome.stop.reason)

    def state(self):
        return {"last": len(self.calls)}


def outcome(reason="completed"):
    return Outcome(Stop(reason, "done.", 3), 3, 1.5, 4.0, 2.0, 50.0, "learning well")


def test_registry_names_and_unknown_tracker():
    assert {"jsonl", "null"} <= set(available())
    with pytest.raises(UserError, match="unknown tracker 'nope'; available: .*jsonl"):
        create("nope")
    register("recorder")(Recorder)
    assert isinstance(create("recorder"), Recorder)


def test_jsonl_always_on_unless_null():
    assert [t.name for t in Trackers.from_specs(["null"]).trackers] == ["null"]
    assert [t.name for t in Trackers.from_specs(["null", "null"]).trackers] == ["null"]
    register("recorder")(Recorder)
    assert [t.name for t in Trackers.from_specs(["recorder"]).trackers] == ["jsonl", "recorder"]


def test_fanout_survives_a_failing_backend(tmp_path, caplog):
    good, bad = Recorder(), Recorder(fail=True)
    bad.name = "bad"
    fan = Trackers([bad, good])
    fan.start(RunInfo("r", tmp_path, Config(), 0, {"recorder": {"x": 1}}))
    fan.log_metrics({"train/loss": 1.0}, 1)
    fan.log_metrics({"train/loss": 0.5}, 2)
    fan.finish(outcome())
    assert good.calls[0] == ("start", 0, {"x": 1})
    assert [c[1] for c in good.calls if c[0] == "metrics"] == [1, 2]
    assert good.calls[-1] == ("finish", "completed")
    assert sum("tracker bad failed" in r.message for r in caplog.records) == 1  # reported once


def test_jsonl_records_and_truncates_on_resume(tmp_path):
    t = JsonlTracker()
    t.start(RunInfo("r", tmp_path, Config()))
    for step in range(1, 6):
        t.log_metrics({"train/loss": 1.0 / step}, step)
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "train/lo')  # torn line from a kill -9
    assert truncate_after(path, 3) == 2
    r = JsonlTracker()
    r.start(RunInfo("r", tmp_path, Config(), start_step=3))
    r.log_metrics({"train/loss": 0.25}, 4)
    r.finish(outcome())
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["step"] for x in recs if "train/loss" in x] == [1, 2, 3, 4]
    assert recs[-1]["event"] == "stop" and recs[-1]["reason"] == "completed"
    assert [x["event"] for x in recs if "event" in x] == ["start", "resume", "stop"]
