"""``metrics.jsonl`` in the run folder: the run's own record, always on.

One JSON object per line: ``{"step": N, "time": T, "train/loss": ...}`` for
metrics, ``{"event": "stop", "reason": ..., "step": N, ...}`` for events. Each
line is flushed as it is written (a few microseconds), so a kill -9 loses
nothing the process had logged; on resume the lines logged after the
checkpoint are dropped, because the resumed run recomputes them exactly.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..early_stopping import Stop
from .base import Outcome, RunInfo, Tracker

if TYPE_CHECKING:
    from ..data import DatasetInfo

FILENAME = "metrics.jsonl"


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity; write them as strings rather than emit invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read(path: Path) -> list[dict]:
    """All complete records of a metrics.jsonl (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_bytes().decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill, or damaged: the lines around it still count
        if isinstance(record, dict) and isinstance(record.get("step", 0), int):
            out.append(record)
    return out


def history(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Each metric's points ``[(step, value)]`` from :func:`read`'s records (the last value at a step wins)."""
    by_step: dict[str, dict[int, float]] = {}
    for r in records:
        if "event" in r or "step" not in r:
            continue
        for k, v in r.items():
            if k in ("step", "time"):
                continue
            try:
                by_step.setdefault(k, {})[int(r["step"])] = float(v)  # "nan"/"inf" strings too
            except (TypeError, ValueError):
                continue
    return {k: sorted(v.items()) for k, v in by_step.items()}


def rows_between(path: Path, after: int, through: int) -> list[dict[str, Any]]:
    """The metrics at steps ``after`` < step <= ``through``, one row ``{"step": N, name: value...}`` per step (a
    step's train and val metrics merged), in step order: what a backend that lost them after a kill -9 replays."""
    if through <= after or not Path(path).exists():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for key, points in history(read(path)).items():
        for step, value in points:
            if after < step <= through:
                rows.setdefault(step, {"step": step})[key] = value
    return [rows[s] for s in sorted(rows)]


def last_stop(records: list[dict]) -> dict | None:
    """The stop event of the last segment (a resumed run has several); None while it runs."""
    stop = None
    for r in records:
        if r.get("event") in ("start", "resume"):
            stop = None
        elif r.get("event") == "stop":
            stop = r
    return stop


def outcome_of(stop: dict) -> Outcome | None:
    """The outcome a stop record was written from (:meth:`JsonlTracker.finish`), None when it is unreadable.

    Records written before ``monitor``/``best_value`` were recorded give the default monitor and no best value.
    """
    def number(key: str) -> float | None:
        try:
            return None if stop.get(key) is None else float(stop[key])  # "nan"/"inf" strings too
        except (TypeError, ValueError):
            return None

    try:
        best_step = stop.get("best_step")
        return Outcome(Stop(stop["reason"], str(stop.get("detail", "")), int(stop["step"])),
                       best_step=None if best_step is None else int(best_step), best_val_loss=number("best_val_loss"),
                       initial_loss=number("initial_loss"), final_loss=number("final_loss"),
                       decrease_pct=number("decrease_pct") or 0.0, verdict=str(stop.get("verdict", "not learning")),
                       best_val_nats_per_char=number("best_val_nats_per_char"),
                       monitor=str(stop.get("monitor", "val/loss")), mode=str(stop.get("mode", "min")),
                       best_value=number("best_value"), ended_at=number("time"), best_val_bpb=number("best_val_bpb"))
    except (KeyError, TypeError, ValueError):  # a reason that is no StopReason, a step that is no number
        return None


def truncate_after(path: Path, step: int) -> int:
    """Keep only the records at or before ``step``; return how many were dropped."""
    if not path.exists():
        return 0
    records = read(path)
    keep = [r for r in records if r.get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(records) - len(keep)


class JsonlTracker(Tracker):
    name = "jsonl"

    def __init__(self) -> None:
        self._f: IO[str] | None = None
        self._last_step = 0

    def _write(self, record: dict) -> None:
        assert self._f is not None, "start() was not called"
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def start(self, run: RunInfo) -> None:
        path = run.run_dir / FILENAME
        resuming = run.continuing or run.start_step > 0
        if resuming:  # the resumed run recomputes every step after its checkpoint
            truncate_after(path, run.start_step)
        self._f = open(path, "a")
        self._last_step = run.start_step
        event = {"event": "resume" if resuming else "start", "step": run.start_step, "time": time.time(),
                 "run_name": run.name}
        if run.rewind:
            event["rewind"] = True  # the steps after this one were logged before with other values
        self._write(event)

    def log_params(self, params: dict[str, Any]) -> None:
        self._write({"event": "params", "step": self._last_step, "params": params})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._last_step = step
        self._write({"step": step, "time": time.time(), **metrics})

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        self._write({"event": "artifact", "step": self._last_step, "path": artifact_path, **(metadata or {})})
        os.fsync(self._f.fileno())  # a checkpoint is a durability point for the record too

    def log_datasets(self, datasets: Sequence[DatasetInfo]) -> None:
        self._write({"event": "datasets", "step": self._last_step, "datasets": [asdict(d) for d in datasets]})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._write({"event": "tags", "step": self._last_step, "tags": tags})

    def finish(self, outcome: Outcome) -> None:
        if self._f is None:
            return
        s = outcome.stop
        # Every field of the outcome: a tracker killed before it had the ending gets it from here (outcome_of).
        self._write({"event": "stop", "reason": s.reason, "detail": s.detail, "step": s.step, "time": time.time(),
                     "best_step": outcome.best_step, "best_val_loss": outcome.best_val_loss,
                     "best_val_nats_per_char": outcome.best_val_nats_per_char, "best_val_bpb": outcome.best_val_bpb,
                     "initial_loss": outcome.initial_loss, "final_loss": outcome.final_loss,
                     "decrease_pct": outcome.decrease_pct, "verdict": outcome.verdict,
                     "monitor": outcome.monitor, "mode": outcome.mode, "best_value": outcome.best_value})
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
