"""`tracked-train runs` and `tracked-train compare` on two short runs tracked by a real MLflow server
(conftest.two_runs)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from conftest import COMPARE_EXPERIMENT, HI, LO, LR, cli, records


def ok(*args: str, cwd: Path, env: dict | None = None) -> str:
    r = cli(*args, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def stop_event(run_dir: Path) -> dict:
    return next(r for r in records(run_dir) if r.get("event") == "stop")


# -- runs -----------------------------------------------------------------------------------------

def test_runs_lists_both_from_the_server_newest_first(two_runs):
    listed = json.loads(ok("runs", "--experiment", COMPARE_EXPERIMENT, "--format", "json", cwd=two_runs.root,
                           env=two_runs.env))
    # The local folders name the same MLflow runs: listed once, from the server.
    assert sorted(r["name"] for r in listed) == [HI, LO]
    by_name = {r["name"]: r for r in listed}
    assert {n: (r["id"], r["source"], r["status"]) for n, r in by_name.items()} == {
        HI: (two_runs.ids[HI], "mlflow", "FINISHED"), LO: (two_runs.ids[LO], "mlflow", "FINISHED")}
    assert (by_name[HI]["stop_reason"], by_name[HI]["steps"]) == ("completed", 20)
    assert (by_name[LO]["stop_reason"], by_name[LO]["steps"]) == ("patience", 10)
    assert by_name[HI]["tokens_seen"] == 2 * by_name[LO]["tokens_seen"] > 0
    for name, r in by_name.items():
        assert r["best_val_loss"] == pytest.approx(stop_event(two_runs.root / "runs" / name)["best_val_loss"],
                                                   rel=1e-5)
        assert r["best_val_perplexity"] > 1 and r["duration_s"] > 0
    starts = [r["start_time"] for r in listed]
    assert starts == sorted(starts, reverse=True)
    # The server's runs whose folders are here: the folder, and the same duration `compare` shows.
    assert {n: Path(r["run_dir"]).name for n, r in by_name.items()} == {HI: HI, LO: LO}
    compared = json.loads(ok("compare", HI, LO, "--format", "json", cwd=two_runs.root, env=two_runs.env))["runs"]
    assert {r["name"]: r["duration_s"] for r in compared} == {n: r["duration_s"] for n, r in by_name.items()}
    # MLFLOW_EXPERIMENT_NAME names the experiment when --experiment does not, as it does for `run`.
    named = json.loads(ok("runs", "--format", "json", cwd=two_runs.root,
                          env={**two_runs.env, "MLFLOW_EXPERIMENT_NAME": COMPARE_EXPERIMENT}))
    assert sorted((r["name"], r["source"]) for r in named) == [(HI, "mlflow"), (LO, "mlflow")]


def test_runs_table_and_csv(two_runs):
    table = ok("runs", "--experiment", COMPARE_EXPERIMENT, cwd=two_runs.root, env=two_runs.env)
    header, *rows = [line for line in table.splitlines() if line.strip() and not line.startswith("─")]
    assert header.split()[:2] == ["name", "status"] and "best val loss" in header and header.split()[-1] == "id"
    assert len(rows) == 2
    for row in rows:  # piped output: one line per run, not wrapped
        name, status, reason = row.split()[:3]
        assert (status, reason) == ("FINISHED", "patience" if name == LO else "completed")
        assert row.split()[-1] == two_runs.ids[name]
    rows = list(csv.DictReader(io.StringIO(ok("runs", "--experiment", COMPARE_EXPERIMENT, "--format", "csv",
                                               cwd=two_runs.root, env=two_runs.env))))
    assert {r["name"]: r["stop_reason"] for r in rows} == {HI: "completed", LO: "patience"}


def test_runs_without_a_server_reads_run_folders_and_creates_no_store(two_runs):
    """No MLFLOW_TRACKING_URI and no mlflow.db here: the embedded store must not be created by listing."""
    assert "MLFLOW_TRACKING_URI" not in os.environ
    listed = json.loads(ok("runs", "--format", "json", cwd=two_runs.root))
    assert {r["name"]: (r["source"], r["stop_reason"], r["id"]) for r in listed} == {
        HI: ("local", "completed", two_runs.ids[HI]), LO: ("local", "patience", two_runs.ids[LO])}
    assert not (two_runs.root / "mlflow.db").exists()


# -- compare ----------------------------------------------------------------------------------------

def test_compare_shows_only_the_params_that_differ(two_runs):
    out = json.loads(ok("compare", HI, LO, "--format", "json", cwd=two_runs.root, env=two_runs.env))
    assert [r["name"] for r in out["runs"]] == [HI, LO]
    assert out["params"]["training.lr"] == LR
    assert out["params"]["early_stopping.patience"] == {HI: "", LO: "1"}
    for same in ["model.d_model", "training.max_steps", "training.batch_size", "tracking.experiment", "run.name"]:
        assert same not in out["params"]
    assert {r["name"]: r["stop_reason"] for r in out["runs"]} == {HI: "completed", LO: "patience"}

    metrics = {(m["metric"], m["kind"]): m for m in out["metrics"]}
    local = {name: [v for _, v in _series(two_runs.root / "runs" / name, "val/loss")] for name in (HI, LO)}
    best = metrics[("val/loss", "best")]
    assert best["values"] == pytest.approx({n: min(v) for n, v in local.items()})
    assert best["best"] == min(local, key=lambda n: min(local[n]))
    assert metrics[("val/loss", "final")]["values"] == pytest.approx({n: v[-1] for n, v in local.items()})
    assert {m for m, _ in metrics} >= {"val/loss", "val/perplexity", "train/loss"}


def _series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records(run_dir) if key in r]


def test_compare_table_marks_the_best(two_runs):
    out = ok("compare", HI, f"runs/{LO}", cwd=two_runs.root, env=two_runs.env)
    lines = out.splitlines()
    assert HI in lines[0] and LO in lines[0]
    lr = next(line for line in lines if line.startswith("training.lr"))
    assert lr.split()[1:] == [LR[HI], LR[LO]]
    reasons = next(line for line in lines if line.startswith("stop reason"))
    assert reasons.split()[2:] == ["completed", "patience"]
    val_best = next(line for line in lines if line.startswith("val/loss best"))
    assert val_best.count("*") == 1
    assert "model.d_model" not in out and "training.max_steps" not in out


def test_compare_reads_runs_from_the_server(two_runs, tmp_path):
    """No run folders here: ids, mlflow:ID, runs:/ID and a run name are looked up on the server."""
    local = json.loads(ok("compare", HI, LO, "--format", "json", cwd=two_runs.root, env=two_runs.env))
    for refs in ([f"mlflow:{two_runs.ids[HI]}", f"runs:/{two_runs.ids[LO]}"], [two_runs.ids[HI], LO]):
        remote = json.loads(ok("compare", *refs, "--format", "json", cwd=tmp_path, env=two_runs.env))
        assert [(r["name"], r["source"]) for r in remote["runs"]] == [(HI, "mlflow"), (LO, "mlflow")]
        assert remote["params"] == local["params"]
        assert _flat(remote["metrics"]) == pytest.approx(_flat(local["metrics"]))


def _flat(metrics: list[dict]) -> dict[str, float]:
    return {f"{m['metric']} {m['kind']} {name}": v for m in metrics for name, v in m["values"].items()}


@pytest.mark.parametrize("x_axis", ["step", "tokens"])
def test_plot_overlays_the_loss_curves_of_both_runs(two_runs, tmp_path, x_axis):
    import numpy as np
    from PIL import Image

    png = tmp_path / "sub" / f"losses-{x_axis}.png"
    r = cli("compare", HI, LO, "--plot", str(png), "--x", x_axis, "--format", "json", cwd=two_runs.root,
            env=two_runs.env)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # the plot does not spoil machine-readable output
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    assert Image.open(png).size[0] >= 600 and Image.open(png).size[1] >= 400
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert (counts > 50).sum() >= 4, "expected background, text and one colour per run"
    for rgb in [(31, 119, 180), (255, 127, 14)]:  # matplotlib's C0 and C1: one per run
        assert (np.abs(pixels.astype(int) - rgb).sum(axis=1) < 30).sum() > 300, rgb


@pytest.mark.parametrize(("refs", "says"), [
    ([HI], "at least two runs"),
    ([HI, "no-such-run"], "no run 'no-such-run'"),
    ([HI, "runs/missing"], "runs/missing does not exist"),
    ([HI, f"mlflow:{'0' * 32}"], "not found"),
    ([HI, f"runs/{HI}"], "the same run"),
])
def test_bad_references_say_so_in_one_line(two_runs, refs, says):
    r = cli("compare", *refs, cwd=two_runs.root, env=two_runs.env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ") and says in r.stderr, r.stderr
    assert r.stdout == ""


def _run(name: str, vocab: str, lr: str, val: list[float], per_char: list[float]):
    from tracked_train.run_records import Run

    params = {"tokenizer.vocab_size": vocab, "training.lr": lr, "training.checkpoint_every": "50",
              "training.eval_batches": "10", "model.d_model": "64"}
    history = {"val/loss": list(enumerate(val)), "val/nats_per_char": list(enumerate(per_char))}
    return Run(name, "local", params=params, history=history)


def test_compare_ranks_by_nats_per_char_when_tokenizers_differ():
    """A bigger vocabulary has a higher loss per token and may still model the text better."""
    from tracked_train.compare import differing_params, metric_rows

    small, big = _run("small", "384", "0.001", [2.0], [0.9]), _run("big", "4096", "0.003", [3.0], [0.8])
    rows = {(m.metric, m.kind): m for m in metric_rows([small, big])}
    assert rows[("val/loss", "best")].best_index is None  # not ranked: tokens differ
    assert rows[("val/nats_per_char", "best")].best_index == 1
    same = _run("same", "384", "0.003", [2.5], [1.0])
    assert {(m.metric, m.kind): m for m in metric_rows([small, same])}[("val/loss", "best")].best_index == 0
    # Labels and tables list the keys that matter first, not alphabetically.
    small.params["training.checkpoint_every"] = "100"
    assert list(differing_params([small, big])) == ["training.lr", "tokenizer.vocab_size", "training.checkpoint_every"]


def test_one_way_from_a_reference_to_a_runs_history(tmp_path, monkeypatch):
    """`tracked_train.history` finds a run as `compare` does: a folder, or a name under the output folder."""
    import tracked_train
    from tracked_train.errors import UserError

    monkeypatch.chdir(tmp_path)  # the embedded store (absent here) stays absent
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(
        '{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/loss": 2.0, "val/loss": 2.25}\n')
    by_path, by_name = tracked_train.history(run_dir), tracked_train.history("r1")
    assert by_path.equals(by_name) and list(by_path["step"]) == [1, 2]
    assert list(by_path["train/loss"]) == [2.5, 2.0] and by_path["val/loss"].isna().tolist() == [True, False]
    (run_dir / "metrics.jsonl").unlink()  # a run with `--tracker null`
    with pytest.raises(UserError, match="has no metrics.jsonl"):
        tracked_train.history(run_dir)
    with pytest.raises(UserError, match="run folder .* does not exist"):
        tracked_train.history(tmp_path / "nowhere")
    assert not (tmp_path / "mlflow.db").exists()
