"""Our SentencePiece tokenizer as a Hugging Face ``tokenizers`` tokenizer that gives the same ids.

:class:`tracked_train.tokenizer.Tokenizer` encodes each line on its own and
joins the lines with the newline piece. Here the newline is an added token:
the ``tokenizers`` library splits the text at added tokens first and
normalizes each stretch between them on its own, as ours encodes each line.
Spaces become ``▁`` and the ``Metaspace`` pre-tokenizer cuts before each, as
SentencePiece's ``split_by_whitespace`` does. The model is SentencePiece's own
vocabulary as a BPE model with byte fallback: for ``bpe``, the merges ranked
by the score of the piece they make, which is the order SentencePiece merges
in; for ``char``, no merges.

Tokenizers of runs from before the export put SentencePiece's word-start
marker ``▁`` before every line (``add_dummy_prefix``); for those the marker
is prepended to every line and dropped at the start of every decoded line,
which gives our ids and decodes a whole text back, but a decoded stretch that
starts mid-line with a word loses its space: ``transformers``' text-generation
pipeline decodes the new tokens alone, so its text can miss one space where
the prompt ends. New tokenizers have no marker (see tracked_train/tokenizer.py)
and decode by plain concatenation.

SentencePiece's control pieces (``<unk>``, ``<s>``, ``</s>``) are special
tokens that the text never produces (``split_special_tokens``): SentencePiece
encodes a literal ``<s>`` in the text as characters, and so does this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tokenizer import NEWLINE

# sentencepiece_model.proto: TrainerSpec.ModelType and SentencePiece.Type
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# unigram is not: Hugging Face's Unigram matches every piece of the vocabulary in the text, SentencePiece's
# only the normal ones, so a literal "<s>" or "<0x41>" would get a control or byte piece's id.
SUPPORTED = ("bpe", "char")


def _proto(model_bytes: bytes) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(model_bytes)
    return m


def check(model_bytes: bytes) -> Any:
    """The model's proto; UserError, in one line, for a tokenizer that has no exact Hugging Face equivalent."""
    from .errors import UserError

    m = _proto(model_bytes)
    kind = _MODEL_TYPES.get(m.trainer_spec.model_type, "unknown")
    if kind not in SUPPORTED:
        raise UserError(f"export --format hf: a tokenizer of model_type {kind} has no Hugging Face equivalent "
                        f"(supported: {', '.join(SUPPORTED)}); export --format safetensors instead")
    spec, norm = m.trainer_spec, m.normalizer_spec
    if (norm.name != "identity" or norm.remove_extra_whitespaces or spec.treat_whitespace_as_suffix
            or not spec.byte_fallback):
        raise UserError("export --format hf: this SentencePiece model's normalization is not tracked-train's "
                        "(identity, byte fallback); export --format safetensors instead")
    pieces = [(p.piece, p.score, p.type) for p in m.pieces]
    if NEWLINE not in {p for p, _, t in pieces if t == _USER_DEFINED}:
        raise UserError("export --format hf: the tokenizer has no newline piece; export --format safetensors instead")
    return m


def build(model_bytes: bytes) -> Any:
    """A ``tokenizers.Tokenizer`` that encodes and decodes as :class:`~tracked_train.tokenizer.Tokenizer`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    m = check(model_bytes)
    kind = _MODEL_TYPES[m.trainer_spec.model_type]
    spec = m.trainer_spec
    pieces = [(p.piece, p.score, p.type) for p in m.pieces]
    unk = pieces[spec.unk_id][0] if 0 <= spec.unk_id < len(pieces) else None
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    merges = []
    if kind == "bpe":  # char: no merges, every character its own piece
        # SentencePiece's BPE merges, again and again, the adjacent pair whose joined piece scores highest.
        for i, (piece, score, t) in enumerate(pieces):
            if t != _NORMAL:
                continue
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in vocab and right in vocab:
                    merges.append((-score, i, vocab[left], (left, right)))
        merges.sort()
    model = models.BPE(vocab, [pair for *_, pair in merges], unk_token=unk, byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    marker = m.normalizer_spec.add_dummy_prefix  # runs from before the export: "▁" before every line
    # (Metaspace's own prepending skips a text that starts with a space: prepend in the normalizer.)
    prepend = [normalizers.Prepend("▁")] if marker else []
    tok.normalizer = normalizers.Sequence([*prepend, normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if marker:  # drop the marker SentencePiece put before every line
        steps.append(decoders.Replace(Regex("(?m)^ "), ""))
    tok.decoder = decoders.Sequence(steps)
    tok.add_tokens([AddedToken(NEWLINE, normalized=False, special=False, single_word=False, lstrip=False,
                               rstrip=False)])
    tok.add_special_tokens([AddedToken(p, normalized=False, special=True) for p, _, t in pieces
                            if t in (_CONTROL, _UNKNOWN)])
    tok.encode_special_tokens = True
    return tok


def write(model_bytes: bytes, folder: Path) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` for ``AutoTokenizer``."""
    m = check(model_bytes)
    tok = build(model_bytes)
    tok.save(str(folder / "tokenizer.json"))
    spec = m.trainer_spec
    names = {"unk_token": spec.unk_id, "bos_token": spec.bos_id, "eos_token": spec.eos_id}
    special = {k: m.pieces[i].piece for k, i in names.items() if 0 <= i < len(m.pieces)}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "split_special_tokens": True, "add_bos_token": False, "add_eos_token": False,
              **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
