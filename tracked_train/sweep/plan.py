"""A sweep's inputs, checked before anything exists, and the state of a running worker.

:func:`check` turns the `sweep` command's :class:`Options` into a :class:`Plan`: the base config, the space,
the study's name and storage, the MLflow server; bad input exits 2 with one line, leaving no study, no parent
run and no folder. :func:`base_config` is what every worker of a study must share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..redact import strip_userinfo

log = logging.getLogger("tracked_train")

DEFAULT_STORAGE = "sqlite:///sweeps.db"


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


def counts(w: Worker) -> Any:
    from .study import counts

    return counts(w.optuna, w.study)


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
    if leftover_trials(Path(base.run.output_dir), name) and _is_new_sqlite(storage_url):
        raise leftover_error(Path(base.run.output_dir), name, storage_url)
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


def leftover_trials(root: Path, study: str) -> list[str]:
    """Run folders named like this study's trials (``STUDY-tNNN``)."""
    import re

    pattern = re.compile(re.escape(study) + r"-t\d{3,}")
    return sorted(d.name for d in root.iterdir() if d.is_dir() and pattern.fullmatch(d.name)) if root.is_dir() else []


def _is_new_sqlite(url: str) -> bool:
    """A SQLite storage whose file does not exist yet holds no study (checked without creating the file)."""
    prefix = "sqlite:///"
    return url.startswith(prefix) and not Path(url[len(prefix):].partition("?")[0]).exists()


def leftover_error(root: Path, study: str, storage_url: str) -> UserError:
    found = leftover_trials(root, study)
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


def check_base(plan: Plan, recorded: str) -> None:
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
