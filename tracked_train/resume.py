"""``tracked-train resume``: continue a run from a checkpoint, locally or from a server.

The checkpoint's own config is the base. ``--set`` values that differ from it
are config drift: refused (exit 2, every difference listed) unless
``--allow-config-change``, which records them as a tag and an artifact.
Keys that fix the model's shape never change: the weights decide them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from . import checkpoint, config, sources
from .errors import ConfigError, UserError

log = logging.getLogger("tracked_train")

# Where a run is recorded or displayed, not how it trains: free to differ on resume.
NOT_DRIFT = ("run.", "console.", "tracking.")


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
    from . import distributed, runner

    if distributed.init().is_main:
        prepared = None
        try:
            prepared = _prepare_resume(source, sets, which, fork, allow_config_change)
        finally:  # under torchrun the other ranks follow rank 0's folder (on a shared filesystem across nodes)
            distributed.broadcast(None if prepared is None else (prepared[0], prepared[2]))
        return runner.resume(*prepared)
    shared = distributed.broadcast(None)
    if shared is None:
        return 2  # rank 0 reported the problem
    run_dir, cfg = shared
    return runner.resume(run_dir, checkpoint.load(run_dir / "checkpoints" / "last"), cfg)


def _prepare_resume(source: str, sets: list[str], which: str, fork: bool,
                    allow_config_change: bool) -> tuple[Path, dict[str, Any], config.Config, dict[str, str]]:
    """Rank 0's part: fetch and check the checkpoint, settle the config and the run folder."""
    overrides = dict(config.parse_assignment(s) for s in sets)  # bad keys fail before any download
    folder, origin = sources.fetch(source, which, overrides.get("tracking.mlflow_uri"))
    state = checkpoint.load(folder)
    saved = config.from_dict(state["config"])
    cfg = config.build([("--set", overrides)], base=saved)
    changes = check_drift(saved, cfg, allow_config_change)
    if origin["kind"] == "mlflow":
        cfg = cfg.replace(**{"tracking.mlflow_uri": origin["uri"]})  # where the run lives now

    tags: dict[str, str] = {}
    if origin.get("run_dir") is not None and not fork:
        run_dir = Path(origin["run_dir"])
        if which != "last":
            checkpoint.save_copy(folder, run_dir / "checkpoints" / "last")
    else:
        # From a server or a bare checkpoint, or a fork: a fresh local folder holds the continuation.
        name = cfg.run.name or "resumed"
        if origin["kind"] == "mlflow":
            name = origin["run"].info.run_name or name
        if fork:
            name = f"{name}-fork-{time.strftime('%Y%m%d-%H%M%S')}"
            tags["resumed_from"] = origin.get("run_id") or str(origin.get("run_dir") or source)
        run_dir = _fresh_dir(Path(cfg.run.output_dir), name)
        checkpoint.save_copy(folder, run_dir / "checkpoints" / "last")
        cfg = cfg.replace(**{"run.name": run_dir.name, "run.output_dir": str(run_dir.parent)})
    if fork:
        state["trackers"] = {}  # every tracker starts a new run, the old one is untouched
    if changes:
        tags["config_changes"] = json.dumps({k: [a, b] for k, (a, b) in changes.items()})[:5000]
        log.warning("config changed on resume: %s", tags["config_changes"])
    if origin["kind"] == "mlflow":
        shutil.rmtree(folder.parent, ignore_errors=True)
    return run_dir, state, cfg, tags


def _fresh_dir(root: Path, name: str) -> Path:
    run_dir, n = root / name, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{name}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def init_weights(source: str, mlflow_uri: str | None) -> dict[str, Any]:
    """The checkpoint state behind ``run --init-from`` and ``generate``: best if there is one, else last."""
    problems = []
    for which in ("best", "last"):
        try:
            folder, origin = sources.fetch(source, which, mlflow_uri)
            try:
                return checkpoint.load(folder)
            finally:
                if origin["kind"] == "mlflow":
                    shutil.rmtree(folder.parent, ignore_errors=True)
        except checkpoint.CheckpointError as e:
            problems.append(str(e))
            if which == "best" and "no checkpoint at" not in str(e):
                log.warning("best checkpoint unusable (%s); using last", e)
    raise UserError(problems[-1])
