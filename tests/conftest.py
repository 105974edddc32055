"""Shared helpers: the tiny model every end-to-end test trains, a CLI runner, a real MLflow server."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
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
    from tracked_train.trackers.base import available, settings_class

    return [f"tracking.{name}.{f.name}" for name in available() for f in dataclasses.fields(settings_class(name))]


# --- the tiny tasks of tests/tiny_task.py, run in this process (test_tasks_inprocess.py, test_keep_checkpoints.py)

TINY_TASK_FILE = Path(__file__).resolve().parent / "tiny_task.py"


def task_spec(name: str) -> str:
    """``task:`` naming one of tests/tiny_task.py's tasks by its file, as a user names theirs."""
    return f"{TINY_TASK_FILE}:{name}"


TINY_TASK = task_spec("TinyTask")
TASK_BASE = ["tracking.trackers=jsonl", "console.progress=lines", "training.device=cpu", "training.precision=fp32",
             "training.batch_size=16", "training.max_steps=40", "training.eval_every=10",
             "training.checkpoint_every=10", "training.lr=0.05", "training.warmup_steps=0"]


def resolve_task(*sets: str, task: str = TINY_TASK, environ: dict | None = None):
    from tracked_train import config

    return config.resolve(None, [f"task={task}", *TASK_BASE, *sets], environ=environ or {})


def run_task(tmp_path: Path, name: str, *sets: str, task: str = TINY_TASK) -> tuple[int, Path]:
    """A whole run (lock, trackers, loop, ending) as `tracked-train run` does it; (exit code, run folder)."""
    from tracked_train import runner

    code = runner.start(resolve_task(f"run.output_dir={tmp_path}", f"run.name={name}", *sets, task=task)).stop.exit_code
    return code, tmp_path / name


def task_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl as tracked_train reads it back (a torn last line skipped)."""
    from tracked_train.trackers import jsonl

    return jsonl.read(run_dir / "metrics.jsonl")


# A task file with the ways a task can be broken (written as broken.py by test_tasks_inprocess.py, test_task_e2e.py).
BROKEN_TASKS = '''
import tracked_train

class NotATask:
    pass

class Half(tracked_train.Task):
    def build_model(self): ...
    def batch(self, position, size): ...
    def loss(self, model, batch): ...

class Explodes(tracked_train.Task):
    def build_model(self):
        raise RuntimeError("no such layer: 'attn2'")
    def batch(self, position, size): ...
    def loss(self, model, batch): ...
    def evaluate(self, model): return {}
'''


# --- sweeps of a tiny language model (test_sweep.py, test_postgres.py) ------------------------------------------

# A model that trains 20 steps in about a second; lr 1e-5 is the hopeless option the pruner must stop.
SWEEP_TINY = [
    "model.d_model=32", "model.n_layers=1", "model.n_heads=4", "model.seq_len=32", "tokenizer.vocab_size=384",
    "data.builtin_chars=60000", "training.batch_size=8", "training.eval_batches=2", "console.progress=lines",
    "training.precision=fp32", "training.max_steps=20", "training.eval_every=4", "training.checkpoint_every=20",
    "training.min_lr=1e-6", "tracking.experiment=sweeps",
    "tracking.mlflow.log_model=false",  # the Logged Model upload is most of a tiny trial's time; test_mlflow covers it
]
SWEEP_SPACE = "training.lr: {choice: [3.0e-3, 1.0e-5]}\ntraining.warmup_steps: {int: [0, 8]}\n"


def finished_trials(trials):
    from optuna.trial import TrialState

    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# --- two short runs tracked by the MLflow server, trained once (test_compare.py, test_mlflow_ui.py) -------------

COMPARE_EXPERIMENT = "compare-tests"
HI, LO = "lr-hi", "lr-lo"  # LO also stops early, by patience
LR = {HI: "0.003", LO: "0.0001"}


@dataclasses.dataclass(frozen=True)
class TwoRuns:
    root: Path  # the working folder they were trained in: root/runs/<name>/
    uri: str  # the MLflow server
    ids: dict[str, str]  # run name -> MLflow run id

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri}


@pytest.fixture(scope="session")
def two_runs(mlflow_server, tmp_path_factory) -> TwoRuns:
    """HI and LO, trained once for every test that reads them (training is most of the time spent)."""
    root = tmp_path_factory.mktemp("compare")
    common = ["tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={mlflow_server.uri}",
              f"tracking.experiment={COMPARE_EXPERIMENT}", "training.max_steps=20", "training.eval_every=5"]
    extra = {HI: [f"training.lr={LR[HI]}"],
             LO: [f"training.lr={LR[LO]}", "early_stopping.patience=1", "early_stopping.min_delta=100"]}
    # Not created here: the two runs race to create it, as users' runs do, and the one that loses uses it.
    # Both at once: on 2 cores this saves a third of the time (much of a run is start-up and upload).
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "tracked_train", "run", "--run-name", name, *sets(*common, *extra[name])],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **SIDE_BY_SIDE})
        for name in (HI, LO)}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {out[-3000:]}"
    ids = {name: json.loads((root / "runs" / name / "mlflow" / "state.json").read_text())["run_id"]
           for name in (HI, LO)}
    return TwoRuns(root, mlflow_server.uri, ids)


# --- a webhook endpoint (test_webhook.py, test_endings.py) -------------------------------------------------------

class Hook:
    """A real endpoint on 127.0.0.1 recording each POST as (path, headers, JSON body). It sets ``stop_seen`` when
    the "stop" alert comes; with ``hold_stop`` it holds its answer to that alert until ``release`` is set."""

    def __init__(self, hold_stop: bool = False) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts: list[tuple[str, dict, dict]] = []
        self.stop_seen, self.release = threading.Event(), threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.posts.append((self.path, dict(self.headers), body))
                if isinstance(body, dict) and body.get("event") == "stop":
                    hook.stop_seen.set()
                    if hold_stop:
                        hook.release.wait(60)
                self.send_response(204)  # what Discord answers
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def bodies(self) -> list[dict]:
        return [b for _, _, b in self.posts]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
