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
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .model import GPT, GPTConfig
from .tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"
FILES = (WEIGHTS, CONFIG, TOKENIZER)
# Sampling defaults of `complete`, the `generate` command and the served model's params.
DEFAULTS = {"max_new_tokens": 200, "temperature": 0.8, "top_k": 50, "seed": 0}
MAX_SEED = 2**63 - 1  # the most the served model's `long` (int64) seed param holds: one range everywhere


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


def _integer(value: Any) -> bool:
    # bool is an int to Python but never a count; 16.0 is what a JSON client may send for 16.
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())


def check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, seed: Any,
                   option_names: bool = False) -> tuple[int, float, int | None, int]:
    """``(max_new_tokens, temperature, top_k, seed)`` as :func:`complete` samples with them, else ValueError.

    The one check of every way in (``tracked_train.generate``, the ``generate``
    command, the served model): a NaN temperature or a negative top-k would
    otherwise fail deep in torch with a message about probability tensors, and a
    seed out of range as an overflow. The message names each bad argument and
    what it takes, in one line; ``option_names`` spells them as the command's
    options (``--top-k``). A ``top_k`` of None or 0 samples from the whole
    vocabulary (returned as None).
    """
    def name(arg: str) -> str:
        return "--" + arg.replace("_", "-") if option_names else arg

    problems = []
    if not _integer(max_new_tokens) or max_new_tokens < 0:
        problems.append(f"{name('max_new_tokens')} must be a whole number >= 0, not {max_new_tokens!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not math.isfinite(temperature)
            or temperature < 0):
        problems.append(f"{name('temperature')} must be a finite number >= 0 (0: always the likeliest token), "
                        f"not {temperature!r}")
    if top_k is not None and (not _integer(top_k) or top_k < 0):
        problems.append(f"{name('top_k')} must be a whole number >= 0 (0: no top-k), not {top_k!r}")
    if not _integer(seed) or not 0 <= seed <= MAX_SEED:
        problems.append(f"{name('seed')} must be a whole number from 0 to 2**63-1, not {seed!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return int(max_new_tokens), float(temperature), (int(top_k) or None) if top_k is not None else None, int(seed)


def complete(model: GPT, tok: Tokenizer, prompts: Sequence[str], max_new_tokens: int = 200,
             temperature: float = 0.8, top_k: int | None = 50, seed: int = 0) -> list[str]:
    """Each prompt followed by up to ``max_new_tokens`` sampled tokens (``temperature`` 0: greedy).

    Each prompt is sampled on its own generator seeded with ``seed``, so a
    prompt's text does not depend on the other prompts of the batch. Bad
    sampling arguments raise ValueError (:func:`check_sampling`).
    """
    if isinstance(prompts, str):  # a lone string would be sampled character by character
        raise ValueError("prompts must be a list of strings; for one prompt pass [prompt]")
    max_new_tokens, temperature, top_k, seed = check_sampling(max_new_tokens, temperature, top_k, seed)
    out = []
    for prompt in prompts:
        ids = tok.encode(prompt) or [tok.newline_id]  # an empty prompt starts a new line
        g = torch.Generator().manual_seed(seed)
        sampled = model.generate(torch.tensor([ids]), max_new_tokens, temperature, top_k, generator=g)
        out.append(tok.decode(sampled[0].tolist()))
    return out
