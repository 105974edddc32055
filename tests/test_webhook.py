"""Webhook alerts against a real HTTP server on 127.0.0.1 (and endpoints that refuse or hang)."""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys

import pytest
from conftest import SIDE_BY_SIDE, Hook, cli, free_port, metric_lines, records, sets

from tracked_train.config import Config
from tracked_train.early_stopping import Stop
from tracked_train.errors import UserError
from tracked_train.trackers import Outcome, RunInfo
from tracked_train.trackers.webhook import ENV_URL, WebhookTracker

SECRET = "hook-t0ken-5150"


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def _hanging_socket() -> socket.socket:
    """Accepts connections (the kernel's backlog does) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


@pytest.fixture
def hanging_url():
    s = _hanging_socket()
    yield f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    s.close()


def _run_info(tmp_path, start_step=0, resume_state=None, **dotted) -> RunInfo:
    return RunInfo.of(Config().replace(**dotted), "unit", tmp_path, start_step=start_step, resume_state=resume_state)


# -- real training runs, side by side: no webhook, a working one, one refusing, one hanging -------------

# patience 2 with an impossible min_delta: the first evaluation without improvement (step 10) is half
# of it, the second (step 15) stops the run.
COMMON = ("training.precision=fp32", "training.max_steps=20", "training.eval_every=5",
          "early_stopping.patience=2", "early_stopping.min_delta=100")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("webhook")
    hook, hanging = Hook(), _hanging_socket()
    refused = f"http://127.0.0.1:{free_port()}/hook/{SECRET}"  # the URL's secret part sits in its path
    extra = {"plain": [], "ok": ["--tracker", f"webhook={hook.url}"],
             "refused": ["--tracker", "webhook", "--set", f"tracking.webhook.url={refused}"],
             "hanging": ["--tracker", f"webhook=http://127.0.0.1:{hanging.getsockname()[1]}/hook"]}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "tracked_train", "run", "--run-name", name, *args, *sets(*COMMON)], cwd=cwd,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **SIDE_BY_SIDE, "TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT": "1"}) for name, args in extra.items()}
    errs = {name: p.communicate(timeout=300)[1] for name, p in procs.items()}
    hook.close()
    hanging.close()
    for name, p in procs.items():
        assert p.returncode == 0, errs[name]
    return {name: (cwd / "runs" / name, errs[name]) for name in extra}, hook


def test_run_posts_start_evals_warning_and_stop(runs):
    dirs, hook = runs
    run_dir, _ = dirs["ok"]
    bodies = hook.bodies()
    assert [(b["event"], b["step"]) for b in bodies] == [
        ("start", 0), ("eval", 5), ("eval", 10), ("anomaly", 10), ("eval", 15), ("stop", 15)]
    assert all(b["run"] == "ok" and "`ok`" in b["text"] for b in bodies)
    assert bodies[0]["max_steps"] == 20

    val = dict(metric_lines(run_dir, "val/loss"))
    evals = [b for b in bodies if b["event"] == "eval"]
    assert [b["metrics"]["val/loss"] for b in evals] == [val[5], val[10], val[15]]
    assert set(evals[0]["metrics"]) == {"val/loss", "val/perplexity", "val/nats_per_char", "val/bpb"}
    assert [b["improved"] for b in evals] == [True, False, False]
    assert all(b["best_val_loss"] == val[5] for b in evals)

    warning = bodies[3]
    assert warning["kind"] == "no_improvement" and warning["evals_without_improvement"] == 1

    stop = bodies[-1]
    recorded = next(x for x in records(run_dir) if x.get("event") == "stop")
    assert stop["reason"] == "patience" == recorded["reason"]
    assert stop["detail"] == recorded["detail"] and stop["detail"] in stop["text"]
    assert stop["best_val_loss"] == recorded["best_val_loss"] == val[5] and stop["best_step"] == 5
    assert stop["exit_code"] == 0

    path, headers, _ = hook.posts[0]
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("tracked-train/")


def test_dead_or_hanging_endpoint_changes_nothing(runs):
    """Same seed, same losses: with no webhook, a working one, one refusing connections, one never answering."""
    dirs, _ = runs
    plain = metric_lines(dirs["plain"][0])
    assert [s for s, _ in plain] == list(range(1, 16))
    for name in ("ok", "refused", "hanging"):
        assert metric_lines(dirs[name][0]) == plain, name
    for name in ("refused", "hanging"):
        assert "were not delivered" in dirs[name][1], dirs[name][1]
    assert "could not deliver" in dirs["refused"][1]  # refused at once; the hanging one is still waiting


def test_the_url_is_never_recorded_or_logged(runs):
    run_dir, err = runs[0]["refused"]
    assert "http://127.0.0.1:" in err and "/…" in err  # the log names the host, never the path
    assert SECRET not in err
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert any(f.name == "config.yaml" for f in files)
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f


def test_no_url_exit_2(tmp_path):
    r = cli("run", "--run-name", "nourl", "--tracker", "webhook", *sets("training.max_steps=2"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and ENV_URL in r.stderr
    assert not (tmp_path / "runs" / "nourl").exists()


# -- the tracker on its own, against the same real server ---------------------------------------------

@pytest.mark.parametrize("fmt, key", [("discord", "content"), ("slack", "text")])
def test_chat_formats(hook, tmp_path, fmt, key):
    t = WebhookTracker(hook.url)
    t.start(_run_info(tmp_path, **{"tracking.webhook.format": fmt}))
    t.log_metrics({"val/loss": 2.5, "val/perplexity": 12.2}, 10)
    t.finish(Outcome(Stop("completed", "Completed all 10 steps.", 10), best_step=10, best_val_loss=2.5))
    bodies = hook.bodies()
    assert [set(b) for b in bodies] == [{key}] * 3
    assert "started" in bodies[0][key] and "val loss 2.5000" in bodies[1][key]
    assert "Completed all 10 steps." in bodies[2][key] and "2.5000 at step 10" in bodies[2][key]


def test_anomalies(hook, tmp_path):
    t = WebhookTracker(hook.url)
    t.start(_run_info(tmp_path, **{"early_stopping.patience": 4}))
    losses = {s: 1.0 for s in range(1, 22)}
    losses.update({3: 5.0, 22: 2.5, 23: 3.0, 122: 3.0, 123: math.nan, 124: math.nan})
    vals = {10: 2.0, 20: 2.5, 30: 2.5, 40: 2.5}
    for step in sorted({*losses, *vals}):
        if step in losses:
            t.log_metrics({"train/loss": losses[step]}, step)
        if step in vals:
            t.log_metrics({"val/loss": vals[step]}, step)
    t.finish(Outcome(Stop("diverged", "Training diverged at step 123: the loss became nan.", 123)))
    anomalies = [(b["kind"], b["step"]) for b in hook.bodies() if b["event"] == "anomaly"]
    # No spike before 20 steps (step 3); one per 100 steps at most (not 23); NaN once; half of patience 4 = 2.
    assert anomalies == [("loss_spike", 22), ("no_improvement", 30), ("loss_spike", 122), ("non_finite_loss", 123)]
    spike = next(b for b in hook.bodies() if b.get("kind") == "loss_spike")
    assert spike["value"] == 2.5 and spike["min_loss"] == 1.0
    nan = next(b for b in hook.bodies() if b.get("kind") == "non_finite_loss")
    assert nan["value"] == "nan"  # valid JSON, not NaN
    assert hook.bodies()[-1]["event"] == "stop" and hook.bodies()[-1]["reason"] == "diverged"


def test_resume_takes_the_url_from_the_environment(hook, tmp_path, monkeypatch):
    """A resumed run's config holds the redacted URL ("***"): the environment supplies it."""
    with pytest.raises(UserError, match=ENV_URL):
        WebhookTracker("***").start(_run_info(tmp_path, 50, **{"tracking.webhook.url": "***"}))
    monkeypatch.setenv(ENV_URL, hook.url)
    t = WebhookTracker("***")
    t.start(_run_info(tmp_path, 50, {"best_val_loss": 1.5, "min_train_loss": 1.2},
                      **{"tracking.webhook.url": "***"}))
    t.log_metrics({"val/loss": 1.7}, 60)  # worse than the best from before the resume
    t.finish(Outcome(Stop("completed", "Completed all 60 steps.", 60)))
    bodies = hook.bodies()
    assert [(b["event"], b["step"]) for b in bodies] == [("resume", 50), ("eval", 60), ("stop", 60)]
    assert bodies[1]["improved"] is False and bodies[1]["best_val_loss"] == 1.5


def test_a_hanging_endpoint_never_blocks_the_caller(hanging_url, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT", "0.5")
    t = WebhookTracker(hanging_url)
    t.start(_run_info(tmp_path))
    sender = t._sender
    for step in range(1, 1201):  # more than the queue holds: the oldest are dropped, never waited for
        t.log_metrics({"val/loss": 2.0}, step)
    # Every call returned while the endpoint had answered nothing: the caller never waits on it.
    assert sender.sent == sender.failed == 0
    assert sender.dropped > 0 and len(sender.queue) <= 1000
    with caplog.at_level(logging.WARNING, logger="tracked_train"):
        t.finish(Outcome(Stop("completed", "Completed.", 1200)))
    # finish gave up at its deadline with the request still hanging (how fast is benchmarks' business).
    assert sender.sent == sender.failed == 0
    assert "of 1202 alerts" in caplog.text and "were not delivered" in caplog.text
