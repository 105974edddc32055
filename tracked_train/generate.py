"""Sample text from a trained model: a run folder or a checkpoint."""

from __future__ import annotations

from pathlib import Path

from . import checkpoint
from .errors import UserError


def checkpoint_folder(source: Path) -> Path:
    """A run folder means its best checkpoint (else last); a checkpoint folder or file means itself."""
    source = Path(source)
    if source.is_file() and source.name == checkpoint.STATE_FILE:
        return source.parent
    for candidate in (source / "checkpoints" / "best", source / "checkpoints" / "last", source):
        if (candidate / checkpoint.MANIFEST).is_file():
            return candidate
    raise UserError(f"no checkpoint found at {source}; pass a run folder or a checkpoint folder")


def load_model(source: Path):
    """(model in eval mode, tokenizer) from a checkpoint, verified and loaded weights-only."""
    from .config import from_dict
    from .model import GPT
    from .tokenizer import Tokenizer
    from .train import gpt_config

    state = checkpoint.load(checkpoint_folder(source))
    tok = Tokenizer(state["tokenizer"].numpy().tobytes())
    model = GPT(gpt_config(from_dict(state["config"]), tok.vocab_size))
    model.load_state_dict(state["model"])
    return model.eval(), tok


def generate(source: Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, seed: int = 0) -> str:
    import torch

    model, tok = load_model(source)
    ids = tok.encode(prompt) or [tok.newline_id]
    g = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature, top_k, generator=g)
    return tok.decode(out[0].tolist())
