"""What one step's logging costs the training thread, per tracker set.

Starts real runs (MLflow on a real local server, W&B offline, trackio local) and times the
training thread's `log_metrics` call for one step's six train/* metrics,
while the background senders run as they do in training. This isolates the
hot-path cost from the noise of whole-run throughput measurements: divide it
by a step time to get the overhead the loop itself pays.

    python benchmarks/log_call_cost.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from common import bench_env


def cost_us(specs: list[str], work: Path, uri: str, calls: int) -> tuple[float, float]:
    """(median, 99th percentile) microseconds per log_metrics call."""
    from tracked_train import config
    from tracked_train.early_stopping import Stop
    from tracked_train.trackers import Outcome, RunInfo, Trackers

    name = f"c{time.time_ns()}"
    cfg = config.build([("bench", {"tracking.trackers": specs, "tracking.mlflow.uri": uri, "run.name": name,
                                   "tracking.experiment": "log-cost"})])
    run_dir = work / name
    run_dir.mkdir(parents=True)
    trackers = Trackers.from_specs(specs)
    trackers.start(RunInfo(name, run_dir, cfg))
    samples = []
    for step in range(1, calls + 1):
        metrics = {"train/loss": 3.0 + 1 / step, "train/lr": 1e-3, "train/perplexity": 20.0,
                   "train/grad_norm": 0.5, "train/tokens_per_sec": 12345.0, "train/tokens_seen": step * 2048}
        t0 = time.perf_counter_ns()
        trackers.log_metrics(metrics, step)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        if step % 20 == 0:
            time.sleep(0.002)  # leave the sender threads the gaps a real step would leave
    trackers.finish(Outcome(Stop("completed", "done.", calls)))
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * len(samples))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()

    with bench_env("tt-logcost-") as (work, uri):
        os.environ["TRACKIO_DIR"] = str(work / "trackio")  # read when trackio is imported (at its tracker's start)
        print(f"# training-thread cost of logging one step (6 metrics), {args.calls} calls, "
              f"{time.strftime('%Y-%m-%d')}")
        print("| trackers | median µs/step | p99 µs/step | share of a 20 ms step | of a 250 ms step |")
        print("|---|---|---|---|---|")
        for specs in (["null"], ["jsonl"], ["jsonl", "mlflow"], ["jsonl", "mlflow", "wandb"], ["jsonl", "trackio"]):
            med, p99 = cost_us(specs, work / "runs", uri, args.calls)
            print(f"| {'+'.join(specs)} | {med:.1f} | {p99:.1f} | {100 * med / 20000:.3f} % | "
                  f"{100 * med / 250000:.4f} % |", flush=True)


if __name__ == "__main__":
    main()
