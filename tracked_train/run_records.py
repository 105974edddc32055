"""Runs as `runs`, `compare`, the sweep report and ``tracked_train.history`` read them, from run folders and the
MLflow store, into one :class:`Run`: :func:`find` (a reference to a run), :func:`metric_history`, :func:`list_runs`.
A run's checkpoint is fetched by :mod:`tracked_train.sources`; a folder's own files by :mod:`tracked_train.run_folder`.

Two places hold runs: the MLflow store (``MLFLOW_TRACKING_URI``, else the
embedded ``sqlite:///mlflow.db`` in the working folder) and the run folders
under ``--output-dir`` (their ``metrics.jsonl``). A run tracked in both is
read once: a folder whose ``trackers.json`` names a run already listed
from the server is not listed again.

Everything here only reads. In particular an absent embedded store stays absent:
opening ``sqlite:///mlflow.db`` with MLflow would create the file.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .mlflow.store import Store
from .render import iso
from .run_folder import is_run_folder, tracked_run_id
from .trackers import jsonl

# Metrics compared by `compare` first (lower is better for each), then every other validation metric and loss
# component the runs logged (a task's own: val/accuracy, train/loss/next_step...).
COMPARED_METRICS = ("val/loss", "val/perplexity", "val/nats_per_char", "val/bpb", "train/loss", "train/perplexity")
TOKENS = "train/tokens_seen"
DEFAULT_EXPERIMENT = "tracked-train"


@dataclass
class Run:
    """What `runs` lists and `compare` compares, whichever store it came from."""

    name: str
    source: str  # "mlflow" (read from the server) or "local" (a run folder)
    run_id: str | None = None  # the MLflow run id, when the run is tracked there
    run_dir: Path | None = None
    status: str = "RUNNING"
    stop_reason: str | None = None
    stop_detail: str | None = None
    steps: int | None = None
    best_val_loss: float | None = None
    tokens_seen: float | None = None
    start_time: float | None = None  # epoch seconds
    duration_s: float | None = None
    experiment: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    metric_keys: tuple[str, ...] = ()  # the metrics a server run holds (its history is read key by key)
    # metric -> [(step, value)], loaded only for `compare`
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def best_val_perplexity(self) -> float | None:
        return None if self.best_val_loss is None else math.exp(min(self.best_val_loss, 700.0))

    @property
    def key(self) -> str:
        """Identity for de-duplication: the MLflow run, else the folder."""
        return self.run_id or str(self.run_dir.resolve() if self.run_dir else self.name)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "id": self.run_id, "source": self.source, "status": self.status,
            "stop_reason": self.stop_reason, "stop_detail": self.stop_detail, "steps": self.steps,
            "best_val_loss": self.best_val_loss, "best_val_perplexity": self.best_val_perplexity,
            "tokens_seen": None if self.tokens_seen is None else int(self.tokens_seen),
            "duration_s": None if self.duration_s is None else round(self.duration_s, 1),
            "start_time": iso(self.start_time), "run_dir": str(self.run_dir) if self.run_dir else None,
        }


def load_local(run_dir: Path) -> Run:
    """A run folder's record: metrics.jsonl, plus its MLflow run id (trackers.json)."""
    path = run_dir / jsonl.FILENAME
    records = jsonl.read(path) if path.is_file() else []  # a run with no jsonl tracker (`--tracker null`)
    params = next((r["params"] for r in reversed(records) if r.get("event") == "params"), {})
    history = jsonl.history(records)
    stop = jsonl.last_stop(records)
    start, last = _time_span(records)
    tokens = history.get(TOKENS)
    return Run(
        name=run_dir.name, source="local", run_id=tracked_run_id(run_dir, "mlflow"), run_dir=run_dir,
        status=_status(stop.get("reason")) if stop else "RUNNING",
        stop_reason=stop.get("reason") if stop else None, stop_detail=stop.get("detail") if stop else None,
        steps=stop.get("step") if stop else max((s for s, _ in history.get("train/loss", [])), default=None),
        # The best checkpoint's loss, as the server's best_val_loss tag; the lowest logged while running.
        best_val_loss=_float(stop.get("best_val_loss")) if stop else _lowest(history.get("val/loss")),
        tokens_seen=tokens[-1][1] if tokens else None,
        start_time=start, duration_s=last - start if start is not None and last is not None else None,
        experiment=params.get("tracking.experiment"), params={k: _param_str(v) for k, v in params.items()},
        history=history,
    )


def _status(reason: str | None) -> str:
    from .early_stopping import StopReason

    try:
        return StopReason(reason).status
    except ValueError:  # a reason this version does not know (a newer writer)
        return "FINISHED"


def _time_span(records: list[dict]) -> tuple[float | None, float | None]:
    """When the run started (its first start event) and its last timestamped record."""
    times = [r["time"] for r in records if isinstance(r.get("time"), (int, float))]
    start = next((r["time"] for r in records if r.get("event") == "start" and "time" in r), None)
    return (start if start is not None else (times[0] if times else None)), (times[-1] if times else None)


def _param_str(value: Any) -> str:
    # The MLflow tracker logs str(value) ("" for None): the same spelling keeps local and server runs comparable.
    return "" if value is None else str(value)


def local_runs(output_dir: Path) -> list[Run]:
    if not output_dir.is_dir():
        return []
    return [load_local(d) for d in sorted(output_dir.iterdir()) if d.is_dir() and is_run_folder(d)]


def _from_mlflow(r: Any, experiment: str | None = None) -> Run:
    tags, info = r.data.tags, r.info
    end = info.end_time or (time.time() * 1000 if info.status == "RUNNING" else None)
    return Run(
        name=info.run_name or info.run_id, source="mlflow", run_id=info.run_id, status=info.status,
        stop_reason=tags.get("stop_reason"), stop_detail=tags.get("stop_detail"),
        steps=_int(tags.get("stop_step")), best_val_loss=_float(tags.get("best_val_loss")),
        tokens_seen=r.data.metrics.get(TOKENS), metric_keys=tuple(sorted(r.data.metrics)),
        start_time=info.start_time / 1000 if info.start_time else None,
        duration_s=(end - info.start_time) / 1000 if end and info.start_time else None,
        experiment=experiment, params=dict(r.data.params),
    )


def _server_runs(store: Store, experiment: str) -> list[Run] | None:
    found = store.experiment_runs(experiment)
    if found is None:
        return None
    out = [_from_mlflow(r, experiment) for r in found]
    for run in out:
        if run.steps is None:  # no stop_step tag yet: still running, or killed -9
            run.steps = max((s for s, _ in store.history(run.run_id, "train/loss")), default=None)
    return out


def _with_folder(run: Run, twin: Run | None) -> Run:
    """A server run whose folder is here (``twin``) gets the folder, and the folder's duration: metrics.jsonl
    times every segment the same way whichever command reads it, so `runs` and `compare` agree."""
    if twin is not None:
        run.run_dir, run.duration_s = twin.run_dir, twin.duration_s
    return run


def _twin(run_id: str | None, output_dir: Path) -> Run | None:
    """The run folder under ``output_dir`` whose trackers.json names MLflow run ``run_id`` (only that one is read)."""
    if run_id and output_dir.is_dir():
        for d in sorted(output_dir.iterdir()):
            if is_run_folder(d) and tracked_run_id(d, "mlflow") == run_id:
                return load_local(d)
    return None


def _with_history(store: Store, run: Run, keys: Sequence[str] | None = None) -> Run:
    """A server run with its metrics' history (``keys``; None: the compared ones, the tokens and the task's)."""
    if keys is None:
        keys = (*COMPARED_METRICS, TOKENS, *(k for k in run.metric_keys if compared(k)))
    for key in keys:
        run.history[key] = store.history(run.run_id, key)
    if run.steps is None:  # still running, or killed -9: the last step it logged
        run.steps = max((s for s, _ in run.history.get("train/loss", [])), default=None)
    if run.best_val_loss is None:
        run.best_val_loss = _lowest(run.history.get("val/loss"))
    return run


def _lowest(points: list[tuple[int, float]] | None) -> float | None:
    finite = [v for _, v in points or [] if math.isfinite(v)]
    return min(finite) if finite else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def list_runs(experiment: str | None, output_dir: Path, store: Store | None = None) -> list[Run]:
    """Runs of ``experiment`` on the server plus local run folders not already listed, newest first.

    Local folders are filtered by experiment only when one is named: by default
    every folder under ``output_dir`` is listed.
    """
    store = store or Store()
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None  # as `run` places runs
    server: list[Run] = []
    missing_experiment = False
    if store.exists():
        try:
            found = _server_runs(store, experiment or DEFAULT_EXPERIMENT)
        except UserError as e:  # an unreachable server still leaves the run folders worth listing
            print(f"warning: {e}; listing local run folders only", file=sys.stderr)
            found = []
        missing_experiment = found is None
        server = found or []
    folders = local_runs(output_dir)
    by_id = {f.run_id: f for f in folders if f.run_id}
    server = [_with_folder(r, by_id.get(r.run_id)) for r in server]
    listed = {r.run_id for r in server}
    local = [r for r in folders if r.run_id not in listed and (experiment is None or r.experiment == experiment)]
    if experiment and missing_experiment and not local:
        raise UserError(f"MLflow at {store.where} has no experiment {experiment!r}, and no run folder under "
                        f"{output_dir}/ belongs to it")
    return sorted(server + local, key=lambda r: r.start_time or 0.0, reverse=True)


def find(ref: str, output_dir: Path, store: Store) -> Run:
    """The one way from a reference to a run: mlflow:ID, runs:/ID, a folder, a name under output_dir, an MLflow id
    or name. A folder's run carries its whole history (metrics.jsonl, read anyway); a server's none yet."""
    from . import sources

    if ref.startswith(("mlflow:", "runs:/")):
        run = _from_mlflow(store.get(sources.parse(ref).value))
        return _with_folder(run, _twin(run.run_id, output_dir))
    path = Path(ref).expanduser()
    if is_run_folder(path):
        return load_local(path)
    if "/" in ref or ref.startswith((".", "~")):  # meant as a path: say what is wrong with it
        why = ("is not a run folder (no checkpoints/, nor config.yaml and metrics.jsonl)" if path.is_dir()
               else "does not exist")
        raise UserError(f"run folder {ref} {why}")
    if is_run_folder(output_dir / ref):
        return load_local(output_dir / ref)
    found = store.find(ref)
    if found is None:
        raise UserError(f"no run {ref!r}: not a run folder under {output_dir}/ nor an MLflow run name or id at "
                        f"{store.where}; `tracked-train runs` lists them")
    run = _from_mlflow(found)
    return _with_folder(run, _twin(run.run_id, output_dir))


def resolve(ref: str, output_dir: Path, store: Store) -> Run:
    """:func:`find`, with the history `compare` shows (a server run: the compared metrics)."""
    run = find(ref, output_dir, store)
    return _with_history(store, run) if run.source == "mlflow" else run


def metric_history(ref: str, output_dir: Path = Path("runs"), store: Store | None = None) -> dict[
        str, list[tuple[int, float]]]:
    """Every metric's points ``[(step, value)]`` of the run ``ref`` names (:func:`find`): its folder's
    metrics.jsonl, else its history on the server."""
    store = store or Store()
    run = find(ref, output_dir, store)
    if run.source == "local":
        if not (run.run_dir / jsonl.FILENAME).is_file():
            raise UserError(f"{ref} has no {jsonl.FILENAME} (a run with `--tracker null`): it holds no history")
        return run.history
    return _with_history(store, run, run.metric_keys).history


def resolve_all(refs: Sequence[str], output_dir: Path, store: Store) -> list[Run]:
    if len(refs) < 2:
        raise UserError(f"compare needs at least two runs, got {len(refs)}; e.g. `tracked-train compare RUN RUN`")
    runs: list[Run] = []
    seen: dict[str, str] = {}
    for ref in refs:
        run = resolve(ref, output_dir, store)
        if run.key in seen:
            raise UserError(f"{seen[run.key]!r} and {ref!r} are the same run; compare needs different runs")
        seen[run.key] = ref
        runs.append(run)
    return runs


def compared(key: str) -> bool:
    """A task's own metric worth a row: its validation metrics and its loss components."""
    return key.startswith(("val/", "train/loss/"))
