"""The trackio backend, local (a SQLite database under TRACKIO_DIR), read back with trackio's own API
(``SQLiteStorage.get_logs``, ``Api().runs`` and ``Api().alerts``) in a separate process, as a user would read it.

One run through the module: 12 steps, then a copy of it resumed from its step-5 checkpoint (an inexact resume:
a new trackio run). Besides it, a run killed with SIGKILL after a checkpoint and resumed: one trackio run holds
every step of metrics.jsonl once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, metric_lines, records, sets

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

pytest.importorskip("trackio")

SECRET = "canary-tio-4417"
PROJECT = "tio-tests"
KEYS = ("train/loss", "train/lr", "train/tokens_seen", "val/loss", "val/nats_per_char")

_READ = """
import json, sys
import trackio
project, name = sys.argv[1], sys.argv[2]
runs = [r for r in trackio.Api().runs(project) if r.name == name]
out = []
for r in runs:
    logs = trackio.SQLiteStorage.get_logs(project, run_id=r.id)
    out.append({"id": r.id, "config": r.config, "alerts": trackio.Api().alerts(project, run=name),
                "logs": [{k: v for k, v in row.items() if k != "timestamp"} for row in logs]})
print(json.dumps(out))
"""


def trackio_runs(home: Path, name: str) -> list[dict]:
    """The trackio runs named ``name`` in the test project, oldest first: id, config, alerts, logs."""
    out = subprocess.run([sys.executable, "-c", _READ, PROJECT, name], capture_output=True, text=True, check=True,
                         env={**os.environ, "TRACKIO_DIR": str(home)}).stdout
    return json.loads(out)


def history(run: dict, key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in run["logs"] if key in row]


def env(home: Path, **extra: str) -> dict[str, str]:
    return {"TRACKIO_DIR": str(home), **extra}


ARGS = ("tracking.trackers=[jsonl, trackio]", f"tracking.experiment={PROJECT}")


@pytest.fixture(scope="module")
def tio_run(tmp_path_factory):
    cwd, home = tmp_path_factory.mktemp("tio"), tmp_path_factory.mktemp("tio-home")
    # The canary sits in the environment and in URI credentials on the command line.
    r = cli("run", "--run-name", "tio run", *sets(*ARGS, "training.max_steps=12", "training.eval_every=5",
                                                   "training.checkpoint_every=5",
                                                   "training.keep_checkpoints=3", f"tracking.mlflow.uri=http://alice:{SECRET}@127.0.0.1:1"),
            cwd=cwd, env=env(home, MY_SERVICE_TOKEN=SECRET))
    assert r.returncode == 0, r.stderr
    return cwd / "runs" / "tio run", home, r


def test_every_step_once_with_the_values_of_metrics_jsonl(tio_run):
    run_dir, home, _ = tio_run
    [run] = trackio_runs(home, "tio run")
    assert [row["step"] for row in run["logs"]] == list(range(1, 13))  # one row per step: train and val merged
    for key in KEYS:
        assert history(run, key) == metric_lines(run_dir, key), key
    state = json.loads((run_dir / "trackers.json").read_text())["trackio"]
    assert state["run_id"] == run["id"] and state["project"] == PROJECT


def test_config_and_the_ending_as_an_alert(tio_run):
    run_dir, home, r = tio_run
    [run] = trackio_runs(home, "tio run")
    assert run["config"]["training.max_steps"] == 12 and run["config"]["tracking.experiment"] == PROJECT
    [end] = [a for a in run["alerts"] if a["title"].startswith("stopped:")]
    stop = [x for x in records(run_dir) if x.get("event") == "stop"][-1]
    assert end["title"] == "stopped: completed" and end["level"] == "info" and end["step"] == 12
    fields = dict(line.split("=", 1) for line in end["text"].splitlines()[1:])
    assert fields["status"] == "FINISHED" and fields["stop_reason"] == "completed"
    assert int(fields["best_step"]) == stop["best_step"]
    # trackio's banners and alert printouts stay off the user's stdout.
    assert "Trackio" not in r.stdout and "TRACKIO" not in r.stdout


def test_no_secret_in_trackio_files_or_output(tio_run):
    _, home, r = tio_run
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in r.stdout + r.stderr


def test_an_inexact_resume_starts_a_new_trackio_run_holding_metrics_jsonl(tio_run, tmp_path):
    """From an earlier checkpoint, the steps after it get other values: trackio cannot drop the ones it holds,
    so a new run of the same name holds metrics.jsonl's steps up to the resume step, then the new ones."""
    run_dir, home, _ = tio_run
    copy = tmp_path / "runs" / "copy"
    shutil.copytree(run_dir, copy)
    tio = tmp_path / "tio-home"
    shutil.copytree(home, tio)
    r = cli("resume", str(copy), "--from", "step-5", "--set", "training.max_steps=14", "--allow-config-change",
            cwd=tmp_path, env=env(tio))
    assert r.returncode == 0, r.stderr
    first, second = trackio_runs(tio, "tio run")
    assert [row["step"] for row in first["logs"]] == list(range(1, 13))  # the earlier run as it was
    assert [row["step"] for row in second["logs"]] == list(range(1, 15))
    for key in KEYS:
        assert history(second, key) == metric_lines(copy, key), key
    assert json.loads((copy / "trackers.json").read_text())["trackio"]["run_id"] == second["id"]


def test_kill_9_then_resume_leaves_every_step_of_metrics_jsonl_in_one_trackio_run_once(tmp_path):
    """trackio's sender writes in batches: a kill -9 can lose the last rows. The resumed run continues the same
    trackio run, logs from metrics.jsonl the steps it lacks, and no step twice."""
    from tracked_train.testing import wait_until

    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "killed",
                             *sets(*ARGS, "training.max_steps=60", "training.eval_every=5",
                                   "training.checkpoint_every=20")],
                            cwd=tmp_path, env={**os.environ, **env(home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "killed"

    def logged() -> int:
        try:
            return max((s for s, _ in metric_lines(run_dir)), default=0)
        except (OSError, ValueError):  # not written yet, or a line being written
            return 0

    def checkpoint() -> int:
        try:
            return json.loads((run_dir / "checkpoints" / "last" / "manifest.json").read_text())["step"]
        except (OSError, ValueError):
            return 0

    wait_until(lambda: checkpoint() >= 20 and logged() >= 23, "a checkpoint and 3 more steps", 300, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert checkpoint() < logged() < 60

    r = cli("resume", str(run_dir), cwd=tmp_path, env=env(home))
    assert r.returncode == 0, r.stderr
    [run] = trackio_runs(home, "killed")
    assert [row["step"] for row in run["logs"]] == list(range(1, 61))  # each step once, in order
    for key in KEYS:
        assert history(run, key) == metric_lines(run_dir, key), key
    assert [a["title"] for a in run["alerts"] if a["title"].startswith("stopped:")] == ["stopped: completed"]


def test_a_project_name_trackio_refuses_is_one_line_and_exit_2(tmp_path):
    r = cli("run", *sets("tracking.trackers=[jsonl, trackio]", "tracking.experiment=registry-models",
                         "training.max_steps=2"), cwd=tmp_path, env=env(tmp_path / "home"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: trackio could not start the run") and "registry-" in lines[-1], r.stderr


def test_without_the_trackio_package_says_what_to_install(tmp_path, monkeypatch):
    from tracked_train.config import Config
    from tracked_train.errors import UserError
    from tracked_train.trackers import RunInfo, create

    monkeypatch.setitem(sys.modules, "trackio", None)  # what `import trackio` sees when it is not installed
    with pytest.raises(UserError, match=r"pip install 'tracked-train\[trackio\]'"):
        create("trackio").start(RunInfo.of(Config(), "x", tmp_path))
