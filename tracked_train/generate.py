"""Sample text from a trained model: a run folder or a checkpoint."""

from __future__ import annotations

from pathlib import Path


def load_model(source: str | Path):
    """(model in eval mode, tokenizer) from a checkpoint, verified and loaded weights-only."""
    from .config import from_dict
    from .model import GPT
    from .resume import init_weights
    from .tokenizer import Tokenizer
    from .train import gpt_config

    state = init_weights(str(source), None)
    tok = Tokenizer(state["tokenizer"].numpy().tobytes())
    model = GPT(gpt_config(from_dict(state["config"]), tok.vocab_size))
    model.load_state_dict(state["model"])
    return model.eval(), tok


def generate(source: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, seed: int = 0) -> str:
    import torch

    model, tok = load_model(source)
    ids = tok.encode(prompt) or [tok.newline_id]
    g = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature, top_k, generator=g)
    return tok.decode(out[0].tolist())
