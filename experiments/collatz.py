"""A task of your own, as tracked-train runs it: a two-headed transformer on Collatz trajectories.

Each example is a number ``n`` (2 <= n < 2**n_bits) seen only through the
parities of its Collatz trajectory under the shortcut map (n -> n/2 when even,
(3n+1)/2 when odd) until it reaches 1, then padding. One small causal
transformer reads the parities and has two heads:

- ``stopping_time``: regression of log1p(steps to reach 1), Huber loss;
- ``next_step``: classification of the next token (parity 0, 1, or the end), cross-entropy.

The two losses are summed into the one the optimizer minimises and logged apart
(``train/loss/stopping_time``, ``train/loss/next_step``). Examples are a pure
function of (seed, position), so a resumed run sees exactly the examples it
would have seen. No files, no network: ``tracked-train run --config experiments/collatz.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import tracked_train

PAD = 2  # the token after the trajectory reached 1


@dataclass(frozen=True)
class CollatzSettings:
    n_bits: int = field(default=10, metadata={"lo": 2, "hi": 40})  # numbers below 2**n_bits
    seq_len: int = field(default=128, metadata={"lo": 8, "hi": 4096})  # parities read (longer trajectories are cut)
    d_model: int = field(default=64, metadata={"lo": 8, "hi": 4096})
    n_layers: int = field(default=2, metadata={"lo": 1, "hi": 64})
    n_heads: int = field(default=4, metadata={"lo": 1, "hi": 64})
    huber_delta: float = field(default=1.0, metadata={"lo": 0.0, "hi": 100.0, "lo_open": True})
    stopping_weight: float = field(default=1.0, metadata={"lo": 0.0, "hi": 100.0})  # of the regression in the sum
    valid_examples: int = field(default=2048, metadata={"lo": 1, "hi": 10**7})


def numbers(seed: int, first: int, count: int, n_bits: int) -> np.ndarray:
    """The ``count`` numbers from index ``first`` of the seed's stream (splitmix64: any index, no state)."""
    with np.errstate(over="ignore"):
        z = (np.arange(first, first + count, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(2**n_bits - 2)).astype(np.int64) + 2


def trajectories(n: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(parity tokens (count, seq_len + 1), stopping times (count,)) of the numbers ``n``."""
    n = n.copy()
    tokens = np.full((len(n), seq_len + 1), PAD, dtype=np.int64)
    steps = np.zeros(len(n), dtype=np.int64)
    for t in range(seq_len + 1):
        alive = n > 1
        tokens[alive, t] = n[alive] & 1
        steps += alive
        n = np.where(alive, np.where(n & 1, (3 * n + 1) // 2, n // 2), n)
    while (alive := n > 1).any():  # beyond what the model reads: the stopping time still counts every step
        steps += alive
        n = np.where(alive, np.where(n & 1, (3 * n + 1) // 2, n // 2), n)
    return tokens, steps


class CollatzNet(nn.Module):
    def __init__(self, s: CollatzSettings):
        super().__init__()
        self.tok = nn.Embedding(3, s.d_model)
        self.pos = nn.Embedding(s.seq_len, s.d_model)
        layer = nn.TransformerEncoderLayer(s.d_model, s.n_heads, 4 * s.d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, s.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(s.d_model)
        self.next_step = nn.Linear(s.d_model, 3)  # the next token at every position
        self.stopping_time = nn.Linear(s.d_model, 1)  # log1p(stopping time), from the last position

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(T, device=x.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device)
        h = self.norm(self.blocks(h, mask=mask, is_causal=True))
        return self.next_step(h), self.stopping_time(h[:, -1]).squeeze(-1)


class CollatzTask(tracked_train.Task):
    Settings = CollatzSettings
    monitor, mode = "val/loss", "min"

    def __init__(self, cfg, settings: CollatzSettings):
        super().__init__(cfg, settings)
        self.tokens_per_example = settings.seq_len
        valid_seed = cfg.training.seed + 1_000_003  # another stream than training's
        n = numbers(valid_seed, 0, settings.valid_examples, settings.n_bits)
        self.valid = self._examples(n)

    def _examples(self, n: np.ndarray) -> dict[str, torch.Tensor]:
        tokens, steps = trajectories(n, self.settings.seq_len)
        return {"x": torch.from_numpy(tokens[:, :-1]), "y": torch.from_numpy(tokens[:, 1:]),
                "log_steps": torch.from_numpy(np.log1p(steps)).float()}

    def build_model(self) -> CollatzNet:
        return CollatzNet(self.settings)

    def batch(self, position: int, size: int) -> dict[str, torch.Tensor]:
        return self._examples(numbers(self.cfg.training.seed, position, size, self.settings.n_bits))

    def _losses(self, model, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        logits, log_steps = model(b["x"])
        next_step = F.cross_entropy(logits.float().reshape(-1, 3), b["y"].reshape(-1))
        stopping = F.huber_loss(log_steps.float(), b["log_steps"], delta=self.settings.huber_delta)
        return next_step, stopping, logits, log_steps

    def loss(self, model, batch) -> tracked_train.Loss:
        next_step, stopping, _, _ = self._losses(model, batch)
        total = next_step + self.settings.stopping_weight * stopping
        return tracked_train.Loss(total, {"stopping_time": stopping, "next_step": next_step})

    def evaluate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums = {"next_step": 0.0, "stopping_time": 0.0, "correct": 0.0, "abs_err": 0.0}
        n = len(self.valid["x"])
        for i in range(0, n, 512):
            b = {k: v[i:i + 512].to(device) for k, v in self.valid.items()}
            next_step, stopping, logits, log_steps = self._losses(model, b)
            k = len(b["x"])
            sums["next_step"] += next_step.item() * k
            sums["stopping_time"] += stopping.item() * k
            sums["correct"] += (logits.argmax(-1) == b["y"]).float().mean(1).sum().item()
            sums["abs_err"] += (torch.expm1(log_steps.float()) - torch.expm1(b["log_steps"])).abs().sum().item()
        ns, st = sums["next_step"] / n, sums["stopping_time"] / n
        return {"loss": ns + self.settings.stopping_weight * st, "loss/next_step": ns, "loss/stopping_time": st,
                "next_step_accuracy": sums["correct"] / n, "stopping_time_mae": sums["abs_err"] / n}

    def predict(self, model, inputs: list) -> list:
        """Numbers -> their predicted stopping times (steps of the shortcut map to reach 1)."""
        n = np.asarray([int(v) for v in inputs], dtype=np.int64)
        if (n < 2).any():
            raise ValueError("every number must be at least 2")
        x = torch.from_numpy(trajectories(n, self.settings.seq_len)[0][:, :-1])
        with torch.no_grad():
            _, log_steps = model(x)
        return [round(float(v), 1) for v in torch.expm1(log_steps)]
