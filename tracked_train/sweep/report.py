"""What a sweep shows: its trials as rows, the best trial, a CSV, a Markdown table and a plot."""

from __future__ import annotations

import math
from typing import Any

from ..render import csv_text, markdown_table, plain_table

# Optuna user attrs a trial carries (set by the worker that ran it).
RUN_ATTR, RUN_DIR_ATTR, MLFLOW_ATTR = "run_name", "run_dir", "mlflow_run_id"
REASON_ATTR, DETAIL_ATTR = "stop_reason", "stop_detail"
MAX_NOTE_ROWS = 200


def column(metric: str) -> str:
    """The table column of a study's value: its monitored metric, ``val/loss`` -> ``val_loss``."""
    return metric.replace("/", "_")


def maximises(optuna: Any, study: Any) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def rows(optuna: Any, study: Any, keys: list[str], metric: str = "val/loss") -> list[dict[str, Any]]:
    """One dict per trial, in trial order: number, state, value, stop reason, run, then the params."""
    out = []
    for t in study.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.intermediate_values:  # a pruned or failed trial: its last reported value
            value = t.intermediate_values[max(t.intermediate_values)]
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        out.append({
            "trial": t.number, "state": t.state.name.lower(), column(metric): value,
            "stop_reason": t.user_attrs.get(REASON_ATTR, ""), "run": t.user_attrs.get(RUN_ATTR, ""),
            "mlflow_run_id": t.user_attrs.get(MLFLOW_ATTR, ""),
            "duration_s": None if duration is None else round(duration, 1),
            **{k: t.params.get(k) for k in keys},
        })
    return out


def best(optuna: Any, study: Any) -> dict[str, Any] | None:
    """The complete trial with the best value (the lowest, or the highest in a maximising study), or None."""
    S = optuna.trial.TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(S.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        return None
    sign = -1.0 if maximises(optuna, study) else 1.0
    t = min(done, key=lambda t: (sign * t.value, t.number))
    return {"number": t.number, "value": t.value, "params": dict(t.params), "run": t.user_attrs.get(RUN_ATTR),
            "run_dir": t.user_attrs.get(RUN_DIR_ATTR), "mlflow_run_id": t.user_attrs.get(MLFLOW_ATTR)}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


def to_csv(table: list[dict[str, Any]]) -> str:
    if not table:
        return ""
    cols = list(table[0])
    return csv_text([cols, *([r[c] for c in cols] for r in table)], lineterminator="\r\n")


def _columns(table: list[dict[str, Any]]) -> list[str]:
    return [c for c in table[0] if c not in ("mlflow_run_id", "duration_s")] if table else []


def to_markdown(title: str, table: list[dict[str, Any]], top: dict[str, Any] | None,
                metric: str = "val/loss") -> str:
    """The parent run's note: the best trial, then every trial (MLflow renders it on the run's page)."""
    lines = [f"### {title}", ""]
    if top is not None:
        shown = ", ".join(f"`{k}={_cell(v)}`" for k, v in top["params"].items())
        lines += [f"**Best:** trial {top['number']} ({top['run']}), {metric} **{top['value']:.4f}**: {shown}", ""]
    cols = _columns(table)
    if cols:
        lines += markdown_table(cols, [[_cell(r[c]) for c in cols] for r in table[:MAX_NOTE_ROWS]])
        if len(table) > MAX_NOTE_ROWS:
            lines.append(f"\n({len(table) - MAX_NOTE_ROWS} more trials in trials.csv)")
    return "\n".join(lines)


def to_text(table: list[dict[str, Any]]) -> str:
    """The trials as an aligned plain-text table for the console."""
    cols = _columns(table)
    if not cols:
        return ""
    return plain_table(cols, [[_cell(r[c]) for c in cols] for r in table])


def figure(title: str, table: list[dict[str, Any]], metric: str = "val/loss", mode: str = "min") -> Any:
    """The monitored metric of every trial against its number, and the best so far (:mod:`tracked_train.plots`)."""
    from ..plots import trials_figure

    col = column(metric)
    return trials_figure(title, [(r["trial"], r["state"], r[col]) for r in table], metric, mode)
