"""Checkpoint folders: atomic swap, manifest checks, weights-only loading."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tracked_train import checkpoint
from tracked_train.errors import CheckpointError


def state(step=3):
    from tracked_train import config

    full = dict.fromkeys(checkpoint.REQUIRED_KEYS, {})  # what a run saves; these tests need only its shape
    full.update(config=config.resolve(None, [], None).to_dict(), model={"w": torch.arange(10.0)},
                tokenizer=torch.zeros(4, dtype=torch.uint8))
    return {**full, "format_version": checkpoint.FORMAT_VERSION, "step": step, "w": torch.arange(10.0) * step}


def test_roundtrip_and_replace(tmp_path):
    folder = tmp_path / "checkpoints" / "last"
    checkpoint.save(folder, state(1), {"config.yaml": b"a: 1\n"})
    checkpoint.save(folder, state(2), {"config.yaml": b"a: 2\n"})
    loaded = checkpoint.load(folder)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.arange(10.0) * 2)
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    assert set(manifest["files"]) == {"checkpoint.pt", "config.yaml"}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["last"]  # no temp folders left


def test_truncated_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "last"
    checkpoint.save(folder, state(), {})
    data = (folder / "checkpoint.pt").read_bytes()
    (folder / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        checkpoint.load(folder)


def test_missing_manifest_is_refused(tmp_path):
    folder = tmp_path / "last"
    checkpoint.save(folder, state(), {})
    (folder / checkpoint.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="has no manifest.json"):
        checkpoint.load(folder)


def test_kill_between_renames_recovers_the_new_checkpoint(tmp_path):
    folder = tmp_path / "last"
    checkpoint.save(folder, state(1), {})
    checkpoint.save(tmp_path / ".last.tmp", state(2), {})  # a complete new checkpoint, not yet swapped in
    os.replace(folder, tmp_path / ".last.old")  # the first rename happened, then kill -9
    assert checkpoint.load(folder)["step"] == 2


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    folder = tmp_path / "last"
    checkpoint.save(folder, {**state(), "payload": _Evil(str(marker))}, {})
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(folder)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["missing-keys", "bad-config"])
def test_a_checkpoint_without_what_a_run_saves_is_refused(tmp_path, damage):
    s = state(1)
    if damage == "missing-keys":
        del s["optimizer"], s["rng"]
    else:
        s["config"] = {"model": {"d_model": "wide"}}
    checkpoint.save(tmp_path / "last", s, {})
    with pytest.raises(CheckpointError, match="lacks optimizer, rng" if damage == "missing-keys" else "invalid config"):
        checkpoint.load(tmp_path / "last")
