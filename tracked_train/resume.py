"""``tracked-train resume``: decide how to continue a run, then hand it to the run lifecycle.

The checkpoint's own config is the base. ``--set`` values that differ from it
are config drift: refused (exit 2, every difference listed) unless
``--allow-config-change``, which records them as a tag and an artifact.
Keys that fix the model's shape never change: the weights decide them.

An exact resume (from ``last``, same config) recomputes the steps after the
checkpoint with the values already logged, and continues the same tracked
runs. An inexact one (``--from best``, a changed config) is a *rewind*: the
trackers drop or leave behind what they hold after the checkpoint's step.
A run folder with no checkpoint yet starts again from step 0, in the same
tracked runs. A run that already finished is left alone.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from . import checkpoint, config, sources
from .early_stopping import StopReason
from .errors import CheckpointError, ConfigError, NoCheckpoint, UserError
from .lock import RunLock
from .run_folder import is_run_folder, read_tracker_state
from .runner import Attempt, lifecycle, make_run_dir

log = logging.getLogger("tracked_train")

# Where a run is recorded or displayed, not how it trains: free to differ on resume. (`logging.every` changes
# when values are read back from the device, not what they are.)
NOT_DRIFT = ("run.", "console.", "tracking.", "logging.")
# A run that stopped for one of these ended on purpose (exit 0): a resume leaves it alone.
FINISHED_REASONS = tuple(r.value for r in StopReason if r.exit_code == 0)
FINISHED = "finished"  # what rank 0 tells the other torchrun ranks when there is nothing to resume


def config_changes(old: config.Config, new: config.Config) -> dict[str, tuple[Any, Any]]:
    a, b = old.flat(), new.flat()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def check_drift(saved: config.Config, cfg: config.Config, allow: bool) -> dict[str, tuple[Any, Any]]:
    changes = {k: v for k, v in config_changes(saved, cfg).items() if not k.startswith(NOT_DRIFT)}
    shape = sorted(k for k in changes if k in config.MODEL_SHAPE_KEYS)
    if shape:
        raise ConfigError(f"{', '.join(shape)} cannot change on resume: the checkpoint's weights fix the "
                          "model's shape; start a new run (optionally with --init-from) instead")
    if changes and not allow:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise ConfigError(f"resuming with a config that differs from the run's ({listed}); "
                          "pass --allow-config-change to accept (recorded as a tag and an artifact)")
    return changes


def resume(source: str, sets: list[str], which: str = "last", fork: bool = False,
           allow_config_change: bool = False) -> int:
    import os

    from . import distributed, runner
    from .console import setup_logging

    config.check_env(os.environ)  # bad input before anything is read, fetched or created
    which = checkpoint.named(which)  # last, best, or step-000500 (`--from step-500`)
    setup_logging(None)  # what the resume decides is said before the run's log file exists
    if distributed.init().is_main:
        attempt, decided = None, False
        try:
            attempt = _attempt(source, sets, which, fork, allow_config_change)
            decided = True
        finally:  # under torchrun the other ranks follow rank 0's folder (on a shared filesystem across nodes)
            distributed.broadcast(None if not decided else FINISHED if attempt is None else (
                attempt.run_dir, attempt.cfg, attempt.state is None))
        if attempt is None:
            return 0  # nothing to do (the run had finished)
        runner.check_world(attempt.cfg)
        return lifecycle(attempt).stop.exit_code
    shared = distributed.broadcast(None)
    if shared is None or shared == FINISHED:
        return 0 if shared == FINISHED else 2  # rank 0 said why
    run_dir, cfg, from_scratch = shared
    state = None if from_scratch else checkpoint.load(run_dir / "checkpoints" / "last")
    runner.check_world(cfg)
    return runner.run_prepared(runner.prepare(cfg, run_dir, runner.Trackers([]), resume_from=state)).stop.exit_code


def _attempt(source: str, sets: list[str], which: str, fork: bool, allow: bool) -> Attempt | None:
    """Rank 0's part: the checkpoint checked, the config settled, the run folder chosen and locked."""
    overrides = dict(config.parse_assignment(s) for s in sets)  # bad keys fail before any download
    ref = sources.parse(source)
    if ref.kind == "local" and is_run_folder(Path(ref.value)) and not fork:
        return _in_place(Path(ref.value), overrides, which, allow)
    uri = overrides.get("tracking.mlflow.uri", overrides.get("tracking.mlflow_uri"))  # (its older name)
    with sources.fetched(source, which, uri) as (folder, origin):
        state = checkpoint.load(folder)
        saved = checkpoint.config_of(state, folder)
        cfg = config.build([("--set", overrides)], base=saved)
        changes = check_drift(saved, cfg, allow)
        check_weights(cfg, state, folder)
        if origin.tracker:  # a tracked run on a server: the continuation goes on there
            cfg = cfg.replace(**{f"tracking.{origin.tracker}.uri": origin.uri})  # where the run lives now
            if not fork and _finished_on_server(origin, changes, which):
                return None
        # A fresh local folder holds the continuation. Its name may come from a server: it is untrusted.
        from .names import sanitise

        name = sanitise(origin.name or "", "resumed") if origin.tracker else (cfg.run.name or "resumed")
        tags: dict[str, str] = {}
        tracker_state: dict[str, Any] | None = dict(state.get("trackers") or {})
        if fork:
            name = sanitise(f"{name}-fork-{time.strftime('%Y%m%d-%H%M%S')}")
            tags["resumed_from"] = origin.run_id or str(origin.run_dir or source)
            tracker_state = None  # every tracker starts a new run, the old one is untouched
        elif origin.tracker:
            tracker_state[origin.tracker] = {**(tracker_state.get(origin.tracker) or {}), "run_id": origin.run_id}
        run_dir = make_run_dir(Path(cfg.run.output_dir), name, exact=False)
        lock = RunLock(run_dir).acquire()
        try:
            checkpoint.save_copy(folder, run_dir / "checkpoints" / "last")
        except BaseException:
            lock.release()
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
            raise
    cfg = cfg.replace(**{"run.name": run_dir.name, "run.output_dir": str(run_dir.parent)})
    _tag_changes(tags, changes)
    rewind = tracker_state is not None and (which != "last" or bool(changes))
    return Attempt(cfg, run_dir, lock, new=True, state=state, tracker_state=tracker_state, rewind=rewind, tags=tags)


def _in_place(run_dir: Path, overrides: dict[str, Any], which: str, allow: bool) -> Attempt | None:
    """Continue a local run folder in place (locked first: nothing is touched while another process runs it)."""
    lock = RunLock(run_dir).acquire()
    try:
        checkpoints = run_dir / "checkpoints"
        checkpoint.clean(checkpoints)  # what a save (or a pruning) cut by a kill or a full disk left behind
        folder = checkpoint.find(checkpoints, which)
        state = _load_or_none(folder, which)
        if state is None:
            saved = folder_config(run_dir)
        else:
            saved = checkpoint.config_of(state, folder)
        cfg = config.build([("--set", overrides)], base=saved)
        changes = check_drift(saved, cfg, allow)
        if state is not None:
            check_weights(cfg, state, folder)
        stop = _finished_locally(run_dir, changes, which)
        if stop is not None:
            repair_endings(run_dir, cfg, stop)
            lock.release()
            return None
        tracker_state = read_tracker_state(run_dir)
        if state is not None and state.get("trackers"):
            tracker_state = {**(tracker_state or {}), **state["trackers"]}
        if state is None:
            log.info("%s has no checkpoint yet: starting it again from step 0%s", run_dir,
                     " in the same tracked runs" if tracker_state else "")
        tags: dict[str, str] = {}
        _tag_changes(tags, changes)
        rewind = (tracker_state is not None and state is not None and (which != "last" or bool(changes))
                  and _logged_after(run_dir, state["step"]))
        cfg = cfg.replace(**{"run.name": run_dir.name, "run.output_dir": str(run_dir.parent)})
        # `best` becomes `last` only once the attempt is under way: bad input found on the way changes nothing.
        install = folder if state is not None and which != "last" else None
        return Attempt(cfg, run_dir, lock, new=False, state=state, tracker_state=tracker_state, rewind=rewind,
                       tags=tags, install_last=install)
    except BaseException:
        lock.release()
        raise


def check_weights(cfg: config.Config, state: dict[str, Any], where: Path) -> None:
    """The checkpoint's weights fit the model ``cfg`` describes: checked before anything is printed or made.

    Names and shapes only, against the model built on the meta device (no memory, no init time); a task whose
    model cannot be built there is built on the CPU.
    """
    import torch

    from . import task as tasks
    from .task import build_model

    task = tasks.create(cfg)
    task.load_state(state["task_state"])
    try:
        with torch.device("meta"):
            model = task.build_model()
    except Exception:  # noqa: BLE001 - a model that needs real tensors to build (or fails: said by build_model)
        model = build_model(task)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    saved = state["model"]
    problems = [f"missing {k}" for k in expected if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in expected]
    problems += [f"{k} is {tuple(saved[k].shape)} in the checkpoint, {shape} in the model"
                 for k, shape in expected.items() if k in saved and tuple(saved[k].shape) != shape]
    if problems:
        listed = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise CheckpointError(f"checkpoint {where}: its weights do not fit the model its config describes ({listed}); "
                              "a setting that shapes the model changed since it was saved (start a new run for that), "
                              "or it is damaged")


def _logged_after(run_dir: Path, step: int) -> bool:
    """Whether the run logged steps after ``step`` (which a resume from ``step`` recomputes)."""
    from .trackers import jsonl

    path = run_dir / jsonl.FILENAME
    return path.exists() and any(r.get("step", 0) > step for r in jsonl.read(path) if "event" not in r)


def _load_or_none(folder: Path, which: str) -> dict[str, Any] | None:
    """The checkpoint's state; None when the run never saved one (and ``which`` is last)."""
    try:
        return checkpoint.load(folder)
    except NoCheckpoint:
        if which == "last" and not (folder.parent / "best").exists():
            return None
        raise


def folder_config(run_dir: Path) -> config.Config:
    import yaml

    try:
        nested = yaml.safe_load((run_dir / "config.yaml").read_text())
        return checkpoint.config_of({"config": nested}, run_dir / "config.yaml")
    except (OSError, yaml.YAMLError):
        raise UserError(f"{run_dir} has no checkpoint and its config.yaml is unreadable; start a new run "
                        "with `tracked-train run`") from None
    except CheckpointError as e:
        raise UserError(str(e).replace("checkpoint ", "", 1)) from None


def _tag_changes(tags: dict[str, str], changes: dict[str, tuple[Any, Any]]) -> None:
    if changes:
        tags["config_changes"] = json.dumps({k: [a, b] for k, (a, b) in changes.items()})[:5000]
        log.warning("config changed on resume: %s", tags["config_changes"])


def _finished_locally(run_dir: Path, changes: dict, which: str) -> dict | None:
    """The stop record of a run that finished and has nothing to resume (said on the console); else None."""
    from .trackers import jsonl

    path = run_dir / jsonl.FILENAME
    stop = jsonl.last_stop(jsonl.read(path)) if path.exists() else None
    if stop is None or stop.get("reason") not in FINISHED_REASONS or changes or which != "last":
        return None
    _say_finished(str(run_dir), stop.get("reason"), stop.get("step"))
    return stop


def repair_endings(run_dir: Path, cfg: config.Config, stop: dict) -> None:
    """Give each tracked run of the folder's last attempt the ending ``stop`` records, where its process died
    before the trackers had it (kill -9 while they finished): an MLflow run would stay RUNNING for good."""
    from .trackers import jsonl
    from .trackers.base import RunInfo, create

    outcome = jsonl.outcome_of(stop)
    if outcome is None:
        return
    started = read_tracker_state(run_dir)  # the trackers of the last attempt, the one that wrote this stop
    names = list(started) if started is not None else [s.partition("=")[0] for s in cfg.tracking.trackers]
    run = RunInfo.of(cfg, run_dir.name, run_dir)
    for name in names:
        try:
            tracker = create(name)
        except Exception as e:  # noqa: BLE001 - a tracker no longer installed: nothing it could repair now
            log.debug("cannot check the ending of tracker %s (%s)", name, e)
            continue
        line = tracker.repair_ending(run, outcome)
        if line:
            log.info("%s", line)


def _finished_on_server(origin: sources.Origin, changes: dict, which: str) -> bool:
    if origin.status != "FINISHED" or origin.stop_reason not in FINISHED_REASONS or changes or which != "last":
        return False
    what = {"mlflow": "MLflow"}.get(origin.tracker or "", origin.tracker)
    _say_finished(f"{what} run {origin.run_id}", origin.stop_reason, origin.stop_step)
    return True


def _say_finished(what: str, reason: str | None, step: Any) -> None:
    from .console import setup_logging

    setup_logging(None)
    log.info("%s already finished (%s at step %s); nothing to resume. To train on, raise the limit that "
             "stopped it (e.g. --set training.max_steps=N --allow-config-change) or resume with --fork.",
             what, reason, step)


def continue_in_place(run_dir: Path) -> Attempt | None:
    """A run folder continued from its ``last`` checkpoint into its own tracked runs, as ``resume RUN_DIR`` does
    (the folder locked; None when the run had finished). For callers that add a judge or tags, e.g. a sweep
    continuing a killed trial."""
    return _in_place(Path(run_dir), {}, "last", False)
