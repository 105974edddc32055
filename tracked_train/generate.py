"""Sample text from a trained model: a run folder, a checkpoint or an MLflow run."""

from __future__ import annotations

from pathlib import Path


def generate(source: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, seed: int = 0) -> str:
    import torch

    from .sources import load_model

    model, tok = load_model(source)
    ids = tok.encode(prompt) or [tok.newline_id]
    g = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature, top_k, generator=g)
    return tok.decode(out[0].tolist())
