"""A decoder-only transformer language model, readable top to bottom.

Pre-norm blocks and causal ``scaled_dot_product_attention`` with grouped-query
attention (``n_kv_heads`` key/value heads shared by ``n_heads`` query heads).
The default, measured best per CPU-minute here (docs/benchmarks.md): rotary
positions, LayerNorm, a SwiGLU MLP, no biases in the linear layers, and the
output projection tied to the token embedding. Each choice has a switch in
:class:`GPTConfig`; the other side of each is the GPT-2 design (learned
positions, LayerNorm, GELU) that checkpoints made before the switches hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    seq_len: int
    dropout: float = 0.0
    # The defaults here are GPT-2's, what a config.json written before these fields existed describes.
    pos_encoding: str = "learned"  # "learned" | "rope"
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    mlp: str = "gelu"  # "gelu" (4d hidden) | "swiglu" (8d/3 hidden: the same parameter count)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Qwen3, modded-nanogpt)
    tie_embeddings: bool = True

    @property
    def mlp_hidden(self) -> int:
        return 4 * self.d_model if self.mlp == "gelu" else 8 * ((8 * self.d_model // 3 + 7) // 8)


NORM_EPS = 1e-5


def norm(c: GPTConfig, dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=NORM_EPS) if c.norm == "layernorm" else nn.RMSNorm(dim, eps=NORM_EPS)


ROPE_THETA = 10000.0


def rope_table(head_dim: int, seq_len: int) -> torch.Tensor:
    """e^(i·pos·freq), (seq_len, head_dim/2): rotary positions on (even, odd) pairs of each head's features."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return torch.polar(torch.ones(seq_len, head_dim // 2), torch.outer(torch.arange(seq_len, dtype=torch.float32),
                                                                      inv_freq))


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    # One complex multiply: fewer CPU kernels than the rotate-half form's mul, cat, neg and add.
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rope).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = c.n_heads, c.n_kv_heads
        self.head_dim = c.d_model // c.n_heads
        self.q = nn.Linear(c.d_model, c.n_heads * self.head_dim, bias=False)
        self.kv = nn.Linear(c.d_model, 2 * c.n_kv_heads * self.head_dim, bias=False)
        self.proj = nn.Linear(c.d_model, c.d_model, bias=False)
        if c.qk_norm:
            self.q_norm, self.k_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS), nn.RMSNorm(self.head_dim, eps=NORM_EPS)
        self.qk_norm = c.qk_norm
        self.dropout = c.dropout

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(B, T, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.swiglu = c.mlp == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(c.d_model, c.mlp_hidden, bias=False)
        self.up = nn.Linear(c.d_model, c.mlp_hidden, bias=False)
        self.proj = nn.Linear(c.mlp_hidden, c.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.up(x) if self.swiglu else F.gelu(self.up(x))
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1, self.attn = norm(c, c.d_model), Attention(c)
        self.ln2, self.mlp = norm(c, c.d_model), MLP(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), rope))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        if c.pos_encoding == "learned":
            self.pos_emb = nn.Embedding(c.seq_len, c.d_model)
        else:  # a buffer, not a weight: recomputed, never saved
            self.register_buffer("rope", rope_table(c.d_model // c.n_heads, c.seq_len), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_f = norm(c, c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init)
        # GPT-2: scale residual projections so the residual stream's variance stays put with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        x = self.tok_emb(idx)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        else:
            rope = self.rope[:T]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token (PaLM appendix B): 6N plus attention's 12·L·d·T."""
        c = self.config
        n = self.num_params() - (self.pos_emb.weight.numel() if c.pos_encoding == "learned" else 0)
        return 6 * n + 12 * c.n_layers * c.d_model * c.seq_len

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.seq_len:])
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                # Relative to the best logit and in float64: a tiny temperature (1e-40) then sends the other
                # tokens to -inf, greedy in effect, where float32 would overflow to inf - inf = NaN.
                logits = (logits.double() - logits.amax(-1, keepdim=True).double()) / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: no decay on norms, biases or embeddings."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        is_embedding = "emb" in name
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def hidden_matrices(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(the blocks' 2-D weights, everything else): Muon takes the first, AdamW the embeddings, head and gains."""
    hidden = [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]
    ids = {id(p) for p in hidden}
    return hidden, [p for p in model.parameters() if id(p) not in ids]
