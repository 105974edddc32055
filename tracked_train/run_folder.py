"""A run folder's read side, for every command that looks at runs (resume, compare, runs, sweep, sources): is a
path a run folder, and which tracked run each tracker made for it.

A run folder holds ``metrics.jsonl`` (every event, the source of truth), ``config.yaml``, ``checkpoints/`` and
``trackers.json``: each tracker's ``state()`` (``{"mlflow": {"run_id": ...}, "wandb": {...}}``), written when the
trackers start (and by your own loop's Run at each checkpoint), so a folder maps to its tracked runs without
anyone reading a tracker's private files. A tracker whose run id can be learnt after that (MLflow creates the run
once its server answers) offers ``run_id_in(run_dir)``, read here when ``trackers.json`` has none.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("tracked_train")

TRACKERS_FILE = "trackers.json"


class _HasState(Protocol):
    def state(self) -> dict[str, Any]: ...


def is_run_folder(path: Path) -> bool:
    """A run folder (never a checkpoint folder, which also holds a config.yaml)."""
    from .checkpoint import MANIFEST

    if not path.is_dir() or (path / MANIFEST).exists():
        return False
    return (path / "checkpoints").is_dir() or ((path / "config.yaml").is_file() and (path / "metrics.jsonl").exists())


def write_tracker_state(run_dir: Path, trackers: _HasState) -> None:
    """``trackers.json``, replaced atomically: a kill -9 leaves the old file or the new one."""
    tmp = run_dir / f"{TRACKERS_FILE}.tmp"
    tmp.write_text(json.dumps(trackers.state()))
    os.replace(tmp, run_dir / TRACKERS_FILE)


def read_tracker_state(run_dir: Path, warn: bool = True) -> dict[str, Any] | None:
    """The tracked runs a folder started (None when it never started any, or the file is damaged: said when
    ``warn``, as the command acting on it (resume) starts new tracked runs then)."""
    try:
        state = json.loads((Path(run_dir) / TRACKERS_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        if warn:
            log.warning("%s is damaged; the resumed run starts new tracked runs", Path(run_dir) / TRACKERS_FILE)
        return None
    return state if isinstance(state, dict) else None


def tracked_run_id(run_dir: Path, tracker: str) -> str | None:
    """The id of ``tracker``'s run for this folder (None: the folder never used it, or it made no run yet)."""
    from .errors import UserError
    from .trackers.base import tracker_class

    state = (read_tracker_state(run_dir, warn=False) or {}).get(tracker)
    run_id = state.get("run_id") if isinstance(state, dict) else None
    if isinstance(run_id, str) and run_id:
        return run_id
    try:
        cls = tracker_class(tracker)
    except UserError:  # a tracker not installed here: nobody can say more than trackers.json
        return None
    run_id_in = getattr(cls, "run_id_in", None)
    return run_id_in(Path(run_dir)) if run_id_in is not None else None
