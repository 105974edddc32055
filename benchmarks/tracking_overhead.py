"""What does tracking cost the training loop?

Runs the same short training in this process with different tracker sets,
interleaved round by round (the machine is noisy, so variants share its
moods), and prints the median throughput of each relative to `null`.
Regimes (common.REGIMES): the default small model (~0.2 s a step with bf16 on
2 CPU cores, where any logger looks cheap); a tiny model stepping in ~11 ms
(the step time of a GPU, where one synchronous ~50 ms MLflow call per step
would more than halve throughput) with torch on every core; and the same tiny
model with torch on one thread, leaving a core to everything else, as the
spare cores of a GPU machine do. MLflow talks to a real local `mlflow server`
on the same cores.

    python benchmarks/tracking_overhead.py [--rounds 5] [--regimes default tiny tiny-1core]
        [--variants null jsonl jsonl+mlflow jsonl+mlflow+wandb]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from common import REGIMES, Regime, bench_env, steady_rate, torch_threads


class StepClock:
    """A tracker that only notes when each step's metrics arrive: the loop's own clock."""

    name = "clock"

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.times.setdefault(step, time.perf_counter())

    def steady_rate(self) -> float:
        return steady_rate([self.times[s] for s in sorted(self.times)])

    def start(self, run) -> None: ...
    def log_params(self, params) -> None: ...
    def log_artifact(self, local_path, artifact_path, metadata=None) -> None: ...
    def set_tags(self, tags) -> None: ...
    def finish(self, outcome) -> None: ...
    def state(self) -> dict: return {}
    def abort(self) -> None: ...


def one_run(regime: Regime, trackers: list[str], out: Path, server_uri: str | None) -> float:
    """Steady-state steps per second of the training loop (start-up, final eval and save excluded)."""
    from tracked_train import config, runner
    from tracked_train.trackers import RunInfo, Trackers
    from tracked_train.train import train

    extra = {"tracking.trackers": trackers, "run.output_dir": str(out), "tracking.experiment": "bench"}
    if server_uri:
        extra["tracking.mlflow.uri"] = server_uri
    cfg = config.build([("bench", {**regime.config(), **extra})])
    name = f"r{time.time_ns()}"
    run_dir = out / name
    run_dir.mkdir(parents=True)
    cfg = cfg.replace(**{"run.name": name})
    tr = Trackers.from_specs(cfg.tracking.trackers)
    clock = StepClock()
    tr.trackers.append(clock)  # last, so its timestamp includes every real tracker's call
    tr.start(RunInfo(name, run_dir, cfg))
    tr.log_params(cfg.flat())
    parts = runner._prepare(cfg, run_dir, tr)
    with torch_threads(regime.torch_threads):
        tr.finish(train(parts))
    return clock.steady_rate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["null", "jsonl", "jsonl+mlflow", "jsonl+mlflow+wandb"])
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES))
    args = ap.parse_args()

    with bench_env("tt-bench-", server=any("mlflow" in v for v in args.variants)) as (work, uri):
        print(f"# tracking overhead, {args.rounds} interleaved rounds, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
        print("| regime | variant | median steps/s | ratio to null | min..max ratio |")
        print("|---|---|---|---|---|")
        for regime in args.regimes:
            r = REGIMES[regime]
            one_run(r, ["null"], work / "warmup", None)  # tokenizer cache, imports, allocator
            rates: dict[str, list[float]] = {v: [] for v in args.variants}
            for _ in range(args.rounds):
                for v in args.variants:
                    rates[v].append(one_run(r, v.split("+"), work / "runs", uri))
            base = rates["null"]
            for v in args.variants:
                ratios = [r / b for r, b in zip(rates[v], base)]
                print(f"| {regime} | {v} | {statistics.median(rates[v]):.2f} | {statistics.median(ratios):.3f} | "
                      f"{min(ratios):.3f}..{max(ratios):.3f} |", flush=True)


if __name__ == "__main__":
    main()
