"""torchrun on CPU: two processes, one tracked run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import metric_lines, records, sets

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out


def torchrun(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tracked_train", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_two_processes_one_run_and_resume_continues_it(mlflow_server, tmp_path):
    args = sets("tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={mlflow_server.uri}",
                "tracking.experiment=torchrun", "training.max_steps=12", "training.eval_every=6",
                "training.checkpoint_every=6")
    r = torchrun("run", "--run-name", "ddp", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]  # one run folder
    run_dir = tmp_path / "runs" / "ddp"
    assert [s for s, _ in metric_lines(run_dir)] == list(range(1, 13))  # rank 0 alone writes, once per step
    saves = [r["step"] for r in records(run_dir) if r.get("event") == "artifact" and r["path"] == "checkpoints/last"]
    assert saves == [6, 12]  # written once per checkpoint, not once per rank
    assert r.stderr.count("stopped: Completed all 12 steps.") == 1  # only rank 0 reports

    client = mlflow_server.client()
    exp = client.get_experiment_by_name("torchrun")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 13))

    # Resumed reading values back every 3 steps: both ranks read back (a collective) at the same steps.
    r = torchrun("resume", str(run_dir), "--set", "training.max_steps=16", "--set", "logging.every=3",
                 "--allow-config-change", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(client.search_runs([exp.experiment_id])) == 1  # the same run continued
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 17))
    assert [s for s, _ in metric_lines(run_dir)][-4:] == [13, 14, 15, 16]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"] == run_id
