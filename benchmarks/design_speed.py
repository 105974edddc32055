"""Step time of each model design and optimizer, side by side in one process.

The Shakespeare recipe's shape (d_model 128, 4 layers, 8 heads / 4 kv heads,
seq 128, batch 16, vocab 2048) by default. Designs are timed in interleaved
rounds (each round times every design once), and the fastest round of each is
reported, so a load that comes and goes hurts them alike. fp32; threads as
torch sets them.

    python benchmarks/design_speed.py [--rounds 6] [--steps 3] [--d-model 128] ...
"""

from __future__ import annotations

import argparse
import time

import torch

from tracked_train.config import TrainingConfig
from tracked_train.model import GPT, GPTConfig
from tracked_train.optim import optimizers

DESIGNS = {
    "gpt2 (learned, layernorm, gelu)": dict(pos_encoding="learned", norm="layernorm", mlp="gelu"),
    "default (rope, layernorm, swiglu)": dict(pos_encoding="rope", norm="layernorm", mlp="swiglu"),
    "llama (rope, rmsnorm, swiglu)": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu"),
    "default + qk_norm": dict(pos_encoding="rope", norm="layernorm", mlp="swiglu", qk_norm=True),
    "default, untied head": dict(pos_encoding="rope", norm="layernorm", mlp="swiglu", tie_embeddings=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="steps timed per design per round")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=2048)
    a = ap.parse_args()
    torch.manual_seed(0)
    setups = []
    for name, design in DESIGNS.items():
        for opt in ("adamw", "muon") if name.startswith("default (") else ("adamw",):
            model = GPT(GPTConfig(a.vocab, a.d_model, a.layers, a.heads, a.kv_heads, a.seq, 0.0, **design))
            setups.append((f"{name} + {opt}", model, optimizers(model, TrainingConfig(optimizer=opt), "cpu")))
    x, y = torch.randint(0, a.vocab, (a.batch, a.seq)), torch.randint(0, a.vocab, (a.batch, a.seq))

    def step(model: GPT, opts: list) -> None:
        for o in opts:
            o.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()

    best = {name: float("inf") for name, _, _ in setups}
    for r in range(a.rounds + 1):
        for name, model, opts in setups:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(model, opts)
            if r:  # round 0 warms up allocators and kernels
                best[name] = min(best[name], (time.perf_counter() - t0) / a.steps)
    base = best[next(iter(best))]
    print(f"# d_model {a.d_model}, {a.layers} layers, seq {a.seq}, batch {a.batch}, vocab {a.vocab}; "
          f"{torch.get_num_threads()} threads; fastest of {a.rounds} rounds")
    print("| design + optimizer | params | ms/step | vs gpt2 |")
    print("|---|---|---|---|")
    for name, model, _ in setups:
        print(f"| {name} | {model.num_params() / 1e6:.2f} M | {best[name] * 1e3:.0f} | {best[name] / base:.2f}x |")


if __name__ == "__main__":
    main()
