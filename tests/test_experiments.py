"""Every shipped experiment config loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracked_train import config

# Run configs; sweep-*.yaml are search spaces (tests/test_sweep.py checks those).
EXPERIMENTS = sorted(p for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")
                     if not p.name.startswith("sweep-"))


def test_the_four_experiments_exist():
    assert {p.stem for p in EXPERIMENTS} >= {"quick", "full", "wikitext2", "shakespeare"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_is_valid(path):
    cfg = config.resolve(str(path), [], environ={})
    assert cfg.training.max_steps >= 1


def test_every_config_key_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    from conftest import tracker_keys

    missing = [k for k in [*config.FIELDS, *tracker_keys()] if f"`{k}`" not in doc]
    assert not missing, f"document these keys in docs/configuration.md: {missing}"
