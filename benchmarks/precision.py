"""Training throughput by precision: fp32 vs bf16 autocast, interleaved rounds.

Runs `tracked-train run` on an experiment config once per precision per round
and reads the per-step `train/tokens_per_sec` back from metrics.jsonl (median
over steps after the first 5, which include warm-up).

    python benchmarks/precision.py [--config experiments/quick.yaml] [--rounds 3] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tokens_per_sec(config: str, precision: str, steps: int, out: Path, extra: list[str]) -> tuple[float, float]:
    """(median tokens/s after warm-up, final val loss) of one run."""
    name = f"{precision}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "tracked_train", "run", "--config", config, "--tracker", "jsonl",
           "--output-dir", str(out), "--run-name", name, "--set", f"training.precision={precision}",
           "--set", f"training.max_steps={steps}", "--set", "console.progress=lines"]
    for e in extra:
        cmd += ["--set", e]
    subprocess.run(cmd, check=True, capture_output=True)
    recs = [json.loads(line) for line in (out / name / "metrics.jsonl").open()]
    rates = [r["train/tokens_per_sec"] for r in recs if "train/tokens_per_sec" in r and r["step"] > 5]
    return statistics.median(rates), [r["val/loss"] for r in recs if "val/loss" in r][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/quick.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tt-precision-"))
    os.environ.setdefault("TRACKED_TRAIN_CACHE", str(out / "cache"))
    rates: dict[str, list[float]] = {p: [] for p in args.precisions}
    val: dict[str, float] = {}
    for _ in range(args.rounds):
        for p in args.precisions:
            rate, val[p] = tokens_per_sec(args.config, p, args.steps, out, args.sets)
            rates[p].append(rate)
    base = rates[args.precisions[0]]
    print(f"# {args.config} {' '.join(args.sets)}, {args.steps} steps, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    print(f"| precision | median tokens/s | ratio to {args.precisions[0]} | final val loss (same steps, same seed) |")
    print("|---|---|---|---|")
    for p in args.precisions:
        ratio = statistics.median(r / b for r, b in zip(rates[p], base))
        print(f"| {p} | {statistics.median(rates[p]):,.0f} | {ratio:.2f} | {val[p]:.4f} |")


if __name__ == "__main__":
    main()
