"""What a sweep shows: the MLflow parent run (its table, CSV and figure after each trial) and the final report."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from ..errors import describe
from ..redact import strip_userinfo
from ..task import monitor_of
from .plan import counts

if TYPE_CHECKING:
    from .judge import Judge
    from .plan import Worker

log = logging.getLogger("tracked_train")


def show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def make_parent(w: Worker) -> str:
    from ..mlflow.sweep import start_parent

    p, o = w.plan, w.plan.o
    tags = {"sweep.storage": strip_userinfo(p.storage_url), "sweep.trials": str(o.trials), "sweep.pruner": o.pruner,
            "sweep.pruner_warmup_trials": str(o.warmup_trials), "sweep.sampler": "tpe",
            "sweep.seed": "" if o.seed is None else str(o.seed), "sweep.space_file": p.space.path}
    return start_parent(p.mlflow_uri, p.base.tracking.experiment, p.study_name, p.space.describe(), tags)


def report_progress(w: Worker, trial: Any, outcome: str, judge: Judge) -> None:
    from . import report

    top = report.best(w.optuna, w.study)
    best = f"best so far: trial {top['number']}, {top['value']:.4f}" if top else "no complete trial yet"
    value = f"{judge.metric} {judge.best:.4f}" if math.isfinite(judge.best) else "no evaluation"
    log.info("sweep %s: trial %d %s (%s); %s", w.plan.study_name, trial.number, outcome, value, best)
    update_parent(w)


def update_parent(w: Worker) -> None:
    """The parent run's table, CSV, summary and figure, as the study stands now."""
    if not w.parent_id:
        return
    from ..mlflow import sweep as mlflow_sweep
    from . import report

    metric, mode = monitor_of(w.plan.base)
    table = report.rows(w.optuna, w.study, [p.key for p in w.plan.space.params], metric)
    top = report.best(w.optuna, w.study)
    c = counts(w)
    summary = {"finished": c.finished, "complete": c.complete, "pruned": c.pruned, "failed": c.failed, "best": top,
               "metric": metric}
    title = f"sweep {w.plan.study_name}: {c.finished} of {w.plan.o.trials} trials"
    fig = report.figure(title, table, metric, mode)
    try:
        mlflow_sweep.update_parent(w.plan.mlflow_uri, w.parent_id, summary, report.to_csv(table),
                                   report.to_markdown(title, table, top, metric), fig)
    finally:
        from ..plots import close

        close(fig)


def finish(w: Worker, status: str) -> None:
    """Print the study's state; end the parent run when nothing is left running (else the last worker does)."""
    import click

    from . import report

    try:
        update_parent(w)
        c = counts(w)
        if w.parent_id and c.running == 0:
            from ..mlflow.sweep import end_parent

            end_parent(w.plan.mlflow_uri, w.parent_id,
                       "FINISHED" if c.finished >= w.plan.o.trials else ("FAILED" if status == "FAILED" else "KILLED"))
        table = report.rows(w.optuna, w.study, [p.key for p in w.plan.space.params], monitor_of(w.plan.base)[0])
    except Exception as e:  # noqa: BLE001 - the database went away: say so, the exit code says the rest
        log.error("sweep: could not read the study at the end (%s)", describe(e))
        return
    p = w.plan
    click.echo(f"sweep {p.study_name} ({strip_userinfo(p.storage_url)}): {c.finished} of {p.o.trials} trials "
               f"finished ({c.complete} complete, {c.pruned} pruned), {c.failed} failed, {c.running} running")
    click.echo(report.to_text(table))
    top = report.best(w.optuna, w.study)
    if top is None:
        click.echo("best: none yet (no trial completed)")
        return
    click.echo(f"best: trial {top['number']} (run {top['run']}), {monitor_of(p.base)[0]} {top['value']:.4f}")
    for k, v in top["params"].items():
        click.echo(f"  {k}={show(v) if isinstance(v, float) else v}")
    if w.parent_id:
        click.echo(f"MLflow parent run: {w.parent_id}")
