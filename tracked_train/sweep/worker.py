"""A sweep worker: open (or create) the study and its parent run, then ask for trials until it has its number.

Any number of workers, on one machine or many, share a study through its storage and split ``--trials``
between them (see :mod:`.study`). A trial that takes its process down (kill -9, the OOM killer) stops its
heartbeat, and the next worker to look fails it and runs its params again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import UserError, describe
from ..redact import strip_userinfo
from ..task import monitor_of
from .judge import Judge
from .parent import finish, make_parent
from .plan import Plan, Worker, base_config, check_base, leftover_error, leftover_trials
from .trial import job_for, retry, run_trial, tell

log = logging.getLogger("tracked_train")

MAX_FAILURES_IN_A_ROW = 3  # a config that fails every trial would otherwise replace failed trials forever
PARENT_WAIT_S = 60.0  # how long a worker waits for the study's creator to name the parent run


def open_worker(plan: Plan) -> Worker:
    """Open (or create) the study and its parent run; a continued study must have the same space."""
    import json

    from . import study as st

    optuna = st.import_optuna()
    holder: dict[str, Worker] = {}
    storage = st.open_storage(plan.storage_url, plan.o.heartbeat_s,
                              lambda study, trial: _on_stale(holder["w"], trial))
    t = plan.base.training
    pruner = st.make_pruner(optuna, plan.o.pruner, plan.o.warmup_trials, t.eval_every, t.max_steps)
    try:
        study, created = st.open_study(optuna, storage, plan.study_name, pruner, *monitor_of(plan.base))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the database refused: nothing was created
        raise UserError(f"cannot open study '{plan.study_name}' in {strip_userinfo(plan.storage_url)} "
                        f"({describe(e, 200)}); check --storage") from None
    space = json.dumps(plan.space.describe(), sort_keys=True)
    base = json.dumps(base_config(plan), sort_keys=True, default=str)
    w = holder["w"] = Worker(plan, optuna, storage, study)
    if created and leftover_trials(Path(plan.base.run.output_dir), plan.study_name):
        optuna.delete_study(study_name=plan.study_name, storage=storage)  # made a moment ago, still empty
        raise leftover_error(Path(plan.base.run.output_dir), plan.study_name, plan.storage_url)
    if created:
        study.set_user_attr(st.SPACE_ATTR, space)
        study.set_user_attr(st.BASE_ATTR, base)
        if plan.mlflow_uri:
            try:
                w.parent_id = make_parent(w)
            except BaseException:
                optuna.delete_study(study_name=plan.study_name, storage=storage)  # nothing half-made stays
                raise
        # "" says "no parent", so a worker with MLflow that comes later makes one instead of waiting for it.
        study.set_user_attr(st.PARENT_ATTR, w.parent_id or "")
        log.info("sweep %s: new study in %s", plan.study_name, strip_userinfo(plan.storage_url))
        return w
    recorded = _wait_for_attr(study, st.SPACE_ATTR, 10.0)
    if recorded is not None and recorded != space:
        raise UserError(f"study '{plan.study_name}' in {strip_userinfo(plan.storage_url)} was created with another "
                        f"space ({recorded}); use the same space file or a new --study name")
    if recorded is None:  # a study made outside tracked-train: from now on it holds this space
        study.set_user_attr(st.SPACE_ATTR, space)
    recorded_base = study.user_attrs.get(st.BASE_ATTR)
    if recorded_base is None:  # a study from before workers compared base configs, or its creator is a moment behind
        recorded_base = _wait_for_attr(study, st.BASE_ATTR, 2.0) if recorded is not None else None
    if recorded_base is None:
        study.set_user_attr(st.BASE_ATTR, base)
    else:
        check_base(plan, recorded_base)
    c = st.counts(optuna, study)
    log.info("sweep %s: continuing the study (%d complete, %d pruned, %d failed, %d running)", plan.study_name,
             c.complete, c.pruned, c.failed, c.running)
    if plan.mlflow_uri:
        from ..mlflow.sweep import reopen_parent

        w.parent_id = _wait_for_attr(study, st.PARENT_ATTR, PARENT_WAIT_S)
        if not w.parent_id:  # its creator swept without MLflow, or died before naming one
            w.parent_id = make_parent(w)
            study.set_user_attr(st.PARENT_ATTR, w.parent_id)
        elif not reopen_parent(plan.mlflow_uri, w.parent_id):
            w.parent_id = None
    return w


def _wait_for_attr(study: Any, key: str, deadline_s: float) -> Any:
    """A study attr its creator sets right after creating it (another worker may be a moment behind)."""
    import time

    end, tick = time.monotonic() + deadline_s, threading.Event()
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() > end:
            return value
        tick.wait(0.2)


def work(w: Worker) -> int:
    """Trials until the study is done; the parent run ends with the study."""
    code, status = 0, "FINISHED"
    failures = 0
    try:
        while True:
            trial = _next_trial(w)
            job = None
            if trial is not None:
                try:
                    job = job_for(w, trial)
                except UserError as e:  # a combination the space check could not try (too many of them)
                    tell(w, trial, "fail", None, Path("."), str(e))
                    log.error("sweep %s: trial %d: %s", w.plan.study_name, trial.number, e)
                    failures += 1
                    if failures >= MAX_FAILURES_IN_A_ROW:
                        raise
                    continue
            distributed.broadcast(job)
            if job is None:
                w.followers_stopped = True
                break
            outcome = run_trial(w, trial, job)
            if outcome == "interrupted":
                code, status = 130, "KILLED"
                break
            failures = failures + 1 if outcome == "fail" else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                log.error("sweep %s: %d trials in a row failed; see their train.log (the last: %s)",
                          w.plan.study_name, failures, trial.user_attrs.get("run_dir"))
                code, status = 1, "FAILED"
                break
    except KeyboardInterrupt:
        code, status = 130, "KILLED"
        raise
    except BaseException:
        code, status = 1, "FAILED"
        raise
    finally:
        finish(w, status)
    return code


def _next_trial(w: Worker) -> Any:
    """The next trial for this worker to run, or None when the study has its trials."""
    from . import study as st

    optuna, study, total = w.optuna, w.study, w.plan.o.trials
    waiting, tick = False, threading.Event()
    while True:
        if st.heartbeats_trusted(w.storage):
            optuna.storages.fail_stale_trials(study)
        c = st.counts(optuna, study)
        if c.finished >= total:
            return None
        if c.finished + c.running >= total:  # the rest run elsewhere; take over any that dies
            if not waiting:
                log.info("sweep %s: waiting for %d running trial(s) of other workers", w.plan.study_name, c.running)
                waiting = True
            tick.wait(w.plan.o.heartbeat_s)
            continue
        trial = study.ask()
        w.storage.record_heartbeat(st.trial_id(w.storage, study, trial))  # from now on a dead worker's trial is noticed
        if st.is_surplus(optuna, study, trial, total):
            trial.set_user_attr("stop_reason", "surplus")
            trial.set_user_attr("stop_detail", "Not run: another worker had already started the last trial.")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        return trial


def _on_stale(w: Worker, trial: Any) -> None:
    """A running trial lost its heartbeat (its worker died): failed by Optuna; its params run again."""
    from ..mlflow.sweep import fail_child
    from .study import GRACE_HEARTBEATS

    grace = GRACE_HEARTBEATS * w.plan.o.heartbeat_s
    log.warning("sweep %s: trial %d's worker stopped (no heartbeat for %d s): marked failed; its params run again",
                w.plan.study_name, trial.number, grace)
    retry(w, trial)
    run_id = trial.user_attrs.get("mlflow_run_id")
    run_dir = trial.user_attrs.get("run_dir")
    if run_id is None and run_dir:
        from ..run_folder import tracked_run_id

        run_id = tracked_run_id(Path(run_dir), "mlflow")  # the worker died before recording it (same machine)
    if run_id is None and w.plan.mlflow_uri and w.parent_id:
        from ..mlflow.sweep import find_trial_run

        run_id = find_trial_run(w.plan.mlflow_uri, w.parent_id, trial.number)  # it died on another machine
    if w.plan.mlflow_uri and run_id:
        fail_child(w.plan.mlflow_uri, run_id, f"Failed: the sweep worker running trial {trial.number} stopped "
                                              f"(no heartbeat for {grace} s).")


def follow() -> int:
    """torchrun ranks other than 0: train each trial rank 0 announces, with its judge's verdicts."""
    from .. import runner
    from ..console import setup_logging

    code = 0
    while True:
        job = distributed.broadcast(None)
        if job is None:
            return code
        cfg, tags, _ = job  # a continued folder is never handed out under torchrun
        code = runner.start(cfg, judge=Judge(), tags=tags).stop.exit_code
        setup_logging(None)
        if code == 130:
            return code
