"""Every shipped experiment config loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracked_train import config

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def test_the_four_experiments_exist():
    assert {p.stem for p in EXPERIMENTS} >= {"quick", "full", "wikitext2", "shakespeare"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_is_valid(path):
    cfg = config.resolve(str(path), [], environ={})
    assert cfg.training.max_steps >= 1
