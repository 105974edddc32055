"""Resume from what the MLflow server holds, into the same run, exactly; refuse untrusted checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SIDE_BY_SIDE, cli, metric_lines, sets, wait_until

from tracked_train.errors import CheckpointError
from tracked_train.mlflow.store import _safe_join

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

SLOW = ("model.d_model=128", "training.max_steps=160", "training.checkpoint_every=20", "training.eval_every=100",
        "model.dropout=0.1", "training.precision=fp32")


def mlflow_args(server, *extra):
    return sets("tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={server.uri}",
                "tracking.experiment=resume-tests", *extra)


def run_id_of(run_dir: Path) -> str | None:
    return json.loads((run_dir / "mlflow" / "state.json").read_text()).get("run_id")


def history(client, run_id, key="train/loss"):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def server_checkpoint_step(client, run_id, tmp: Path) -> int:
    try:
        path = client.download_artifacts(run_id, "checkpoints/last/manifest.json", str(tmp))
        return json.loads(Path(path).read_text())["step"]
    except Exception:  # noqa: BLE001 - not uploaded yet
        return 0


@pytest.fixture(scope="module")
def straight(mlflow_server, tmp_path_factory):
    """Run A, uninterrupted. It trains in the background: the first test trains its own run beside it (two
    cores), and each test waits for it (``straight()``, its folder) only where it needs it."""
    cwd = tmp_path_factory.mktemp("straight")
    client = mlflow_server.client()
    if client.get_experiment_by_name("resume-tests") is None:  # two runs starting at once would race to create it
        client.create_experiment("resume-tests")
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "A",
                             *mlflow_args(mlflow_server, *SLOW)],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **SIDE_BY_SIDE})

    def finished() -> Path:
        if proc.returncode is None:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
        assert proc.returncode == 0
        return cwd / "runs" / "A"

    yield finished
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_kill_9_delete_folder_resume_from_server_equals_straight_run(mlflow_server, straight, tmp_path):
    client = mlflow_server.client()
    machine1, machine2 = tmp_path / "m1", tmp_path / "m2"
    machine1.mkdir()
    machine2.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "B",
                             *mlflow_args(mlflow_server, *SLOW)],
                            cwd=machine1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **SIDE_BY_SIDE})  # beside A; the same thread count as A
    b = machine1 / "runs" / "B"
    wait_until(lambda: (b / "mlflow" / "state.json").exists() and run_id_of(b), "the MLflow run", 120, proc)
    run_id = run_id_of(b)
    wait_until(lambda: server_checkpoint_step(client, run_id, tmp_path / "poll") >= 40,
               "checkpoint 40 on the server", 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(history(client, run_id)) < 160, "the run finished before it could be killed"
    assert client.get_run(run_id).info.status == "RUNNING"
    shutil.rmtree(machine1)  # the first machine is gone

    r = cli("resume", f"mlflow:{run_id}", cwd=machine2, env={"MLFLOW_TRACKING_URI": mlflow_server.uri, **SIDE_BY_SIDE})
    assert r.returncode == 0, r.stderr
    a_dir = straight()  # A trained beside B meanwhile
    a_id = run_id_of(a_dir)
    assert history(client, run_id) == history(client, a_id)  # every step once, value for value
    assert [s for s, _ in history(client, run_id)] == list(range(1, 161))
    assert history(client, run_id, "val/loss") == history(client, a_id, "val/loss")
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.data.tags["stop_reason"] == "completed"
    wa = torch.load(a_dir / "checkpoints/last/checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(machine2 / "runs/B/checkpoints/last/checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _copy_run_with(client, src_run_id: str, tmp: Path, tamper) -> str:
    """A new run on the server whose checkpoints/last is the source's, modified by ``tamper(folder)``."""
    folder = Path(client.download_artifacts(src_run_id, "checkpoints/last", str(tmp)))
    tamper(folder)
    exp = client.get_experiment_by_name("resume-tests").experiment_id
    run = client.create_run(exp, run_name="tampered")
    for f in folder.iterdir():
        client.log_artifact(run.info.run_id, str(f), "checkpoints/last")
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_on_the_server_is_refused_before_it_runs(mlflow_server, straight, tmp_path):
    from tracked_train import checkpoint

    marker = tmp_path / "pwned"

    def plant(folder: Path):  # a consistent manifest: only weights_only stands in the way
        state = torch.load(folder / "checkpoint.pt", weights_only=True)
        state["payload"] = _Evil(str(marker))
        checkpoint.save(folder, state, {n: (folder / n).read_bytes() for n in ["config.yaml", "tokenizer.model"]})

    run_id = _copy_run_with(mlflow_server.client(), run_id_of(straight()), tmp_path / "dl", plant)
    for cmd in (["resume", f"mlflow:{run_id}"], ["generate", f"mlflow:{run_id}", "--prompt", "x"]):
        r = cli(*cmd, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server.uri,
                                          "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
        assert r.returncode == 2, r.stderr
        assert "refused" in r.stderr
    assert not marker.exists()


def test_byte_flipped_checkpoint_fails_the_manifest(mlflow_server, straight, tmp_path):
    def flip(folder: Path):
        data = bytearray((folder / "checkpoint.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "checkpoint.pt").write_bytes(bytes(data))

    run_id = _copy_run_with(mlflow_server.client(), run_id_of(straight()), tmp_path / "dl", flip)
    r = cli("resume", f"mlflow:{run_id}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert r.returncode == 2
    assert "does not match its manifest" in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_artifact_paths_that_escape_are_refused(tmp_path):
    assert _safe_join(tmp_path, "checkpoints/last/checkpoint.pt", "checkpoints/last") == tmp_path / "checkpoint.pt"
    for bad in ["checkpoints/last/../../../etc/passwd", "/etc/passwd", "checkpoints/last/a/b",
                "checkpoints/lastx/evil", "checkpoints/last/..", "checkpoints\\last\\x"]:
        with pytest.raises(CheckpointError, match="refused"):
            _safe_join(tmp_path, bad, "checkpoints/last")


def test_config_change_refused_then_recorded_and_fork_leaves_old_run_untouched(mlflow_server, straight, tmp_path):
    client = mlflow_server.client()
    a_id = run_id_of(straight())
    before = history(client, a_id)
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    r = cli("resume", f"mlflow:{a_id}", "--fork", "--set", "training.max_steps=170", "--set", "training.lr=5e-4",
            cwd=tmp_path, env=env)
    assert r.returncode == 2
    assert "training.max_steps: 160 -> 170" in r.stderr and "training.lr: 0.001 -> 0.0005" in r.stderr

    r = cli("resume", f"mlflow:{a_id}", "--fork", "--set", "training.max_steps=170", "--allow-config-change",
            cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    forks = client.search_runs([client.get_run(a_id).info.experiment_id],
                               filter_string=f"tags.resumed_from = '{a_id}'")
    assert len(forks) == 1
    fork = forks[0]
    assert json.loads(fork.data.tags["config_changes"]) == {"training.max_steps": [160, 170]}
    assert [s for s, _ in history(client, fork.info.run_id)] == list(range(161, 171))
    assert "config_changes.json" in [a.path for a in client.list_artifacts(fork.info.run_id)]
    assert history(client, a_id) == before  # the old run is untouched
    assert client.get_run(a_id).info.status == "FINISHED"


def test_generate_and_init_from_the_server(mlflow_server, straight, tmp_path):
    a_id = run_id_of(straight())
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    g = cli("generate", f"runs:/{a_id}", "--prompt", "Ada", "--max-new-tokens", "20", cwd=tmp_path, env=env)
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("Ada") and len(g.stdout) > 10

    r = cli("run", "--run-name", "ft", "--init-from", f"mlflow:{a_id}", "--tracker", "jsonl",
            *sets("training.max_steps=3", "model.d_model=96"), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    fresh = cli("run", "--run-name", "fresh", *sets("training.max_steps=3", "model.d_model=128"), cwd=tmp_path)
    assert fresh.returncode == 0
    first_ft = metric_lines(tmp_path / "runs" / "ft")[0]
    first_fresh = metric_lines(tmp_path / "runs" / "fresh")[0]
    assert first_ft[0] == 1 and first_ft[1] < first_fresh[1] - 1.0  # trained weights, new run from step 1
