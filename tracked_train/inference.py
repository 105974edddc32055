"""A trained model as plain files, and text sampled from it.

The one home of inference: the Python API (``tracked_train.load`` and
``tracked_train.generate``), the ``generate`` command and the MLflow model all
sample through :func:`complete`. A model leaves a run as three files, none of
them a pickle, so loading them never runs code:

    model.safetensors   the weights (the tied head is stored once)
    config.json         the GPTConfig the weights fit
    tokenizer.model     the SentencePiece model

This module, :mod:`.model` and :mod:`.tokenizer` need only torch, numpy,
sentencepiece and safetensors: they are shipped inside the MLflow model (see
:mod:`tracked_train.mlflow.served_model`), which therefore loads where this
package is not installed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .model import GPT, GPTConfig
from .tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"
FILES = (WEIGHTS, CONFIG, TOKENIZER)
# Sampling defaults of `complete`, the `generate` command and the served model's params.
DEFAULTS = {"max_new_tokens": 200, "temperature": 0.8, "top_k": 50, "seed": 0}


def save_files(model: GPT, tok: Tokenizer, folder: Path) -> None:
    """Write the three files of ``model`` and ``tok`` into ``folder``."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    config = {**dataclasses.asdict(model.config), "dropout": 0.0}  # a served model never drops out
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / TOKENIZER).write_bytes(tok.model_bytes)
    save_model(model, str(folder / WEIGHTS))


def load_files(folder: Path) -> tuple[GPT, Tokenizer]:
    """(model in eval mode, tokenizer) from the files :func:`save_files` wrote."""
    from safetensors.torch import load_model

    folder = Path(folder)
    config = json.loads((folder / CONFIG).read_text())
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    if not isinstance(config, dict) or set(config) - known:
        raise ValueError(f"{folder / CONFIG} is not a tracked-train model config (keys: {sorted(known)})")
    model = GPT(GPTConfig(**config))
    load_model(model, str(folder / WEIGHTS))  # strict: a missing or extra tensor is an error
    return model.eval(), Tokenizer((folder / TOKENIZER).read_bytes())


def complete(model: GPT, tok: Tokenizer, prompts: Sequence[str], max_new_tokens: int = 200,
             temperature: float = 0.8, top_k: int | None = 50, seed: int = 0) -> list[str]:
    """Each prompt followed by up to ``max_new_tokens`` sampled tokens (``temperature`` 0: greedy).

    Each prompt is sampled on its own generator seeded with ``seed``, so a
    prompt's text does not depend on the other prompts of the batch.
    """
    out = []
    for prompt in prompts:
        ids = tok.encode(prompt) or [tok.newline_id]  # an empty prompt starts a new line
        g = torch.Generator().manual_seed(seed)
        sampled = model.generate(torch.tensor([ids]), max_new_tokens, temperature, top_k or None, generator=g)
        out.append(tok.decode(sampled[0].tolist()))
    return out
