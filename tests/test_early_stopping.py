"""Stop decisions on sequences of values, no training involved."""

from __future__ import annotations

import math

from tracked_train.early_stopping import EarlyStopping, verdict


def feed_evals(es: EarlyStopping, values):
    for i, v in enumerate(values, start=1):
        improved, stop = es.on_eval(i * 10, v)
        if stop:
            return stop
    return None


def test_patience_counts_evaluations_without_improvement():
    stop = feed_evals(EarlyStopping(patience=2), [3.0, 2.5, 2.6, 2.55])
    assert stop.reason == "patience" and stop.step == 40
    assert "best 2.5000 at step 20" in stop.detail


def test_min_delta_small_gains_do_not_count():
    es = EarlyStopping(patience=2, min_delta=0.1)
    assert feed_evals(es, [3.0, 2.95, 2.92]).reason == "patience"
    assert es.best_loss == 3.0


def test_improvement_resets_patience():
    assert feed_evals(EarlyStopping(patience=2), [3.0, 3.1, 2.0, 2.1, 1.0, 1.5]) is None


def test_target_reached():
    stop = feed_evals(EarlyStopping(target_loss=2.0), [3.0, 2.5, 1.99, 1.5])
    assert stop.reason == "target_reached" and stop.step == 30 and stop.exit_code == 0


def test_non_finite_loss_diverges():
    es = EarlyStopping()
    assert es.on_train_loss(1, 5.0) is None
    stop = es.on_train_loss(2, math.nan)
    assert stop.reason == "diverged" and stop.exit_code == 1 and "nan" in stop.detail


def test_spike_far_above_best_diverges_but_noise_does_not():
    es = EarlyStopping(divergence_factor=3.0)
    for step, loss in enumerate([8, 6, 4, 3, 2, 2.5, 2.2, 2.8, 2.1] * 3, start=1):
        assert es.on_train_loss(step, loss) is None
    stop = None
    for step in range(100, 200):
        stop = stop or es.on_train_loss(step, 50.0)
    assert stop is not None and stop.reason == "diverged" and "over 3x its best" in stop.detail


def test_time_budget():
    assert EarlyStopping.check_time(5, 9.9, 10) is None
    assert EarlyStopping.check_time(5, 10.0, 10).reason == "time_budget"
    assert EarlyStopping.check_time(5, 1e9, None) is None


def test_state_dict_roundtrip_continues_the_same_decision():
    a = EarlyStopping(patience=3)
    feed_evals(a, [3.0, 3.1])
    b = EarlyStopping(patience=3)
    b.load_state_dict(a.state_dict())
    assert b.on_eval(30, 3.2)[1] is None
    assert b.on_eval(40, 3.3)[1].reason == "patience"


def test_verdict():
    assert verdict(8.0, 4.0) == (50.0, "learning well")
    assert verdict(8.0, 7.5)[1] == "learning slowly"
    assert verdict(8.0, 8.1)[1] == "not learning"
    assert verdict(8.0, math.nan)[1] == "not learning"
