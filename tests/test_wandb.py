"""The W&B backend in offline mode, read back with W&B's own reader (`wandb leet inspect --json`)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    artifacts,
    cli,
    config,
    flat_config,
    history,
    metric_lines,
    of_type,
    records,
    sets,
    summary,
    wandb_env,
    wandb_records,
)

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

SECRET = "canary-wb-7731"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("wandb")
    home = tmp_path_factory.mktemp("home")
    # The canary sits in the environment, in a secret config field and in URI credentials on the command line.
    r = cli("run", "--run-name", "wb run:1", *sets(
        "tracking.trackers=[jsonl, wandb]", "training.precision=fp32", "training.max_steps=12", "training.eval_every=5",
        "training.checkpoint_every=5", "tracking.wandb.group=g1", "tracking.wandb.tags=[tiny, cpu]",
        f"tracking.webhook.url=https://hooks.example/{SECRET}",
        f"tracking.mlflow.uri=http://alice:{SECRET}@127.0.0.1:1"),
        cwd=cwd, env=wandb_env(home, MY_SERVICE_TOKEN=SECRET, WANDB_PROJECT="tests"))
    assert r.returncode == 0, r.stderr
    run_dir = cwd / "runs" / "wb run:1"
    return run_dir, home, r, wandb_records(run_dir)


def test_history_one_record_per_step_with_the_same_values(offline_run):
    run_dir, _, _, recs = offline_run
    steps = [h["item"]["step"] for h in of_type(recs, "history")]
    assert steps == list(range(1, 13)) == [h["step"]["num"] for h in of_type(recs, "history")]
    assert history(recs, "train/loss") == metric_lines(run_dir, "train/loss")
    assert history(recs, "train/tokens_seen") == metric_lines(run_dir, "train/tokens_seen")
    assert history(recs, "val/loss") == metric_lines(run_dir, "val/loss")
    assert [s for s, _ in history(recs, "val/loss")] == [5, 10, 12]
    metrics = {m.get("glob_name") or m["name"]: m for m in of_type(recs, "metric")}
    assert metrics["train/*"]["step_metric"] == "step" == metrics["val/*"]["step_metric"]
    assert metrics["val/loss"]["summary"] == {"min": True}


def test_summary_config_and_exit(offline_run):
    run_dir, _, _, recs = offline_run
    stop = next(x for x in records(run_dir) if x.get("event") == "stop")
    s = summary(recs)
    assert s["stop_reason"] == "completed" and s["stop_detail"] == "Completed all 12 steps."
    assert s["stop_step"] == 12 and s["best_step"] == stop["best_step"] == 12  # numbers, not strings
    assert s["best_val_loss"] == stop["best_val_loss"] and s["verdict"] == stop["verdict"]
    assert s["val/loss"] == {"min": min(v for _, v in metric_lines(run_dir, "val/loss"))}
    assert of_type(recs, "exit") == [{"exit_code": 0, "runtime": of_type(recs, "exit")[0]["runtime"]}]

    run = of_type(recs, "run")[0]
    assert run["display_name"] == "wb run:1" and run["project"] == "tests"
    assert run["run_group"] == "g1" and run["tags"] == ["tiny", "cpu"]
    logged = next(x["params"] for x in records(run_dir) if x.get("event") == "params")
    cfg = flat_config(recs)
    assert cfg == logged  # the nested config W&B shows is the flattened config every backend gets
    splits = next(x["datasets"] for x in records(run_dir) if x.get("event") == "datasets")
    assert {d["context"]: d for d in splits} == config(recs)["datasets"]  # the data splits, beside the config
    assert cfg["model.d_model"] == 64 and cfg["training.max_steps"] == 12 and cfg["training.lr"] == 0.001
    assert cfg["tracking.webhook.url"] == "***" and cfg["tracking.mlflow.uri"] == "http://127.0.0.1:1"


def test_checkpoints_are_model_artifacts_with_best_and_latest(offline_run):
    from tracked_train import checkpoint

    run_dir, _, _, recs = offline_run
    stop = next(x for x in records(run_dir) if x.get("event") == "stop")
    arts = artifacts(recs)
    assert {a["name"] for a in arts} == {"wb-run-1"} and {a["type"] for a in arts} == {"model"}
    best = [a for a in arts if "best" in a["aliases"]]
    latest = [a for a in arts if "latest" in a["aliases"]]
    assert len(best) == 1 and json.loads(best[0]["metadata"])["val_loss"] == stop["best_val_loss"]
    last = arts[-1]  # logged last: "latest" ends on the last checkpoint
    meta = json.loads(last["metadata"])
    assert latest[-1] is last and meta["kind"] == "last" and meta["step"] == 12 and meta["tokens_seen"] == 6144
    for a in arts:
        files = {c["path"]: c for c in a["manifest"]["contents"]}
        assert {"checkpoint.pt", "manifest.json", "config.yaml", "tokenizer.model"} <= set(files)
        for c in files.values():  # what `wandb sync` will upload is there, byte for byte
            data = Path(c["local_path"]).read_bytes()
            assert base64.b64encode(hashlib.md5(data).digest()).decode() == c["digest"]
    # The artifact alone resumes or generates: its folder is a complete checkpoint (config and tokenizer inside).
    folder = Path(last["manifest"]["contents"][0]["local_path"]).parent
    assert checkpoint.load(folder)["step"] == 12
    g = cli("generate", str(folder), "--prompt", "Ada", "--max-new-tokens", "8", cwd=run_dir.parent)
    assert g.returncode == 0 and g.stdout.startswith("Ada"), g.stderr


def test_no_secret_in_any_wandb_file(offline_run):
    run_dir, home, r, recs = offline_run
    files = [f for root in (run_dir / "wandb-files", home) for f in root.rglob("*") if f.is_file()]
    assert any(f.suffix == ".wandb" for f in files) and any(f.name == "output.log" for f in files)
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in json.dumps(recs)
    assert not any(r_["type"] == "files" and "wandb-metadata.json" in json.dumps(r_) for r_ in recs)
    assert "wandb sync" in r.stderr  # where the offline run is, and how to upload it


def test_online_without_credentials_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_MODE")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_MODE="online")
    r = subprocess.run([sys.executable, "-m", "tracked_train", "run", "--run-name", "online",
                        *sets("tracking.trackers=[jsonl, wandb]")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "WANDB_API_KEY" in line and "WANDB_MODE=offline" in line
    assert not (tmp_path / "runs" / "online").exists()


def test_resume_continues_the_same_run(offline_run, tmp_path):
    """A resumed run is a second segment of the same W&B run; `wandb sync` of the folder uploads both."""
    run_dir, home, _, first = offline_run
    copy = tmp_path / "runs" / "copy"
    shutil.copytree(run_dir, copy)  # keep the module's run as it was
    r = cli("resume", str(copy), "--set", "training.max_steps=16", "--allow-config-change", cwd=tmp_path,
            env=wandb_env(home))
    assert r.returncode == 0, r.stderr
    segments = sorted((copy / "wandb-files" / "wandb").glob("offline-run-*"))
    assert len(segments) == 2
    recs = wandb_records(copy)
    runs = of_type(recs, "run")
    assert runs[0]["run_id"] == runs[1]["run_id"] == of_type(first, "run")[0]["run_id"] and runs[1]["resume"]
    steps = [h["item"]["step"] for h in of_type(recs, "history")]
    assert steps == list(range(1, 17))  # each step once, across both segments
    assert history(recs, "train/loss") == metric_lines(copy, "train/loss")
    s = summary(recs)
    assert s["stop_step"] == 16 and s["stop_reason"] == "completed" and "training.max_steps" in s["config_changes"]
    assert json.loads(artifacts(recs)[-1]["metadata"])["step"] == 16


def test_disabled_mode_records_nothing(tmp_path, monkeypatch):
    import wandb

    from tracked_train.config import Config
    from tracked_train.early_stopping import Stop
    from tracked_train.trackers import Outcome, RunInfo
    from tracked_train.trackers.wandb_tracker import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb.teardown()  # settings are read at setup: start from this environment
    try:
        t = WandbTracker()
        t.start(RunInfo.of(Config(), "off", tmp_path))
        t.log_params(Config().flat())
        t.log_metrics({"train/loss": 1.0}, 1)
        t.finish(Outcome(Stop("completed", "Completed all 1 steps.", 1)))
        assert t.state() == {} and list(tmp_path.iterdir()) == []
    finally:
        wandb.teardown()


def test_without_the_wandb_package_says_what_to_install(tmp_path, monkeypatch):
    from tracked_train.config import Config
    from tracked_train.errors import UserError
    from tracked_train.trackers import RunInfo, create

    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees when it is not installed
    with pytest.raises(UserError, match="pip install wandb"):
        create("wandb").start(RunInfo.of(Config(), "x", tmp_path))


def test_kill_9_then_resume_leaves_every_step_of_metrics_jsonl_in_wandb_once(tmp_path):
    """W&B's writer buffers: a kill -9 loses the last rows of the offline segment. The resumed run reads the
    segment back (W&B's reader) and logs the steps it lacks from metrics.jsonl, in order, before new steps."""
    from tracked_train.testing import wait_until

    env = {**os.environ, **wandb_env(tmp_path / "home")}
    args = sets("tracking.trackers=[jsonl, wandb]", "training.max_steps=80", "training.eval_every=5",
                "training.checkpoint_every=20")
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "killed", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "killed"

    def logged() -> list[int]:
        try:
            return [s for s, _ in metric_lines(run_dir)]
        except (OSError, ValueError):  # not written yet, or a line being written
            return []

    def checkpoint() -> int:
        try:
            return json.loads((run_dir / "checkpoints" / "last" / "manifest.json").read_text())["step"]
        except (OSError, ValueError):
            return 0

    wait_until(lambda: checkpoint() >= 20 and max(logged(), default=0) >= 23, "a checkpoint and 3 more steps",
               300, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = max(logged())
    assert checkpoint() < killed_at < 80
    held = {h["item"]["step"] for h in of_type(wandb_records(run_dir), "history")}
    lost = sorted(set(range(1, checkpoint() + 1)) - held)  # what only a replay can bring back

    r = cli("resume", str(run_dir), cwd=tmp_path, env=wandb_env(tmp_path / "home"))
    assert r.returncode == 0, r.stderr
    assert len(sorted((run_dir / "wandb-files" / "wandb").glob("offline-run-*"))) == 2
    recs = wandb_records(run_dir)
    steps = [h["item"]["step"] for h in of_type(recs, "history")]
    assert steps == list(range(1, 81)), f"lost by the kill: {lost}"  # each step once, in order
    for key in ("train/loss", "train/tokens_seen", "train/lr", "val/loss", "val/nats_per_char"):
        assert history(recs, key) == metric_lines(run_dir, key), key
    if lost:
        assert f"{len(lost)} steps ({lost[0]}-{lost[-1]})" in r.stderr and "logged again" in r.stderr, r.stderr
