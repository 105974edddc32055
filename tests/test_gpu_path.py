"""The GPU path: the benchmark's CPU smoke run here; on a CUDA machine, a run's read-backs and figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_benchmark_smoke_run_prints_its_table():
    r = subprocess.run([sys.executable, "benchmarks/gpu.py", "--quick", "--steps", "20"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([^|]+?) \| [\d,]+ \| ([\d.]+) \|", r.stdout,
                                                                 re.M)}
    assert set(rows) == {"bare PyTorch", "tracked-train (jsonl + mlflow)"}, r.stdout
    assert rows["bare PyTorch"] == 1.0 and rows["tracked-train (jsonl + mlflow)"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_values_read_back_every_10_steps_match_and_mfu_and_memory_are_logged(tmp_path):
    sets = ["task=" + str(ROOT / "benchmarks" / "gpu.py") + ":RandomTokens", "task_args.vocab_size=512",
            "task_args.d_model=64", "task_args.n_layers=2", "task_args.n_heads=4", "task_args.seq_len=64",
            "training.max_steps=30", "training.eval_every=15", "training.checkpoint_every=15",
            "training.device=cuda", "training.compile=false", "tracking.trackers=jsonl", "console.peak_tflops=100"]

    def run(name: str, every: int) -> dict[int, dict]:
        cmd = [sys.executable, "-m", "tracked_train", "run", "--output-dir", str(tmp_path), "--run-name", name]
        for s in [*sets, f"logging.every={every}"]:
            cmd += ["--set", s]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if "train/loss" in r}

    each, tens = run("each", 1), run("tens", 10)
    assert sorted(tens) == sorted(each) == list(range(1, 31))
    for step in each:  # kernels may differ in their last bits between runs on a GPU
        assert tens[step]["train/loss"] == pytest.approx(each[step]["train/loss"], rel=1e-4)
        assert tens[step]["train/mfu"] > 0 and tens[step]["train/peak_memory_mib"] > 0
