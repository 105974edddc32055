"""`val/bpb`: bits per UTF-8 byte of the validation text, at each evaluation, in the ending, ranked by `compare`."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
from conftest import cli, records, sets

from tracked_train.data import chars_per_byte
from tracked_train.lm import bits_per_byte

WORDS = ["the", "cat", "café", "naïve", "日本語", "Ελληνικά", "straße", "smile 🙂", "über", "and", "ok", "żółw"]


def _text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "\n" for _ in range(lines))


def test_chars_per_byte_counts_utf8_bytes_and_newlines():
    # "é" is 2 bytes, "日" 3, "🙂" 4; each line carries its newline (1 char, 1 byte).
    assert chars_per_byte(["é日🙂"]) == pytest.approx(4 / 10)
    assert chars_per_byte(["abc", ""]) == pytest.approx(1.0)
    assert bits_per_byte(1.0, 0.5) == pytest.approx(0.5 / math.log(2))


@pytest.fixture(scope="module")
def multibyte_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bpb")
    (cwd / "train.txt").write_text(_text(1, 4000), encoding="utf-8")
    valid = _text(2, 400)
    (cwd / "valid.txt").write_text(valid, encoding="utf-8")
    r = cli("run", "--run-name", "mb", *sets(
        "data.source=text", f"data.train_files={cwd / 'train.txt'}", f"data.valid_files={cwd / 'valid.txt'}",
        "training.max_steps=30", "training.eval_every=10", "training.checkpoint_every=10", "training.lr=3e-3",
    ), cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd / "runs" / "mb", valid, r


def test_bpb_is_logged_at_each_evaluation_and_equals_nats_per_char_times_chars_per_byte(multibyte_run):
    run_dir, valid, _ = multibyte_run
    lines = valid.splitlines()
    chars, n_bytes = sum(len(ln) + 1 for ln in lines), len(valid.encode("utf-8"))
    assert n_bytes > chars * 1.2  # the text is far from ASCII: bpb and nats per char tell apart
    evals = [r for r in records(run_dir) if "val/loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    for r in evals:
        assert r["val/bpb"] == pytest.approx(r["val/nats_per_char"] * chars / n_bytes / math.log(2), rel=1e-9)
        assert 0 < r["val/bpb"] < 0.85 * r["val/nats_per_char"] / math.log(2)  # not bits per char


def test_best_val_bpb_is_the_best_steps_value_in_the_ending(multibyte_run):
    run_dir, _, result = multibyte_run
    recs = records(run_dir)
    stop = next(r for r in recs if r.get("event") == "stop")
    at = {r["step"]: r["val/bpb"] for r in recs if "val/bpb" in r}
    assert stop["best_step"] in at
    assert stop["best_val_bpb"] == pytest.approx(at[stop["best_step"]])
    assert f"{at[stop['best_step']]:.3f} bits/byte) at step {stop['best_step']}" in result.stderr  # the summary


def _run(name: str, vocab: str, val: list[float], per_char: list[float], bpb: list[float]):
    from tracked_train.run_records import Run

    history = {"val/loss": list(enumerate(val)), "val/nats_per_char": list(enumerate(per_char)),
               "val/bpb": list(enumerate(bpb))}
    return Run(name, "local", params={"tokenizer.vocab_size": vocab}, history=history)


def test_compare_ranks_by_bpb_when_tokenizers_differ(capsys):
    from tracked_train.compare import _print_compare_table, labels, metric_rows

    small, big = _run("small", "384", [2.0], [0.9], [1.3]), _run("big", "4096", [3.0], [0.8], [1.1])
    rows = {(m.metric, m.kind): m for m in metric_rows([small, big])}
    assert rows[("val/loss", "best")].best_index is None
    assert rows[("val/bpb", "best")].best_index == 1 and rows[("val/bpb", "final")].best_index == 1
    _print_compare_table([small, big], labels([small, big]), {"tokenizer.vocab_size": ["384", "4096"]},
                         list(rows.values()))
    shown = capsys.readouterr().out
    assert "only val/bpb and val/nats_per_char are ranked" in " ".join(shown.split())  # the caption, unwrapped
    assert any(line.startswith("val/bpb best") and line.rstrip().endswith("1.1000 *") for line in shown.splitlines())


def test_compare_of_two_run_folders_has_a_bpb_row(multibyte_run, tmp_path):
    run_dir, _, _ = multibyte_run
    other = tmp_path / "runs" / "copy"
    shutil.copytree(run_dir, other)
    r = cli("compare", str(run_dir), str(other), "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {(m["metric"], m["kind"]): m for m in json.loads(r.stdout)["metrics"]}
    finals = [r["val/bpb"] for r in records(run_dir) if "val/bpb" in r]
    assert list(rows[("val/bpb", "final")]["values"].values()) == pytest.approx([finals[-1]] * 2)
