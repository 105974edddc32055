"""`tracked-train runs` and `tracked-train compare`: runs side by side, from MLflow and run folders.

Two places hold runs: the MLflow store (``MLFLOW_TRACKING_URI``, else the
embedded ``sqlite:///mlflow.db`` in the working folder) and the run folders
under ``--output-dir`` (their ``metrics.jsonl``). A run tracked in both is
read once: a folder whose ``mlflow/state.json`` names a run already listed
from the server is not listed again.

Both commands only read. In particular an absent embedded store stays absent:
opening ``sqlite:///mlflow.db`` with MLflow would create the file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .console import fmt_duration
from .errors import UserError
from .mlflow.store import Store
from .mlflow.tracker import spool_run_id
from .sources import is_run_folder
from .trackers import jsonl

# Metrics compared by `compare` first (lower is better for each), then every other validation metric and loss
# component the runs logged (a task's own: val/accuracy, train/loss/next_step...).
COMPARED_METRICS = ("val/loss", "val/perplexity", "val/nats_per_char", "val/bpb", "train/loss", "train/perplexity")
# Higher is better for these (by their last word), and for a run's monitor with early_stopping.mode=max.
HIGHER_IS_BETTER = ("accuracy", "acc", "f1", "auc", "precision", "recall", "r2")
TOKENS = "train/tokens_seen"
# Differs between any two runs by construction (it is the column header), so it says nothing.
IGNORED_PARAMS = {"run.name"}
# Differing params are listed (and plot labels built) in this order: the keys that shape the result most
# (learning rate, model shape, data, tokenizer), then the rest by section, then alphabetically.
PARAM_PRIORITY = (
    "training.lr", "training.optimizer", "training.schedule", "training.batch_size", "training.time_budget_s",
    "training.max_steps", "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.seq_len",
    "model.pos_encoding", "model.norm", "model.mlp", "model.dropout", "data.source", "data.train_files",
    "data.hf_name", "data.builtin_chars", "tokenizer.vocab_size", "tokenizer.model_type",
)
PARAM_SECTIONS = ("training", "model", "data", "tokenizer", "early_stopping")
# Differing params that change the tokens (a tokenizer is trained on the data): per-token losses stop comparing.
TOKENIZER_SECTIONS = ("tokenizer.", "data.")
PER_CHAR = "val/nats_per_char"
BPB = "val/bpb"
# Metrics of the text, not of its tokens: ranked even when the runs' tokenizers differ (bits per byte first).
TOKENIZER_FREE = (BPB, PER_CHAR)
PLOT_LABEL_PARAMS = 3
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
            "start_time": _iso(self.start_time), "run_dir": str(self.run_dir) if self.run_dir else None,
        }


# -- run folders -----------------------------------------------------------------------------------

def load_local(run_dir: Path) -> Run:
    """A run folder's record: metrics.jsonl, plus the MLflow run id from mlflow/state.json."""
    path = run_dir / jsonl.FILENAME
    records = jsonl.read(path) if path.is_file() else []  # a run with no jsonl tracker (`--tracker null`)
    params = next((r["params"] for r in reversed(records) if r.get("event") == "params"), {})
    history = jsonl.history(records)
    stop = jsonl.last_stop(records)
    start, last = _time_span(records)
    tokens = history.get(TOKENS)
    return Run(
        name=run_dir.name, source="local", run_id=spool_run_id(run_dir / "mlflow"), run_dir=run_dir,
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


# -- runs read from MLflow ---------------------------------------------------------------------------

def _from_mlflow(r: Any, experiment: str | None = None) -> Run:
    tags, info = r.data.tags, r.info
    end = info.end_time or (time.time() * 1000 if info.status == "RUNNING" else None)
    return Run(
        name=info.run_name or info.run_id, source="mlflow", run_id=info.run_id, status=info.status,
        stop_reason=tags.get("stop_reason"), stop_detail=tags.get("stop_detail"),
        steps=_int(tags.get("stop_step")), best_val_loss=_float(tags.get("best_val_loss")),
        tokens_seen=r.data.metrics.get(TOKENS),
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
    """The run folder under ``output_dir`` whose mlflow/state.json names ``run_id`` (only that one is read)."""
    if run_id and output_dir.is_dir():
        for d in sorted(output_dir.iterdir()):
            if is_run_folder(d) and spool_run_id(d / "mlflow") == run_id:
                return load_local(d)
    return None


def _with_history(store: Store, r: Any) -> Run:
    run = _from_mlflow(r)
    for key in (*COMPARED_METRICS, TOKENS, *sorted(k for k in r.data.metrics if _compared(k))):
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


# -- runs --------------------------------------------------------------------------------------------

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


# The id comes last: in a narrow terminal it is the column that wraps, and the others stay on one line.
RUN_COLUMNS = ["name", "status", "stop reason", "steps", "best val loss", "val ppl", "tokens seen", "duration",
               "started", "source", "id"]


def _run_row(r: Run) -> list[str]:
    return [r.name, r.status, r.stop_reason or "", _fmt_int(r.steps), _fmt(r.best_val_loss, 4),
            _fmt(r.best_val_perplexity, 2), _fmt_int(r.tokens_seen), _fmt_duration(r.duration_s),
            _fmt_time(r.start_time), r.source, r.run_id or ""]


def runs_command(experiment: str | None, fmt: str, output_dir: str) -> int:
    """`tracked-train runs`: one row per run, newest first."""
    store = Store()
    runs = list_runs(experiment, Path(output_dir), store)
    if fmt == "json":
        print(json.dumps([r.summary() for r in runs], indent=2))
    elif fmt == "csv":
        fields = list(Run("", "").summary())
        _write_csv([fields] + [[r.summary()[k] for k in fields] for r in runs])
    elif not runs:
        where = store.where if store.exists() else f"{store.where} (absent)"
        print(f"no runs (MLflow: {where}, experiment {experiment or DEFAULT_EXPERIMENT!r}; "
              f"run folders: {output_dir}/)", file=sys.stderr)
    else:
        right = {"steps", "best val loss", "val ppl", "tokens seen", "duration"}
        _print_table(RUN_COLUMNS, [_run_row(r) for r in runs], right=right, fold={"id"})
    return 0


# -- compare -----------------------------------------------------------------------------------------

def resolve(ref: str, output_dir: Path, store: Store) -> Run:
    """A run from a reference: mlflow:ID, runs:/ID, a folder, a name under output_dir, an MLflow id or name."""
    from . import sources

    if ref.startswith(("mlflow:", "runs:/")):
        run = _with_history(store, store.get(sources.parse(ref).value))
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
    if found is not None:
        found = _with_history(store, found)
        found = _with_folder(found, _twin(found.run_id, output_dir))
    if found is None:
        raise UserError(f"no run {ref!r}: not a run folder under {output_dir}/ nor an MLflow run name or id at "
                        f"{store.where}; `tracked-train runs` lists them")
    return found


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


def differing_params(runs: Sequence[Run]) -> dict[str, list[str | None]]:
    """Params whose value is not the same in every run (a param one run lacks counts as different)."""
    keys = sorted({k for r in runs for k in r.params} - IGNORED_PARAMS, key=_param_order)
    out = {}
    for k in keys:
        values = [r.params.get(k) for r in runs]
        if len(set(values)) > 1:
            out[k] = values
    return out


def _param_order(key: str) -> tuple[int, int, str]:
    if key in PARAM_PRIORITY:
        return (0, PARAM_PRIORITY.index(key), key)
    section = key.split(".", 1)[0]
    return (1, PARAM_SECTIONS.index(section) if section in PARAM_SECTIONS else len(PARAM_SECTIONS), key)


def _param_cell(value: str | None) -> str:
    return "—" if value in (None, "") else value


@dataclass
class MetricRow:
    metric: str
    kind: str  # "best" (lowest over the run, or highest where higher is better) or "final" (at the last step)
    values: list[float | None]
    ranked: bool = True  # False: the runs' values are not comparable (per-token losses of different tokenizers)
    higher_is_better: bool = False

    @property
    def best_index(self) -> int | None:
        """The run with the best value; None when fewer than two runs have one, on a tie, or when unranked."""
        if not self.ranked:
            return None
        sign = -1.0 if self.higher_is_better else 1.0
        finite = [(sign * v, i) for i, v in enumerate(self.values) if v is not None and math.isfinite(v)]
        if len(finite) < 2:
            return None
        low = min(finite)
        return None if sum(v == low[0] for v, _ in finite) > 1 else low[1]


def tokens_differ(runs: Sequence[Run]) -> bool:
    """Whether the runs' tokenizers may differ: then a loss per token compares nothing, bits per byte does."""
    return any(k.startswith(TOKENIZER_SECTIONS) for k in differing_params(runs))


def metric_rows(runs: Sequence[Run]) -> list[MetricRow]:
    rows = []
    per_char_only = tokens_differ(runs)
    others = sorted({k for r in runs for k in r.history if _compared(k)} - set(COMPARED_METRICS))
    for metric in (*COMPARED_METRICS, *others):
        series = [r.history.get(metric) or [] for r in runs]
        if not any(series):
            continue
        ranked = metric in TOKENIZER_FREE or not per_char_only or metric in others
        up = higher_is_better(metric, runs)
        pick = max if up else min
        rows.append(MetricRow(metric, "best", [pick((v for _, v in s), default=None) for s in series], ranked, up))
        rows.append(MetricRow(metric, "final", [s[-1][1] if s else None for s in series], ranked, up))
    return rows


def _compared(key: str) -> bool:
    """A task's own metric worth a row: its validation metrics and its loss components."""
    return key.startswith(("val/", "train/loss/"))


def higher_is_better(metric: str, runs: Sequence[Run]) -> bool:
    """By the runs' own monitor and mode where they name it, else by the metric's last word (val/accuracy)."""
    for r in runs:
        if r.params.get("early_stopping.monitor") == metric and r.params.get("early_stopping.mode") in ("min", "max"):
            return r.params["early_stopping.mode"] == "max"
    return metric.rsplit("/", 1)[-1].rsplit("_", 1)[-1] in HIGHER_IS_BETTER


def labels(runs: Sequence[Run]) -> list[str]:
    """Run names, made unique with the id or source where two runs share a name."""
    names = [r.name for r in runs]
    return [n if names.count(n) == 1 else f"{n} ({(r.run_id or r.source)[:8]})" for n, r in zip(names, runs)]


def compare_command(refs: list[str], plot: str | None, x_axis: str, fmt: str, output_dir: str) -> int:
    """`tracked-train compare`: differing params, best and final metrics, stop reasons; optionally a plot."""
    runs = resolve_all(refs, Path(output_dir), Store())
    params, metrics, names = differing_params(runs), metric_rows(runs), labels(runs)
    if fmt == "json":
        print(json.dumps(_compare_json(runs, names, params, metrics), indent=2))
    elif fmt == "csv":
        _write_csv(_compare_csv(runs, names, params, metrics))
    else:
        _print_compare_table(runs, names, params, metrics)
    if plot:
        plot_losses(runs, names, params, Path(plot), x_axis)
        print(f"plot: {plot}", file=sys.stderr)  # stderr: json/csv on stdout stay parseable
    return 0


def _compare_json(runs, names, params, metrics) -> dict[str, Any]:
    return {
        "runs": [{"label": n, **r.summary()} for n, r in zip(names, runs)],
        "params": {k: dict(zip(names, v)) for k, v in params.items()},
        "metrics": [{"metric": m.metric, "kind": m.kind, "values": dict(zip(names, m.values)),
                     "best": None if m.best_index is None else names[m.best_index]} for m in metrics],
    }


def _compare_csv(runs, names, params, metrics) -> list[list[Any]]:
    rows: list[list[Any]] = [["section", "key", *names, "best"]]
    for key in ("id", "status", "stop_reason", "steps", "tokens_seen", "duration_s"):
        rows.append(["run", key, *(r.summary()[key] for r in runs), ""])
    rows += [["param", k, *v, ""] for k, v in params.items()]
    rows += [["metric", f"{m.metric} {m.kind}", *m.values, "" if m.best_index is None else names[m.best_index]]
             for m in metrics]
    return rows


def _print_compare_table(runs, names, params, metrics) -> None:
    rows: list[list[str] | str] = [
        ["id", *(r.run_id or "" for r in runs)],
        ["source", *(str(r.run_dir) if r.run_dir else r.source for r in runs)],
        ["status", *(r.status for r in runs)],
        ["stop reason", *(r.stop_reason or "" for r in runs)],
        ["steps", *(_fmt_int(r.steps) for r in runs)],
        ["tokens seen", *(_fmt_int(r.tokens_seen) for r in runs)],
        ["duration", *(_fmt_duration(r.duration_s) for r in runs)],
        "params that differ" if params else "params: all the same",
        *([k, *map(_param_cell, values)] for k, values in params.items()),
        "metrics (* = best)",
    ]
    for m in metrics:
        digits = 2 if "perplexity" in m.metric else 4
        cells = [_fmt(v, digits) + (" *" if i == m.best_index else "") for i, v in enumerate(m.values)]
        rows.append([f"{m.metric} {m.kind}", *cells])
    caption = ("best: the lowest value in the run (the highest where higher is better: accuracy, a max monitor); "
               "final: at its last step; * marks the best across runs")
    if not all(m.ranked for m in metrics):
        shown = [m for m in TOKENIZER_FREE if any(r.metric == m for r in metrics)] or [BPB]
        verb = "is" if len(shown) == 1 else "are"
        caption += (f"; the runs' tokenizers or data differ, so only {' and '.join(shown)} {verb} ranked "
                    "(a loss per token depends on what a token is)")
    _print_table(["", *names], rows, fold=set(names), caption=caption)


# -- plot --------------------------------------------------------------------------------------------

def plot_losses(runs: Sequence[Run], names: Sequence[str], params: dict[str, list[str | None]], path: Path,
                x_axis: str = "step") -> None:
    """Train (solid) and val (dashed, dots) loss of every run on one axes, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is assumed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    handles = []
    for i, (run, name) in enumerate(zip(runs, names)):
        colour = f"C{i % 10}"
        train, val = (_xy(run, key, x_axis) for key in ("train/loss", "val/loss"))
        if train:
            ax.plot(*zip(*train), color=colour, linewidth=1.2, alpha=0.85)
        if val:
            ax.plot(*zip(*val), "o--", color=colour, linewidth=1.5, markersize=4)
        label = _plot_label(name, {k: v[i] for k, v in list(params.items())[:PLOT_LABEL_PARAMS]})
        handles.append(Line2D([], [], color=colour, linewidth=2, label=label))
    # One legend entry per run (its colour), and two for the line styles, so the legend stays short.
    handles += [Line2D([], [], color="0.4", linewidth=1.2, label="train loss"),
                Line2D([], [], color="0.4", linestyle="--", marker="o", markersize=4, label="val loss")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # counts: round ticks
    ax.set_xlabel("tokens seen" if x_axis == "tokens" else "step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"loss by {'tokens seen' if x_axis == 'tokens' else 'step'}")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")  # "tight": keeps the legend below the axes
    plt.close(fig)


def _plot_label(name: str, params: dict[str, str | None]) -> str:
    shown = ", ".join(f"{k}={_param_cell(v)}" for k, v in params.items())
    return f"{name}: {shown}" if shown else name


def _xy(run: Run, key: str, x_axis: str) -> list[tuple[float, float]]:
    points = run.history.get(key) or []
    if x_axis != "tokens":
        return [(float(s), v) for s, v in points]
    tokens = dict(run.history.get(TOKENS) or [])
    if points and not tokens:
        raise UserError(f"run {run.name!r} has no {TOKENS} metric to plot against; use --x step")
    return [(tokens[s], v) for s, v in points if s in tokens]


# -- output --------------------------------------------------------------------------------------------

def _print_table(headers: list[str], rows: Sequence[list[str] | str], right: set[str] = frozenset(),
                 caption: str | None = None, fold: set[str] = frozenset()) -> None:
    """A rich table; a str row starts a titled section. Piped output is never wrapped (grep-friendly).

    In a narrow terminal only the ``fold`` columns wrap: a wrapped number or status is hard to read.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, emoji=False)
    if not console.is_terminal:
        console = Console(highlight=False, emoji=False, width=1000, no_color=True)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, caption=caption,
                  caption_justify="left")
    for h in headers:
        table.add_column(h, justify="right" if h in right else "left", overflow="fold", no_wrap=h not in fold,
                         min_width=8 if h in fold else None)
    for row in rows:
        if isinstance(row, str):
            table.add_section()
            table.add_row(Text(row, style="bold"), *([""] * (len(headers) - 1)))
        else:
            table.add_row(*(Text(c) for c in row))  # Text: no markup parsing of run names
    console.print(table)


def _write_csv(rows: list[list[Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerows([["" if c is None else c for c in row] for row in rows])


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _fmt_int(value: float | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def _fmt_duration(seconds: float | None) -> str:
    return "—" if seconds is None else fmt_duration(round(seconds))  # as the progress line shows it: 4:45


def _fmt_time(epoch_s: float | None) -> str:
    return "—" if epoch_s is None else datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M")


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s).astimezone().isoformat(timespec="seconds")
