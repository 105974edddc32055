"""One trial: its config from the space, its run (fresh, or a killed trial's folder continued), its result told.

Each trial runs in this process through :func:`tracked_train.runner.start` with a :class:`.judge.Judge`, not
as a subprocess: the pruner's question after each evaluation is a plain function call, a trial costs no fresh
interpreter and torch import, and under torchrun the ranks stay in one process group from trial to trial. A
trial that crashes in Python ends ``failed`` and the worker goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed
from ..early_stopping import StopReason
from ..errors import UserError, describe
from .judge import Judge
from .parent import report_progress, show
from .plan import counts

if TYPE_CHECKING:
    from ..trackers import Outcome
    from .plan import Worker

log = logging.getLogger("tracked_train")


def job_for(w: Worker, trial: Any) -> tuple[Any, dict[str, str], Path | None]:
    """The trial's config, tags, and the folder it continues: sampled params over the base config, the run named
    after the study; a killed trial's params that come back continue its folder when this machine has it."""
    from .. import config
    from ..mlflow.sweep import child_tags
    from . import report
    from .study import make_sampler

    p = w.plan
    w.study.sampler = make_sampler(w.optuna, p.o.seed, trial.number, p.o.trials)
    params = p.space.suggest(trial)
    name = f"{p.study_name}-t{trial.number:03d}"
    cfg = config.build([(f"{p.space.path} (trial {trial.number})", {
        **params, "run.name": name,
        "tracking.wandb.group": p.base.tracker_args.get("wandb", {}).get("group") or p.study_name,  # W&B: one group
    })], p.base)
    run_dir = Path(cfg.run.output_dir) / name
    continued = _killed_folder(w, trial)
    if continued is not None:
        run_dir, name = continued, continued.name
    trial.set_user_attr(report.RUN_ATTR, name)
    trial.set_user_attr(report.RUN_DIR_ATTR, str(run_dir.resolve()))
    c = counts(w)
    log.info("sweep %s: trial %d (%d of %d finished) -> %s%s: %s", p.study_name, trial.number, c.finished,
             p.o.trials, run_dir, f" (continuing trial {trial.user_attrs['retry_of']})" if continued else "",
             ", ".join(f"{k}={show(v)}" for k, v in params.items()))
    return cfg, child_tags(w.parent_id, p.study_name, trial.number), continued


def _killed_folder(w: Worker, trial: Any) -> Path | None:
    """The run folder of the killed trial whose params ``trial`` runs again, if it is here and unfinished."""
    from ..run_folder import is_run_folder
    from ..trackers import jsonl
    from . import report

    number = trial.user_attrs.get("retry_of")
    if number is None or distributed.current().enabled:  # torchrun: every rank would have to follow a resume
        return None
    try:
        old = w.study.trials[number]
    except (IndexError, KeyError):
        return None
    folder = Path(old.user_attrs.get(report.RUN_DIR_ATTR) or "")
    if not old.user_attrs.get(report.RUN_DIR_ATTR) or not is_run_folder(folder):
        return None  # killed on another machine: its params start afresh here
    stop = jsonl.last_stop(jsonl.read(folder / jsonl.FILENAME)) if (folder / jsonl.FILENAME).exists() else None
    if stop is not None and stop.get("reason") != StopReason.INTERRUPTED.value:
        return None  # it had ended after all
    return folder


def run_trial(w: Worker, trial: Any, job: tuple[Any, dict[str, str]]) -> str:
    """Train one trial and tell the study how it ended: "complete", "pruned", "fail" or "interrupted"."""
    from .. import runner
    from ..console import setup_logging
    from . import report
    from .study import Heartbeat, trial_id

    cfg, tags, continued = job
    judge = Judge(w, trial)
    run_dir = Path(trial.user_attrs[report.RUN_DIR_ATTR])
    with Heartbeat(w.storage, trial_id(w.storage, w.study, trial), w.plan.o.heartbeat_s):
        try:
            ended = _continue(continued, judge, tags) if continued else runner.start(cfg, judge=judge, tags=tags)
        except UserError as e:  # this trial's own config or setup: it fails, the study goes on
            log.error("sweep %s: trial %d failed: %s", w.plan.study_name, trial.number, e)
            tell(w, trial, "fail", None, run_dir, str(e), StopReason.FAILED.value)
            report_progress(w, trial, "fail", judge)
            return "fail"
        except BaseException as e:
            tell(w, trial, "fail", None, run_dir, describe(e))
            if isinstance(e, KeyboardInterrupt):
                retry(w, trial)
            raise
        finally:
            setup_logging(None)  # the sweep's own lines stay out of the trial's train.log
        # How it ended; a continued trial found already ended: as its folder records it.
        stop = ({"reason": ended.stop.reason.value, "detail": ended.stop.detail} if ended is not None
                else _last_stop(run_dir))
        code = ended.stop.exit_code if ended is not None else 0
        reason = stop.get("reason") if stop else ("pruned" if judge.pruned else None)
        if code == 130:
            outcome = "interrupted"
        elif reason == StopReason.PRUNED.value:
            outcome = "pruned"
        elif math.isfinite(judge.best) and (code == 0 or reason == StopReason.DIVERGED.value):
            outcome = "complete"  # a diverged trial still tells the sampler how good it got
        else:
            outcome = "fail"
        tell(w, trial, outcome, judge.best, run_dir, (stop or {}).get("detail") or judge.pruned, reason)
    if outcome == "interrupted":
        retry(w, trial)
    report_progress(w, trial, outcome, judge)
    return outcome


def _continue(run_dir: Path, judge: Judge, tags: dict[str, str]) -> Outcome | None:
    """Resume a killed trial's folder into its own tracked runs; the judge first hears its evaluations so far."""
    from .. import runner
    from ..parts import saved_step
    from ..resume import continue_in_place
    from ..trackers import jsonl

    saved = saved_step(run_dir)
    for r in jsonl.read(run_dir / jsonl.FILENAME):  # the pruner judges the whole curve, not the resumed part only
        if judge.metric in r and isinstance(saved, int) and r.get("step", 0) <= saved:
            judge.replay(r["step"], r[judge.metric])
    attempt = continue_in_place(run_dir)
    if attempt is None:
        return None  # it had ended
    attempt.judge = judge
    attempt.tags.update(tags)
    return runner.lifecycle(attempt)


def _last_stop(run_dir: Path) -> dict | None:
    from ..trackers import jsonl

    path = run_dir / jsonl.FILENAME
    return jsonl.last_stop(jsonl.read(path)) if path.exists() else None


def tell(w: Worker, trial: Any, outcome: str, value: float | None, run_dir: Path, detail: str | None,
          reason: str | None = None) -> None:
    from ..run_folder import tracked_run_id
    from . import report

    S = w.optuna.trial.TrialState
    try:
        run_id = tracked_run_id(run_dir, "mlflow")
        if run_id:
            trial.set_user_attr(report.MLFLOW_ATTR, run_id)
        trial.set_user_attr(report.REASON_ATTR, reason or ("interrupted" if outcome == "interrupted" else "failed"))
        if detail:
            trial.set_user_attr(report.DETAIL_ATTR, detail[:1000])
        if outcome == "complete":
            w.study.tell(trial, value)
        else:
            w.study.tell(trial, state=S.PRUNED if outcome == "pruned" else S.FAIL)
        w.ran.append(trial.number)
    except Exception as e:  # noqa: BLE001 - the database is gone: the heartbeat stops and another worker fails it
        log.error("sweep: could not record trial %d in the study (%s)", trial.number, describe(e))


def retry(w: Worker, trial: Any) -> None:
    """Queue a trial's params once more: the study gets its result after all (once; a second loss is final)."""
    if trial.user_attrs.get("retry_of") is not None:
        return
    try:
        w.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    except Exception as e:  # noqa: BLE001
        log.warning("sweep: could not queue trial %d's params again (%s)", trial.number, describe(e))
