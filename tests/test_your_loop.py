"""tracked_train.Run in a plain PyTorch script: docs/your-loop.md's script run as written, in real processes,
against a real MLflow server: killed with -9 and run again, the server down for the rest of a run then `sync`,
an exception, a signal; bad input in this process.

A hook file wraps the script (``hook.py SCRIPT ARGS``) to act at a given logged step: SIGKILL itself, raise,
SIGTERM itself, or stop the MLflow server: real signals at deterministic points, the script itself unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MlflowServer, records

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

DOC = Path(__file__).resolve().parents[1] / "docs" / "your-loop.md"
HOOK = '''
import os, runpy, signal, sys
import tracked_train.your_loop as y
at, what = int(os.environ["HOOK_AT"]), os.environ["HOOK_DO"]
log = y.Run.log
def hooked(self, metrics, step):
    log(self, metrics, step)
    if step == at and "train/loss" in metrics:
        if what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif what == "raise":
            raise ValueError("boom: cannot reach https://bob:hunter2@db.example/x?token=hunter2")
        elif what == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif what == "server-down":
            os.killpg(int(os.environ["SERVER_PGID"]), signal.SIGKILL)
y.Run.log = hooked
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("your-loop")
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    (tmp / "train.py").write_text(code)
    (tmp / "hook.py").write_text(HOOK)
    return tmp


def python(tmp: Path, run: str, uri: str, hook: tuple[str, int] | None = None, env: dict | None = None):
    args = [str(tmp / "hook.py")] if hook else []
    extra = {"HOOK_DO": hook[0], "HOOK_AT": str(hook[1])} if hook else {}
    return subprocess.run([sys.executable, *args, str(tmp / "train.py"), run], cwd=tmp, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                                       "TRACKED_TRAIN_TRACKING_EXPERIMENT": "your-loop",
                                                       **extra, **(env or {})})


def losses(run_dir: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records(run_dir) if key in r]


def mlflow_run(client, run_dir: Path):
    runs = client.search_runs([client.get_experiment_by_name("your-loop").experiment_id],
                              filter_string=f"attributes.run_name = '{run_dir.name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]  # one MLflow run, however often the script ran
    return runs[0]


def history(client, run, key: str = "train/loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def uninterrupted(script, mlflow_server) -> Path:
    r = python(script, "runs/a", mlflow_server.uri)
    assert r.returncode == 0, r.stderr
    return script / "runs" / "a"


def test_killed_with_sigkill_and_run_again_it_is_one_run_with_the_uninterrupted_values(script, mlflow_server,
                                                                                       uninterrupted):
    r = python(script, "runs/b", mlflow_server.uri, hook=("kill", 25))
    assert r.returncode == -9
    b = script / "runs" / "b"
    assert max(s for s, _ in losses(b)) == 25 and (b / "checkpoints" / "last").is_dir()
    r = python(script, "runs/b", mlflow_server.uri)
    assert r.returncode == 0, r.stderr
    assert "continuing from the checkpoint of step 20" in r.stderr
    expected = losses(uninterrupted)
    assert [s for s, _ in expected] == list(range(1, 61))
    assert losses(b) == expected  # each step once, the values of a run never interrupted
    assert losses(b, "val/loss") == losses(uninterrupted, "val/loss")
    client = mlflow_server.client()
    run = mlflow_run(client, b)
    assert history(client, run) == expected  # the server holds exactly what metrics.jsonl holds
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    assert run.data.params == {"lr": "0.01", "steps": "60"}
    assert run.data.tags["verdict"] == "learning well"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert names == {"checkpoints/best", "checkpoints/last"}


def test_the_server_down_for_the_rest_of_the_run_loses_nothing_and_sync_delivers_it(script, tmp_path,
                                                                                  uninterrupted):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        r = python(script, "runs/c", server.uri, hook=("server-down", 15),
                   env={"SERVER_PGID": str(os.getpgid(server.proc.pid)), "TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT": "2"})
        assert r.returncode == 0, r.stderr  # an outage never costs the training
        c = script / "runs" / "c"
        assert losses(c) == losses(uninterrupted)
        server.proc.wait()  # killed by the hook with its whole process group
        server.start()  # the same store, back after the run
        s = subprocess.run([sys.executable, "-m", "tracked_train", "sync", str(c)], cwd=script, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": server.uri})
        assert s.returncode == 0, s.stderr
        client = server.client()
        run = mlflow_run(client, c)
        assert history(client, run) == losses(uninterrupted)
        assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    finally:
        server.stop()


def test_an_exception_in_the_loop_fails_the_run_with_what_was_raised(script, mlflow_server):
    r = python(script, "runs/e", mlflow_server.uri, hook=("raise", 15))
    assert r.returncode == 1 and "ValueError: boom" in r.stderr  # the exception goes on up to the script
    run = mlflow_run(mlflow_server.client(), script / "runs" / "e")
    assert run.info.status == "FAILED" and run.data.tags["stop_reason"] == "failed"
    assert run.data.tags["stop_detail"] == ("Failed at step 15: ValueError: boom: cannot reach "
                                            "https://***@db.example/x?token=***")
    assert "hunter2" not in run.data.tags["stop_detail"]
    stop = [x for x in records(script / "runs" / "e") if x.get("event") == "stop"][-1]
    assert stop["reason"] == "failed" and "hunter2" not in stop["detail"]


def test_sigterm_sets_should_stop_and_the_run_ends_killed_then_continues(script, mlflow_server, uninterrupted):
    r = python(script, "runs/t", mlflow_server.uri, hook=("term", 33))
    t = script / "runs" / "t"
    assert r.returncode == 0, r.stderr  # the loop left on run.should_stop
    assert max(s for s, _ in losses(t)) == 33
    client = mlflow_server.client()
    run = mlflow_run(client, t)
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "interrupted"
    assert "SIGTERM at step 33" in run.data.tags["stop_detail"]
    assert python(script, "runs/t", mlflow_server.uri).returncode == 0
    run = mlflow_run(client, t)
    assert run.info.status == "FINISHED" and history(client, run) == losses(uninterrupted) == losses(t)


# --- bad input, in this process ---------------------------------------------------------------------------

def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    import torch

    import tracked_train
    from tracked_train.errors import UserError

    (tmp_path / "a-file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    cases = [
        (dict(run_dir=tmp_path / "a-file"), "is a file, not a run folder"),
        (dict(run_dir=tmp_path / "other"), "holds other files and is not a run folder"),
        (dict(run_dir=tmp_path / "new", config={"opt": {"fn": print}}), "config value opt.fn is a"),
        (dict(run_dir=tmp_path / "new", trackers=["mlfow"]), "unknown tracker 'mlfow'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message) as e:
            tracked_train.Run(**kwargs).start()
        assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "other"]
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]

    with tracked_train.Run(tmp_path / "ok", {"lr": 0.1}) as run:
        run.log({"train/loss": 1.0}, step=1)
        with pytest.raises(TypeError, match=r"state\['opt'\]\['momentum'\] is a ndarray"):
            import numpy as np

            run.save_checkpoint({"opt": {"momentum": np.zeros(3)}})
        assert not (tmp_path / "ok" / "checkpoints").exists()
        with pytest.raises(ValueError, match="step 0 comes after step 1"):
            run.log({"train/loss": 1.0}, step=0)
        with pytest.raises(TypeError, match="metric 'train/loss' is a str"):
            run.log({"train/loss": "low"}, step=2)
        with pytest.raises(ValueError, match="unknown stop reason 'done'"):
            run.stop("done")
        for name in ("../x", "/etc/x", "a/../../b"):  # an artifact name never chooses where files go
            with pytest.raises(ValueError, match="is not a name"):
                run.log_artifact(tmp_path / "ok" / "config.yaml", name)
        run.save_checkpoint({"w": torch.ones(2)}, step=1)
        run.stop("target_reached", "loss 1.0 <= 1.0")
    stop = [r for r in records(tmp_path / "ok") if r.get("event") == "stop"][-1]
    assert (stop["reason"], stop["detail"]) == ("target_reached", "loss 1.0 <= 1.0")
    with tracked_train.Run(tmp_path / "ok") as again:  # the same folder continues
        assert again.start_step == 1 and torch.equal(again.resume_state()["w"], torch.ones(2))
        with pytest.raises(ValueError, match="continue at run.start_step \\+ 1 = 2"):
            again.log({"train/loss": 0.5}, step=1)
        with pytest.raises(UserError, match="in use by"):
            tracked_train.Run(tmp_path / "ok").start()  # one process (or Run) per folder


def test_wandb_offline_holds_what_metrics_jsonl_holds_after_the_folder_is_opened_again(tmp_path, monkeypatch):
    from conftest import flat_config, history, wandb_env, wandb_records

    import tracked_train

    for k, v in wandb_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    run_dir = tmp_path / "w"
    with tracked_train.Run(run_dir, {"opt": {"lr": 0.1}}, trackers=["wandb"]) as run:
        for step in range(1, 7):
            run.log({"train/loss": 1.0 / step}, step=step)
            if step == 4:
                run.save_checkpoint({"step": step}, step=step)
    with tracked_train.Run(run_dir, trackers=["wandb"]) as run:  # continues from step 4: 5 and 6 come again
        for step in range(run.start_step + 1, 9):
            run.log({"train/loss": 1.0 / step}, step=step)
    expected = [(r["step"], r["train/loss"]) for r in records(run_dir) if "train/loss" in r]
    assert [s for s, _ in expected] == list(range(1, 9))
    recs = wandb_records(run_dir)
    assert history(recs, "train/loss") == expected  # each step once, read back by W&B's own reader
    assert flat_config(recs)["opt.lr"] == 0.1
