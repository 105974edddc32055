"""Tokens/s, MFU and peak memory of `tracked-train run` against a bare PyTorch loop, same model, same batches.

    python benchmarks/gpu.py            # the GPT-2-small recipe's model (experiments/gpt2-small.yaml) on CUDA
    python benchmarks/gpu.py --quick    # a tiny model on the CPU: a smoke run of the whole script in seconds

Both loops train our GPT on the same random-token batches (the task :class:`RandomTokens` below, so a
borrowed GPU spends no time on a tokenizer or a download) with the same AdamW (groups, fused kernel),
schedule, clipping, precision and compile choice, each in a fresh process. tracked-train runs as
`tracked-train run --set task=benchmarks/gpu.py:RandomTokens` with jsonl + MLflow (an embedded sqlite
store, no server). The bare loop is written as a speed-runner would: it reads its loss back every
``logging.every`` steps too. Figures are over the steps after warm-up (compilation, allocations): wall
time between two read-backs, logging included; MFU against the device's dense bf16 peak
(``--peak-tflops`` or the table in tracked_train/console.py); peak memory is CUDA's max allocated, or
the process's peak RSS on the CPU. Under 5 minutes on one H100 with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import tracked_train

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    vocab_size: int = field(default=50304, metadata={"lo": 2})
    d_model: int = field(default=768, metadata={"lo": 8})
    n_layers: int = field(default=12, metadata={"lo": 1})
    n_heads: int = field(default=12, metadata={"lo": 1})
    seq_len: int = field(default=1024, metadata={"lo": 2})


def gpt(shape: Shape):
    """The recipe's model: our GPT with its defaults (rotary, LayerNorm, SwiGLU, tied embeddings)."""
    from tracked_train.model import GPT, GPTConfig

    return GPT(GPTConfig(shape.vocab_size, shape.d_model, shape.n_layers, shape.n_heads, shape.n_heads,
                         shape.seq_len, 0.0, "rope", "layernorm", "swiglu", False, True))


def random_tokens(seed: int, position: int, size: int, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences [position, position + size) of the seed's stream: the same for both loops."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + position)
    seq = torch.randint(shape.vocab_size, (size, shape.seq_len + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


class RandomTokens(tracked_train.Task):
    """Next-token prediction on uniformly random tokens: a speed test, nothing to learn."""

    Settings = Shape

    def __init__(self, cfg, settings: Shape):
        super().__init__(cfg, settings)
        self.tokens_per_example = settings.seq_len

    def build_model(self):
        return gpt(self.settings)

    def batch(self, position, size):
        return random_tokens(self.cfg.training.seed, position, size, self.settings)

    def loss(self, model, batch):
        x, y = batch
        return model(x, y)[1]

    def evaluate(self, model):
        device = next(model.parameters()).device
        x, y = random_tokens(self.cfg.training.seed + 1, 0, 2, self.settings)
        return {"loss": float(model(x.to(device), y.to(device))[1])}

    def flops_per_token(self, model):
        return model.flops_per_token()


@dataclass(frozen=True)
class Setup:
    shape: Shape
    batch_size: int
    grad_accum: int
    steps: int
    every: int
    device: str

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.shape.seq_len

    @property
    def warmup(self) -> int:
        """Steps left out of the figures: compilation and allocations happen in the first ones."""
        return max(self.every, (self.steps * 3 // 10) // self.every * self.every)

    def sets(self) -> list[str]:
        s = self.shape
        return [f"task={Path(__file__).resolve()}:RandomTokens",
                *(f"task_args.{k}={getattr(s, k)}" for k in ("vocab_size", "d_model", "n_layers", "n_heads",
                                                            "seq_len")),
                f"training.batch_size={self.batch_size}", f"training.grad_accum={self.grad_accum}",
                f"training.max_steps={self.steps}", "training.warmup_steps=10", "training.lr=6e-4",
                f"training.device={self.device}", f"logging.every={self.every}",
                # No evaluation or checkpoint inside the timed steps; the run still ends with both.
                f"training.eval_every={10**9}", f"training.checkpoint_every={10**9}", "console.progress=lines"]


def bare(setup: Setup, out: Path) -> None:
    """A hand-written loop (nanoGPT style) on the same model and batches; writes its figures to ``out``."""
    import contextlib

    from tracked_train import config
    from tracked_train.device import pick_precision
    from tracked_train.model import param_groups
    from tracked_train.schedule import lr_at

    t = config.resolve(None, setup.sets(), environ={}).training
    cuda = setup.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(t.seed)
    model = gpt(setup.shape).to(setup.device)
    opt = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.95), fused=True)
    forward = torch.compile(model) if cuda else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(pick_precision("auto", setup.device))
    amp = (lambda: torch.autocast(setup.device, dtype=dtype)) if dtype else contextlib.nullcontext
    position, losses, stamps = 0, [], {}
    t0 = time.perf_counter()
    for step in range(1, setup.steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, t)
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=setup.device)
        for _ in range(setup.grad_accum):
            x, y = random_tokens(t.seed, position, setup.batch_size, setup.shape)
            position += setup.batch_size
            if cuda:
                x, y = x.pin_memory().to("cuda", non_blocking=True), y.pin_memory().to("cuda", non_blocking=True)
            with amp():
                loss = forward(x, y)[1]
            (loss / setup.grad_accum).backward()
            total += loss.detach().float()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        losses.append(total / setup.grad_accum)
        if step % setup.every == 0 or step == 1:
            torch.stack(losses).cpu()  # read back, as a loop that prints its loss must
            losses = []
            stamps[step] = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    out.write_text(json.dumps({"stamps": stamps, "peak_mib": peak,
                               "flops_per_token": model.flops_per_token()}))


def tracked(setup: Setup, work: Path, trackers: str) -> dict:
    """`tracked-train run` with ``trackers`` (jsonl + MLflow, an embedded store); its figures from metrics.jsonl."""
    cmd = [sys.executable, "-m", "tracked_train", "run", "--output-dir", str(work / "runs"), "--run-name", "gpu"]
    for s in [*setup.sets(), f"tracking.trackers=[{trackers}]", f"tracking.mlflow.uri=sqlite:///{work}/mlflow.db",
              "tracking.experiment=gpu-bench"]:
        cmd += ["--set", s]
    rss = _child(cmd, work, "tracked.log", cwd=work)  # MLflow puts a sqlite store's artifacts in ./mlruns
    rows: dict[int, dict] = {}
    for line in (work / "runs" / "gpu" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "train/loss" in r:
            rows.setdefault(r["step"], r)
    # A row is written right after its read-back: the wall time of the steps between two, logging included.
    stamps = {s: r["time"] for s, r in rows.items() if s % setup.every == 0 or s == 1}
    peak = rows[max(rows)].get("train/peak_memory_mib", rss)
    first = setup.tokens_per_step / rows[1]["train/tokens_per_sec"]  # step 1 is read back alone
    return {"stamps": stamps, "peak_mib": peak, "first_s": first}


def _child(cmd: list[str], work: Path, log: str, cwd: Path = ROOT) -> float:
    """Runs ``cmd``; its peak resident memory in MiB (what the CPU figures use)."""
    with open(work / log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed; see {work / log}:\n{(work / log).read_text()[-3000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model on the CPU (a smoke run)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--grad-accum", type=int, default=None, help="micro-batches a step (the recipe has 32)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--trackers", default="jsonl,mlflow", help="tracked-train's trackers (jsonl alone where "
                    "mlflow is not installed)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (runs, logs, MLflow store)")
    ap.add_argument("--child", choices=["bare"], help=argparse.SUPPRESS)
    ap.add_argument("--setup", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        given = json.loads(args.setup)
        bare(Setup(**{**given, "shape": Shape(**given["shape"])}), Path(args.out))
        return
    if args.quick:
        setup = Setup(Shape(vocab_size=512, d_model=64, n_layers=2, n_heads=4, seq_len=64), batch_size=8,
                      grad_accum=2, steps=args.steps or 40, every=10, device="cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --quick for the CPU smoke run")
        setup = Setup(Shape(), batch_size=16, grad_accum=args.grad_accum or 8, steps=args.steps or 100, every=10,
                      device="cuda")
    from dataclasses import asdict

    from tracked_train.console import peak_tflops

    work = Path(tempfile.mkdtemp(prefix="tt-gpu-"))
    cmd = [sys.executable, __file__, "--child", "bare", "--setup", json.dumps(asdict(setup)),
           "--out", str(work / "bare.json")]
    bare_rss = _child(cmd, work, "bare.log")
    b = json.loads((work / "bare.json").read_text())
    tr = tracked(setup, work, args.trackers)
    peak = args.peak_tflops or (peak_tflops(None, "cuda:0") if setup.device == "cuda" else None)
    device = torch.cuda.get_device_name(0) if setup.device == "cuda" else _cpu_name()
    print(f"# {device}, torch {torch.__version__}, {setup.steps} steps of {setup.tokens_per_step:,} tokens "
          f"({setup.batch_size} x {setup.shape.seq_len} x {setup.grad_accum} accumulated), read back every "
          f"{setup.every}; figures over steps {setup.warmup}..{setup.steps}; {time.strftime('%Y-%m-%d')}")
    print("| loop | tokens/s | ratio to bare | MFU | peak memory (MiB) | first step (s) |")
    print("|---|---|---|---|---|---|")
    figures = {}
    for name, stamps, mem, first in (("bare PyTorch", b["stamps"], b["peak_mib"] or bare_rss, b["stamps"]["1"]),
                                     (f"tracked-train ({' + '.join(args.trackers.split(','))})", tr["stamps"],
                                      tr["peak_mib"], tr["first_s"])):
        stamps = {int(k): v for k, v in stamps.items()}
        a, z = setup.warmup, max(stamps)
        tok_s = (z - a) * setup.tokens_per_step / (stamps[z] - stamps[a])
        figures[name] = tok_s
        mfu = f"{100 * b['flops_per_token'] * tok_s / (peak * 1e12):.1f} %" if peak else "n/a (no peak known)"
        ratio = tok_s / figures["bare PyTorch"]
        print(f"| {name} | {tok_s:,.0f} | {ratio:.3f} | {mfu} | {mem:,.0f} | {first:.2f} |")
    if args.keep:
        print(f"(work folder: {work})")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # kept when a loop fails: its log is there


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"CPU: {line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return "CPU"


if __name__ == "__main__":
    main()
