"""The tracker contract itself: registry, fan-out, jsonl truncation on resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

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
    fan.start(RunInfo.of(Config(), "r", tmp_path, resume_state={"recorder": {"x": 1}}))
    fan.log_metrics({"train/loss": 1.0}, 1)
    fan.log_metrics({"train/loss": 0.5}, 2)
    fan.finish(outcome())
    assert good.calls[0] == ("start", 0, {"x": 1})
    assert [c[1] for c in good.calls if c[0] == "metrics"] == [1, 2]
    assert good.calls[-1] == ("finish", "completed")
    assert sum("tracker bad failed" in r.message for r in caplog.records) == 1  # reported once


def test_jsonl_records_and_truncates_on_resume(tmp_path):
    t = JsonlTracker()
    t.start(RunInfo.of(Config(), "r", tmp_path))
    for step in range(1, 6):
        t.log_metrics({"train/loss": 1.0 / step}, step)
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "train/lo')  # torn line from a kill -9
    assert truncate_after(path, 3) == 2
    r = JsonlTracker()
    r.start(RunInfo.of(Config(), "r", tmp_path, start_step=3))
    r.log_metrics({"train/loss": 0.25}, 4)
    r.finish(outcome())
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["step"] for x in recs if "train/loss" in x] == [1, 2, 3, 4]
    assert recs[-1]["event"] == "stop" and recs[-1]["reason"] == "completed"
    assert [x["event"] for x in recs if "event" in x] == ["start", "resume", "stop"]


# --- a tracker's own settings: tracking.<name>: ------------------------------------------------------------------

@dataclass(frozen=True)
class PagerSettings:
    channel: str = "#runs"
    every: int = field(default=100, metadata={"lo": 1, "hi": 10_000})
    token: str | None = field(default=None, metadata={"secret": True})


class Pager(Recorder):
    """A plugin tracker with settings of its own."""

    name = "pager"
    Settings = PagerSettings

    def start(self, run):
        self.calls.append(("start", run.settings))


@pytest.fixture(autouse=True)
def _pager_registered(monkeypatch):
    """Registered for each test alone (as `@register("pager")` would), so other tests' tracker lists stay as shipped."""
    from tracked_train.trackers import base

    monkeypatch.setitem(base._REGISTERED, "pager", Pager)


def resolve(*sets: str, yaml_text: str | None = None, environ: dict | None = None, tmp_path=None):
    from tracked_train import config

    path = None
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
    return config.resolve(path and str(path), ["tracking.trackers=[jsonl, pager]", *sets], environ=environ or {})


def test_a_plugin_trackers_own_settings_come_from_yaml_set_and_the_environment(tmp_path):
    assert resolve().tracker_args["pager"] == {"channel": "#runs", "every": 100, "token": None}  # its defaults
    from_yaml = resolve(yaml_text="tracking:\n  pager:\n    channel: '#ml'\n    every: 5\n", tmp_path=tmp_path)
    assert from_yaml.tracker_args["pager"] == {"channel": "#ml", "every": 5, "token": None}
    env = {"TRACKED_TRAIN_TRACKING_PAGER_EVERY": "7"}
    assert resolve(environ=env).tracker_args["pager"]["every"] == 7
    # defaults < YAML < environment < --set, as for every key
    both = resolve("tracking.pager.every=9", yaml_text="tracking:\n  pager:\n    every: 5\n", environ=env,
                   tmp_path=tmp_path)
    assert both.tracker_args["pager"]["every"] == 9 and both.tracker_args["pager"]["channel"] == "#runs"
    # The tracker receives its own settings, typed, at start; the config records them, the secret redacted.
    cfg = resolve("tracking.pager.token=hunter2", "tracking.pager.every=3")
    trackers = Trackers([Pager()])
    trackers.start(RunInfo.of(cfg, "r", tmp_path))
    assert trackers.trackers[0].calls == [("start", PagerSettings("#runs", 3, "hunter2"))]
    assert cfg.flat()["tracking.pager.every"] == 3 and cfg.flat()["tracking.pager.token"] == "***"


@pytest.mark.parametrize("sets, environ, expected", [
    (["tracking.pager.every=0"], {}, "--set: tracking.pager.every=0 is invalid: allowed range is [1, 10000]"),
    (["tracking.pager.every=often"], {}, "--set: tracking.pager.every='often' is invalid: expected an integer"),
    ([], {"TRACKED_TRAIN_TRACKING_PAGER_EVERY": "often"}, "environment: tracking.pager.every='often' is invalid"),
    (["tracking.pager.chanel=#x"], {}, "unknown tracker setting 'tracking.pager.chanel' for tracker pager "
                                       "(did you mean 'tracking.pager.channel'?)"),
    (["tracking.pagr.every=1"], {}, "unknown tracker 'pagr'; available: "),
])
def test_a_wrong_tracker_setting_is_one_config_error_line(sets, environ, expected):
    from tracked_train.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        resolve(*sets, environ=environ)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_tracking_key_from_before_the_trackers_sections_still_works_and_says_its_new_name(caplog):
    from tracked_train import config

    config.layers._noticed.clear()
    cfg = config.resolve(None, ["tracking.wandb_project=p", "tracking.mlflow_uri=http://h:5000"], environ={})
    assert cfg.tracker_args["wandb"]["project"] == "p" and cfg.tracker_args["mlflow"]["uri"] == "http://h:5000"
    notices = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert notices == ["--set: tracking.wandb_project is deprecated; write tracking.wandb.project (the same setting)",
                       "--set: tracking.mlflow_uri is deprecated; write tracking.mlflow.uri (the same setting)"]
    # A checkpoint written before the change holds the old keys: read silently, to the same settings.
    caplog.clear()
    old = config.from_dict({"task": "lm", "tracking": {"trackers": ["jsonl", "mlflow"], "mlflow_uri": "http://h:1"}})
    assert old.tracker_args["mlflow"]["uri"] == "http://h:1" and not caplog.records


def test_a_tracker_is_told_the_runs_facts_not_the_config(tmp_path):
    cfg = resolve("tracking.experiment=exp-7", "tracking.required=false", "training.max_steps=40",
                  "early_stopping.monitor=val/accuracy", "early_stopping.mode=max", "early_stopping.patience=2",
                  "early_stopping.min_delta=0.01", "tracking.pager.token=hunter2")
    run = RunInfo.of(cfg, "r", tmp_path, start_step=5, resume_state={"x": 1}, continuing=True)
    assert not hasattr(run, "config")
    assert (run.experiment, run.required, run.max_steps) == ("exp-7", False, 40)
    assert (run.monitor, run.mode, run.patience, run.min_delta) == ("val/accuracy", "max", 2, 0.01)
    assert (run.start_step, run.resume_state, run.continuing, run.rewind) == (5, {"x": 1}, True, False)
    assert run.params == cfg.flat() and run.params["tracking.pager.token"] == "***"  # shown params: redacted
    # your own loop's config replaces tracked-train's keys as the params trackers show
    assert RunInfo.of(cfg, "r", tmp_path, {"opt.lr": 0.1}).params == {"opt.lr": 0.1}


def test_a_folders_tracked_runs_come_from_trackers_json_else_the_trackers_own_hook(tmp_path, caplog):
    from tracked_train.mlflow.sync import STATE
    from tracked_train.run_folder import TRACKERS_FILE, read_tracker_state, tracked_run_id

    assert tracked_run_id(tmp_path, "mlflow") is None and read_tracker_state(tmp_path) is None  # nothing yet
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / STATE).write_text(json.dumps({"run_id": "from-spool"}))
    assert tracked_run_id(tmp_path, "mlflow") == "from-spool"  # created after trackers.json (server down at start)
    (tmp_path / TRACKERS_FILE).write_text(json.dumps({"mlflow": {"run_id": "abc"}, "gone": {"run_id": "g1"}}))
    assert tracked_run_id(tmp_path, "mlflow") == "abc"
    assert tracked_run_id(tmp_path, "gone") == "g1"  # a tracker not installed here: trackers.json still says
    assert tracked_run_id(tmp_path, "jsonl") is None
    (tmp_path / TRACKERS_FILE).write_text('{"mlflow": {"run_')  # torn
    assert tracked_run_id(tmp_path, "mlflow") == "from-spool"
    assert read_tracker_state(tmp_path) is None and "is damaged" in caplog.text
