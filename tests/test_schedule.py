"""The LR schedule over steps and over a time budget: the functions, then real budgeted runs (one killed -9)."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
from conftest import cli, metric_lines, records, sets, wait_until

from tracked_train import schedule
from tracked_train.config import TrainingConfig
from tracked_train.training_state import LoopState


def test_step_schedule_is_warmup_then_cosine_to_min_lr():
    t = TrainingConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert schedule.lr_at(5, t) == pytest.approx(5e-4)
    assert schedule.lr_at(10, t) == pytest.approx(1e-3)
    assert schedule.lr_at(60, t) == pytest.approx(5.5e-4)  # half way down the cosine
    assert schedule.lr_at(110, t) == pytest.approx(1e-4)
    assert schedule.lr_at(500, t) == pytest.approx(1e-4)  # past max_steps (a raised limit): stays at min_lr


def test_without_an_absolute_min_lr_the_schedule_ends_at_a_fraction_of_each_lr():
    from tracked_train import config
    from tracked_train.errors import ConfigError

    for lr in (3e-3, 3e-5):  # a sweep's two ends: both decay tenfold, neither is refused
        t = TrainingConfig(lr=lr, warmup_steps=0, max_steps=100)
        assert schedule.lr_at(100, t) == pytest.approx(lr * 0.1)
        t = config.resolve(None, [f"training.lr={lr}", "training.min_lr_ratio=0.25"], environ={}).training
        assert schedule.lr_at(t.max_steps, t) == pytest.approx(lr / 4)
    t = config.resolve(None, ["training.lr=1e-3", "training.min_lr=2e-4"], environ={}).training
    assert schedule.lr_at(100 + t.max_steps, t) == pytest.approx(2e-4)  # an absolute one still wins
    with pytest.raises(ConfigError, match=r"training.min_lr=0.01 must not exceed training.lr=0.001; lower it, or "
                                          r"clear it \(training.min_lr=\)"):
        config.resolve(None, ["training.lr=1e-3", "training.min_lr=1e-2"], environ={})
    # A run from before min_lr_ratio: its recorded absolute min_lr is kept.
    old = config.resolve(None, ["training.lr=3e-3", "training.min_lr=0.0001"], environ={})
    assert old.training.final_lr == 1e-4 and "min_lr_ratio" in old.to_dict()["training"]


def test_wsd_is_constant_then_linear_over_the_last_fraction():
    t = TrainingConfig(lr=1e-3, min_lr=0.0, warmup_steps=0, max_steps=100, schedule="wsd", decay_frac=0.2)
    assert [schedule.lr_at(s, t) for s in (1, 50, 80)] == pytest.approx([1e-3] * 3)
    assert schedule.lr_at(90, t) == pytest.approx(5e-4)
    assert schedule.lr_at(100, t) == pytest.approx(0.0)


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_a_replan_changes_the_pace_but_never_jumps(kind):
    t = TrainingConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=10**9, schedule=kind, time_budget_s=100)
    plan = schedule.replan(None, 5, 2.0, 0.1, 100, 0.0, t)  # during warmup: progress starts when warmup ends
    assert (plan.anchor_step, plan.anchor_progress, plan.end_step) == (10, 0.0, 985)
    before = schedule.lr_at(850, t, plan)
    slower = schedule.replan(plan, 850, 85.0, 0.2, 100, 1.0, t)  # now 0.2 s a step, 1 s kept for the end
    assert schedule.lr_at(850, t, slower) == pytest.approx(before)
    assert slower.end_step == 850 + 70  # (100 - 85 - 1) / 0.2
    assert schedule.lr_at(slower.end_step, t, slower) == pytest.approx(1e-4)
    assert max(schedule.lr_at(s, t, slower) for s in range(851, 921)) <= before  # only down from here


def test_a_plan_survives_the_checkpoint_round_trip():
    st = LoopState(step=7, plan=schedule.Plan(10, 0.0, 99, 1.5), pace_from=(1, 0.2))
    again = LoopState(**asdict(st))
    assert again.plan == st.plan and isinstance(again.plan, schedule.Plan)
    assert LoopState(**{k: v for k, v in asdict(st).items() if k not in ("plan", "pace_from")}).plan is None


BUDGETED = ("training.max_steps=1000000", "training.eval_every=10", "training.eval_batches=2",
            "training.checkpoint_every=10", "training.lr=0.002", "training.min_lr=0.0002")


def _lrs(run_dir) -> list[tuple[int, float]]:
    return metric_lines(run_dir, "train/lr")


@pytest.mark.slow
def test_a_budgeted_run_ends_at_the_budget_with_the_lr_decayed(tmp_path):
    done = cli("run", "--run-name", "b", *sets(*BUDGETED, "training.time_budget_s=6"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "b"
    stop = [r for r in records(run) if r.get("event") == "stop"][-1]
    assert stop["reason"] == "time_budget", stop
    lrs = _lrs(run)
    assert lrs[-1][1] == pytest.approx(2e-4, rel=0.1)  # the schedule ran over the budget, not max_steps
    assert lrs[-1][0] < 1000000


@pytest.mark.slow
def test_a_killed_budgeted_run_resumes_its_plan(tmp_path):
    """kill -9 mid-budget, resume: the same plan continues (no LR jump) and the run ends decayed at the budget."""
    cmd = [sys.executable, "-m", "tracked_train", "run", "--run-name", "k",
           *sets(*BUDGETED, "training.time_budget_s=10")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "runs" / "k"

    def checkpointed_with_a_plan() -> bool:
        from tracked_train.parts import saved_step

        step = saved_step(run)
        return isinstance(step, int) and step >= 20 and max((s for s, _ in _lrs(run)), default=0) >= step + 2

    wait_until(checkpointed_with_a_plan, "a planned checkpoint and two more steps", 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = dict(_lrs(run))
    shutil.copy(run / "metrics.jsonl", tmp_path / "killed.jsonl")
    from tracked_train.parts import saved_step

    ckpt = saved_step(run)
    assert max(killed) > ckpt + 1 and [r for r in records(run) if r.get("event") == "stop"] == []

    resumed = cli("resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    lrs = dict(_lrs(run))
    assert lrs[ckpt + 1] == killed[ckpt + 1]  # the checkpoint's plan, value for value
    steps = sorted(lrs)
    assert steps == list(range(1, steps[-1] + 1))
    after_warmup = [lrs[s] for s in steps if s > 6]
    # No jump: from step to step after warmup the LR only falls, and by no more than a cosine's steepest step
    # over the run's length allows.
    steepest = math.pi / 2 * (2e-3 - 2e-4) / (len(after_warmup) / 4)
    assert all(0 <= a - b <= steepest for a, b in zip(after_warmup, after_warmup[1:]))
    stop = [r for r in records(run) if r.get("event") == "stop"][-1]
    assert stop["reason"] == "time_budget"
    assert lrs[steps[-1]] == pytest.approx(2e-4, rel=0.1)
