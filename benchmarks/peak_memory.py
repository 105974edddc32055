"""Peak resident memory (RSS) of a whole `tracked-train run`, by tracker set.

Runs the CLI as a child process per variant and reads the child's peak RSS
from the kernel (getrusage of the waited-for child).

    python benchmarks/peak_memory.py [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib(args: list[str], cwd: Path) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed: {args}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tt-mem-"))
    os.environ.setdefault("TRACKED_TRAIN_CACHE", str(work / "cache"))
    common = ["--set", f"training.max_steps={args.steps}", "--set", "console.progress=lines"]
    print(f"# peak RSS of `tracked-train run` (default model, {args.steps} steps), {time.strftime('%Y-%m-%d')}")
    print("| trackers | peak RSS (MiB) |")
    print("|---|---|")
    for trackers in (["null"], ["jsonl"], ["jsonl", "mlflow"]):
        flags = [f for t in trackers for f in ("--tracker", t)]
        mib = peak_rss_mib([*flags, *common, "--output-dir", str(work / "runs")], work)
        print(f"| {'+'.join(trackers)} | {mib:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
