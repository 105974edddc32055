"""A task of the user's own (experiments/collatz.py) through the CLI, with every guarantee of the built-in one.

One module, shared setup: run A (all four trackers, a real MLflow server, W&B offline, TensorBoard) trains
beside run B, which is killed with SIGKILL after its second checkpoint and resumed. Each backend is read
back with its own reader and compared with metrics.jsonl; B's resumed values are compared with A's step for
step. Then: early stopping on a metric where higher is better, a sweep over one of the task's own settings,
the Logged Model in a fresh process, and bad tasks (one line, exit 2, nothing left, nothing RUNNING).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    BROKEN_TASKS,
    SIDE_BY_SIDE,
    cli,
    float32,
    records,
    summary,
    tensorboard_events,
    wait_until,
    wandb_env,
    wandb_records,
)
from conftest import history as wandb_history

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parents[1]
TASK = f"{ROOT / 'experiments' / 'collatz.py'}:CollatzTask"
# The example's config, made small: ~10 steps a second on one thread, so a kill -9 lands mid-run.
SMALL = ["task_args.seq_len=48", "task_args.n_bits=9", "task_args.d_model=32", "task_args.n_heads=4",
         "task_args.n_layers=2", "task_args.valid_examples=256", "training.batch_size=16", "training.max_steps=60",
         "training.eval_every=10", "training.checkpoint_every=10", "console.progress=lines"]
COMPONENTS = ["train/loss", "train/loss/stopping_time", "train/loss/next_step"]
VAL = ["val/loss", "val/loss/stopping_time", "val/loss/next_step", "val/next_step_accuracy"]


def args(*extra: str) -> list[str]:
    out = ["--config", str(ROOT / "experiments" / "collatz.yaml"), "--set", f"task={TASK}"]
    for s in (*SMALL, *extra):
        out += ["--set", s]
    return out


def start(cwd: Path, name: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", name, *args(*extra)],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **SIDE_BY_SIDE, **(env or {})})


def series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records(run_dir) if key in r]


def stop_event(run_dir: Path) -> dict:
    return [r for r in records(run_dir) if r.get("event") == "stop"][-1]


def run_id_of(run_dir: Path) -> str:
    return json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"]


def checkpoint_step(run_dir: Path) -> int:
    manifest = run_dir / "checkpoints" / "last" / "manifest.json"
    try:
        return json.loads(manifest.read_text())["step"]
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def ab(mlflow_server, tmp_path_factory):
    """A: every tracker, uninterrupted. B: the same run to MLflow, killed -9 after step 20's checkpoint, its folder
    deleted, and resumed from the server on another "machine" (a new folder)."""
    cwd, home = tmp_path_factory.mktemp("collatz"), tmp_path_factory.mktemp("home")
    machine2 = tmp_path_factory.mktemp("machine2")
    client = mlflow_server.client()
    if client.get_experiment_by_name("tasks") is None:  # two runs starting at once would race to create it
        client.create_experiment("tasks")
    to_server = (f"tracking.mlflow.uri={mlflow_server.uri}", "tracking.experiment=tasks")
    a = start(cwd, "A", "tracking.trackers=[jsonl, mlflow, wandb, tensorboard]", *to_server, env=wandb_env(home))
    b = start(cwd, "B", "tracking.trackers=[jsonl, mlflow]", *to_server)
    b_dir = cwd / "runs" / "B"
    wait_until(lambda: checkpoint_step(b_dir) >= 20 and server_has_checkpoint(client, b_dir, machine2),
               "B's checkpoint of step 20 on the server", 300, b)
    b.send_signal(signal.SIGKILL)
    b.wait()
    killed_at = max(s for s, _ in series(b_dir, "train/loss"))
    assert killed_at < 60, "B finished before it could be killed"
    b_id = run_id_of(b_dir)
    assert client.get_run(b_id).info.status == "RUNNING"
    shutil.rmtree(b_dir)  # the first machine is gone
    r = cli("resume", f"mlflow:{b_id}", cwd=machine2, env={"MLFLOW_TRACKING_URI": mlflow_server.uri, **SIDE_BY_SIDE})
    assert r.returncode == 0, r.stderr[-3000:]
    _, err = a.communicate(timeout=600)
    assert a.returncode == 0, err[-3000:]
    return cwd / "runs" / "A", machine2 / "runs" / "B", b_id, killed_at


def server_has_checkpoint(client, run_dir: Path, tmp: Path) -> bool:
    try:
        path = client.download_artifacts(run_id_of(run_dir), "checkpoints/last/manifest.json", str(tmp / "poll"))
        return json.loads(Path(path).read_text())["step"] >= 20
    except Exception:  # noqa: BLE001 - not there yet
        return False


def test_components_reach_every_tracker_equal_to_metrics_jsonl(ab, mlflow_server):
    a_dir = ab[0]
    client = mlflow_server.client()
    run_id = run_id_of(a_dir)
    wb = wandb_records(a_dir)
    scalars, texts, _ = tensorboard_events(a_dir)
    for key in COMPONENTS + VAL:
        local = series(a_dir, key)
        steps = list(range(1, 61)) if key.startswith("train/") else list(range(10, 61, 10))
        assert [s for s, _ in local] == steps, key
        assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) == local, key
        assert wandb_history(wb, key) == local, key
        assert scalars[key] == float32(local), key
    assert not any("train/perplexity" in r for r in records(a_dir))  # a language model's figure, not this task's
    assert not any(k.startswith(("model.", "data.", "tokenizer.")) for k in client.get_run(run_id).data.params)
    # Both components fall; the stopping-time regression by at least half.
    for key in ("train/loss/stopping_time", "train/loss/next_step"):
        values = [v for _, v in series(a_dir, key)]
        assert sum(values[-5:]) < sum(values[:5]), key
    st = [v for _, v in series(a_dir, "train/loss/stopping_time")]
    assert sum(st[-5:]) / 5 < 0.5 * sum(st[:5]) / 5
    stop = stop_event(a_dir)
    assert stop["reason"] == "completed"
    assert client.get_run(run_id).data.tags["stop_reason"] == "completed"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert summary(wb)["stop_reason"] == "completed"
    assert texts["stop_reason"][-1][1] == "completed"
    params = client.get_run(run_id).data.params
    assert params["task"] == TASK and params["task_args.d_model"] == "32" and params["task_args.huber_delta"] == "1.0"


def test_kill_9_and_resume_from_the_server_gives_the_uninterrupted_values_in_one_mlflow_run(ab, mlflow_server):
    a_dir, b_dir, b_id, killed_at = ab
    assert killed_at >= 20
    resumed_from = min(s for s, _ in series(b_dir, "train/loss")) - 1
    assert resumed_from >= 20
    client = mlflow_server.client()
    for key in COMPONENTS + VAL:
        # The server holds every step once, value for value; the new folder from the checkpoint's step on.
        assert sorted((m.step, m.value) for m in client.get_metric_history(b_id, key)) == series(a_dir, key), key
        assert series(b_dir, key) == [(s, v) for s, v in series(a_dir, key) if s > resumed_from], key
    runs = client.search_runs([client.get_experiment_by_name("tasks").experiment_id],
                              filter_string="attributes.run_name = 'B'")
    assert [r.info.run_id for r in runs] == [b_id]
    assert client.get_run(b_id).info.status == "FINISHED"
    assert client.get_run(b_id).data.tags["stop_reason"] == "completed"


def test_the_logged_model_predicts_in_a_fresh_process(ab, mlflow_server, tmp_path):
    a_dir = ab[0]
    client = mlflow_server.client()
    run = client.get_run(run_id_of(a_dir))
    model_id = run.outputs.model_outputs[0].model_id
    code = (f"import mlflow, json; m = mlflow.pyfunc.load_model('models:/{model_id}'); "
            "print(json.dumps(m.predict([27, 6])))")
    # Another folder, no run folder and no experiments/ on the path: the task's code came with the model.
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert r.returncode == 0, r.stderr[-3000:]
    predicted = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(predicted) == 2 and all(isinstance(v, float) and v > 0 for v in predicted)


def test_load_returns_the_tasks_model_and_export_refuses_it(ab, tmp_path):
    import tracked_train

    a_dir = ab[0]
    model, task = tracked_train.load(a_dir)
    assert type(model).__name__ == "CollatzNet" and not model.training
    assert task.settings.d_model == 32
    assert task.predict(model, [27])[0] > 0
    r = cli("export", str(a_dir), "--out", str(tmp_path / "out"), "--format", "safetensors", cwd=tmp_path)
    assert r.returncode == 2 and "not tracked-train's language model" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_patience_on_a_metric_where_higher_is_better(tmp_path):
    # A learning rate too small to move the accuracy by 0.05: two evaluations without improvement stop the run.
    r = cli("run", "--run-name", "max", *args(
        "tracking.trackers=[jsonl]", "training.lr=1e-7", "training.min_lr=0", "training.warmup_steps=0",
        "early_stopping.monitor=val/next_step_accuracy", "early_stopping.mode=max", "early_stopping.patience=2",
        "early_stopping.min_delta=0.05"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    stop = stop_event(tmp_path / "runs" / "max")
    assert stop["reason"] == "patience" and stop["step"] == 30
    assert "val/next_step_accuracy did not improve" in stop["detail"] and "(max)" in stop["detail"]


def test_target_on_a_metric_where_higher_is_better(tmp_path):
    r = cli("run", "--run-name", "target", *args(
        "tracking.trackers=[jsonl]", "early_stopping.monitor=val/next_step_accuracy", "early_stopping.mode=max",
        "early_stopping.target=0.5"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "runs" / "target"
    stop = stop_event(run_dir)
    accuracy = series(run_dir, "val/next_step_accuracy")
    first = next(s for s, v in accuracy if v >= 0.5)
    assert stop["reason"] == "target_reached" and stop["step"] == first < 60
    assert all(v < 0.5 for s, v in accuracy if s < first)


def test_sweep_over_a_task_setting_prunes_on_the_tasks_monitor(mlflow_server, tmp_path):
    import optuna

    (tmp_path / "space.yaml").write_text("training.lr: {choice: [3.0e-3, 1.0e-7]}\n"
                                         "task_args.huber_delta: {uniform: [0.5, 2.0]}\n")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    r = cli("sweep", "--space", str(tmp_path / "space.yaml"), "--storage", storage, "--study", "c", "--trials", "5",
            "--seed", "1", "--pruner", "median", "--pruner-warmup-trials", "2", *args(
                "tracking.trackers=[jsonl]", "training.max_steps=30", "training.min_lr=0", "training.warmup_steps=0",
                "early_stopping.monitor=val/next_step_accuracy", "early_stopping.mode=max"),
            cwd=tmp_path, env={"OMP_NUM_THREADS": "2"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="c", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    states = [t.state.name for t in study.trials]
    assert len(states) == 5 and "PRUNED" in states, states
    assert all("task_args.huber_delta" in t.params for t in study.trials)
    # Pruned in the study's direction: below the median of the finished trials at that step (higher is better).
    for pruned in (t for t in study.trials if t.state.name == "PRUNED"):
        step = max(pruned.intermediate_values)
        others = [t.intermediate_values[step] for t in study.trials
                  if t.state.name == "COMPLETE" and step in t.intermediate_values]
        assert pruned.intermediate_values[step] < statistics.median(others)
        assert "val/next_step_accuracy" in pruned.user_attrs["stop_detail"]
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert f"val/next_step_accuracy {best.value:.4f}" in r.stdout


@pytest.mark.parametrize("task, expected", [
    ("missing.py:T", "task file 'missing.py' does not exist"),
    ("broken.py:NotATask", "NotATask is not a tracked_train.Task subclass"),
    ("broken.py:Half", "Half does not implement evaluate"),
    ("broken.py:Explode", "has no 'Explode' (did you mean 'Explodes'?)"),
    ("broken.py:Explodes", "build_model failed: RuntimeError: no such layer: 'attn2'"),
    (f"{TASK}|task_args.huber_delt=2", "unknown task setting 'task_args.huber_delt' for task"),
    (f"{TASK}|task_args.d_model=wide", "task_args.d_model='wide' is invalid: expected an integer"),
    (f"{TASK}|task_args.n_bits=99", "task_args.n_bits=99 is invalid: allowed range is [2, 40]"),
])
def test_a_bad_task_is_one_line_exit_2_and_leaves_nothing(task, expected, mlflow_server, tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN_TASKS)
    spec, _, setting = task.partition("|")
    extra = ["--set", setting] if setting else []
    experiment = f"bad-{abs(hash(task)) % 10**8}"
    r = cli("run", "--set", f"task={spec}", *extra, "--set", "tracking.trackers=[jsonl, mlflow]",
            "--set", f"tracking.mlflow.uri={mlflow_server.uri}", "--set", f"tracking.experiment={experiment}",
            cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == errors[0]  # the last word is the problem
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    client = mlflow_server.client()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:  # a task that failed after the trackers started: its run was removed, none is RUNNING
        assert client.search_runs([exp.experiment_id], run_view_type=3) == [] or all(
            r.info.lifecycle_stage == "deleted" for r in client.search_runs([exp.experiment_id], run_view_type=3))


NO_PREDICT = '''
import torch
import tracked_train

class Line(tracked_train.Task):
    def build_model(self):
        return torch.nn.Linear(1, 1)
    def batch(self, position, size):
        x = torch.arange(position, position + size, dtype=torch.float32).unsqueeze(1) % 7
        return x, 3 * x + 1
    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)
    def evaluate(self, model):
        x = torch.arange(7, dtype=torch.float32).unsqueeze(1)
        return {"loss": torch.nn.functional.mse_loss(model(x), 3 * x + 1).item()}
'''


def test_a_task_without_predict_logs_its_checkpoint_as_the_model(mlflow_server, tmp_path):
    (tmp_path / "line.py").write_text(NO_PREDICT)
    r = cli("run", "--run-name", "line", "--set", "task=line.py:Line", "--set", "training.max_steps=4",
            "--set", "training.eval_every=2", "--set", "tracking.trackers=[jsonl, mlflow]",
            "--set", f"tracking.mlflow.uri={mlflow_server.uri}", "--set", "tracking.experiment=tasks-files",
            "--set", "console.progress=lines", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "task line.py:Line has no predict(); its best checkpoint is logged as files" in r.stderr
    client = mlflow_server.client()
    run = client.get_run(run_id_of(tmp_path / "runs" / "line"))
    model_id = run.outputs.model_outputs[0].model_id
    files = {Path(a.path).name for a in client.list_logged_model_artifacts(model_id)}
    assert {"checkpoint.pt", "manifest.json", "config.yaml"} <= files and "MLmodel" not in files
