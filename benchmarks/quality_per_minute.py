"""Quality per CPU-minute: validation loss after a fixed wall-clock budget, by precision and compile.

Trains the default small model on Shakespeare's training plays for a fixed
time budget (`training.time_budget_s`; constant LR after warmup, since the
step count is unknown in advance) and reports the loss on
`../shared/data/shakespeare/test.txt` (Macbeth) in nats per character, so the
figures compare across tokenizers. Variants: fp32 / bf16 autocast, each
without and with `torch.compile` (compile time counts against the budget).

    python benchmarks/quality_per_minute.py [--budget 600]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shakespeare"
VARIANTS = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]


def run(precision: str, compiled: bool, budget: float, out: Path) -> dict:
    name = f"{precision}{'-compile' if compiled else ''}"
    sets = {
        "data.source": "text", "data.train_files": str(DATA / "train.txt"), "data.valid_files": str(DATA / "test.txt"),
        "tokenizer.vocab_size": 2048, "training.max_steps": 10**9, "training.time_budget_s": budget,
        "training.min_lr": 0.001, "training.lr": 0.001, "training.eval_every": 10**9, "training.eval_batches": 1000,
        "training.checkpoint_every": 10**9, "training.precision": precision, "training.compile": compiled,
        "console.progress": "lines",
    }
    cmd = [sys.executable, "-m", "tracked_train", "run", "--tracker", "jsonl", "--output-dir", str(out),
           "--run-name", name]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    subprocess.run(cmd, check=True, capture_output=True)
    recs = [json.loads(line) for line in (out / name / "metrics.jsonl").open()]
    val = [r for r in recs if "val/nats_per_char" in r][-1]
    steps = [r for r in recs if "train/loss" in r]
    return {"variant": name, "steps": len(steps), "tokens": steps[-1]["train/tokens_seen"],
            "val_nats_per_char": val["val/nats_per_char"], "val_loss": val["val/loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of training per variant")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tt-quality-"))
    os.environ.setdefault("TRACKED_TRAIN_CACHE", str(out / "cache"))
    print(f"# quality per CPU-minute: default model on Shakespeare, {args.budget:g} s each, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    print("| variant | steps | tokens seen | test loss (nats/token) | test nats/char |")
    print("|---|---|---|---|---|")
    for precision, compiled in VARIANTS:
        r = run(precision, compiled, args.budget, out)
        print(f"| {r['variant']} | {r['steps']} | {r['tokens']:,} | {r['val_loss']:.4f} | "
              f"{r['val_nats_per_char']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
