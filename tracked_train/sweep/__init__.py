"""``tracked-train sweep``: a hyperparameter search with Optuna, every trial a normal tracked run.

One worker (this process) loops: ask the study for a trial, derive its config
from the base config and the space, train it, tell the study how it ended.
The package, by job:

- :mod:`.plan`: the command's inputs, all checked before anything is created;
- :mod:`.worker`: the study opened or joined, trials asked for until there are enough;
- :mod:`.trial`: one trial's config, run (or a killed one's folder continued) and result;
- :mod:`.judge`: the pruner's question after each evaluation;
- :mod:`.parent`: the MLflow parent run and the final report;
- :mod:`.study` (Optuna, storage, heartbeats), :mod:`.space` (the search space), :mod:`.report` (tables,
  figure), :mod:`.refs` (``runs`` and ``compare`` over a study).
"""

from __future__ import annotations

from .. import distributed
from .plan import DEFAULT_STORAGE, Options, check
from .worker import follow, open_worker, work

__all__ = ["DEFAULT_STORAGE", "Options", "check", "sweep"]


def sweep(o: Options) -> int:
    """Run this worker until the study has ``o.trials`` complete or pruned trials; returns the exit code."""
    from ..console import setup_logging

    setup_logging(None)
    if not distributed.init().is_main:
        return follow()
    w = None
    try:
        w = open_worker(check(o))
        return work(w)
    finally:
        if distributed.current().enabled and not (w and w.followers_stopped):
            distributed.broadcast(None)  # torchrun: the other ranks stop with rank 0
