"""``tracked-train sweep``: a hyperparameter search with Optuna, every trial a normal tracked run.

One worker (this process) loops: ask the study for a trial, derive its config
from the base config and the space, train it, tell the study how it ended.
Any number of workers, on one machine or many, share a study through its
storage and split ``--trials`` between them (see :mod:`.study`).

Each trial runs in this process through :func:`tracked_train.runner.start`
with a judge, not as a subprocess: the pruner's question after each evaluation
is a plain function call, a trial costs no fresh interpreter and torch import
(seconds on a small CPU, as long as a small trial), and under torchrun the
ranks stay in one process group from trial to trial. A trial that crashes in
Python ends ``failed`` and the worker goes on; one that takes the process
down (a kill -9, the OOM killer) stops its heartbeat, and the next worker to
look fails it and runs its params again.

Everything the command is given is checked before anything is created: bad
input exits 2 with one line, leaving no study, no parent run and no folder.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed
from ..early_stopping import Stop, StopReason
from ..errors import UserError, describe
from ..redact import strip_userinfo
from ..task import monitor_of

if TYPE_CHECKING:
    from ..trackers import Outcome

log = logging.getLogger("tracked_train")

DEFAULT_STORAGE = "sqlite:///sweeps.db"
MAX_FAILURES_IN_A_ROW = 3  # a config that fails every trial would otherwise replace failed trials forever
PARENT_WAIT_S = 60.0  # how long a worker waits for the study's creator to name the parent run


@dataclass(frozen=True)
class Options:
    """The `sweep` command's arguments."""

    space_file: str
    config_file: str | None = None
    sets: tuple[str, ...] = ()
    trackers: tuple[str, ...] = ()
    output_dir: str | None = None
    trials: int = 20
    study: str | None = None  # default: the space file's name
    storage: str | None = None  # default: DEFAULT_STORAGE
    seed: int | None = None
    pruner: str = "median"
    warmup_trials: int = 2
    heartbeat_s: int = 10


@dataclass
class Plan:
    """The checked inputs of a sweep."""

    o: Options
    base: Any  # Config
    space: Any  # space.Space
    study_name: str
    storage_url: str
    mlflow_uri: str | None  # None: no mlflow tracker, no parent run


@dataclass
class Worker:
    """A running sweep worker: its study, the parent run, what it has done."""

    plan: Plan
    optuna: Any
    storage: Any
    study: Any
    parent_id: str | None = None
    ran: list[int] = field(default_factory=list)
    followers_stopped: bool = False  # torchrun: the other ranks were told there is no next trial


def sweep(o: Options) -> int:
    """Run this worker until the study has ``o.trials`` complete or pruned trials; returns the exit code."""
    from ..console import setup_logging

    setup_logging(None)
    if not distributed.init().is_main:
        return _follow()
    w = None
    try:
        w = _open(check(o))
        return _work(w)
    finally:
        if distributed.current().enabled and not (w and w.followers_stopped):
            distributed.broadcast(None)  # torchrun: the other ranks stop with rank 0


def check(o: Options) -> Plan:
    """Every input, checked before anything exists (bad input: UserError, exit 2)."""
    from .. import config
    from ..data import check_files
    from ..names import MAX_LEN, problem
    from ..trackers import Trackers
    from . import space as space_mod
    from .study import PRUNERS, check_storage_url

    cli = {"run.output_dir": o.output_dir, "tracking.trackers": list(o.trackers) or None}
    base = config.resolve(o.config_file, list(o.sets), cli)
    if base.run.name:
        log.warning("run.name=%s is ignored: each trial is named after the study and its number", base.run.name)
    space = space_mod.load(o.space_file, base)
    if o.trials < 1:
        raise UserError(f"--trials {o.trials}: a sweep needs at least 1 trial")
    if o.warmup_trials < 0:
        raise UserError(f"--pruner-warmup-trials {o.warmup_trials}: give 0 or more finished trials")
    if o.heartbeat_s < 1:
        raise UserError(f"--heartbeat {o.heartbeat_s}: give a whole number of seconds, at least 1")
    if o.pruner not in PRUNERS:
        raise UserError(f"unknown pruner {o.pruner!r}; use --pruner {', '.join(PRUNERS[:-1])} or {PRUNERS[-1]}")
    name = o.study or Path(o.space_file).stem
    why = problem(name) or (f"is over {MAX_LEN - 6} characters (trial folders add -tNNNN)"
                            if len(name) > MAX_LEN - 6 else None)
    if why:
        raise UserError(f"study name {name[:60]!r} {why}; it names the trials' run folders: choose another --study")
    storage_url = o.storage or DEFAULT_STORAGE
    check_storage_url(storage_url)
    Trackers.from_specs(base.tracking.trackers)  # an unknown tracker name fails now
    check_files(base.data)  # what every trial would find missing, found once before a study exists
    _check_writable(Path(base.run.output_dir))
    if _leftover_trials(Path(base.run.output_dir), name) and _is_new_sqlite(storage_url):
        raise _leftover_error(Path(base.run.output_dir), name, storage_url)
    mlflow_uri = None
    if any(spec.partition("=")[0] == "mlflow" for spec in base.tracking.trackers):
        from ..mlflow.client import configured_uri
        from ..mlflow.sweep import check as check_mlflow

        mlflow_uri = check_mlflow(configured_uri(base))
    return Plan(o, base, space, name, storage_url, mlflow_uri)


def _check_writable(root: Path) -> None:
    """The output folder, or the nearest folder that exists above it, must be writable (nothing is made here)."""
    import os

    here = root.resolve()
    while not here.exists():
        here = here.parent
    if not here.is_dir() or not os.access(here, os.W_OK | os.X_OK):
        raise UserError(f"cannot create trial folders in {root} ({here} is not a writable folder); "
                        "choose a writable --output-dir")


def _leftover_trials(root: Path, study: str) -> list[str]:
    """Run folders named like this study's trials (``STUDY-tNNN``)."""
    import re

    pattern = re.compile(re.escape(study) + r"-t\d{3,}")
    return sorted(d.name for d in root.iterdir() if d.is_dir() and pattern.fullmatch(d.name)) if root.is_dir() else []


def _is_new_sqlite(url: str) -> bool:
    """A SQLite storage whose file does not exist yet holds no study (checked without creating the file)."""
    prefix = "sqlite:///"
    return url.startswith(prefix) and not Path(url[len(prefix):].partition("?")[0]).exists()


def _leftover_error(root: Path, study: str, storage_url: str) -> UserError:
    found = _leftover_trials(root, study)
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    return UserError(f"{root} holds trial folders of an earlier study named '{study}' ({shown}) that "
                     f"{strip_userinfo(storage_url)} does not hold; move them away, or choose another --study "
                     "or --output-dir")


def base_config(plan: Plan) -> dict[str, Any]:
    """What every worker of a study must agree on: the base config less the swept keys and per-machine settings."""
    from ..redact import redact

    swept = {p.key for p in plan.space.params}
    per_machine = ("run.", "tracking.", "console.")  # folders, servers and output may differ between machines
    flat = plan.base.flat()
    return redact({k: v for k, v in flat.items() if k not in swept and not k.startswith(per_machine)})


def _check_base(plan: Plan, recorded: str) -> None:
    """Refuse a worker whose base config differs from the study's: its trials would be another experiment."""
    import json

    theirs, ours = json.loads(recorded), json.loads(json.dumps(base_config(plan), default=str))
    diff = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if diff:
        k = diff[0]
        more = f" and {len(diff) - 1} more" if len(diff) > 1 else ""
        raise UserError(f"study '{plan.study_name}' was started from another base config ({k}={theirs.get(k)!r} "
                        f"there, {ours.get(k)!r} here{more}); give every worker the same --config and --set, "
                        "or use a new --study")


def _open(plan: Plan) -> Worker:
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
    if created and _leftover_trials(Path(plan.base.run.output_dir), plan.study_name):
        optuna.delete_study(study_name=plan.study_name, storage=storage)  # made a moment ago, still empty
        raise _leftover_error(Path(plan.base.run.output_dir), plan.study_name, plan.storage_url)
    if created:
        study.set_user_attr(st.SPACE_ATTR, space)
        study.set_user_attr(st.BASE_ATTR, base)
        if plan.mlflow_uri:
            try:
                w.parent_id = _start_parent(w)
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
        _check_base(plan, recorded_base)
    c = st.counts(optuna, study)
    log.info("sweep %s: continuing the study (%d complete, %d pruned, %d failed, %d running)", plan.study_name,
             c.complete, c.pruned, c.failed, c.running)
    if plan.mlflow_uri:
        from ..mlflow.sweep import reopen_parent

        w.parent_id = _wait_for_attr(study, st.PARENT_ATTR, PARENT_WAIT_S)
        if not w.parent_id:  # its creator swept without MLflow, or died before naming one
            w.parent_id = _start_parent(w)
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


def _start_parent(w: Worker) -> str:
    from ..mlflow.sweep import start_parent

    p, o = w.plan, w.plan.o
    tags = {"sweep.storage": strip_userinfo(p.storage_url), "sweep.trials": str(o.trials), "sweep.pruner": o.pruner,
            "sweep.pruner_warmup_trials": str(o.warmup_trials), "sweep.sampler": "tpe",
            "sweep.seed": "" if o.seed is None else str(o.seed), "sweep.space_file": p.space.path}
    return start_parent(p.mlflow_uri, p.base.tracking.experiment, p.study_name, p.space.describe(), tags)


def _work(w: Worker) -> int:
    """Trials until the study is done; the parent run ends with the study."""
    code, status = 0, "FINISHED"
    failures = 0
    try:
        while True:
            trial = _next_trial(w)
            job = None
            if trial is not None:
                try:
                    job = _job(w, trial)
                except UserError as e:  # a combination the space check could not try (too many of them)
                    _tell(w, trial, "fail", None, Path("."), str(e))
                    log.error("sweep %s: trial %d: %s", w.plan.study_name, trial.number, e)
                    failures += 1
                    if failures >= MAX_FAILURES_IN_A_ROW:
                        raise
                    continue
            distributed.broadcast(job)
            if job is None:
                w.followers_stopped = True
                break
            outcome = _run_trial(w, trial, job)
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
        _finish(w, status)
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
        w.storage.record_heartbeat(trial._trial_id)  # from now on a dead worker's trial is noticed
        if st.is_surplus(optuna, study, trial, total):
            trial.set_user_attr("stop_reason", "surplus")
            trial.set_user_attr("stop_detail", "Not run: another worker had already started the last trial.")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        return trial


def _job(w: Worker, trial: Any) -> tuple[Any, dict[str, str], Path | None]:
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
    c = _counts(w)
    log.info("sweep %s: trial %d (%d of %d finished) -> %s%s: %s", p.study_name, trial.number, c.finished,
             p.o.trials, run_dir, f" (continuing trial {trial.user_attrs['retry_of']})" if continued else "",
             ", ".join(f"{k}={_show(v)}" for k, v in params.items()))
    return cfg, child_tags(w.parent_id, p.study_name, trial.number), continued


def _killed_folder(w: Worker, trial: Any) -> Path | None:
    """The run folder of the killed trial whose params ``trial`` runs again, if it is here and unfinished."""
    from ..sources import is_run_folder
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


def _show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _counts(w: Worker) -> Any:
    from .study import counts

    return counts(w.optuna, w.study)


class Judge:
    """Reports each evaluation's monitored metric to the trial and stops the run when the pruner says so.

    The metric and its direction are the run's (early_stopping.monitor / mode, else the task's own).
    Under torchrun only rank 0 talks to Optuna; every rank calls the judge after
    the same evaluation and gets rank 0's decision.
    """

    def __init__(self, w: Worker | None = None, trial: Any = None):
        self.w, self.trial = w, trial
        self.metric, self.mode = monitor_of(w.plan.base) if w is not None else ("val/loss", "min")
        self.best = math.inf if self.mode == "min" else -math.inf
        self.pruned: str | None = None

    def __call__(self, step: int, val: dict[str, float]) -> Stop | None:
        detail = None
        if self.w is not None and self.metric in val:
            detail = self._judge(step, val[self.metric])
        detail = distributed.broadcast(detail)
        if detail is None:
            return None
        self.pruned = detail
        return Stop(StopReason.PRUNED, detail, step)

    def replay(self, step: int, value: float) -> None:
        """An evaluation from before a resume: reported to the trial, never a reason to prune it now."""
        if math.isfinite(value):
            self.best = min(self.best, value) if self.mode == "min" else max(self.best, value)
        try:
            self.trial.report(value, step)
        except Exception as e:  # noqa: BLE001 - as in _judge: the database may be busy
            log.warning("sweep: could not report step %d to the study (%s)", step, describe(e))

    def _judge(self, step: int, loss: float) -> str | None:
        from .study import pruned_detail

        if math.isfinite(loss):
            self.best = min(self.best, loss) if self.mode == "min" else max(self.best, loss)
        try:
            self.trial.report(loss, step)
            # The last evaluation is the run's end anyway: a verdict there would only relabel a finished trial.
            if step >= self.w.plan.base.training.max_steps or not self.trial.should_prune():
                return None
            return pruned_detail(self.w.optuna, self.w.study, self.w.plan.o.pruner, step, loss, self.metric)
        except Exception as e:  # noqa: BLE001 - a busy database must not cost the trial: judged at the next eval
            log.warning("sweep: could not report step %d to the study (%s)", step, describe(e))
            return None


def _run_trial(w: Worker, trial: Any, job: tuple[Any, dict[str, str]]) -> str:
    """Train one trial and tell the study how it ended: "complete", "pruned", "fail" or "interrupted"."""
    from .. import runner
    from ..console import setup_logging
    from . import report
    from .study import Heartbeat

    cfg, tags, continued = job
    judge = Judge(w, trial)
    run_dir = Path(trial.user_attrs[report.RUN_DIR_ATTR])
    with Heartbeat(w.storage, trial._trial_id, w.plan.o.heartbeat_s):
        try:
            ended = _continue(continued, judge, tags) if continued else runner.start(cfg, judge=judge, tags=tags)
        except UserError as e:  # this trial's own config or setup: it fails, the study goes on
            log.error("sweep %s: trial %d failed: %s", w.plan.study_name, trial.number, e)
            _tell(w, trial, "fail", None, run_dir, str(e), StopReason.FAILED.value)
            _report_progress(w, trial, "fail", judge)
            return "fail"
        except BaseException as e:
            _tell(w, trial, "fail", None, run_dir, describe(e))
            if isinstance(e, KeyboardInterrupt):
                _retry(w, trial)
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
        _tell(w, trial, outcome, judge.best, run_dir, (stop or {}).get("detail") or judge.pruned, reason)
    if outcome == "interrupted":
        _retry(w, trial)
    _report_progress(w, trial, outcome, judge)
    return outcome


def _continue(run_dir: Path, judge: Judge, tags: dict[str, str]) -> Outcome | None:
    """Resume a killed trial's folder into its own tracked runs; the judge first hears its evaluations so far."""
    from .. import runner
    from ..resume import continue_in_place
    from ..trackers import jsonl
    from ..train import saved_step

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


def _tell(w: Worker, trial: Any, outcome: str, value: float | None, run_dir: Path, detail: str | None,
          reason: str | None = None) -> None:
    from ..mlflow.tracker import spool_run_id
    from . import report

    S = w.optuna.trial.TrialState
    try:
        run_id = spool_run_id(run_dir / "mlflow")
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


def _retry(w: Worker, trial: Any) -> None:
    """Queue a trial's params once more: the study gets its result after all (once; a second loss is final)."""
    if trial.user_attrs.get("retry_of") is not None:
        return
    try:
        w.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    except Exception as e:  # noqa: BLE001
        log.warning("sweep: could not queue trial %d's params again (%s)", trial.number, describe(e))


def _on_stale(w: Worker, trial: Any) -> None:
    """A running trial lost its heartbeat (its worker died): failed by Optuna; its params run again."""
    from ..mlflow.sweep import fail_child
    from .study import GRACE_HEARTBEATS

    grace = GRACE_HEARTBEATS * w.plan.o.heartbeat_s
    log.warning("sweep %s: trial %d's worker stopped (no heartbeat for %d s): marked failed; its params run again",
                w.plan.study_name, trial.number, grace)
    if trial.user_attrs.get("retry_of") is None:
        try:
            w.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        except Exception as e:  # noqa: BLE001
            log.warning("sweep: could not queue trial %d's params again (%s)", trial.number, describe(e))
    run_id = trial.user_attrs.get("mlflow_run_id")
    run_dir = trial.user_attrs.get("run_dir")
    if run_id is None and run_dir:
        from ..mlflow.tracker import spool_run_id

        run_id = spool_run_id(Path(run_dir) / "mlflow")  # the worker died before recording it (same machine)
    if run_id is None and w.plan.mlflow_uri and w.parent_id:
        from ..mlflow.sweep import find_trial_run

        run_id = find_trial_run(w.plan.mlflow_uri, w.parent_id, trial.number)  # it died on another machine
    if w.plan.mlflow_uri and run_id:
        fail_child(w.plan.mlflow_uri, run_id, f"Failed: the sweep worker running trial {trial.number} stopped "
                                              f"(no heartbeat for {grace} s).")


def _report_progress(w: Worker, trial: Any, outcome: str, judge: Judge) -> None:
    from . import report

    top = report.best(w.optuna, w.study)
    best = f"best so far: trial {top['number']}, {top['value']:.4f}" if top else "no complete trial yet"
    value = f"{judge.metric} {judge.best:.4f}" if math.isfinite(judge.best) else "no evaluation"
    log.info("sweep %s: trial %d %s (%s); %s", w.plan.study_name, trial.number, outcome, value, best)
    _update_parent(w)


def _update_parent(w: Worker) -> None:
    if not w.parent_id:
        return
    from ..mlflow.sweep import update_parent
    from . import report

    metric, mode = monitor_of(w.plan.base)
    table = report.rows(w.optuna, w.study, [p.key for p in w.plan.space.params], metric)
    top = report.best(w.optuna, w.study)
    c = _counts(w)
    summary = {"finished": c.finished, "complete": c.complete, "pruned": c.pruned, "failed": c.failed, "best": top,
               "metric": metric}
    title = f"sweep {w.plan.study_name}: {c.finished} of {w.plan.o.trials} trials"
    fig = report.figure(title, table, metric, mode)
    try:
        update_parent(w.plan.mlflow_uri, w.parent_id, summary, report.to_csv(table),
                      report.to_markdown(title, table, top, metric), fig)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _finish(w: Worker, status: str) -> None:
    """Print the study's state; end the parent run when nothing is left running (else the last worker does)."""
    import click

    from . import report

    try:
        _update_parent(w)
        c = _counts(w)
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
        click.echo(f"  {k}={_show(v) if isinstance(v, float) else v}")
    if w.parent_id:
        click.echo(f"MLflow parent run: {w.parent_id}")


def _follow() -> int:
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
