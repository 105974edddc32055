"""`tracked-train runs` and `tracked-train compare`: runs side by side, from MLflow and run folders.

The runs are read by :mod:`.run_records` (one :class:`~tracked_train.run_records.Run` whichever store holds
it) and shown by :mod:`.render`; what is compared is decided here: the params that differ, each metric's best
and final values and which run is best (in the metric's own direction), and the loss plot.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .mlflow.store import Store
from .render import fmt, fmt_int, fmt_span, fmt_time, print_table, write_csv
from .run_records import COMPARED_METRICS, DEFAULT_EXPERIMENT, TOKENS, Run, compared, list_runs, resolve_all

# Higher is better for these (by their last word), and for a run's monitor with early_stopping.mode=max.
HIGHER_IS_BETTER = ("accuracy", "acc", "f1", "auc", "precision", "recall", "r2")
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

# The id comes last: in a narrow terminal it is the column that wraps, and the others stay on one line.
RUN_COLUMNS = ["name", "status", "stop reason", "steps", "best val loss", "val ppl", "tokens seen", "duration",
               "started", "source", "id"]


def _run_row(r: Run) -> list[str]:
    return [r.name, r.status, r.stop_reason or "", fmt_int(r.steps), fmt(r.best_val_loss, 4),
            fmt(r.best_val_perplexity, 2), fmt_int(r.tokens_seen), fmt_span(r.duration_s),
            fmt_time(r.start_time), r.source, r.run_id or ""]


def runs_command(experiment: str | None, fmt: str, output_dir: str) -> int:
    """`tracked-train runs`: one row per run, newest first."""
    store = Store()
    runs = list_runs(experiment, Path(output_dir), store)
    if fmt == "json":
        print(json.dumps([r.summary() for r in runs], indent=2))
    elif fmt == "csv":
        fields = list(Run("", "").summary())
        write_csv([fields] + [[r.summary()[k] for k in fields] for r in runs])
    elif not runs:
        where = store.where if store.exists() else f"{store.where} (absent)"
        print(f"no runs (MLflow: {where}, experiment {experiment or DEFAULT_EXPERIMENT!r}; "
              f"run folders: {output_dir}/)", file=sys.stderr)
    else:
        right = {"steps", "best val loss", "val ppl", "tokens seen", "duration"}
        print_table(RUN_COLUMNS, [_run_row(r) for r in runs], right=right, fold={"id"})
    return 0


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
    others = sorted({k for r in runs for k in r.history if compared(k)} - set(COMPARED_METRICS))
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
        write_csv(_compare_csv(runs, names, params, metrics))
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
        ["steps", *(fmt_int(r.steps) for r in runs)],
        ["tokens seen", *(fmt_int(r.tokens_seen) for r in runs)],
        ["duration", *(fmt_span(r.duration_s) for r in runs)],
        "params that differ" if params else "params: all the same",
        *([k, *map(_param_cell, values)] for k, values in params.items()),
        "metrics (* = best)",
    ]
    for m in metrics:
        digits = 2 if "perplexity" in m.metric else 4
        cells = [fmt(v, digits) + (" *" if i == m.best_index else "") for i, v in enumerate(m.values)]
        rows.append([f"{m.metric} {m.kind}", *cells])
    caption = ("best: the lowest value in the run (the highest where higher is better: accuracy, a max monitor); "
               "final: at its last step; * marks the best across runs")
    if not all(m.ranked for m in metrics):
        shown = [m for m in TOKENIZER_FREE if any(r.metric == m for r in metrics)] or [BPB]
        verb = "is" if len(shown) == 1 else "are"
        caption += (f"; the runs' tokenizers or data differ, so only {' and '.join(shown)} {verb} ranked "
                    "(a loss per token depends on what a token is)")
    print_table(["", *names], rows, fold=set(names), caption=caption)


def plot_losses(runs: Sequence[Run], names: Sequence[str], params: dict[str, list[str | None]], path: Path,
                x_axis: str = "step") -> None:
    """Train and val loss of every run on one axes, labelled with its name and first differing params."""
    from .plots import Curves, runs_figure, save_png

    curves = [Curves(_plot_label(name, {k: v[i] for k, v in list(params.items())[:PLOT_LABEL_PARAMS]}),
                     *(_xy(run, key, x_axis) for key in ("train/loss", "val/loss")))
              for i, (run, name) in enumerate(zip(runs, names))]
    save_png(runs_figure(curves, "tokens seen" if x_axis == "tokens" else "step"), path)


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
