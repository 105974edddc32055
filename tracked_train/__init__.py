"""tracked-train: train transformer language models with every run tracked, comparable and resumable.

The Python API, for a trained model outside the run that made it. A
``source`` is a run folder, a checkpoint folder (``runs/x/checkpoints/best``),
``mlflow:RUN_ID`` or ``runs:/RUN_ID`` (the server in ``MLFLOW_TRACKING_URI``)::

    import tracked_train

    model, tok = tracked_train.load("runs/my-run")          # best checkpoint, else last
    print(tracked_train.generate("runs/my-run", "ROMEO:", max_new_tokens=100))
    df = tracked_train.history("mlflow:0123abcd...")        # one row per step

Imports happen inside the functions, so ``import tracked_train`` (and
``tracked-train --help``) stays instant.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

__version__ = "0.1.0"
from .task import Loss, Task  # the task contract; imports nothing heavy (torch only inside tasks)
from .your_loop import Run  # your own loop, tracked (docs/your-loop.md); torch and trackers load on start

__all__ = ["Loss", "Run", "Task", "load", "generate", "history", "__version__"]


def load(source: str | os.PathLike) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from ``source``'s best checkpoint (else its last).

    The model is a ``torch.nn.Module`` in eval mode on the CPU; the tokenizer has
    ``encode(text) -> list[int]`` and ``decode(ids) -> str``. The checkpoint is
    verified against its manifest and loaded weights-only. For a run of your own
    task (docs/tasks.md), ``(model, task)``: the task's model and the task built
    from the run's config and checkpointed state (its code must be importable).
    """
    from .sources import load_model

    return load_model(os.fspath(source))


def generate(source: str | os.PathLike, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, seed: int = 0) -> str:
    """``prompt`` followed by up to ``max_new_tokens`` tokens sampled from ``source``'s model.

    ``temperature`` 0 is greedy; ``top_k`` None or 0 samples from the whole vocabulary;
    the same ``seed`` gives the same text. A bad sampling argument (a NaN or negative
    temperature, a negative ``top_k``, a seed outside 0..2**63-1) raises ValueError.
    """
    from .errors import UserError
    from .inference import check_sampling, complete
    from .tokenizer import Tokenizer

    check_sampling(max_new_tokens, temperature, top_k, seed)  # before loading: bad input costs nothing
    model, tok = load(source)
    if not isinstance(tok, Tokenizer):
        raise UserError(f"{source} is a model of task {tok.cfg.task}, not a language model: it generates no text; "
                        "call the model itself (tracked_train.load returns it and its task)")
    return complete(model, tok, [prompt], max_new_tokens, temperature, top_k, seed)[0]


def history(source: str | os.PathLike) -> pandas.DataFrame:
    """The run's metrics: one row per step (a ``step`` column), one column per metric.

    Train and validation values of a step share its row; a metric not logged
    at a step is NaN there. ``source`` is a run folder, ``mlflow:RUN_ID``,
    ``runs:/RUN_ID``, or a run's name (a folder under ``runs/``, else an MLflow run), as `compare` takes.
    """
    import pandas as pd

    from .run_records import metric_history

    points = metric_history(os.fspath(source))
    columns = {key: dict(values) for key, values in points.items()}
    steps = sorted({s for values in columns.values() for s in values})
    return pd.DataFrame({"step": steps, **{k: [v.get(s, float("nan")) for s in steps] for k, v in columns.items()}})
