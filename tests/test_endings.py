"""A run's ending under signals: a SIGTERM while the trackers finish waits until every tracker has the ending.

The window is held open on purpose: the webhook tracker finishes before MLflow, and the test's endpoint
answers the "stop" alert only after the test has sent its signal. So the signal lands, every time, after the
stop record is in metrics.jsonl and before the MLflow run has its ending. A kill -9 in that window (which no
process can defer) leaves the MLflow run RUNNING: `resume` and `sync` repair it from the stop record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import SIDE_BY_SIDE, Hook, cli, records, sets

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out


def start_held(tmp_path, mlflow_server, hook: Hook, name: str, stderr: int) -> subprocess.Popen:
    """A 4-step run tracked by metrics.jsonl, the webhook and MLflow; ``hook`` holds its "stop" alert."""
    return subprocess.Popen(
        [sys.executable, "-m", "tracked_train", "run", "--run-name", name,
         *sets("training.max_steps=4", "training.eval_every=2", "tracking.trackers=[jsonl, webhook, mlflow]",
               f"tracking.mlflow.uri={mlflow_server.uri}", "tracking.experiment=endings")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
        env={**os.environ, **SIDE_BY_SIDE, "TRACKED_TRAIN_WEBHOOK_URL": hook.url})


def test_sigterm_while_the_trackers_finish_waits_for_the_ending(mlflow_server, tmp_path):
    hook = Hook(hold_stop=True)
    try:
        proc = start_held(tmp_path, mlflow_server, hook, "ending", subprocess.PIPE)
        assert hook.stop_seen.wait(300), "the run never sent its stop alert"
        proc.send_signal(signal.SIGTERM)  # the stop record is written; MLflow has not had the ending yet
        hook.release.set()
        _, err = proc.communicate(timeout=300)
    finally:
        hook.close()
    assert "SIGTERM: finishing the run's ending on every tracker first" in err
    assert proc.returncode == 0, err[-3000:]  # the run completed; the signal only waited
    run_dir = tmp_path / "runs" / "ending"
    assert [r["reason"] for r in records(run_dir) if r.get("event") == "stop"] == ["completed"]
    client = mlflow_server.client()
    run = client.get_run(json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    assert run.outputs.model_outputs, "the Logged Model was not logged"


def test_an_ending_cut_by_kill_9_is_repaired_by_resume_then_by_sync(mlflow_server, tmp_path):
    """kill -9 in the same window: the stop record is written, the MLflow run never gets its ending."""
    hook = Hook(hold_stop=True)
    try:
        proc = start_held(tmp_path, mlflow_server, hook, "cut", subprocess.DEVNULL)
        assert hook.stop_seen.wait(300), "the run never sent its stop alert"
        proc.kill()
        proc.wait(60)
    finally:
        hook.close()
    run_dir = tmp_path / "runs" / "cut"
    stop = [r for r in records(run_dir) if r.get("event") == "stop"][-1]
    assert (stop["reason"], stop["step"]) == ("completed", 4)
    client = mlflow_server.client()
    run_id = json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and "stop_reason" not in run.data.tags and not run.outputs.model_outputs

    # Without a stop record (a kill while training) sync sends what is pending and leaves the run RUNNING.
    jsonl = run_dir / "metrics.jsonl"
    recorded = jsonl.read_text()
    jsonl.write_text("".join(line for line in recorded.splitlines(keepends=True) if '"event": "stop"' not in line))
    r = cli("sync", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0 and "repaired" not in r.stderr, r.stdout + r.stderr
    assert client.get_run(run_id).info.status == "RUNNING"
    jsonl.write_text(recorded)

    r = cli("resume", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0 and "already finished (completed at step 4)" in r.stderr, r.stderr
    assert (f"repaired: MLflow run {run_id} was RUNNING; marked FINISHED (completed at step 4); "
            f"logged the best model (step {stop['best_step']})") in r.stderr, r.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == int(stop["time"] * 1000)
    assert {k: run.data.tags[k] for k in ("stop_reason", "stop_step", "verdict")} == {
        "stop_reason": "completed", "stop_step": "4", "verdict": stop["verdict"]}
    assert [o.step for o in run.outputs.model_outputs] == [stop["best_step"]]
    assert "train.log" in {a.path for a in client.list_artifacts(run_id)}

    # The same ending lost again (status back to RUNNING, stop tags gone): sync repairs it, without a second model.
    client.update_run(run_id, status="RUNNING")
    for key in ("stop_reason", "stop_detail", "stop_step"):
        client.delete_tag(run_id, key)
    r = cli("sync", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0 and "everything is on the server" in r.stdout, r.stdout + r.stderr
    assert (f"repaired: MLflow run {run_id} was RUNNING; marked FINISHED (completed at step 4)\n"
            in r.stderr), r.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    assert run.data.tags["stop_step"] == "4" and len(run.outputs.model_outputs) == 1
