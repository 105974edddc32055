"""Shared helpers: the tiny model every end-to-end test trains, a CLI runner, a real MLflow server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracked_train.testing import MlflowServer, free_port, wait_until  # noqa: F401 - re-exported to tests

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shakespeare"

# A model small enough to step in a few ms on 2 CPU cores.
TINY = [
    "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.seq_len=64",
    "tokenizer.vocab_size=384", "data.builtin_chars=120000", "training.batch_size=8",
    "training.warmup_steps=5", "training.eval_batches=4", "console.progress=lines",
    "tracking.trackers=jsonl", "training.precision=fp32",  # bf16 autocast costs more than it saves this small
]


# For training processes started side by side: one thread each. Two processes with two OpenMP threads each on
# two cores step several times slower than one thread each (threads spin waiting for a descheduled peer).
# Runs whose losses or weights are compared bit for bit all get it: the thread count can change the last bits.
SIDE_BY_SIDE = {"OMP_NUM_THREADS": "1"}


def sets(*pairs: str) -> list[str]:
    out = []
    for p in (*TINY, *pairs):
        out += ["--set", p]
    return out


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """One tokenizer/token cache for the whole session (tokenizers train once)."""
    os.environ["TRACKED_TRAIN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)  # it names the experiment of every run the tests start


@pytest.fixture(autouse=True)
def _package_logger_as_found():
    """In-process CLI calls (click's CliRunner) set the package's logger up for a terminal; caplog in the
    tests after them needs it as it was."""
    import logging

    log = logging.getLogger("tracked_train")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    yield
    log.handlers[:] = handlers
    log.propagate, log.level = propagate, level


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m tracked_train ARGS`` in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "tracked_train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def metric_lines(run_dir: Path, name: str = "train/loss") -> list[tuple[int, float]]:
    return [(r["step"], r[name]) for r in records(run_dir) if name in r]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


def tensorboard_events(run_dir: Path) -> tuple[dict[str, list], dict[str, list], dict[str, object]]:
    """Scalars, texts and hparams of a run, as TensorBoard's own reader sees them (a resume's purge applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = {tag.removesuffix("/text_summary"): [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
                                                 for e in acc.Tensors(tag)]
             for tag in acc.Tags()["tensors"] if tag.endswith("/text_summary")}
    start = metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG])
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return scalars, texts, hparams


def float32(pairs: list[tuple[int, float]]) -> list[tuple[int, float]]:
    import numpy as np

    return [(step, float(np.float32(v))) for step, v in pairs]


# --- W&B offline runs, read back with W&B's own reader (`wandb leet inspect`) ---

def wandb_env(home: Path, **extra: str) -> dict[str, str]:
    """Offline, with HOME and W&B's config folder in ``home``: no user settings or keys leak in or out."""
    return {"WANDB_MODE": "offline", "HOME": str(home), "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
            **extra}


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's .wandb logs (resumed segments in order), parsed by W&B itself."""
    segments = sorted((run_dir / "wandb-files" / "wandb").glob("*run-*"))
    assert segments, f"no W&B run under {run_dir}"
    out = []
    for seg in segments:
        r = subprocess.run([shutil.which("wandb") or "wandb", "leet", "inspect", "--json", str(seg)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out += [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return out


def of_type(recs: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in recs if r["type"] == kind]


def history(recs: list[dict], key: str) -> list[tuple[int, float]]:
    return [(h["item"]["step"], h["item"][key]) for h in of_type(recs, "history") if key in h["item"]]


def summary(recs: list[dict]) -> dict:
    out: dict = {}
    for s in of_type(recs, "summary"):
        out.update(s["update"])
    return out


def config(recs: list[dict]) -> dict:
    out: dict = {}
    for c in [r["run"]["config"] for r in recs if r["type"] == "run"] + of_type(recs, "config"):
        out.update(c["update"])
    return out


def flat_config(recs: list[dict]) -> dict:
    """The run's config as dotted keys; W&B's own keys and the data splits (``datasets``) left out."""
    out = {}
    for s, vals in config(recs).items():
        if s.startswith("_") or s == "datasets":
            continue
        out.update({f"{s}.{k}": v for k, v in vals.items()} if isinstance(vals, dict) else {s: vals})  # `task`
    return out


def artifacts(recs: list[dict]) -> list[dict]:
    return of_type(recs, "artifact")


def tracker_keys() -> list[str]:
    """``tracking.<name>.<field>`` of every installed tracker's own settings."""
    import dataclasses

    from tracked_train.trackers.base import available, settings_class

    return [f"tracking.{name}.{f.name}" for name in available() for f in dataclasses.fields(settings_class(name))]
