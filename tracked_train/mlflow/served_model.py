"""The MLflow model of a run: prompts in, generated texts out.

Logged as an MLflow "model from code" (see :mod:`.logged_model`): MLflow copies
this file into the model and runs it on load, so no pickled object is
involved. The weights, config and tokenizer are the model's ``files``
artifact (:mod:`tracked_train.inference`'s three files); the code that reads
them (``tracked_train.inference``, ``.model``, ``.tokenizer``) travels in the
model's ``code/`` folder, so the model loads and serves where tracked-train is
not installed.

Input: a DataFrame with a ``prompt`` column (or a list of strings). Output:
one text per prompt, the prompt included. Params: ``max_new_tokens``,
``temperature``, ``top_k`` (0: none) and ``seed``; a bad one is refused as
INVALID_PARAMETER_VALUE (HTTP 400 when served), with the message of
:func:`tracked_train.inference.check_sampling`.
"""

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextGenerator(PythonModel):
    def load_context(self, context: Any) -> None:
        from tracked_train.inference import load_files

        self.model, self.tok = load_files(context.artifacts["files"])

    # MLflow turns a list of prompts into a DataFrame by the signature first; a DataFrame hint keeps the
    # logged signature authoritative (a list hint would make MLflow infer its own).
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from tracked_train.inference import DEFAULTS, check_sampling, complete

        p = {**DEFAULTS, **(params or {})}
        try:
            args = check_sampling(p["max_new_tokens"], p["temperature"], p["top_k"], p["seed"])
        except ValueError as e:
            # The client's mistake: MLflow's scoring server answers an MlflowException with its error code's
            # status (400 here) and this message, where any other exception is an opaque "unexpected error".
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return complete(self.model, self.tok, prompts_of(model_input), *args)


def prompts_of(model_input: Any) -> list[str]:
    """The prompts of a DataFrame's ``prompt`` column (else its only column), a list, or one string."""
    if hasattr(model_input, "columns"):
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(v) for v in model_input]


mlflow.models.set_model(TextGenerator())
