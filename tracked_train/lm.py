"""The built-in task ``lm``: a GPT (:mod:`.model`) trained on text (:mod:`.data`), next-token cross-entropy.

Written against the same :class:`~tracked_train.task.Task` contract as any
user's task; its settings are the config's ``model``, ``data`` and
``tokenizer`` sections. Its state in a checkpoint is the SentencePiece model,
so a resumed or loaded run encodes text exactly as it was trained.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .config import Config
from .model import GPT, GPTConfig
from .task import Task

log = logging.getLogger("tracked_train")


def gpt_config(cfg: Config, vocab_size: int) -> GPTConfig:
    m = cfg.model
    return GPTConfig(vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads or m.n_heads, m.seq_len, m.dropout,
                     m.pos_encoding, m.norm, m.mlp, m.qk_norm, m.tie_embeddings)


def bits_per_byte(nats_per_char: float, chars_per_byte: float) -> float:
    """Bits per UTF-8 byte of the text: comparable across tokenizers (and across scripts, unlike per character)."""
    return nats_per_char * chars_per_byte / math.log(2)


def safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


class LanguageModel(Task):
    monitor, mode = "val/loss", "min"

    def __init__(self, cfg: Config, settings: Any):
        super().__init__(cfg, settings)
        self.tokenizer = None  # a Tokenizer: from load_state, or trained by prepare
        self.data = None
        self.tokens_per_example = cfg.model.seq_len

    def state(self) -> dict[str, Any]:
        return {"tokenizer": torch.frombuffer(bytearray(self.tokenizer.model_bytes), dtype=torch.uint8)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        from .tokenizer import Tokenizer

        self.tokenizer = Tokenizer(state["tokenizer"].numpy().tobytes())

    def prepare(self, run_dir: Path | None) -> None:
        from .data import prepare

        self.data, self.tokenizer = prepare(self.cfg, tokenizer_from=self.tokenizer.model_bytes if self.tokenizer
                                            else None)
        if run_dir is not None and distributed.current().is_main:
            self.tokenizer.save(run_dir / "tokenizer")

    def describe(self) -> str:
        d = self.data
        line = (f"data: {len(d.train.tokens):,} train / {len(d.valid.tokens):,} validation tokens, "
                f"vocab {self.tokenizer.vocab_size}, {d.valid_chars_per_token:.2f} chars/token")
        if self.cfg.data.source == "builtin":
            from .corpus import entropy_rate

            line += (f"\nbuilt-in corpus: entropy rate {entropy_rate():.3f} nats/char, "
                     "the lowest loss any model can reach")
        return line

    def datasets(self) -> Sequence[Any]:
        return self.data.datasets

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.tokenizer.model_bytes}

    def build_model(self) -> GPT:
        return GPT(gpt_config(self.cfg, self.tokenizer.vocab_size))

    def batch(self, position: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.train.get(position, size)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return model(x, y)[1]

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean loss over a fixed set of validation windows, spread over the torchrun ranks."""
        t, dist = self.cfg.training, distributed.current()
        device = next(model.parameters()).device
        # Summed on the device in float64 (the same arithmetic as Python floats): one read-back, not one a batch.
        total, n = torch.zeros((), dtype=torch.float64, device=device), 0
        for i, (x, y) in enumerate(self.data.valid.eval_batches(t.eval_batches, t.batch_size)):
            if i % dist.world_size != dist.rank:
                continue
            _, loss = model(x.to(device), y.to(device))
            total += loss.detach().double() * y.numel()
            n += y.numel()
        loss_sum, n = distributed.all_reduce([total.item(), float(n)])
        val = loss_sum / n
        per_char = val / self.data.valid_chars_per_token
        return {"loss": val, "perplexity": safe_exp(val), "nats_per_char": per_char,
                "bpb": bits_per_byte(per_char, self.data.valid_chars_per_byte)}

    def derived_metrics(self, loss: float) -> dict[str, float]:
        return {"perplexity": safe_exp(loss)}

    def flops_per_token(self, model: torch.nn.Module) -> float:
        return model.flops_per_token()
