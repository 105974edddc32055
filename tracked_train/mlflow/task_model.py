"""The MLflow model of a run of your own task (docs/tasks.md): the task's ``predict``, served anywhere.

A task that offers ``predict(model, inputs) -> outputs`` becomes a pyfunc
"model from code": this file is its model code, the task's own source and
tracked-train's package travel in its ``code/`` folder (MLflow's
``code_paths``), and its one artifact is ``model.pt``: the weights, the run's
config and the task's state, loaded weights-only (no pickle runs code). So
``mlflow.pyfunc.load_model("models:/m-...")`` works in a fresh process with
neither the run folder nor the task's package around.

A task without ``predict`` is logged as its checkpoint's files (``checkpoint.pt``,
``config.yaml``, ``manifest.json``...): loadable with ``tracked_train.load``,
not servable, and the log says so.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("tracked_train")

MODEL_FILE = "model.pt"


def save(path: Path, tmp: Path, state: dict[str, Any], task: Any, run_id: str, model_id: str,
         checkpoint_dir: Path) -> None:
    """Write the Logged Model's folder for ``task`` at ``path`` (``tmp`` is scratch space)."""
    if type(task).predict is None:
        log.info("mlflow: task %s has no predict(); its best checkpoint is logged as files (load it with "
                 "tracked_train.load), not as a servable model", task.cfg.task)
        shutil.copytree(checkpoint_dir, path)
        return
    import mlflow.pyfunc
    import torch
    from mlflow.models import Model

    code = tmp / "code"
    spec = _ship_task(task, code)
    _ship_package(code / "tracked_train")
    config = dict(state["config"], task=spec)  # the shipped module, importable from code/
    torch.save({"model": state["model"], "config": config, "task_state": state["task_state"]}, tmp / MODEL_FILE)
    mlflow.pyfunc.save_model(
        str(path), python_model=str(Path(__file__)), artifacts={"model": str(tmp / MODEL_FILE)},
        code_paths=[str(p) for p in code.iterdir()], pip_requirements=_requirements(),
        mlflow_model=Model(run_id=run_id, model_id=model_id, model_uuid=model_id),
        metadata={"source": "tracked-train", "task": spec})


def _ship_task(task: Any, code: Path) -> str:
    """Copy the task's source into ``code``; return the task spec that imports it from there."""
    cls = type(task)
    module = sys.modules[cls.__module__]
    source = Path(module.__file__)
    code.mkdir(parents=True)
    top = cls.__module__.split(".")[0]
    if cls.__module__.startswith("tracked_train_task_"):  # a task given as a file: ship it as a module of its own
        name = source.stem
        shutil.copy2(source, code / f"{name}.py")
        return f"{name}:{cls.__name__}"
    if "." in cls.__module__:  # a package's module: ship the package, so its relative imports hold
        package = Path(sys.modules[top].__file__).parent
        shutil.copytree(package, code / top, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(source, code / source.name)
    return f"{cls.__module__}:{cls.__name__}"


def _ship_package(dest: Path) -> None:
    here = Path(__file__).resolve().parents[1]
    shutil.copytree(here, dest, ignore=shutil.ignore_patterns("__pycache__"))


def _requirements() -> list[str]:
    from importlib import metadata

    keep = ("mlflow", "torch", "numpy", "pandas", "pyyaml", "click", "rich", "psutil", "safetensors")
    return [f"{d}=={metadata.version(d).split('+')[0]}" for d in keep]


def _load(path: str) -> tuple[Any, Any]:
    import torch

    from tracked_train.checkpoint import load_weights
    from tracked_train.config import from_dict
    from tracked_train.task import build_model, create

    state = torch.load(path, map_location="cpu", weights_only=True)
    task = create(from_dict(state["config"], "the MLflow model"))
    task.load_state(state["task_state"])
    model = build_model(task)
    load_weights(model, state["model"], "the MLflow model")
    return model.eval(), task


def _inputs(model_input: Any) -> list:
    if hasattr(model_input, "columns"):  # a DataFrame: its first column
        return model_input[model_input.columns[0]].tolist()
    return list(model_input) if isinstance(model_input, (list, tuple)) else [model_input]


if __name__ != "tracked_train.mlflow.task_model":  # MLflow runs this file as the model's code
    import mlflow
    from mlflow.pyfunc import PythonModel

    class TaskModel(PythonModel):
        def load_context(self, context: Any) -> None:
            self.model, self.task = _load(context.artifacts["model"])

        # No type hints: MLflow would try to read a signature from them (the task defines its own inputs).
        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            return self.task.predict(self.model, _inputs(model_input))

    mlflow.models.set_model(TaskModel())
