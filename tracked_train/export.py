"""`tracked-train export`: a trained model as files other tools load.

Formats:

- ``hf``: a Hugging Face ``transformers`` folder (``config.json``,
  ``model.safetensors``) that ``AutoModelForCausalLM.from_pretrained`` loads,
  with a ``tokenizers`` tokenizer (``tokenizer.json``, see
  :mod:`tracked_train.hf_tokenizer`) that ``AutoTokenizer`` loads and that
  gives our ids, and our ``tokenizer.model`` beside it. The family follows the model's design
  (:data:`FAMILIES`): rotary positions, LayerNorm and SwiGLU (the default) are
  StableLM; with RMSNorm, Llama (Qwen3 with ``qk_norm``); learned positions,
  LayerNorm and GELU are GPT-2, whose full multi-head attention gets grouped-
  query attention by repeating each key/value head for the query heads that
  share it. Biases we do not have are written as zeros. Our rotary features
  pair (2i, 2i+1); Hugging Face pairs (i, i + d/2), so the query and key rows
  are permuted to match, which computes the same function.
- ``safetensors``: the three files of :mod:`tracked_train.inference`.

We encode each line on its own and join the lines with a newline piece; the
``tokenizer.json`` does the same (the newline is an added token, so the text
between two is encoded on its own). Tokenizers of
``tokenizer.model_type`` bpe (the default) and char export; unigram and word
are refused, in one line, before anything is written.

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
    from .model import GPT
    from .sources import load_model

    model, tok = load_model(source)
    if not isinstance(model, GPT):
        raise UserError(f"{source} is a model of task {tok.cfg.task}, not tracked-train's language model: export "
                        "writes GPT weights only; load it with tracked_train.load or take checkpoints/best")
    if fmt == "hf":
        from .hf_tokenizer import check

        check(tok.model_bytes)  # a tokenizer with no exact HF equivalent is refused before anything is written
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


# (pos_encoding, norm, mlp, qk_norm) -> the transformers class that computes the same function.
FAMILIES = {
    ("learned", "layernorm", "gelu", False): "GPT2LMHeadModel",
    ("rope", "layernorm", "swiglu", False): "StableLmForCausalLM",
    ("rope", "rmsnorm", "swiglu", False): "LlamaForCausalLM",
    ("rope", "rmsnorm", "swiglu", True): "Qwen3ForCausalLM",
}


def family(c: Any) -> str:
    key = (c.pos_encoding, c.norm, c.mlp, c.qk_norm)
    if key not in FAMILIES:
        raise UserError(f"export --format hf: no transformers model matches pos_encoding={c.pos_encoding}, "
                        f"norm={c.norm}, mlp={c.mlp}, qk_norm={c.qk_norm}; export --format safetensors instead")
    return FAMILIES[key]


def hf_config(model: Any, tok: Any) -> Any:
    import transformers

    from .model import NORM_EPS, ROPE_THETA

    c, sp = model.config, tok.sp
    name = family(c)
    ids = {"bos_token_id": sp.bos_id() if sp.bos_id() >= 0 else None,
           "eos_token_id": sp.eos_id() if sp.eos_id() >= 0 else None, "architectures": [name]}
    if name == "GPT2LMHeadModel":
        return transformers.GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.seq_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
            n_inner=c.mlp_hidden, activation_function="gelu",  # exact GELU, as F.gelu (GPT-2's own is tanh)
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=NORM_EPS,
            tie_word_embeddings=c.tie_embeddings, **ids)
    common = dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_hidden,
                  num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                  max_position_embeddings=c.seq_len, hidden_act="silu", tie_word_embeddings=c.tie_embeddings,
                  rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, **ids)
    if name == "StableLmForCausalLM":
        common["rope_parameters"]["partial_rotary_factor"] = 1.0
        return transformers.StableLmConfig(layer_norm_eps=NORM_EPS, **common)
    config = transformers.LlamaConfig if name == "LlamaForCausalLM" else transformers.Qwen3Config
    return config(rms_norm_eps=NORM_EPS, head_dim=c.d_model // c.n_heads, **common)


def _half_layout(w: Any, heads: int) -> Any:
    """Rows of a query/key projection (or a per-head norm's gains) from (2i, 2i+1) pairs to (i, i + d/2)."""
    shape = w.shape
    return w.reshape(heads, -1, 2, *shape[1:]).transpose(1, 2).reshape(shape)


def hf_state_dict(model: Any) -> dict[str, Any]:
    """Our weights under the family's names."""
    c = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    if family(c) == "GPT2LMHeadModel":
        return _gpt2_state_dict(c, sd)
    hd = c.d_model // c.n_heads
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["ln_f.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    if c.norm == "layernorm":
        out["model.norm.bias"] = sd["ln_f.bias"]
    for i in range(c.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        k, v = sd[ours + "attn.kv.weight"].view(2, c.n_kv_heads * hd, c.d_model)
        layer = {"self_attn.q_proj": _half_layout(sd[ours + "attn.q.weight"], c.n_heads),
                 "self_attn.k_proj": _half_layout(k, c.n_kv_heads), "self_attn.v_proj": v,
                 "self_attn.o_proj": sd[ours + "attn.proj.weight"], "mlp.gate_proj": sd[ours + "mlp.gate.weight"],
                 "mlp.up_proj": sd[ours + "mlp.up.weight"], "mlp.down_proj": sd[ours + "mlp.proj.weight"],
                 "input_layernorm": sd[ours + "ln1.weight"], "post_attention_layernorm": sd[ours + "ln2.weight"]}
        if c.norm == "layernorm":
            layer |= {"input_layernorm.bias": sd[ours + "ln1.bias"],
                      "post_attention_layernorm.bias": sd[ours + "ln2.bias"]}
        if c.qk_norm:
            layer |= {"self_attn.q_norm": _half_layout(sd[ours + "attn.q_norm.weight"], 1),
                      "self_attn.k_norm": _half_layout(sd[ours + "attn.k_norm.weight"], 1)}
        for name, w in layer.items():
            out[theirs + (name if name.endswith(".bias") else name + ".weight")] = w
    return out


def _gpt2_state_dict(c: Any, sd: dict[str, Any]) -> dict[str, Any]:
    """GPT-2's names; its Conv1D layers hold the transpose of a Linear's weight."""
    import torch

    d, hd, groups = c.d_model, c.d_model // c.n_heads, c.n_heads // c.n_kv_heads
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
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
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from .hf_tokenizer import write as write_tokenizer

    hf_logging.disable_progress_bar()
    config = hf_config(model, tok)
    hf = getattr(transformers, config.architectures[0])(config)
    ours = hf_state_dict(model)
    theirs = hf.state_dict()
    for name in set(theirs) - set(ours):  # the biases we do not have; a tied head
        if name.endswith(".bias"):
            ours[name] = torch.zeros_like(theirs[name])
    missing, unexpected = hf.load_state_dict(ours, strict=False)
    # lm_head.weight is tied to the embedding; anything else missing would be a mapping bug.
    if unexpected or set(missing) - {"lm_head.weight"} or (missing and not model.config.tie_embeddings):
        raise RuntimeError(f"{config.architectures[0]} mapping mismatch: missing {missing}, unexpected {unexpected}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    hf.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(tok.model_bytes)
    write_tokenizer(tok.model_bytes, folder)
