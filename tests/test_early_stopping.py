"""Stop decisions on sequences of values and facts, no training involved."""

from __future__ import annotations

import math

import pytest

from tracked_train import early_stopping as es
from tracked_train.early_stopping import Facts, Stop, StopReason, standard, verdict


def stopper(monitor="val/loss", mode="min", max_steps=1000, **kw):
    return standard(monitor=monitor, mode=mode, max_steps=max_steps, **kw)


def feed(s, values, metric="val/loss"):
    """One evaluation every 10 steps; the first stop decided, or None."""
    for i, v in enumerate(values, start=1):
        s.observe(i * 10, {metric: v}, evaluation=True)
        stop = s.decide(Facts(i * 10))
        if stop:
            return stop
    return None


def test_patience_counts_evaluations_without_improvement():
    stop = feed(stopper(patience=2), [3.0, 2.5, 2.6, 2.55])
    assert stop.reason == StopReason.PATIENCE and stop.step == 40 and stop.exit_code == 0
    assert "best 2.5000 at step 20" in stop.detail and "2 evaluations (min)" in stop.detail


def test_min_delta_small_gains_do_not_count():
    s = stopper(patience=2, min_delta=0.1)
    assert feed(s, [3.0, 2.95, 2.92]).reason == "patience"
    assert s.monitor.best == 3.0 and s.monitor.best_step == 10


def test_improvement_resets_patience():
    assert feed(stopper(patience=2), [3.0, 3.1, 2.0, 2.1, 1.0, 1.5]) is None


def test_target_reached_when_lower_is_better():
    stop = feed(stopper(target=2.0), [3.0, 2.5, 1.99, 1.5])
    assert stop.reason == "target_reached" and stop.step == 30 and stop.exit_code == 0
    assert stop.reason.status == "FINISHED"


def test_target_reached_when_higher_is_better():
    s = stopper("val/accuracy", "max", target=0.9)
    stop = feed(s, [0.5, 0.7, 0.89, 0.9, 0.95], "val/accuracy")
    assert stop.reason == "target_reached" and stop.step == 40  # at the target counts
    assert "val/accuracy 0.9000, at or above it" in stop.detail


def test_patience_when_higher_is_better_ignores_other_metrics():
    s = stopper("val/accuracy", "max", patience=2)
    s.observe(5, {"val/loss": 0.0, "train/loss": 0.1})  # not the monitor: no improvement, no bad observation
    stop = feed(s, [0.5, 0.6, 0.6, 0.55], "val/accuracy")  # equal to the best is no improvement
    assert stop.reason == "patience" and stop.step == 40
    assert "best 0.6000 at step 20" in stop.detail and "(max)" in stop.detail


def test_non_finite_values_diverge():
    s = stopper()
    s.observe(1, {"train/loss": 5.0})
    assert s.decide(Facts(1)) is None
    s.observe(2, {"train/loss": math.nan})
    stop = s.decide(Facts(2))
    assert stop.reason == "diverged" and stop.exit_code == 1 and stop.reason.status == "FAILED"
    assert "nan" in stop.detail and stop.step == 2
    # The monitored metric too, whatever its direction.
    stop = feed(stopper("val/accuracy", "max"), [0.5, math.inf], "val/accuracy")
    assert stop.reason == "diverged" and stop.step == 20 and "val/accuracy is inf" in stop.detail


def test_spike_far_above_best_diverges_but_noise_does_not():
    s = stopper(divergence_factor=3.0)
    for step, loss in enumerate([8, 6, 4, 3, 2, 2.5, 2.2, 2.8, 2.1] * 3, start=1):
        s.observe(step, {"train/loss": loss})
        assert s.decide(Facts(step)) is None
    for step in range(100, 200):
        s.observe(step, {"train/loss": 50.0})
    stop = s.decide(Facts(199))
    assert stop.reason == "diverged" and "over 3x its best" in stop.detail
    # Seen when the values were read back (step 199), it happened early on: the detail says when.
    import re

    at = int(re.match(r"Training diverged at step (\d+):", stop.detail).group(1))
    assert 100 <= at < 120 and stop.step == 199 and stop.detail.endswith("(read back at step 199).")


def test_time_budget():
    budget = es.TimeBudget(10)
    assert budget.check(Facts(5, elapsed_s=9.9)) is None
    stop = budget.check(Facts(5, elapsed_s=12.0, out_of_time=True))
    assert stop.reason == "time_budget" and stop.exit_code == 0 and "ran out (12.0 s elapsed)" in stop.detail
    # Another rank's clock ran out: this rank's is still under budget, the budget is the figure.
    assert "ran out (10.0 s elapsed)" in budget.check(Facts(5, elapsed_s=3.0, out_of_time=True)).detail
    planned = budget.check(Facts(50, elapsed_s=4.0, out_of_time=True, planned_end=50))
    assert planned.reason == "time_budget" and "50 steps, as planned" in planned.detail
    assert budget.due(5, 10.0, None, 100) and not budget.due(5, 9.9, None, 100)
    assert budget.due(50, 4.0, 50, 100) and not budget.due(49, 4.0, 50, 100)
    assert es.TimeBudget(None).check(Facts(5, elapsed_s=1e9, out_of_time=True)) is None


def test_interrupt_and_completion():
    assert es.Interrupt("runs/x").check(Facts(7)) is None
    stop = es.Interrupt("runs/x").check(Facts(7, interrupted_by="SIGINT"))
    assert stop.reason == "interrupted" and stop.exit_code == 130 and stop.reason.status == "KILLED"
    assert stop.detail == "Interrupted by SIGINT at step 7; resume with `tracked-train resume runs/x`."
    assert "by a signal" in es.Interrupt().check(Facts(7, interrupted_by="")).detail  # another rank's signal
    assert es.Completion(100).check(Facts(99, 100)) is None
    assert es.Completion(100).check(Facts(100)) is None  # a decision before the step's end: not yet complete
    assert es.Completion(100).check(Facts(100, 100)) == Stop("completed", "Completed all 100 steps.", 100)


def _nan(s):
    s.observe(30, {"train/loss": math.nan})


@pytest.mark.parametrize("values, observe, facts, expected", [
    # Several conditions hold at step 30; the first of standard()'s order names the stop.
    ([3.0, 2.0, 1.0], None, Facts(30, 30), "target_reached"),  # beats completed
    ([3.0, 2.0, 1.0], _nan, Facts(30, 30, 99.0, True, None, "SIGINT"), "diverged"),  # beats everything
    ([3.0, 3.5, 4.0], None, Facts(30, 30, 99.0, True, None, "SIGINT"), "patience"),  # beats time and signal
    ([3.0, 2.9, 2.8], None, Facts(30, 30, 99.0, True, None, "SIGINT"), "time_budget"),  # beats interrupted
    ([3.0, 2.9, 2.8], None, Facts(30, 30, 1.0, False, None, "SIGINT"), "interrupted"),  # beats completed
])
def test_the_first_condition_in_order_names_the_stop(values, observe, facts, expected):
    s = stopper(patience=2, target=1.5, time_budget_s=10, max_steps=30)
    for i, v in enumerate(values, start=1):
        s.observe(i * 10, {"val/loss": v}, evaluation=True)
    if observe:
        observe(s)
    assert s.decide(facts).reason == expected


def test_target_beats_patience_and_pruning_beats_the_time_budget():
    s = stopper(patience=1, min_delta=1.0, target=2.5)
    assert feed(s, [3.0, 2.4]).reason == "target_reached"  # not better by min_delta: also patience's turn
    s = stopper(time_budget_s=10, judge=lambda step, m: Stop("pruned", f"pruned at {step}", step))
    s.observe(10, {"val/loss": 1.0}, evaluation=True)
    assert s.decide(Facts(10, 30, 99.0, True)).reason == "pruned"


def test_state_dict_roundtrip_continues_the_same_decision():
    a = stopper(patience=3)
    a.observe(5, {"train/loss": 4.0})
    feed(a, [3.0, 3.1])
    b = stopper(patience=3)
    b.load_state_dict(a.state_dict())
    assert b.find(es.Divergence).ema == 4.0
    b.observe(30, {"val/loss": 3.2}, evaluation=True)
    assert b.decide(Facts(30)) is None
    b.observe(40, {"val/loss": 3.3}, evaluation=True)
    assert b.decide(Facts(40)).reason == "patience"


OLD = {"best_loss": 2.0, "best_step": 20, "evals_without_improvement": 1, "ema": 2.5, "best_ema": 2.4}


def test_an_old_flat_state_loads_into_a_stopper():
    s = stopper(patience=2)
    s.load_state_dict(OLD)
    assert (s.monitor.best, s.monitor.best_step, s.monitor.bad_observations) == (2.0, 20, 1)
    assert (s.find(es.Divergence).ema, s.find(es.Divergence).best_ema) == (2.5, 2.4)
    s.observe(30, {"val/loss": 2.1}, evaluation=True)
    stop = s.decide(Facts(30))
    assert stop.reason == "patience" and "best 2.0000 at step 20" in stop.detail


def test_a_monitor_of_another_metric_or_mode_ignores_a_saved_record():
    on_loss = stopper(patience=2)
    feed(on_loss, [3.0, 3.1])
    for metric, mode, state in [("val/accuracy", "max", OLD), ("val/loss", "max", OLD),
                                ("val/accuracy", "max", on_loss.state_dict())]:
        s = stopper(metric, mode, patience=2)
        s.load_state_dict(state)
        assert not s.monitor.has_best and s.monitor.bad_observations == 0, (metric, mode)
    s = stopper("val/accuracy", "max")
    s.load_state_dict(OLD)
    assert s.find(es.Divergence).ema == 2.5  # the train loss's record still carries over


def test_verdict():
    assert verdict(8.0, 4.0) == (50.0, "learning well")
    assert verdict(8.0, 7.5)[1] == "learning slowly"
    assert verdict(8.0, 8.1)[1] == "not learning"
    assert verdict(8.0, math.nan)[1] == "not learning"
