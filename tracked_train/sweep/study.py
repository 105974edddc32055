"""The Optuna side of a sweep: storage, study, sampler, pruner, heartbeats, and what a trial's end means.

All Optuna calls live here (the training loop only sees a judge callable).
Workers share a study through its storage, an SQLAlchemy database: a SQLite
file on one machine, PostgreSQL or MySQL across machines. A worker records a
heartbeat for its running trial; a trial whose heartbeat stops (the worker was
killed) is failed by whichever worker looks next, and its params are queued
once more, so the study neither loses the trial nor counts it. A database
server that restarts or fails over is waited for: each call to it is retried
on a fresh connection until it answers again (up to ``OUTAGE_WAIT_S``).
"""

from __future__ import annotations

import logging
import statistics
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, describe
from ..redact import strip_userinfo

log = logging.getLogger("tracked_train")

PRUNERS = ("median", "hyperband", "none")
# SQLAlchemy dialects (``dialect+driver://``) Optuna's RDB storage runs on.
_DIALECTS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb")
SPACE_ATTR = "tracked_train.space"  # the space the study was created with: a continued study must match
PARENT_ATTR = "tracked_train.mlflow_parent_run_id"
BASE_ATTR = "tracked_train.base_config"  # the base config every worker must share (less swept and per-machine keys)
# A worker that dies is noticed after this many heartbeats without one.
GRACE_HEARTBEATS = 3
STORAGE_TRIES = 4
# How long a call to a database server that went away (a restart, a failover) waits for it to come back.
OUTAGE_WAIT_S = 120.0


def check_storage_url(url: str) -> None:
    """Refuse what no SQLAlchemy database is, before anything is created."""
    dialect = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if dialect not in _DIALECTS:
        raise UserError(f"--storage {strip_userinfo(url)!r} is not a database URL; use sqlite:///sweeps.db on one "
                        "machine or postgresql://user@host/db (any SQLAlchemy URL) across machines")
    if dialect == "sqlite":
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if not path or path == ":memory:":
            raise UserError(f"--storage {url!r} names no file; workers share a study through a file, e.g. "
                            "sqlite:///sweeps.db")
        folder = Path(path).parent
        if not folder.is_dir():
            raise UserError(f"--storage {url!r}: folder {folder} does not exist; create it or choose another path")


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("the sweep command needs optuna: pip install 'tracked-train[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our console lines say what happens
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
    # We beat ourselves (Heartbeat below) around ask and tell instead of Study.optimize's thread.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def trial_id(storage: Any, study: Any, trial: Any) -> int:
    """The storage's id of ``trial`` (what heartbeats are recorded under), through Optuna's public storage API:
    a Trial keeps its id private."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                           trial.number)


def open_storage(url: str, heartbeat_s: int, on_stale: Callable[[Any, Any], None]) -> Any:
    """Optuna's RDB storage with heartbeats; an unreachable or unusable database is bad input (exit 2)."""
    import tenacity

    optuna = import_optuna()
    if url.startswith("sqlite"):
        # Several workers write one file: wait for its lock instead of failing at once (SQLite's 5 s default).
        engine: dict[str, Any] = {"connect_args": {"timeout": 60}}
        storage_class = optuna.storages.RDBStorage
    else:
        # A server: a pooled connection it closed (it restarted) is replaced before use, and a call made while it
        # is down waits for it (a first connection that fails is still bad input, below).
        engine = {"pool_pre_ping": True}
        storage_class = _waiting_storage_class(optuna)
    # Workers started together race to create the tables of a new database (a UNIQUE constraint or "already
    # exists" for the loser): the next try finds them made. A random pause keeps the racers apart.
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(STORAGE_TRIES), wait=tenacity.wait_random(0.2, 1.2),
                                 retry=tenacity.retry_if_exception(_lost_creation_race), reraise=True)
    try:
        return retrying(storage_class, url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                        grace_period=GRACE_HEARTBEATS * heartbeat_s, heartbeat_stale_trial_callback=on_stale)
    except Exception as e:  # noqa: BLE001 - wrong host or password, missing driver, not a database
        raise UserError(f"cannot open the study storage {strip_userinfo(url)} ({describe(e, 200)}); check "
                        "--storage (and that its database driver is installed)") from None


def _lost_creation_race(e: BaseException) -> bool:
    """The error of a worker that lost the race to create a new database's tables (by name: it may be
    SQLAlchemy's or a driver's)."""
    return isinstance(e, Exception) and type(e).__name__ in ("IntegrityError", "OperationalError")


def lost_connection(e: BaseException | None) -> BaseException | None:
    """The error saying the database server went away (restarted, failed over, unreachable), ``e`` or one of
    its causes, else None: the call can be made again on a new connection (the server rolled back what it had
    not committed)."""
    from sqlalchemy import exc

    for _ in range(10):  # Optuna wraps SQLAlchemy's errors in its own (StorageInternalError from ...)
        if e is None:
            return None
        if isinstance(e, exc.OperationalError) or (isinstance(e, exc.DBAPIError) and e.connection_invalidated):
            return e
        # Raised *while handling* the lost connection, not from it: Optuna's trial query catches the failure and
        # falls back to a second query in the same, now invalid, transaction (PendingRollbackError, whose
        # context is the OperationalError). The session is rolled back on the way out, so a new call can work.
        e = e.__cause__ or e.__context__
    return None


_WAITING_STORAGE: dict[int, type] = {}
_calling = threading.local()  # the call in progress on this thread retries; the storage's calls inside it do not


def _waiting_storage_class(optuna: Any) -> type:
    """Optuna's RDB storage whose calls wait through a database outage instead of failing the worker.

    Without it a restart of PostgreSQL kills a worker in ``study.ask`` or ``tell``, or loses a trial's
    evaluations (each pooled connection is dead once). A call that fails because the connection is lost is
    made again, from the start (each is one transaction), every second or so, for up to ``OUTAGE_WAIT_S``.
    """
    import functools

    base = optuna.storages.RDBStorage
    if id(base) in _WAITING_STORAGE:
        return _WAITING_STORAGE[id(base)]

    def waiting(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(_calling, "active", False):
                return method(self, *args, **kwargs)
            _calling.active = True
            try:
                return _wait_through_outage(method, self, args, kwargs)
            finally:
                _calling.active = False

        return call

    names = [n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_") and n != "remove_session"
             and callable(getattr(base, n, None))]
    # Besides the public ones, what Optuna's cache in front of the storage (_CachedStorage) calls.
    names += ["record_heartbeat", "_get_stale_trial_ids", "_create_new_trial", "_set_trial_param",
              "_get_best_trial_id", "_get_trials"]
    methods = {n: waiting(getattr(base, n)) for n in names if callable(getattr(base, n, None))}
    cls = type("WaitingRDBStorage", (base,), {**methods, "__doc__": _waiting_storage_class.__doc__})
    _WAITING_STORAGE[id(base)] = cls
    return cls


def _wait_through_outage(method: Callable[..., Any], storage: Any, args: tuple, kwargs: dict) -> Any:
    import time

    import tenacity

    def warn_once(state: tenacity.RetryCallState) -> None:
        if state.attempt_number == 1:
            log.warning("sweep: the study's database is unreachable (%s); waiting up to %.0f s for it",
                        describe(lost_connection(state.outcome.exception()), 200), OUTAGE_WAIT_S)

    # Pauses of 0.1 s doubling to 1 s; an error that is not a lost connection is raised at once, and so is the
    # last one after OUTAGE_WAIT_S.
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(OUTAGE_WAIT_S), wait=tenacity.wait_exponential(multiplier=0.1, max=1.0),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, Exception) and lost_connection(e) is not None),
        before_sleep=warn_once, reraise=True)
    for attempt in retrying:
        with attempt:
            result = method(storage, *args, **kwargs)
    state = attempt.retry_state
    if state.attempt_number > 1:  # it waited, and said so
        storage.recovered_at = time.monotonic()
        log.warning("sweep: the study's database answers again (after %.1f s)", storage.recovered_at - state.start_time)
    return result


def heartbeats_trusted(storage: Any) -> bool:
    """False for one grace period after this worker waited for the database: the heartbeats other workers could
    not record meanwhile are no sign that they died (their running trials are not failed for it)."""
    import time

    recovered = getattr(storage, "recovered_at", None)
    return recovered is None or time.monotonic() - recovered > (storage.grace_period or 0)


def open_study(optuna: Any, storage: Any, name: str, pruner: Any, metric: str = "val/loss",
               mode: str = "min") -> tuple[Any, bool]:
    """(study, created by this call). Creation is atomic in the database: exactly one worker creates.

    The study optimises the run's monitored metric in its direction (early_stopping.monitor / mode).
    """
    direction = "maximize" if mode == "max" else "minimize"
    try:
        return optuna.create_study(storage=storage, study_name=name, direction=direction, pruner=pruner), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, pruner=pruner)
        if study.direction.name.lower() != direction:
            raise UserError(f"study '{name}' {study.direction.name.lower()}s; this sweep {direction}s {metric} "
                            "(early_stopping.mode): use another --study") from None
        return study, False


def make_pruner(optuna: Any, name: str, warmup_trials: int, eval_every: int, max_steps: int) -> Any:
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=warmup_trials)
    # Resources are training steps: the first rung is the first evaluation, the last the end of the run.
    inner = optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=max(max_steps, eval_every),
                                           reduction_factor=3)
    return _after_warmup(optuna, inner, warmup_trials)


def _after_warmup(optuna: Any, inner: Any, warmup_trials: int) -> Any:
    """Hyperband has no startup count of its own: judge nothing until ``warmup_trials`` trials finished."""

    class AfterWarmup(optuna.pruners.BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            return len(done) >= warmup_trials and inner.prune(study, trial)

    return AfterWarmup()


def make_sampler(optuna: Any, seed: int | None, number: int, trials: int) -> Any:
    """TPE, seeded per trial number: with --seed, trial k's params depend only on the seed and on the
    trials finished before it (workers sharing one seed would otherwise all draw the same params)."""
    trial_seed = None if seed is None else (seed * 1_000_003 + number) % 2**32
    # TPE samples at random for its first trials; Optuna's 10 would be a whole small sweep.
    startup = max(2, min(10, trials // 3))
    # constant_liar: running trials count as bad ones, so parallel workers do not all draw the same point.
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=startup, constant_liar=True)


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """Trials that count towards --trials: complete or pruned (a failed one is replaced)."""
        return self.complete + self.pruned


def counts(optuna: Any, study: Any) -> Counts:
    S = optuna.trial.TrialState
    c = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.state == S.COMPLETE:
            c.complete += 1
        elif t.state == S.PRUNED:
            c.pruned += 1
        elif t.state == S.FAIL:
            c.failed += 1
        elif t.state == S.RUNNING:
            c.running += 1
        elif t.state == S.WAITING:
            c.waiting += 1
    return c


def is_surplus(optuna: Any, study: Any, trial: Any, total: int) -> bool:
    """Two workers may both ask when one trial is left: the one with the higher number stands down."""
    S = optuna.trial.TrialState
    ahead = [t for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING))
             if t.number < trial.number]
    return len(ahead) >= total


class Heartbeat:
    """Records the running trial's heartbeat every ``interval_s`` from a thread (the loop trains meanwhile)."""

    def __init__(self, storage: Any, trial_id: int, interval_s: float):
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)  # at once: a worker killed now is noticed too
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a busy database: the next beat tries again
                log.debug("sweep: heartbeat failed (%s)", describe(e))


def pruned_detail(optuna: Any, study: Any, pruner: str, step: int, value: float, metric: str = "val/loss") -> str:
    """The sentence a pruned trial ends with: against what it was judged."""
    S = optuna.trial.TrialState
    others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(S.COMPLETE,))
              if step in t.intermediate_values]
    if not others:
        return f"Pruned at step {step} by the {pruner} pruner ({metric} {value:.4f})."
    median = statistics.median(others)
    best = max(others) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(others)
    n = f"{len(others)} finished trial{'s' if len(others) != 1 else ''}"
    if pruner == "median":
        return (f"Pruned at step {step}: {metric} {value:.4f} is worse than the median {median:.4f} of the {n} "
                f"at that step (median pruner).")
    return (f"Pruned at step {step} by the Hyperband pruner: {metric} {value:.4f} is not in the best third of its "
            f"bracket at this rung (the {n} at that step: median {median:.4f}, best {best:.4f}).")
