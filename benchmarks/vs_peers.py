"""tracked-train against Lightning (MLFlowLogger) and the HF Trainer (report_to="mlflow").

    python benchmarks/vs_peers.py [--rounds 3] [--venv DIR]

Lightning and transformers are installed into a virtualenv of this benchmark's
own (default ~/.cache/tracked-train/peers-venv, with torch==2.13.0 pinned and
tracked-train itself editable, so every framework imports the same torch,
model and data code); the project's dependencies never see them. Each run is
a fresh process (peers_child.py) so the time from launch to the end of the
first step is real: imports, data, model, tracker start. Every framework
trains tracked-train's GPT on the same token batches with the same AdamW,
schedule, clipping and precision, and logs every step to the same local
`mlflow server`; a bare hand-written loop (no tracking) is the floor. Rounds
are interleaved, each round in a rotated order; ratios are to the bare loop of
the same round. After the runs, the server is asked how many loss points each
framework's run holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REGIMES, bench_env  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("peers_child.py")
FRAMEWORKS = ["bare", "tracked-train-null", "tracked-train", "lightning", "hf"]
LOSS_KEY = {"tracked-train": "train/loss", "lightning": "train/loss", "hf": "loss"}
PEERS = ["lightning==2.6.6", "transformers==5.18.0", "accelerate==1.15.0"]


def ensure_venv(venv: Path) -> Path:
    """The peers' virtualenv, created (or brought up to date) on first use; returns its python."""
    import mlflow

    python = venv / "bin" / "python"
    wanted = ["torch==2.13.0", f"mlflow=={mlflow.__version__}", *PEERS, "-e", str(REPO)]
    stamp = venv / "tracked-train-bench.json"
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return python
    print(f"# installing {' '.join(wanted)} into {venv}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True)
    stamp.write_text(json.dumps(wanted))
    return python


def one_run(python: Path, framework: str, settings: Path, result: Path, uri: str, threads: int | None) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "BENCH_LAUNCH": repr(time.time())}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, in every framework alike
    with open(result.with_suffix(".log"), "w") as log:
        proc = subprocess.run([str(python), str(CHILD), framework, str(settings), str(result)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"{framework} failed (exit {proc.returncode}); see {result.with_suffix('.log')}")
    return json.loads(result.read_text())


def loss_points(uri: str, name: str, key: str) -> int:
    """How many distinct steps of the loss the server holds for run `name`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("peers")
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
    return len({m.step for m in client.get_metric_history(runs[0].info.run_id, key)}) if runs else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES))
    ap.add_argument("--frameworks", nargs="+", default=FRAMEWORKS)
    ap.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "tracked-train" / "peers-venv")
    args = ap.parse_args()
    python = ensure_venv(args.venv)

    with bench_env("tt-peers-") as (work, uri):
        os.environ["TRACKED_TRAIN_CACHE"] = str(work / "cache")  # children share the tokenizer/token cache
        print(f"# frameworks on the same model, tokens and steps, each logging every step to one local MLflow "
              f"server; {args.rounds} interleaved rounds, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
        print("| regime | framework | tokens/s (median) | ratio to bare | launch to first step (s) | "
              "peak RSS (MiB) | loss points on server |")
        print("|---|---|---|---|---|---|---|")
        for regime in args.regimes:
            r = REGIMES[regime]
            settings = work / f"{regime}.json"
            settings.write_text(json.dumps(r.config()))
            one_run(python, "bare", settings, work / "warmup.json", uri, r.torch_threads)  # fills the token cache
            results: dict[str, list[dict]] = {f: [] for f in args.frameworks}
            for i in range(args.rounds):
                k = i % len(args.frameworks)  # each round starts with the next framework: no fixed order effect
                for f in args.frameworks[k:] + args.frameworks[:k]:
                    result = work / f"{f}-{regime}-{i}.json"
                    results[f].append({**one_run(python, f, settings, result, uri, r.torch_threads),
                                       "name": result.stem})
            for f in args.frameworks:
                rs = results[f]
                tps = [x["steps_per_s"] * x["tokens_per_step"] for x in rs]
                ratio = [x["steps_per_s"] / b["steps_per_s"] for x, b in zip(rs, results["bare"])] \
                    if "bare" in results else [float("nan")]
                points = "-" if f not in LOSS_KEY else \
                    "/".join(str(loss_points(uri, x["name"], LOSS_KEY[f])) for x in rs) + f" of {rs[0]['steps']}"
                print(f"| {regime} | {f} | {statistics.median(tps):,.0f} | {statistics.median(ratio):.3f} "
                      f"({min(ratio):.2f}..{max(ratio):.2f}) | "
                      f"{statistics.median(x['first_step_s'] for x in rs):.1f} | "
                      f"{statistics.median(x['peak_rss_mib'] for x in rs):.0f} | {points} |", flush=True)


if __name__ == "__main__":
    main()
