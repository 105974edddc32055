"""``tracked-train resume RUN_DIR``: continue a run from its ``last`` checkpoint.

The checkpoint's own config is the base; ``--set`` may change training keys
(each change is logged), never the model's shape, which the weights fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import checkpoint, config
from .errors import ConfigError, UserError

log = logging.getLogger("tracked_train")


def config_changes(old: config.Config, new: config.Config) -> dict[str, tuple]:
    a, b = old.flat(), new.flat()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def resume_local(run_dir: Path, sets: list[str]) -> int:
    from . import runner

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass the folder `tracked-train run` created")
    overrides = dict(config.parse_assignment(s) for s in sets)  # bad keys fail before any loading
    state = checkpoint.load(run_dir / "checkpoints" / "last")
    saved = config.from_dict(state["config"])
    cfg = config.build([("--set", overrides)], base=saved)
    cfg = cfg.replace(**{"run.output_dir": str(run_dir.parent), "run.name": run_dir.name})
    changes = config_changes(saved, cfg)
    shape = sorted(k for k in changes if k in config.MODEL_SHAPE_KEYS)
    if shape:
        raise ConfigError(f"{', '.join(shape)} cannot change on resume: the checkpoint's weights fix the "
                          "model's shape; start a new run instead")
    for key, (before, after) in changes.items():
        if not key.startswith("run."):
            log.warning("config change on resume: %s %r -> %r", key, before, after)
    return runner.resume(run_dir, state, cfg)
