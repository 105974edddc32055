"""The MLflow backend against a real `mlflow server`, read back with MlflowClient."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from conftest import cli, free_port, metric_lines, records, sets, wait_until

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

SECRET = "canary-s3cr3t-4821"


def mlflow_sets(server, *extra):
    return sets("tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={server.uri}",
                "tracking.experiment=tests", *extra)


def run_id_of(run_dir):
    return json.loads((run_dir / "mlflow" / "state.json").read_text()).get("run_id")


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def all_artifacts(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += all_artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


@pytest.fixture(scope="module")
def completed(mlflow_server, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("completed")
    # The canary sits in the environment and in a config value (URI credentials).
    uri_with_password = mlflow_server.uri.replace("http://", f"http://alice:{SECRET}@")
    r = cli("run", "--run-name", "done", *mlflow_sets(mlflow_server, "training.max_steps=30", "training.eval_every=10",
                                                        "training.checkpoint_every=10",
                                                        f"tracking.mlflow.uri={uri_with_password}"),
            cwd=cwd, env={"MY_SERVICE_TOKEN": SECRET, "WANDB_API_KEY": SECRET})
    assert r.returncode == 0, r.stderr
    run_dir = cwd / "runs" / "done"
    return run_dir, run_id_of(run_dir)


def test_system_metrics_from_mlflows_own_monitor(mlflow_server, tmp_path):
    """tracking.mlflow.system_metrics: MLflow's monitor samples the machine into the run (system/*), and stops first."""
    r = cli("run", "--run-name", "sys", *mlflow_sets(mlflow_server, "training.max_steps=120", "training.eval_every=60",
                                                       "tracking.mlflow.system_metrics=true"),
            cwd=tmp_path, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"})
    assert r.returncode == 0, r.stderr
    run = mlflow_server.client().get_run(run_id_of(tmp_path / "runs" / "sys"))
    assert run.info.status == "FINISHED"
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert not any(k.startswith("system/") for rec in records(tmp_path / "runs" / "sys") for k in rec)


def test_params_metrics_tags_status(mlflow_server, completed):
    run_dir, run_id = completed
    client = mlflow_server.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "done"
    # The experiment we created is a model-training one: MLflow 3's UI opens it on the runs table.
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    logged = next(r["params"] for r in records(run_dir) if r.get("event") == "params")
    assert run.data.params == {k: "" if v is None else str(v) for k, v in logged.items()}
    assert run.data.params["training.max_steps"] == "30" and run.data.params["model.d_model"] == "64"

    assert history(client, run_id, "train/loss") == metric_lines(run_dir, "train/loss")
    assert [s for s, _ in history(client, run_id, "train/loss")] == list(range(1, 31))
    for key in ["train/lr", "train/perplexity", "train/grad_norm", "train/tokens_per_sec", "train/tokens_seen"]:
        assert len(history(client, run_id, key)) == 30, key
    assert [s for s, _ in history(client, run_id, "val/loss")] == [10, 20, 30]
    assert [s for s, _ in history(client, run_id, "val/perplexity")] == [10, 20, 30]

    tags = run.data.tags
    assert tags["stop_reason"] == "completed" and tags["stop_step"] == "30"
    assert tags["stop_detail"] == "Completed all 30 steps." == tags["mlflow.note.content"]
    assert tags["best_step"] == "30" and float(tags["best_val_loss"]) > 0
    assert tags["verdict"] in {"learning well", "learning slowly"}
    assert tags["mlflow.runName"] == "done" and tags["mlflow.source.name"] == "tracked-train"
    assert tags["mlflow.user"] and tags["torch.version"] and tags["mlflow.version"]


def test_artifact_tree(mlflow_server, completed):
    run_dir, run_id = completed
    client = mlflow_server.client()
    paths = set(all_artifacts(client, run_id))
    for kind in ["best", "last"]:
        assert {f"checkpoints/{kind}/{f}" for f in
                ["checkpoint.pt", "manifest.json", "config.yaml", "tokenizer.model"]} <= paths
    assert {"config.yaml", "tokenizer/tokenizer.model", "train.log", "loss_curve.png"} <= paths
    assert not any(p.startswith("checkpoints/last/") and "step" in p for p in paths)  # replaced, not piled up
    # The best model is a Logged Model (tests/test_model_outside.py), not a run artifact.
    assert not any(p.startswith("model/") for p in paths)


def test_no_secret_reaches_the_server(mlflow_server, completed, tmp_path):
    _, run_id = completed
    client = mlflow_server.client()
    run = client.get_run(run_id)
    assert SECRET not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert run.data.params["tracking.mlflow.uri"] == mlflow_server.uri  # credentials stripped
    local = client.download_artifacts(run_id, "", str(tmp_path))
    import pathlib

    for f in pathlib.Path(local).rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET.encode() not in (mlflow_server.root / "mlflow.db").read_bytes()


def test_patience_stop_is_finished_with_reason(mlflow_server, tmp_path):
    r = cli("run", "--run-name", "patient", *mlflow_sets(
        mlflow_server, "training.max_steps=50", "training.eval_every=5",
        "early_stopping.patience=1", "early_stopping.min_delta=100"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = mlflow_server.client().get_run(run_id_of(tmp_path / "runs" / "patient"))
    assert run.info.status == "FINISHED"
    assert run.data.tags["stop_reason"] == "patience" and run.data.tags["stop_step"] == "10"


def test_sigterm_is_killed_with_reason_interrupted(mlflow_server, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "term",
                             *mlflow_sets(mlflow_server, "training.max_steps=100000", "training.eval_every=1000")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "term"
    wait_until(lambda: len(_steps(run_dir)) >= 3, "three steps", 120, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    run = mlflow_server.client().get_run(run_id_of(run_dir))
    assert run.info.status == "KILLED"
    assert run.data.tags["stop_reason"] == "interrupted" and "SIGTERM" in run.data.tags["stop_detail"]
    assert "checkpoints/last/checkpoint.pt" in all_artifacts(mlflow_server.client(), run.info.run_id)


def _steps(run_dir):
    try:
        return [s for s, _ in metric_lines(run_dir)]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_server_outage_mid_run_loses_nothing(mlflow_server, tmp_path):
    """Kill the server mid-run, restart it on the same port: every step ends up on it exactly once."""
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "outage",
                             *mlflow_sets(mlflow_server, "training.max_steps=200", "training.eval_every=50",
                                          "training.checkpoint_every=50")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "outage"
    try:
        wait_until(lambda: len(_steps(run_dir)) >= 20, "20 steps", 120, proc)
        mlflow_server.stop()
        down_at = len(_steps(run_dir))
        wait_until(lambda: len(_steps(run_dir)) >= down_at + 30, "30 steps with the server down", 120, proc)
    finally:
        mlflow_server.start()  # the same port and store; training may have ended meanwhile: it waits for us
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "server unreachable" in err
    run_id = run_id_of(run_dir)
    client = mlflow_server.client()
    assert history(client, run_id, "train/loss") == metric_lines(run_dir, "train/loss")
    assert len(history(client, run_id, "train/loss")) == 200
    assert client.get_run(run_id).info.status == "FINISHED"


def test_unreachable_server_exits_2_quickly_and_leaves_nothing(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    # "Quickly": one reachability check, not MLflow's minutes of HTTP retries, which would blow this timeout.
    r = cli("run", "--run-name", "nope", *sets("tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={dead}"),
            cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and dead in line and "tracking.required=false" in line
    assert not (tmp_path / "runs" / "nope").exists()


def test_not_required_trains_and_sync_delivers_later(mlflow_server, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is "down" for this run
    env = {"TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT": "0"}
    r = cli("run", "--run-name", "offline", *mlflow_sets(mlflow_server, "training.max_steps=8",
                                                         "tracking.required=false", f"tracking.mlflow.uri={down}"),
            cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "tracked-train sync" in r.stderr
    assert run_id_of(tmp_path / "runs" / "offline") is None  # never reached a server

    # Later, the server answers (here: MLFLOW_TRACKING_URI names where it is now).
    s = cli("sync", str(tmp_path / "runs" / "offline"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert s.returncode == 0, s.stderr
    run_id = run_id_of(tmp_path / "runs" / "offline")
    client = mlflow_server.client()
    assert [st for st, _ in history(client, run_id, "train/loss")] == list(range(1, 9))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).info.run_name == "offline"
    assert "checkpoints/last/checkpoint.pt" in all_artifacts(client, run_id)


@pytest.mark.parametrize("extra, needle", [
    (["tracking.mlflow.uri=ftp://example.org/x"], "unsupported scheme 'ftp'"),
])
def test_bad_uri_scheme_exit_2(tmp_path, extra, needle):
    r = cli("run", *sets("tracking.trackers=[jsonl, mlflow]", *extra), cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_deleted_experiment_exit_2_and_no_run_left(mlflow_server, tmp_path):
    client = mlflow_server.client()
    exp_id = client.create_experiment("gone")
    client.delete_experiment(exp_id)
    r = cli("run", "--run-name", "x", *mlflow_sets(mlflow_server, "tracking.experiment=gone"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "experiment 'gone' is deleted" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "x").exists()
    assert client.search_runs([exp_id], run_view_type=3) == []  # ViewType.ALL


def test_kill_9_then_local_resume_continues_the_same_run_exactly_once(mlflow_server, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "k9",
                             *mlflow_sets(mlflow_server, "training.max_steps=150", "training.eval_every=50",
                                          "training.checkpoint_every=20")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "k9"
    wait_until(lambda: len(_steps(run_dir)) >= 45, "45 steps", 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_id = run_id_of(run_dir)
    client = mlflow_server.client()
    assert client.get_run(run_id).info.status == "RUNNING"  # what a kill -9 leaves

    r = cli("resume", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert run_id_of(run_dir) == run_id
    server_loss = history(client, run_id, "train/loss")
    assert [s for s, _ in server_loss] == list(range(1, 151))  # each step exactly once
    assert server_loss == metric_lines(run_dir, "train/loss")
    assert [s for s, _ in history(client, run_id, "val/loss")] == [50, 100, 150]
    assert client.get_run(run_id).info.status == "FINISHED"
