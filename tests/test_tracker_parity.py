"""One contract, every backend: the same short run recorded by jsonl, MLflow and W&B (offline) reads back the same.

Each backend is read back with its own reader (metrics.jsonl, MlflowClient, `wandb leet inspect`), then
compared with what the training loop handed the trackers and with a run that had no backend but jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import metric_lines, records, sets
from test_wandb import artifacts, flat_config, history, summary, wandb_env, wandb_records

BACKENDS = ["jsonl", "mlflow", "wandb"]
CHECKPOINT_FILES = {"checkpoint.pt", "manifest.json", "config.yaml", "tokenizer.model"}
# Config keys that say where a run is recorded: they differ between the runs on purpose.
WHERE = {"run.name", "tracking.trackers", "tracking.mlflow_uri", "tracking.experiment"}


@dataclass
class Seen:
    """What a backend holds about a run, in backend-neutral form."""

    params: dict[str, object]
    train_loss: list[tuple[int, float]]
    stop_reason: str
    checkpoints: dict[str, set[str]]  # "best"/"last" -> file names


def norm(value: object) -> object:
    """MLflow keeps params as strings, W&B and jsonl keep types: compare them as MLflow would show them."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return str(value)


def normed(params: dict) -> dict:
    return {k: norm(v) for k, v in params.items()}


def _start(backend: str, cwd: Path, home: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tracked_train", "run", "--run-name", f"parity-{backend}",
         *sets("training.precision=fp32", "training.max_steps=8", "training.eval_every=4",
               "training.checkpoint_every=4", *extra)],
        cwd=cwd, env={**os.environ, **wandb_env(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The same 8 steps, once per backend; the MLflow server starts while the other two train."""
    cwd = tmp_path_factory.mktemp("parity")
    home = tmp_path_factory.mktemp("home")
    procs = {"jsonl": _start("jsonl", cwd, home, "tracking.trackers=[jsonl]"),
             "wandb": _start("wandb", cwd, home, "tracking.trackers=[jsonl, wandb]")}
    server = request.getfixturevalue("mlflow_server")
    procs["mlflow"] = _start("mlflow", cwd, home, "tracking.trackers=[jsonl, mlflow]",
                             f"tracking.mlflow_uri={server.uri}", "tracking.experiment=parity")
    errs = {b: p.communicate(timeout=300)[1] for b, p in procs.items()}
    for b, p in procs.items():
        assert p.returncode == 0, errs[b]
    return {b: cwd / "runs" / f"parity-{b}" for b in BACKENDS}


def read_jsonl(run_dir: Path, _server) -> Seen:
    recs = records(run_dir)
    params = next(r["params"] for r in recs if r.get("event") == "params")
    stop = next(r for r in recs if r.get("event") == "stop")
    logged = {r["path"] for r in recs if r.get("event") == "artifact"}
    ckpts = {k: {f.name for f in (run_dir / "checkpoints" / k).iterdir()}
             for k in ("best", "last") if f"checkpoints/{k}" in logged}
    return Seen(normed(params), metric_lines(run_dir), stop["reason"], ckpts)


def read_mlflow(run_dir: Path, server) -> Seen:
    client = server.client()
    run_id = json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"]
    run = client.get_run(run_id)
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    ckpts = {k: {Path(a.path).name for a in client.list_artifacts(run_id, f"checkpoints/{k}")}
             for k in ("best", "last")}
    return Seen(normed(run.data.params), loss, run.data.tags["stop_reason"], ckpts)


def read_wandb(run_dir: Path, _server) -> Seen:
    recs = wandb_records(run_dir)
    arts = artifacts(recs)
    ckpts = {}
    for kind in ("best", "last"):
        logged = [a for a in arts if json.loads(a["metadata"])["kind"] == kind]
        if logged:
            ckpts[kind] = {c["path"] for c in logged[-1]["manifest"]["contents"]}
    return Seen(normed(flat_config(recs)), history(recs, "train/loss"), summary(recs)["stop_reason"], ckpts)


READERS = {"jsonl": read_jsonl, "mlflow": read_mlflow, "wandb": read_wandb}


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_holds_what_the_loop_sent(backend, runs, mlflow_server):
    run_dir = runs[backend]
    seen = READERS[backend](run_dir, mlflow_server)
    sent = next(r["params"] for r in records(run_dir) if r.get("event") == "params")

    assert seen.params == normed(sent)
    assert seen.train_loss == metric_lines(run_dir) and [s for s, _ in seen.train_loss] == list(range(1, 9))
    assert seen.stop_reason == "completed"
    assert seen.checkpoints.keys() == {"best", "last"}
    assert all(CHECKPOINT_FILES <= files for files in seen.checkpoints.values()), seen.checkpoints


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_each_other(backend, runs, mlflow_server):
    """Same seed, same config: every backend holds the jsonl-only run's losses and params."""
    seen = READERS[backend](runs[backend], mlflow_server)
    reference = read_jsonl(runs["jsonl"], mlflow_server)
    assert seen.train_loss == reference.train_loss
    assert {k: v for k, v in seen.params.items() if k not in WHERE} == \
           {k: v for k, v in reference.params.items() if k not in WHERE}
    assert seen.params["tracking.trackers"] == str(["jsonl", backend] if backend != "jsonl" else ["jsonl"])
