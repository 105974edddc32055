"""The model's design switches: old checkpoints keep their GPT-2 design, Muon trains and resumes, HF families match."""

from __future__ import annotations

import json

import torch
from conftest import cli, records, sets

from tracked_train.checkpoint import config_of
from tracked_train.config import Config
from tracked_train.model import GPT, GPTConfig
from tracked_train.train import gpt_config


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
