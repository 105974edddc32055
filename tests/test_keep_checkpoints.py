"""training.keep_checkpoints: periodic checkpoints kept, pruned (through a kill -9), resumed from, and found in MLflow.

Runs of the tiny tasks of tests/tiny_task.py in this process (a fraction of a second each), loaded by their file
like a user's (``task: path:Class``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import run_task, task_records, task_spec

KEEP = ["training.max_steps=60", "training.eval_every=10", "training.checkpoint_every=10",
        "training.keep_checkpoints=2"]


def names(checkpoints: Path) -> list[str]:
    return sorted(p.name for p in checkpoints.iterdir())


def evaluations(run_dir: Path, key: str = "val/loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in task_records(run_dir) if key in r}


def test_keeps_the_newest_periodic_checkpoints_besides_best_and_last(tmp_path):
    import torch

    from tracked_train import checkpoint, load

    code, run_dir = run_task(tmp_path, "keep", *KEEP)
    assert code == 0
    checkpoints = run_dir / "checkpoints"
    assert names(checkpoints) == ["best", "last", "step-000050", "step-000060"]  # nothing hidden left either
    for step in (50, 60):
        assert checkpoint.verify(checkpoints / f"step-{step:06d}")["step"] == step
    # Each of the 6 was uploaded as it was kept (metrics.jsonl records the trackers' artifacts).
    uploads = [r["path"] for r in task_records(run_dir) if r.get("event") == "artifact"]
    assert [p for p in uploads if "step-" in p] == [f"checkpoints/step-{s:06d}" for s in range(10, 61, 10)]
    kept = [r for r in task_records(run_dir) if r.get("path") == "checkpoints/step-000050"][0]
    assert kept["step"] == 50 and kept["val_loss"] == evaluations(run_dir)[50]  # that step's validation metrics
    model, task = load(checkpoints / "step-000050")  # the Python API takes a periodic checkpoint's folder
    saved = checkpoint.load(checkpoints / "step-000050")["model"]
    assert type(task).__name__ == "TinyTask" and all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert not torch.equal(saved["0.weight"], checkpoint.load(checkpoints / "step-000060")["model"]["0.weight"])


def test_resume_from_a_periodic_checkpoint_continues_from_its_step(tmp_path):
    from click.testing import CliRunner

    from tracked_train.cli import main
    from tracked_train.resume import resume

    code, run_dir = run_task(tmp_path, "from", *KEEP)
    assert code == 0
    first = task_records(run_dir)
    # A step with no checkpoint: one line naming the ones there are, exit 2, nothing touched.
    result = CliRunner().invoke(main, ["resume", str(run_dir), "--from", "step-40"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: --from step-40: {run_dir / 'checkpoints'} has no checkpoint of step 40; the periodic ones there: "
        "step-50, step-60"]
    result = CliRunner().invoke(main, ["resume", str(run_dir), "--from", "step-x"])
    assert result.exit_code == 2 and "write last, best or step-N (e.g. step-500)" in result.output
    assert task_records(run_dir) == first

    assert resume(str(run_dir), [], which="step-50") == 0
    now = task_records(run_dir)
    at = next(i for i, r in enumerate(now) if r.get("event") == "resume")
    after = now[at:]
    assert after[0]["step"] == 50 and max(r["step"] for r in now[:at]) == 50  # what came after 50 was rewound
    resumed = [(r["step"], r["train/loss"]) for r in after if "train/loss" in r]
    assert resumed == [(r["step"], r["train/loss"]) for r in first if "train/loss" in r and r["step"] > 50]
    assert [r["event"] for r in after if "event" in r][-1] == "stop"
    # `--from step-000500` is the same checkpoint, spelled as its folder.
    assert resume(str(run_dir), [], which="step-000060") == 0
    assert [r for r in task_records(run_dir) if r.get("event") == "resume"][-1]["step"] == 60


KILL_IN_PRUNING = """
import os, signal, sys
from pathlib import Path
from tracked_train import checkpoint

def half_deleted_then_killed(gone):
    (gone / "checkpoint.pt").unlink()  # the deletion was under way: a folder without its state
    print(gone.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint.prune(Path(sys.argv[1]), 1, hook=half_deleted_then_killed)
"""


def test_a_kill_9_during_pruning_leaves_no_broken_checkpoint(tmp_path):
    from tracked_train import checkpoint
    from tracked_train.errors import CheckpointError
    from tracked_train.resume import resume

    code, run_dir = run_task(tmp_path, "kill", *KEEP)
    assert code == 0
    checkpoints = run_dir / "checkpoints"
    # A real SIGKILL in the middle of pruning step 50 (renamed away, half deleted).
    proc = subprocess.run([sys.executable, "-c", KILL_IN_PRUNING, str(checkpoints)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == ".step-000050.old"
    assert names(checkpoints) == [".step-000050.old", "best", "last", "step-000060"]
    assert checkpoint.periodic(checkpoints) == [(60, checkpoints / "step-000060")]  # the leftover is no checkpoint
    try:
        checkpoint.locate(checkpoints / "step-000050")
        raise AssertionError("a half-deleted periodic checkpoint was brought back")
    except CheckpointError as e:
        assert "no checkpoint at" in str(e)
    # An interrupted save of a periodic checkpoint: its complete .tmp is promoted, an incomplete one removed.
    shutil.copytree(checkpoints / "step-000060", checkpoints / ".step-000070.tmp")
    shutil.copytree(checkpoints / "step-000060", checkpoints / ".step-000080.tmp")
    (checkpoints / ".step-000080.tmp" / checkpoint.MANIFEST).unlink()
    checkpoint.clean(checkpoints)
    assert names(checkpoints) == ["best", "last", "step-000060", "step-000070"]
    shutil.rmtree(checkpoints / "step-000070")

    (checkpoints / ".step-000050.old").mkdir()
    (checkpoints / ".step-000050.old" / "config.yaml").write_text("left by a kill\n")
    assert resume(str(run_dir), [], which="step-60") == 0  # resume cleans what the kill left
    assert names(checkpoints) == ["best", "last", "step-000060"]
    assert [r for r in task_records(run_dir) if r.get("event") == "resume"][-1]["step"] == 60


def test_each_kept_checkpoint_is_a_logged_model_and_the_best_step_comes_first(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    code, run_dir = run_task(tmp_path, "models", *KEEP, "training.lr=0.5", "training.min_lr_ratio=1",
                             "tracking.trackers=[jsonl, mlflow]",
                             f"tracking.mlflow.uri={mlflow_server.uri}", "tracking.experiment=keep-checkpoints",
                             task=task_spec("SplitTask"))
    assert code == 0
    run_id = json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"]
    client = MlflowClient(mlflow_server.uri)
    run_ = client.get_run(run_id)
    found = client.search_logged_models([run_.info.experiment_id], filter_string=f"source_run_id = '{run_id}'",
                                        order_by=[{"field_name": "metrics.val/loss", "ascending": True}])
    val = evaluations(run_dir)
    periodic = [m for m in found if m.name.startswith("step-")]
    assert sorted(m.name for m in periodic) == [f"step-{s:06d}" for s in range(10, 61, 10)]  # pruned ones too
    best_step = min(val, key=val.get)
    assert best_step not in (10, 60)  # neither the first nor the last model logged: found by its metric
    assert found[0].name == f"step-{best_step:06d}", [(m.name, m.metrics) for m in found]
    assert [m.name for m in periodic] == [f"step-{s:06d}" for s in sorted(val, key=val.get)]
    for m in periodic:
        step = int(m.name[len("step-"):])
        metrics = {x.key: x for x in m.metrics}
        assert metrics["val/loss"].value == val[step] and metrics["val/loss"].step == step
        assert metrics["val/accuracy"].value == evaluations(run_dir, "val/accuracy")[step]
        assert (metrics["val/loss"].dataset_name, metrics["val/loss"].dataset_digest) == ("tiny-valid", "ab" * 16)
    outputs = {o.model_id: o.step for o in client.get_run(run_id).outputs.model_outputs}
    assert {outputs[m.model_id] for m in periodic} == set(range(10, 61, 10))
    # The run's own history keeps one point per evaluation: the models' metrics are those points, linked.
    history = client.get_metric_history(run_id, "val/loss")
    assert sorted((h.step, h.value) for h in history) == sorted(val.items())
    assert os.listdir(run_dir / "mlflow" / "uploads") == []  # every snapshot sent

    # A checkpoint pruned locally resumes from the server's copy.
    from tracked_train.resume import resume

    assert resume(f"mlflow:{run_id}", [f"tracking.mlflow.uri={mlflow_server.uri}"], which="step-20", fork=True) == 0
    fork = next(p for p in tmp_path.iterdir() if p.name.startswith("models-fork-"))
    assert [r["step"] for r in task_records(fork) if r.get("event") == "resume"] == [20]
    assert [r["step"] for r in task_records(fork) if "train/loss" in r] == list(range(21, 61))


def test_the_checkpoints_models_wait_in_the_spool_through_an_outage(tmp_path, mlflow_server, monkeypatch):
    from mlflow import MlflowClient

    from tracked_train.mlflow.sync import sync
    from tracked_train.testing import free_port

    monkeypatch.setenv("TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT", "0")  # nothing answers: the ending does not wait
    code, run_dir = run_task(tmp_path, "outage", *KEEP, "training.max_steps=30",
                             "tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri=http://127.0.0.1:{free_port()}",
                             "tracking.required=false", "tracking.experiment=keep-checkpoints-outage",
                             task=task_spec("SplitTask"))
    assert code == 0
    spooled = [json.loads(line) for line in (run_dir / "mlflow" / "spool.jsonl").read_text().splitlines()]
    assert [e["checkpoint"] for e in spooled if e.get("k") == "model" and "checkpoint" in e] == [
        "step-000010", "step-000020", "step-000030"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # the server is back: `tracked-train sync`
    assert sync(run_dir)[0]
    run_id = json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"]
    client = MlflowClient(mlflow_server.uri)
    found = client.search_logged_models([client.get_run(run_id).info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}'",
                                        order_by=[{"field_name": "metrics.val/loss", "ascending": True}])
    val = evaluations(run_dir)
    assert [m.name for m in found if m.name.startswith("step-")] == [
        f"step-{s:06d}" for s in sorted(val, key=val.get)]
    assert (run_dir / "checkpoints" / "step-000010").exists() is False  # pruned here, yet on the server
