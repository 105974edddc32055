"""`tracked-train export`: a trained model as files other tools load.

Formats:

- ``hf``: a Hugging Face ``transformers`` folder (``config.json``,
  ``model.safetensors``) that ``AutoModelForCausalLM.from_pretrained`` loads as
  GPT-2, with our ``tokenizer.model`` beside it. Our model is GPT-2's
  architecture without biases (pre-LayerNorm, learned positions, exact GELU,
  tied head), so the biases are written as zeros; grouped-query attention
  becomes GPT-2's full multi-head attention by repeating each key/value head
  for the query heads that share it, which computes the same function.
- ``safetensors``: the three files of :mod:`tracked_train.inference`.

The tokenizer stays SentencePiece: we encode each line on its own and join the
lines with a newline piece, which no stock ``transformers`` tokenizer
reproduces (they add SentencePiece's word-start marker only at the start of
the text), so no HF tokenizer is written rather than one that encodes
differently. ``tracked_train.inference.load_files`` or the recipe in
docs/model.md encode exactly.

The folder is built beside ``--out`` and renamed into place: an export that
fails leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError

FORMATS = ("hf", "safetensors")


def export(source: str, fmt: str, out: Path) -> Path:
    """Write ``source``'s model (best checkpoint, else last) to the new folder ``out``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; pass a new --out folder")
    if fmt == "hf":
        _require_transformers()
    from .sources import load_model

    model, tok = load_model(source)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror}); pass an --out folder you can write to") from None
    try:
        if fmt == "hf":
            write_hf(model, tok, tmp)
        else:
            from .inference import save_files

            save_files(model, tok, tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("export --format hf needs transformers; install it with "
                        "pip install 'tracked-train[hf]'") from None


def hf_config(model: Any, tok: Any) -> Any:
    from transformers import GPT2Config

    c = model.config
    sp = tok.sp
    return GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.seq_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
        n_inner=4 * c.d_model, activation_function="gelu",  # exact GELU, as F.gelu (GPT-2's own is tanh)
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=sp.bos_id() if sp.bos_id() >= 0 else None,
        eos_token_id=sp.eos_id() if sp.eos_id() >= 0 else None,
        architectures=["GPT2LMHeadModel"],
    )


def hf_state_dict(model: Any) -> dict[str, Any]:
    """Our weights under GPT-2's names; GPT-2's Conv1D layers hold the transpose of a Linear's weight."""
    import torch

    c = model.config
    d, hd, groups = c.d_model, c.d_model // c.n_heads, c.n_heads // c.n_kv_heads
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    for i in range(c.n_layers):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        k, v = sd[ours + "attn.kv.weight"].view(2, c.n_kv_heads, hd, d)
        # Query head h reads key/value head h // groups (SDPA's enable_gqa): repeat each kv head `groups` times.
        k = k.repeat_interleave(groups, dim=0).reshape(d, d)
        v = v.repeat_interleave(groups, dim=0).reshape(d, d)
        qkv = torch.cat([sd[ours + "attn.q.weight"], k, v])
        for norm, name in (("ln1", "ln_1"), ("ln2", "ln_2")):
            for p in ("weight", "bias"):
                out[f"{theirs}{name}.{p}"] = sd[f"{ours}{norm}.{p}"]
        layers = {"attn.c_attn": qkv, "attn.c_proj": sd[ours + "attn.proj.weight"],
                  "mlp.c_fc": sd[ours + "mlp.up.weight"], "mlp.c_proj": sd[ours + "mlp.proj.weight"]}
        for name, w in layers.items():
            out[f"{theirs}{name}.weight"] = w.t().contiguous()
            out[f"{theirs}{name}.bias"] = torch.zeros(w.shape[0])
    return out


def write_hf(model: Any, tok: Any, folder: Path) -> None:
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    hf = GPT2LMHeadModel(hf_config(model, tok))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # lm_head.weight is tied to wte; anything else missing would be a mapping bug.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GPT-2 mapping mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    hf.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(tok.model_bytes)
