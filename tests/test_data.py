"""Data sources: one `datasets` code path for hf, text and builtin."""

from __future__ import annotations

import pytest
from conftest import SHAKESPEARE

from tracked_train.config import DataConfig
from tracked_train.data import load_lines
from tracked_train.errors import UserError


def test_hf_source_goes_through_load_dataset():
    """`hf` calls datasets.load_dataset(hf_name, ...): a local dataset folder exercises it offline."""
    train, valid = load_lines(DataConfig(source="hf", hf_name=str(SHAKESPEARE)))
    assert train[0] == "ALL'S WELL THAT ENDS WELL"  # train.txt
    assert valid[0] == "OTHELLO, THE MOOR OF VENICE"  # valid.txt became the validation split


def test_text_source_without_validation_files_splits_off_the_tail():
    train, valid = load_lines(DataConfig(source="text", train_files=(str(SHAKESPEARE / "test.txt"),),
                                          val_split=0.1))
    assert abs(len(valid) / (len(train) + len(valid)) - 0.1) < 0.01
    assert "Macbeth" in " ".join(train[:50]) or "MACBETH" in " ".join(train[:50])


def test_unreachable_hub_dataset_is_one_clear_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # As on a machine without the hub (here the hub's retries would only add ~20 s).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="could not load dataset 'no-such-dataset-xyz'"):
        load_lines(DataConfig(source="hf", hf_name="no-such-dataset-xyz", hf_config=None))
