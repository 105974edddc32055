"""The model's design switches: old checkpoints keep their GPT-2 design, Muon trains and resumes, HF families match."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, records, sets

from tracked_train.checkpoint import config_of
from tracked_train.config import Config
from tracked_train.lm import gpt_config
from tracked_train.model import GPT, GPTConfig


def test_a_config_saved_before_the_switches_describes_gpt2():
    nested = Config().to_dict()
    for key in ("pos_encoding", "norm", "mlp", "qk_norm", "tie_embeddings"):
        del nested["model"][key]
    del nested["training"]["optimizer"]
    old = config_of({"config": nested})
    assert (old.model.pos_encoding, old.model.norm, old.model.mlp, old.model.qk_norm) == \
        ("learned", "layernorm", "gelu", False)
    assert old.training.optimizer == "adamw"
    names = set(GPT(gpt_config(old, 384)).state_dict())
    assert "pos_emb.weight" in names and "blocks.0.mlp.gate.weight" not in names  # the old tensors, all of them
    new = Config()
    assert (new.model.pos_encoding, new.model.mlp) == ("rope", "swiglu")


def test_an_old_config_json_loads_as_gpt2(tmp_path):
    """inference.load_files on a folder written before the switches: the fields it lacks are GPT-2's."""
    from tracked_train.inference import load_files, save_files

    model = GPT(GPTConfig(384, 32, 1, 2, 1, 16, 0.0, "learned", "layernorm", "gelu"))
    tok = _tiny_tokenizer(tmp_path)
    save_files(model, tok, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("pos_encoding", "norm", "mlp", "qk_norm", "tie_embeddings"):
        del config[key]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    again, _ = load_files(tmp_path / "m")
    x = torch.randint(0, 384, (1, 16))
    assert torch.equal(again(x)[0], model.eval()(x)[0])


def _tiny_tokenizer(tmp_path):
    from tracked_train.config import TokenizerConfig
    from tracked_train.corpus import generate_lines
    from tracked_train.tokenizer import train_tokenizer

    return train_tokenizer(generate_lines(20_000, 0), TokenizerConfig(vocab_size=384), "test-model")


def test_muon_trains_and_resumes(tmp_path):
    """Muon, with the other switches' second values: two optimizers' states go into the checkpoint and come
    back, so a resume continues to the new limit."""
    design = ("model.norm=rmsnorm", "model.qk_norm=true", "model.tie_embeddings=false", "training.optimizer=muon")
    done = cli("run", "--run-name", "m", *sets("training.max_steps=12", "training.eval_every=6", *design),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "m"
    state = torch.load(run / "checkpoints" / "last" / "checkpoint.pt", weights_only=True)
    assert len(state["optimizer"]) == 2  # Muon for the blocks' matrices, AdamW for the rest
    more = cli("resume", str(run), "--set", "training.max_steps=18", "--allow-config-change", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    losses = [r["train/loss"] for r in records(run) if "train/loss" in r]
    assert len(losses) == 18 and losses[-1] < losses[0]


@pytest.mark.parametrize("design, family", [
    ({"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu"}, "GPT2LMHeadModel"),
    ({"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "tie_embeddings": False}, "GPT2LMHeadModel"),
    ({}, "StableLmForCausalLM"),
    ({"tie_embeddings": False}, "StableLmForCausalLM"),
    ({"norm": "rmsnorm"}, "LlamaForCausalLM"),
    ({"norm": "rmsnorm", "qk_norm": True}, "Qwen3ForCausalLM"),
])
def test_each_design_exports_to_the_hf_family_that_computes_the_same(tmp_path, design, family):
    from transformers import AutoModelForCausalLM

    from tracked_train.export import write_hf

    design = {"pos_encoding": "rope", "norm": "layernorm", "mlp": "swiglu", **design}
    torch.manual_seed(0)
    model = GPT(GPTConfig(384, 64, 2, 4, 2, 32, 0.0, **design)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # gains and biases away from their initial 1 and 0
    (tmp_path / "hf").mkdir()
    write_hf(model, _tiny_tokenizer(tmp_path), tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == family
    x = torch.randint(0, 384, (2, 32))
    with torch.no_grad():
        assert (theirs(x).logits - model(x)[0]).abs().max().item() < 1e-4


def test_a_design_with_no_hf_family_is_refused_in_one_line():
    from tracked_train.errors import UserError
    from tracked_train.export import family

    with pytest.raises(UserError, match="export --format safetensors instead"):
        family(GPTConfig(384, 64, 2, 4, 2, 32, 0.0, "learned", "rmsnorm", "swiglu"))
