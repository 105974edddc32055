"""One run lifecycle for `run` and `resume`: lock, trackers, data and model, the loop, the ending.

:func:`start` and :func:`resume` (in :mod:`tracked_train.resume`) only decide
*what* to run: an :class:`Attempt`. :func:`lifecycle` owns everything after:

1. the run folder is locked (a second process on it exits 2, naming the first);
2. trackers start; their states go to ``trackers.json``, so a folder killed
   before its first checkpoint resumes into the same tracked runs;
3. data, tokenizer and model are prepared;
4. the loop runs, and every ending reaches every tracker with its reason.

A failure before the loop reaches the trackers too (:meth:`Trackers.abort`):
a new run that never trained is removed everywhere, a resumed one gets its
earlier status back; nothing is left RUNNING. Bad input (:class:`UserError`)
also removes a new run's folder, so nothing is half-written.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import distributed
from .config import Config, dump_yaml
from .console import FILE_ONLY, config_table, fmt_duration, setup_logging
from .data import check_files
from .early_stopping import Judge, Stop, StopReason
from .errors import ConfigError, ReportedOnRank0, UserError, describe
from .interrupts import Deferred
from .lock import RunLock
from .run_folder import TRACKERS_FILE, write_tracker_state
from .trackers import Outcome, RunInfo, Trackers

log = logging.getLogger("tracked_train")


@dataclass
class Attempt:
    """What one `run` or `resume` process is about to do in a (locked) run folder."""

    cfg: Config
    run_dir: Path
    lock: RunLock
    new: bool  # a folder made by this process: removed if bad input stops it before training
    state: dict[str, Any] | None = None  # checkpoint to continue from (None: step 0)
    init: dict[str, Any] | None = None  # --init-from weights
    tracker_state: dict[str, Any] | None = None  # tracked runs to continue (None: new ones)
    rewind: bool = False  # an inexact resume: the steps after the checkpoint get new values
    tags: dict[str, str] = field(default_factory=dict)
    install_last: Path | None = None  # `--from best`: the checkpoint that becomes `last` once trackers are up
    judge: Judge | None = None  # after each evaluation: a Stop ends the run (a sweep's pruner)

    @property
    def start_step(self) -> int:
        return self.state["step"] if self.state else 0


def default_run_name(cfg: Config) -> str:
    m, t = cfg.model, cfg.training
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if cfg.task != "lm":  # "path/collatz.py:CollatzTask" -> "collatztask-lr0.001-bs64-..."
        from .names import sanitise

        return sanitise(f"{cfg.task.rpartition(':')[2].lower()}-lr{t.lr:g}-bs{t.batch_size}-{stamp}")
    return f"{cfg.data.source}-d{m.d_model}-l{m.n_layers}-lr{t.lr:g}-bs{t.batch_size}-{stamp}"


def make_run_dir(root: Path, name: str, exact: bool) -> Path:
    """Create ``root/name`` (or ``name-2``, ``-3``... unless ``exact``); bad folders are bad input."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            run_dir = root / (name if n == 1 else f"{name}-{n}")
            try:
                run_dir.mkdir()  # atomic: two processes never get the same folder
                return run_dir
            except FileExistsError:
                if exact:
                    raise UserError(f"run folder {run_dir} already exists; choose another --run-name "
                                    f"or continue it with `tracked-train resume {run_dir}`") from None
                n += 1
    except OSError as e:
        raise UserError(f"cannot create a run folder in {root} ({e.strerror or describe(e)}); "
                        "choose a writable --output-dir") from None


def check_world(cfg: Config) -> None:
    dist = distributed.init()
    if cfg.training.batch_size % dist.world_size:
        raise ConfigError(f"training.batch_size={cfg.training.batch_size} must be divisible by the "
                          f"{dist.world_size} torchrun processes (each takes an equal shard of every batch)")
    if not dist.is_main:
        logging.getLogger("tracked_train").setLevel(logging.WARNING)  # rank 0 speaks for the run


def start(cfg: Config, init_from: str | None = None, *, judge: Judge | None = None,
          tags: dict[str, str] | None = None) -> Outcome:
    """``tracked-train run``: a new run, optionally from a logged model's weights. Returns how it ended (the
    process's exit code is ``outcome.stop.exit_code``).

    ``judge`` (every rank passes one, they must agree) may end the run after an evaluation; ``tags`` go to
    every tracker (a sweep's trial names its parent run with them).
    """
    check_world(cfg)
    if not distributed.current().is_main:
        opened = distributed.broadcast(None)  # rank 0 names the run and makes its folder
        if opened is None:
            raise ReportedOnRank0()
        cfg, run_dir, task_state = opened
        init = {"task_state": task_state} if task_state is not None else None  # DDP broadcasts rank 0's weights
        return run_prepared(prepare(cfg, run_dir, Trackers([]), init=init, judge=judge))
    attempt = None
    try:
        attempt = _new_attempt(cfg, init_from)
        attempt.judge = judge
        attempt.tags.update(tags or {})
    finally:
        distributed.broadcast(None if attempt is None else (
            attempt.cfg, attempt.run_dir, attempt.init["task_state"] if attempt.init else None))
    return lifecycle(attempt)


def _new_attempt(cfg: Config, init_from: str | None) -> Attempt:
    """Check the input, then make and lock the run folder (bad input: exit 2, nothing made)."""
    check_files(cfg.data)
    init = None
    if init_from:
        from .checkpoint import config_of
        from .config import MODEL_SHAPE_KEYS
        from .mlflow.client import configured_uri
        from .sources import init_weights

        init = init_weights(init_from, configured_uri(cfg))
        shape = {k: v for k, v in config_of(init, init_from).flat().items() if k in MODEL_SHAPE_KEYS}
        changed = {k: v for k, v in shape.items() if cfg.flat()[k] != v}
        if changed:
            log.warning("--init-from: the weights fix the model's shape: %s",
                        ", ".join(f"{k}={v}" for k, v in changed.items()))
        cfg = cfg.replace(**shape)
    Trackers.from_specs(cfg.tracking.trackers)  # unknown tracker names fail here, before any folder
    run_dir = make_run_dir(Path(cfg.run.output_dir), cfg.run.name or default_run_name(cfg), bool(cfg.run.name))
    lock = RunLock(run_dir).acquire()
    tags = {"init_from": init_from} if init_from else {}
    return Attempt(cfg.replace(**{"run.name": run_dir.name}), run_dir, lock, new=True, init=init, tags=tags)


def lifecycle(a: Attempt) -> Outcome:
    """Run an attempt to its end in every tracker; the lock is released on every path."""
    try:
        parts = _open(a)
        return run_prepared(parts)
    finally:
        a.lock.release()


def _open(a: Attempt):
    """Trackers started, data and model ready; on any failure every tracker hears of it."""
    trackers = Trackers.from_specs(a.cfg.tracking.trackers)
    started = False
    try:
        setup_logging(a.run_dir / "train.log")
        dump_yaml(a.cfg, a.run_dir / "config.yaml")
        # A signal while the trackers start (a run created on the server, its id not yet recorded) would leave
        # that run RUNNING with nobody knowing it: it waits until they have started, then aborts them below.
        with Deferred() as deferred:
            trackers.start(RunInfo.of(a.cfg, a.cfg.run.name or a.run_dir.name, a.run_dir, start_step=a.start_step,
                                      resume_state=a.tracker_state, continuing=a.tracker_state is not None,
                                      rewind=a.rewind))
            started = True
            write_tracker_state(a.run_dir, trackers)
        if deferred.received:
            raise KeyboardInterrupt
        check_files(a.cfg.data)  # again: a resume's data may be gone (a bad-input abort repairs a kill -9's RUNNING)
        if a.install_last is not None:
            from .checkpoint import save_copy

            save_copy(a.install_last, a.run_dir / "checkpoints" / "last")
        if a.state or a.tracker_state is not None:
            log.info("resuming %s from step %d\n%s", a.run_dir, a.start_step, config_table(a.cfg.flat()))
        else:
            log.info("run %s -> %s\n%s", a.run_dir.name, a.run_dir, config_table(a.cfg.flat()))
        if a.tracker_state is None or a.rewind:  # new tracked runs (a rewind may be one) need their params
            trackers.log_params(a.cfg.flat())
        if a.tags:
            trackers.set_tags(a.tags)
            if "config_changes" in a.tags:
                (a.run_dir / "config_changes.json").write_text(a.tags["config_changes"])
                trackers.log_artifact(a.run_dir / "config_changes.json", "config_changes.json")
        parts = prepare(a.cfg, a.run_dir, trackers, resume_from=a.state, init=a.init, judge=a.judge)
        if a.tracker_state is None or a.rewind:
            trackers.log_datasets(parts.task.datasets())
        if a.new:
            trackers.log_artifact(a.run_dir / "config.yaml", "config.yaml")
            if (a.run_dir / "tokenizer").is_dir():  # the language model's
                trackers.log_artifact(a.run_dir / "tokenizer", "tokenizer")
        return parts
    except BaseException as e:
        if not isinstance(e, (UserError, KeyboardInterrupt)):
            log.error("%s", traceback.format_exc(), extra=FILE_ONLY)
            e.train_log = a.run_dir / "train.log"  # the CLI says where the traceback is
        if started:
            trackers.abort()
        if a.new:
            (a.run_dir / TRACKERS_FILE).unlink(missing_ok=True)  # its tracked runs are gone: a resume makes new ones
            if isinstance(e, (UserError, KeyboardInterrupt)):
                setup_logging(None)
                shutil.rmtree(a.run_dir, ignore_errors=True)
        raise


def prepare(cfg: Config, run_dir: Path, trackers: Trackers, resume_from: dict[str, Any] | None = None,
             init: dict[str, Any] | None = None, judge: Judge | None = None):
    """The task's data and model: fresh, resumed from a checkpoint state, or initialised from its weights."""
    from . import task as tasks
    from .checkpoint import load_weights
    from .parts import build

    t0 = time.perf_counter()
    task = tasks.create(cfg)
    source = resume_from or init
    if source:
        task.load_state(source["task_state"])  # the language model's tokenizer, say
    task.prepare(run_dir)
    line = task.describe()
    if line:
        head, _, rest = line.partition("\n")
        log.info("%s (%.1f s)%s", head, time.perf_counter() - t0, f"\n{rest}" if rest else "")
    parts = build(cfg, run_dir, task, trackers, resume_from, judge=judge)
    if init is not None and "model" in init:
        load_weights(parts.model, init["model"], "the --init-from checkpoint")
        log.info("initialised the model from the weights of step %d", init["step"])
    return parts


def run_prepared(parts) -> Outcome:
    """Train to a stop; the ending reaches every tracker once, whatever signal arrives meanwhile."""

    # Inside the loop, Interrupts' own handlers stop it cleanly; before and after it, a first SIGINT/SIGTERM
    # waits until the ending is on every tracker (a second one stops at once).
    with Deferred() as deferred:
        outcome = _train_and_end(parts)
    if deferred.received:
        log.info("%s arrived while the run was ending; the ending was completed first", deferred.received)
    return outcome


def _train_and_end(parts) -> Outcome:
    from .parts import saved_step
    from .train import train

    trackers = parts.trackers
    try:
        outcome = train(parts)
    except KeyboardInterrupt:
        stop = Stop(StopReason.INTERRUPTED, f"Interrupted twice at step {parts.st.step}; stopped at once "
                    f"(checkpoints/last holds step {saved_step(parts.run_dir)}).", parts.st.step)
        trackers.finish(Outcome(stop))
        log.info("stopped: %s", stop.detail)
        return Outcome(stop)  # exit code 130
    except UserError as e:  # bad input only training could reveal (a monitor no metric answers): one line, exit 2
        trackers.finish(Outcome(Stop(StopReason.FAILED, f"Failed at step {parts.st.step}: {e}", parts.st.step)))
        raise
    except Exception as e:
        log.error("training failed at step %d: %s: %s", parts.st.step, type(e).__name__, describe(e))
        log.error("%s", traceback.format_exc(), extra=FILE_ONLY)
        detail = f"Failed at step {parts.st.step}: {type(e).__name__}: {describe(e)}"
        failed = Outcome(Stop(StopReason.FAILED, detail, parts.st.step))
        trackers.finish(failed)
        return failed  # exit code 1
    _summary(parts, outcome)  # before finish, so the uploaded train.log holds it
    trackers.finish(outcome)
    return outcome


def _summary(parts, o: Outcome) -> None:
    if o.initial_loss is not None and o.final_loss is not None:
        log.info("train loss %.4f -> %.4f (%+.1f%%): %s", o.initial_loss, o.final_loss, -o.decrease_pct, o.verdict)
    log.info("stopped: %s [stop_reason=%s]", o.stop.detail, o.stop.reason)
    if o.best_val_loss is not None and o.best_val_nats_per_char is not None:  # the language model
        from .lm import safe_exp

        floor = ""
        if parts.cfg.data.source == "builtin":
            from .corpus import entropy_rate

            floor = f"; the corpus floor is {entropy_rate():.3f}"
        bpb = "" if o.best_val_bpb is None else f", {o.best_val_bpb:.3f} bits/byte"
        log.info("best val loss %.4f (perplexity %.2f, %.3f nats/char%s%s) at step %s", o.best_val_loss,
                 safe_exp(o.best_val_loss), o.best_val_nats_per_char, bpb, floor, o.best_step)
    elif o.best_value is not None:
        log.info("best %s %.4g (%s) at step %s", o.monitor, o.best_value, o.mode, o.best_step)
    log.info("time: %s in this process, %s of training in all", fmt_duration(_process_seconds()),
             fmt_duration(parts.st.elapsed_s))
    log.info("run folder: %s", parts.run_dir)


def _process_seconds() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()
