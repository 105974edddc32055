"""Quality per CPU-minute: the shipped Shakespeare recipe with only a time budget set, scored on unseen text.

Runs `tracked-train run --config experiments/shakespeare.yaml --set training.time_budget_s=B`
for each budget (and each design variant asked for), then scores the run's best
checkpoint on `../shared/data/shakespeare/test.txt` (Macbeth, in no split) in
nats per character: every token of the file, in windows of the model's
`seq_len`, so the figures compare across tokenizers and with nanoGPT's 1.747
(issue 13's table: its documented CPU recipe, char level, 250 s).

    python benchmarks/quality_per_minute.py [--budgets 120 250] [--variants default gpt2 muon]

`wall` is the whole command (data, tokenizer from a cold cache, training,
checkpoints); the budget covers training only. Variants run one after the
other in the same invocation, so their figures are side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT.parent / "shared" / "data" / "shakespeare" / "test.txt"
NANOGPT_250S = 1.747  # issue 13's measurement of nanoGPT's CPU recipe at 250 s on this machine kind

VARIANTS = {
    "default": [],  # the recipe as shipped
    "gpt2": ["model.pos_encoding=learned", "model.mlp=gelu"],  # the design before issue 13
    "muon": ["training.optimizer=muon"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "untied": ["model.tie_embeddings=false"],
}


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    kind = "AVX512-BF16" if "avx512_bf16" in flags else "AVX512F, no BF16" if "avx512f" in flags else "AVX2"
    return f"{name}, {os.cpu_count()} CPUs, {kind}{' + AMX' if 'amx_tile' in flags else ''}"


def score(run_dir: Path) -> float:
    """Nats per character of the run's model on test.txt."""
    import torch

    import tracked_train
    from tracked_train.data import to_stream

    model, tok = tracked_train.load(run_dir)
    stream = to_stream(tok, TEST.read_text(encoding="utf-8").splitlines())
    tokens, T = torch.from_numpy(stream.tokens.astype("int64")), model.config.seq_len
    nats, scored = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(tokens) - 1, T * 16):
            chunk = tokens[i:i + T * 16 + 1]
            n = (len(chunk) - 1) // T * T
            if n == 0:
                break
            x, y = chunk[:n].view(-1, T), chunk[1:n + 1].view(-1, T)
            logits, _ = model(x)
            nats += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            scored += y.numel()
    return nats / scored * len(tokens) / stream.n_chars  # nats per token times tokens per character


def run(budget: float, variant: str, out: Path) -> dict:
    name = f"{variant}-{budget:g}s"
    cmd = [sys.executable, "-m", "tracked_train", "run", "--config", str(ROOT / "experiments" / "shakespeare.yaml"),
           "--tracker", "jsonl", "--output-dir", str(out), "--run-name", name,
           "--set", f"training.time_budget_s={budget:g}", "--set", "console.progress=lines"]
    for kv in VARIANTS[variant]:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
    import json

    recs = [json.loads(line) for line in (out / name / "metrics.jsonl").open()]
    steps = [r for r in recs if "train/loss" in r]
    stop = [r for r in recs if r.get("event") == "stop"][-1]
    return {"name": name, "wall": wall, "steps": len(steps), "last_lr": steps[-1]["train/lr"],
            "stop": stop["reason"], "test": score(out / name)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[120.0, 250.0])
    ap.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tt-quality-"))
    os.environ["TRACKED_TRAIN_CACHE"] = str(out / "cache")  # a cold cache: the tokenizer's training counts
    print(f"# {cpu()}; {time.strftime('%Y-%m-%d')}")
    print("| run | wall (s) | steps | stop | last lr | test.txt nats/char | vs nanoGPT 1.747 |")
    print("|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        for variant in args.variants:
            r = run(budget, variant, out)
            print(f"| {r['name']} | {r['wall']:.0f} | {r['steps']} | {r['stop']} | {r['last_lr']:.2e} | "
                  f"{r['test']:.4f} | {100 * (NANOGPT_250S - r['test']) / NANOGPT_250S:+.1f} % |", flush=True)


if __name__ == "__main__":
    main()
