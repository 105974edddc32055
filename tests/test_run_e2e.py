"""End to end through the CLI, in child processes, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import SHAKESPEARE, SIDE_BY_SIDE, cli, metric_lines, records, sets, wait_until

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

METRICS = {"train/loss", "train/lr", "train/perplexity", "train/grad_norm", "train/tokens_per_sec",
           "train/tokens_seen"}


@pytest.fixture(scope="module")
def shakespeare_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("shk")
    r = cli("run", "--run-name", "shk", *sets(
        "data.source=text", f"data.train_files={SHAKESPEARE / 'train.txt'}",
        f"data.valid_files={SHAKESPEARE / 'valid.txt'}", "tokenizer.vocab_size=512",
        "training.max_steps=60", "training.eval_every=10", "training.checkpoint_every=20", "training.lr=3e-3",
    ), cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd / "runs" / "shk", r


def test_shakespeare_val_loss_falls(shakespeare_run):
    run_dir, _ = shakespeare_run
    val = metric_lines(run_dir, "val/loss")
    assert [s for s, _ in val] == [10, 20, 30, 40, 50, 60]
    assert all(b < a for (_, a), (_, b) in zip(val, val[1:])), val
    assert val[-1][1] < val[0][1] - 0.3, val


def test_run_folder_contents_and_metrics_schema(shakespeare_run):
    run_dir, result = shakespeare_run
    for p in ["config.yaml", "metrics.jsonl", "train.log", "tokenizer/tokenizer.model"]:
        assert (run_dir / p).is_file(), p
    for kind in ["last", "best"]:
        names = {p.name for p in (run_dir / "checkpoints" / kind).iterdir()}
        assert names == {"checkpoint.pt", "config.yaml", "tokenizer.model", "manifest.json"}
    recs = records(run_dir)
    steps = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert all(METRICS <= r.keys() for r in steps)
    assert steps[-1]["train/tokens_seen"] == 60 * 8 * 64
    evals = [r for r in recs if "val/loss" in r]
    assert all(r["val/perplexity"] == pytest.approx(2.718281828 ** r["val/loss"], rel=1e-6) for r in evals)
    stop = recs[-1]
    assert stop["event"] == "stop" and stop["reason"] == "completed" and stop["step"] == 60
    assert stop["detail"].endswith(".") and stop["verdict"] in {"learning well", "learning slowly"}
    assert stop["best_step"] == 60
    log = (run_dir / "train.log").read_text()
    assert "Completed all 60 steps." in log and "train loss" in log and "%" in log
    assert "stopped: Completed all 60 steps. [stop_reason=completed]" in result.stderr  # said once
    assert " of training in all" in result.stderr  # the total wall time


def test_generate_from_run_folder(shakespeare_run):
    run_dir, _ = shakespeare_run
    r = cli("generate", str(run_dir), "--prompt", "KING", "--max-new-tokens", "30", cwd=run_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("KING") and len(r.stdout) > len("KING") + 20


def _last_checkpoint_step(run_dir):
    m = run_dir / "checkpoints" / "last" / "manifest.json"
    try:
        return json.loads(m.read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _steps_logged(run_dir):
    try:
        return [s for s, _ in metric_lines(run_dir)]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


RESUME = ("training.max_steps=60", "training.checkpoint_every=10", "training.eval_every=20",
          "model.dropout=0.1", "model.d_model=128", "training.precision=fp32")


def test_exact_resume_after_sigkill(tmp_path):
    """Kill -9 after a checkpoint, resume: the loss curve and weights equal an uninterrupted run's."""
    # The uninterrupted run trains beside the one to kill (two cores), not before it.
    env = {**os.environ, **SIDE_BY_SIDE}
    straight = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "a", *sets(*RESUME)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "b", *sets(*RESUME)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    b = tmp_path / "runs" / "b"
    wait_until(lambda: _last_checkpoint_step(b) >= 10 and max(_steps_logged(b), default=0) >= 12,
               "a checkpoint and two more steps", 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_steps_logged(b))
    assert killed_at < 60, "the run finished before it could be killed"
    assert _last_checkpoint_step(b) < killed_at  # some lines were logged after the checkpoint

    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err

    resumed = cli("resume", str(b), cwd=tmp_path, env=SIDE_BY_SIDE)  # the thread count a and b had
    assert resumed.returncode == 0, resumed.stderr
    assert metric_lines(b) == metric_lines(tmp_path / "runs" / "a")  # every step once, values equal
    wa = torch.load(tmp_path / "runs/a/checkpoints/last/checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(b / "checkpoints/last/checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    events = [r["event"] for r in records(b) if "event" in r]
    assert events.count("resume") == 1 and events[-1] == "stop"


def test_sigint_saves_and_resume_finishes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "c",
                             *sets("training.max_steps=100000", "training.eval_every=1000")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    c = tmp_path / "runs" / "c"
    wait_until(lambda: len(_steps_logged(c)) >= 3, "three steps", 120, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stop = records(c)[-1]
    assert stop["event"] == "stop" and stop["reason"] == "interrupted"
    assert _last_checkpoint_step(c) == stop["step"] == max(_steps_logged(c))
    assert "SIGINT: stopping after this step" in err  # acknowledged when it came, not when the step ended
    assert f"tracked-train resume {c.relative_to(tmp_path)}" in stop["detail"]  # the hint names the folder

    r = cli("resume", str(c), "--set", f"training.max_steps={stop['step'] + 3}", cwd=tmp_path)
    assert r.returncode == 2 and "--allow-config-change" in r.stderr  # drift is refused by default
    r = cli("resume", str(c), "--set", f"training.max_steps={stop['step'] + 3}", "--allow-config-change",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _steps_logged(c) == list(range(1, stop["step"] + 4))
    assert records(c)[-1]["reason"] == "completed"


def test_resume_refuses_a_truncated_checkpoint(tmp_path):
    assert cli("run", "--run-name", "d", *sets("training.max_steps=4"), cwd=tmp_path).returncode == 0
    pt = tmp_path / "runs/d/checkpoints/last/checkpoint.pt"
    pt.write_bytes(pt.read_bytes()[:1000])
    r = cli("resume", str(tmp_path / "runs/d"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line
    assert "does not match its manifest (truncated or modified)" in r.stderr
