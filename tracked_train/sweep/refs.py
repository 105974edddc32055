"""A sweep's trials for `compare sweep:NAME` and `runs --sweep NAME`: from MLflow, and from run folders.

Trials carry the tags ``tracked_train.sweep`` (the study) and
``tracked_train.trial`` (the number) in every tracker: on the MLflow server
they are found by tag across experiments, locally by the ``tags`` event in
``metrics.jsonl`` of the folders named ``STUDY-tNNN`` under ``--output-dir``.
A trial found in both is taken once, from MLflow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import UserError

PREFIX = "sweep:"


def _local_trials(study: str, output_dir: Path) -> list[tuple[int, Path]]:
    from ..mlflow.sweep import SWEEP_TAG, TRIAL_TAG
    from ..trackers import jsonl

    out = []
    import glob

    for d in sorted(output_dir.glob(f"{glob.escape(study)}-t*")) if output_dir.is_dir() else []:
        f = d / jsonl.FILENAME
        if not f.is_file():
            continue
        tags = {k: v for r in jsonl.read(f) if r.get("event") == "tags" for k, v in (r.get("tags") or {}).items()}
        if tags.get(SWEEP_TAG) == study:
            try:
                out.append((int(tags.get(TRIAL_TAG, "")), d))
            except ValueError:
                continue
    return out


def trials(study: str, output_dir: Path, store: Any = None) -> list[tuple[int, str, str]]:
    """(trial number, compare reference, source) of each trial, in trial order."""
    from ..mlflow.store import Store
    from ..mlflow.sweep import TRIAL_TAG, find_sweep
    from ..run_folder import tracked_run_id

    store = store or Store()
    found: list[tuple[int, str, str]] = []
    ids = set()
    if store.exists():
        try:
            _, runs = find_sweep(store.client(), study)
        except UserError as e:  # an unreachable server: the run folders still say something
            print(f"warning: {e}; looking in local run folders only", file=sys.stderr)
            runs = []
        for r in runs:
            ids.add(r.info.run_id)
            found.append((int(r.data.tags.get(TRIAL_TAG, "0") or 0), f"mlflow:{r.info.run_id}", "mlflow"))
    for number, d in _local_trials(study, output_dir):
        if tracked_run_id(d, "mlflow") not in ids:
            found.append((number, str(d), "local"))
    if not found:
        raise UserError(f"no trials of sweep {study!r}: none in MLflow at {store.where} (tag tracked_train.sweep) "
                        f"nor run folders {study}-tNNN under {output_dir}/")
    return sorted(found)


def expand(refs: list[str], output_dir: Path) -> list[str]:
    """`compare` references with every ``sweep:NAME`` replaced by its trials."""
    out: list[str] = []
    for ref in refs:
        if ref.startswith(PREFIX):
            name = ref[len(PREFIX):]
            if not name:
                raise UserError("sweep: needs the study's name, e.g. `tracked-train compare sweep:sweep-quick`")
            out += [r for _, r, _ in trials(name, output_dir)]
        else:
            out.append(ref)
    return out


def runs_table(study: str, experiment: str | None, output_dir: Path, fmt: str) -> int:
    """`runs --sweep NAME`: the trials only, with their number, in trial order."""
    import json

    from ..mlflow.store import Store
    from ..render import print_table, write_csv
    from ..run_records import list_runs

    store = Store()
    found = trials(study, output_dir, store)
    if experiment is None and any(src == "mlflow" for _, _, src in found):  # the sweep's, not the default
        first = next(ref for _, ref, src in found if src == "mlflow")[len("mlflow:"):]
        experiment = store.client().get_experiment(store.get(first).info.experiment_id).name
    numbers = {}
    for number, ref, _ in found:
        key = ref[len("mlflow:"):] if ref.startswith("mlflow:") else str(Path(ref).resolve())
        numbers[key] = number
    listed = [r for r in list_runs(experiment, output_dir, store) if r.key in numbers]
    listed.sort(key=lambda r: numbers[r.key])
    rows = [{"trial": numbers[r.key], **r.summary()} for r in listed]
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["trial", "name", "status", "stop_reason", "steps", "best_val_loss", "duration_s", "id"]
    if fmt == "csv":
        write_csv([cols] + [[r[c] for c in cols] for r in rows])
        return 0
    cells = [["" if r[c] is None else (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
             for r in rows]
    print_table(cols, cells, right={"trial", "steps", "best_val_loss", "duration_s"}, fold={"id"})
    return 0
