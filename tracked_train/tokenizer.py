"""SentencePiece tokenizer trained on the training split, cached by content hash.

Text is handled line by line (SentencePiece splits its input into sentences at
newlines), and lines are joined by a dedicated newline piece so that the model
sees, and generates, line structure.

Tokenizers trained since the Hugging Face export (cache key ``v2``) add no
word-start marker (``▁``) before each line (``add_dummy_prefix=False``): a
space is then a piece's own ``▁`` and decoding is plain concatenation, so a
token's text does not depend on the tokens before it, which ``transformers``
assumes when it decodes only the new tokens of a generation.
A tokenizer from an earlier run keeps its marker: the model file carries it,
and such runs encode, decode and generate as they always did.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the Tokenizer class travels alone inside MLflow models (see inference.py)
    from .config import TokenizerConfig

NEWLINE = "\n"


def cache_dir() -> Path:
    root = os.environ.get("TRACKED_TRAIN_CACHE") or Path.home() / ".cache" / "tracked-train"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


class Tokenizer:
    """A thin wrapper around a SentencePiece model held as bytes."""

    def __init__(self, model_bytes: bytes):
        import sentencepiece as spm

        self.model_bytes = bytes(model_bytes)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        self.newline_id = self.sp.piece_to_id(NEWLINE)
        self.vocab_size = self.sp.get_piece_size()

    def encode_lines(self, lines: Sequence[str]) -> np.ndarray:
        """Token ids of ``"\\n".join(lines) + "\\n"`` as one flat int32 array."""
        pieces = self.sp.encode(list(lines))
        nl = self.newline_id
        flat: list[int] = []
        for ids in pieces:
            flat.extend(ids)
            flat.append(nl)
        return np.asarray(flat, dtype=np.int32)

    def encode(self, text: str) -> list[int]:
        lines = text.split(NEWLINE)
        ids = self.encode_lines(lines).tolist()
        return ids[:-1]  # encode_lines ends every line, the text need not end with one

    def decode(self, ids: Iterable[int]) -> str:
        out, line = [], []
        for i in ids:
            if i == self.newline_id:
                out.append(self.sp.decode(line))
                line = []
            else:
                line.append(int(i))
        out.append(self.sp.decode(line))
        return NEWLINE.join(out)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(self.model_bytes)

    @classmethod
    def load(cls, folder: Path) -> Tokenizer:
        return cls((Path(folder) / "tokenizer.model").read_bytes())


def train_tokenizer(lines: Sequence[str], cfg: TokenizerConfig, data_hash: str) -> Tokenizer:
    """Train (or fetch from the cache) a tokenizer for ``lines``."""
    key = hashlib.sha256(f"{data_hash}|{cfg.vocab_size}|{cfg.model_type}|v2".encode()).hexdigest()[:24]
    cached = cache_dir() / "tokenizers" / f"{key}.model"
    if cached.exists():
        return Tokenizer(cached.read_bytes())

    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([ln for ln in lines if ln.strip()]),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=1.0,
            byte_fallback=True,
            user_defined_symbols=[NEWLINE],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,  # see the module's docstring
            split_digits=True,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            max_sentence_length=1 << 16,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        from .errors import UserError

        # e.g. "Vocabulary size too high (4000). Please set it to a value <= 1320."
        lines = [s for s in str(e).splitlines() if s.strip()]
        why = lines[-1].rsplit("] ", 1)[-1] if lines else type(e).__name__
        raise UserError(f"tokenizer training failed: {why} Adjust tokenizer.vocab_size.") from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, cached)
    return Tokenizer(model.getvalue())
