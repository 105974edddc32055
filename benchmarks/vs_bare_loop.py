"""tracked-train's loop against a bare PyTorch loop of the same model, data and settings.

The bare loop below is what a user would write by hand (nanoGPT style): the
same GPT, AdamW (groups, fused kernel), warmup + cosine schedule, clipping and bf16 autocast on
the same token batches, with no tracking at all. tracked-train runs with its
default trackers (jsonl + MLflow on a real local server). Rounds are
interleaved; the ratio is tracked-train's steps/s over the bare loop's.

    python benchmarks/vs_bare_loop.py [--rounds 5]

Both are timed over the same steady-state window (steps 10 %..100 %), so
start-up, the final evaluation and the final checkpoint are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REGIMES, Regime, bench_env, steady_rate, torch_threads  # noqa: E402
from tracking_overhead import one_run  # noqa: E402


def bare_loop(regime: Regime, steps: int) -> float:
    """Steps per second of a hand-written loop on tracked-train's model and batches."""
    import torch

    from tracked_train import config
    from tracked_train.data import prepare
    from tracked_train.device import pick_precision
    from tracked_train.lm import gpt_config
    from tracked_train.model import GPT, param_groups
    from tracked_train.schedule import lr_at

    cfg = config.build([("bench", {**regime.config(), "training.max_steps": steps})])
    t = cfg.training
    data, tok = prepare(cfg)
    torch.manual_seed(t.seed)
    model = GPT(gpt_config(cfg, tok.vocab_size))
    opt = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.95), fused=True)
    bf16 = pick_precision("auto", "cpu") == "bf16"
    pos = 0
    times = []
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, t)  # the same warmup + cosine schedule
        x, y = data.train.get(pos, t.batch_size)
        pos += t.batch_size
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        loss.item()  # the bare loop reads its loss too (to print it), as every real loop does
        times.append(time.perf_counter())
    # Like tracked-train's run, end with an evaluation and a checkpoint.
    model.eval()
    with torch.no_grad(), (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()):
        for x, y in data.valid.eval_batches(t.eval_batches, t.batch_size):
            model(x, y)[1].item()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, Path(tmp) / "ckpt.pt")
    return steady_rate(times)  # the same window as tracking_overhead.StepClock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES))
    args = ap.parse_args()

    with bench_env("tt-bare-") as (work, uri):
        print(f"# tracked-train (jsonl+mlflow) vs a bare PyTorch loop, {args.rounds} interleaved rounds, "
              f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
        print("| regime | bare steps/s | tracked-train steps/s | ratio (median) | min..max |")
        print("|---|---|---|---|---|")
        for regime in args.regimes:
            r = REGIMES[regime]
            steps = r.overrides["training.max_steps"]
            bare_loop(r, 20)  # warm-up: tokenizer cache, allocator
            bare, tracked = [], []
            for _ in range(args.rounds):
                with torch_threads(r.torch_threads):
                    bare.append(bare_loop(r, steps))
                tracked.append(one_run(r, ["jsonl", "mlflow"], work / "runs", uri))
            ratios = [a / b for a, b in zip(tracked, bare)]
            print(f"| {regime} | {statistics.median(bare):.2f} | {statistics.median(tracked):.2f} | "
                  f"{statistics.median(ratios):.3f} | {min(ratios):.3f}..{max(ratios):.3f} |", flush=True)


if __name__ == "__main__":
    main()
