"""A run's best checkpoint as an MLflow 3 Logged Model that loads and serves anywhere.

The model is a pyfunc "model from code" (:mod:`.served_model`): its files are
the weights as safetensors, the model config as JSON and the SentencePiece
model (:mod:`tracked_train.inference`), with the few modules that read them
shipped in its ``code/`` folder and requirements that install from the
package index. No pickle is involved anywhere, so loading it runs no code
but ours.

Logged through the client (not the fluent API) because the MLflow sink sends
from a background thread with no active run. A retried upload reuses the
Logged Model its first attempt created, so a flaky server never leaves two.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

NAME = "model"
ORIGIN_TAG = "tracked_train.upload"  # which spooled upload created the model: retries find it again
SHIPPED = ("inference.py", "model.py", "tokenizer.py")  # the code the served model imports
PROMPT_EXAMPLE = "The "


def log_model(client: Any, run_id: str, checkpoint_dir: Path, upload: str, metrics: dict[str, float],
              step: int, register_as: str | None = None, name: str = NAME, timestamp: int | None = None,
              dataset: dict[str, str] | None = None) -> str:
    """Log ``checkpoint_dir`` as the run's Logged Model; returns its model id.

    ``metrics`` (the best validation values, or a periodic checkpoint's step's) are logged to the run and the
    model at once, linked to ``dataset`` (``{"name", "digest"}``, the validation split) when given; with the
    ``timestamp`` the run's points already have, MLflow keeps one point per step. ``register_as`` also
    registers it in the Model Registry.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

    from .. import checkpoint

    state = checkpoint.load(checkpoint_dir)
    model, task = checkpoint.restore_task(state, checkpoint_dir)
    run = client.get_run(run_id)
    model_id = _earlier_attempt(client, run, upload)
    if model_id is None:
        logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                            params=dict(run.data.params), tags={ORIGIN_TAG: upload},
                                            model_type="text-generation" if task.cfg.task == "lm" else None)
        model_id = logged.model_id
    with tempfile.TemporaryDirectory(prefix="tracked-train-model-") as tmp:
        saved = Path(tmp) / "model"
        if task.cfg.task == "lm":
            from ..inference import save_files

            files, code = Path(tmp) / "files", Path(tmp) / "code" / "tracked_train"
            save_files(model, task.tokenizer, files)
            _ship_code(code)
            _save(saved, files, code, run_id, model_id)
        else:
            from .task_model import save

            save(saved, Path(tmp), state, task, run_id, model_id, checkpoint_dir)
        client.log_model_artifacts(model_id, str(saved))
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
    if metrics:
        now = timestamp if timestamp is not None else int(time.time() * 1000)
        on = {"dataset_name": dataset["name"], "dataset_digest": dataset["digest"]} if dataset else {}
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step, model_id=model_id, run_id=run_id, **on)
                                          for k, v in metrics.items()])
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    if register_as:
        _register(client, model_id, run_id, register_as)
    return model_id


def _earlier_attempt(client: Any, run: Any, upload: str) -> str | None:
    found = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND tags.`{ORIGIN_TAG}` = '{upload}'", max_results=1)
    return found[0].model_id if found else None


def _ship_code(dest: Path) -> None:
    """The modules the served model imports, as a package named like ours (so one import line serves both)."""
    here = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True)
    from .. import __version__

    (dest / "__init__.py").write_text(f'"""The inference part of tracked-train {__version__}, shipped with an '
                                      'MLflow model."""\n')
    for name in SHIPPED:
        shutil.copy2(here / name, dest / name)


def _save(path: Path, files: Path, code: Path, run_id: str, model_id: str) -> None:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from ..inference import DEFAULTS

    signature = ModelSignature(
        # Unnamed: a list of strings is accepted as well as a DataFrame (its `prompt` column, else its first).
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(k, "long" if isinstance(v, int) else "double", v) for k, v in DEFAULTS.items()]),
    )
    with warnings.catch_warnings():
        # MLflow suggests type hints on predict; the explicit signature above is what we want it to use.
        warnings.simplefilter("ignore", UserWarning)
        _save_pyfunc(path, files, code, run_id, model_id, signature)


def _save_pyfunc(path: Path, files: Path, code: Path, run_id: str, model_id: str, signature: Any) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import Model

    mlflow.pyfunc.save_model(
        str(path), python_model=str(Path(__file__).with_name("served_model.py")),
        artifacts={"files": str(files)}, code_paths=[str(code)], signature=signature,
        # A short example: MLflow runs it once to check the model serves before it is logged.
        input_example=(pd.DataFrame({"prompt": [PROMPT_EXAMPLE]}), {"max_new_tokens": 8}),
        pip_requirements=requirements(),
        mlflow_model=Model(run_id=run_id, model_id=model_id, model_uuid=model_id),
        metadata={"source": "tracked-train"},
    )


def requirements() -> list[str]:
    """Pinned to this environment and installable from the package index (no tracked-train among them)."""
    pins = []
    for dist in ("mlflow", "torch", "sentencepiece", "safetensors", "numpy", "pandas"):
        version = metadata.version(dist).split("+")[0]  # 2.13.0+cpu: the local tag is no index version
        pins.append(f"{dist}=={version}")
    return pins


def _register(client: Any, model_id: str, run_id: str, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # it exists (an earlier run, or another process a moment ago)
    if any(v.run_id == run_id for v in client.search_model_versions(f"name = '{name}'")):
        return  # a retried upload: this run's version is there
    client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
