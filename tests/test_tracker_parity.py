"""One contract, every backend: the same short run, recorded by each backend, reads back the same.

Each backend is read back with its own reader (metrics.jsonl, MlflowClient, `wandb leet inspect`, TensorBoard's
EventAccumulator), then compared with what the training loop handed the trackers and with a run that had no
backend but jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    SIDE_BY_SIDE,
    artifacts,
    flat_config,
    float32,
    history,
    metric_lines,
    records,
    sets,
    summary,
    tensorboard_events,
    wandb_env,
    wandb_records,
)

from tracked_train.config import Config, tracker_key
from tracked_train.early_stopping import Stop
from tracked_train.trackers import Outcome, RunInfo, Trackers
from tracked_train.trackers.jsonl import JsonlTracker
from tracked_train.trackers.tensorboard_tracker import TensorboardTracker

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

BACKENDS = ["jsonl", "mlflow", "wandb", "tensorboard"]
CHECKPOINT_FILES = {"checkpoint.pt", "manifest.json", "config.yaml", "tokenizer.model"}
# Config keys that say where a run is recorded: they differ between the runs on purpose.
WHERE = {"run.name", "tracking.trackers", "tracking.experiment"}


def how(params: dict) -> dict:
    """What a run's params say about how it trains: not where it is recorded (WHERE, and each tracker's own
    section, tracking.<name>.*, which only the runs that use that tracker have)."""
    return {k: v for k, v in params.items() if k not in WHERE and not tracker_key(k)}


@dataclass
class Seen:
    """What a backend holds about a run, in backend-neutral form."""

    params: dict[str, object]
    train_loss: list[tuple[int, float]]
    stop_reason: str
    checkpoints: dict[str, set[str]] | None  # "best"/"last" -> file names; None: the backend keeps no files


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


def as_held(backend: str, params: dict, metric: list[tuple[int, float]]) -> tuple[dict, list[tuple[int, float]]]:
    """What a backend can hold of the loop's params and metric: TensorBoard's hparams have no null (an unset
    key is absent) and its scalars are float32."""
    if backend != "tensorboard":
        return params, metric
    return {k: v for k, v in params.items() if v is not None}, float32(metric)


def _start(backend: str, cwd: Path, home: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tracked_train", "run", "--run-name", f"parity-{backend}",
         *sets("training.precision=fp32", "training.max_steps=8", "training.eval_every=4",
               "training.checkpoint_every=4", *extra)],
        cwd=cwd, env={**os.environ, **SIDE_BY_SIDE, **wandb_env(home)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The same 8 steps, once per backend; the MLflow server starts while the other two train."""
    cwd = tmp_path_factory.mktemp("parity")
    home = tmp_path_factory.mktemp("home")
    procs = {"jsonl": _start("jsonl", cwd, home, "tracking.trackers=[jsonl]"),
             "wandb": _start("wandb", cwd, home, "tracking.trackers=[jsonl, wandb]"),
             "tensorboard": _start("tensorboard", cwd, home, "tracking.trackers=[jsonl, tensorboard]")}
    server = request.getfixturevalue("mlflow_server")
    procs["mlflow"] = _start("mlflow", cwd, home, "tracking.trackers=[jsonl, mlflow]",
                             f"tracking.mlflow.uri={server.uri}", "tracking.experiment=parity")
    # Values read back from the device every 3 steps (and at evaluations): each tracker holds each step's own.
    procs["readback"] = _start("readback", cwd, home, "tracking.trackers=[jsonl, mlflow, wandb]", "logging.every=3",
                               f"tracking.mlflow.uri={server.uri}", "tracking.experiment=parity")
    errs = {b: p.communicate(timeout=300)[1] for b, p in procs.items()}
    for b, p in procs.items():
        assert p.returncode == 0, errs[b]
    return {b: cwd / "runs" / f"parity-{b}" for b in procs}


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


def read_tensorboard(run_dir: Path, _server) -> Seen:
    scalars, texts, hparams = tensorboard_events(run_dir)
    return Seen(normed(hparams), scalars["train/loss"], texts["stop_reason"][-1][1], None)


READERS = {"jsonl": read_jsonl, "mlflow": read_mlflow, "wandb": read_wandb, "tensorboard": read_tensorboard}


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_holds_what_the_loop_sent(backend, runs, mlflow_server):
    run_dir = runs[backend]
    seen = READERS[backend](run_dir, mlflow_server)
    sent, loss = as_held(backend, next(r["params"] for r in records(run_dir) if r.get("event") == "params"),
                         metric_lines(run_dir))

    assert seen.params == normed(sent)
    assert seen.train_loss == loss and [s for s, _ in seen.train_loss] == list(range(1, 9))
    assert seen.stop_reason == "completed"
    if seen.checkpoints is not None:
        assert seen.checkpoints.keys() == {"best", "last"}
        assert all(CHECKPOINT_FILES <= files for files in seen.checkpoints.values()), seen.checkpoints


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_each_other(backend, runs, mlflow_server):
    """Same seed, same config: every backend holds the jsonl-only run's losses and params."""
    seen = READERS[backend](runs[backend], mlflow_server)
    reference = read_jsonl(runs["jsonl"], mlflow_server)
    sent = next(r["params"] for r in records(runs["jsonl"]) if r.get("event") == "params")
    params, loss = as_held(backend, sent, reference.train_loss)
    assert seen.train_loss == loss
    assert how(seen.params) == how(normed(params))
    # Each run's params hold the own settings of the trackers it used, not of the others.
    assert {tracker_key(k)[0] for k in seen.params if tracker_key(k)} == ({backend} & {"mlflow", "wandb"})
    assert seen.params["tracking.trackers"] == str(["jsonl", backend] if backend != "jsonl" else ["jsonl"])


@pytest.mark.parametrize("backend", ["jsonl", "mlflow", "wandb"])
def test_values_read_back_every_3_steps_reach_each_backend_as_read_every_step(backend, runs, mlflow_server):
    seen = READERS[backend](runs["readback"], mlflow_server)
    assert seen.train_loss == read_jsonl(runs["jsonl"], mlflow_server).train_loss  # bit for bit, at its step
    assert [s for s, _ in seen.train_loss] == list(range(1, 9)) and seen.stop_reason == "completed"


def test_tensorboard_holds_every_metric_at_its_step(runs):
    """Not only train/loss: each of metrics.jsonl's series, the best values and the end-of-run tags as text."""
    run_dir = runs["tensorboard"]
    scalars, texts, _ = tensorboard_events(run_dir)
    recs = records(run_dir)
    names = {k for r in recs if "event" not in r for k in r} - {"step", "time"}
    assert {"train/loss", "val/loss", "val/nats_per_char"} <= names
    for name in names:
        assert scalars[name] == float32(metric_lines(run_dir, name)), name
    stop = next(r for r in recs if r.get("event") == "stop")
    assert scalars["best/val_loss"] == float32([(8, stop["best_val_loss"])])
    assert texts["stop_reason"] == [(8, "completed")] and texts["verdict"] == [(8, stop["verdict"])]


def test_tensorboard_resume_shows_each_step_once_as_jsonl_does(tmp_path):
    """Interrupted at step 8, resumed from step 4 with other values (a rewind), then a resume that never trained:
    TensorBoard's reader holds every step once, with the values metrics.jsonl holds."""
    cfg = Config()

    def attempt(start: int, steps: range, scale: float, rewind: bool = False, stop: str | None = "completed"):
        trackers = Trackers([JsonlTracker(), TensorboardTracker()])
        trackers.start(RunInfo.of(cfg, "r", tmp_path, start_step=start, resume_state={} if start else None,
                                      continuing=start > 0, rewind=rewind))
        if not start:
            trackers.log_params(cfg.flat())
        for step in steps:
            trackers.log_metrics({"train/loss": scale / step}, step)
            if step % 4 == 0:
                trackers.log_artifact(tmp_path, "checkpoints/last")
        if stop is None:
            trackers.abort()
        else:
            trackers.finish(Outcome(Stop(stop, "done.", steps[-1]), 4, 0.5))

    attempt(0, range(1, 9), 1.0, stop="interrupted")
    attempt(4, range(5, 11), 3.0, rewind=True)
    scalars, texts, hparams = tensorboard_events(tmp_path)
    assert scalars["train/loss"] == float32(metric_lines(tmp_path))
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 11)) and scalars["train/loss"][5][1] == 0.5
    assert texts["stop_reason"][-1] == (10, "completed")  # text is a record: the first segment's stop may show too
    assert hparams["training.lr"] == cfg.training.lr

    attempt(6, range(0), 1.0, stop=None)
    assert tensorboard_events(tmp_path)[0]["train/loss"] == scalars["train/loss"]
