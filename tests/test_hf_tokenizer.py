"""The `export --format hf` folder used by Hugging Face alone: `AutoTokenizer` gives our ids, `pipeline` our text.

The folder is read in a child process where importing tracked_train fails, so
nothing of ours takes part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import SIDE_BY_SIDE, cli, sets

from tracked_train.config import TokenizerConfig
from tracked_train.corpus import generate_lines
from tracked_train.errors import UserError
from tracked_train.tokenizer import Tokenizer, train_tokenizer

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

# Line breaks (a first empty line, blank lines, a last one), repeated and leading spaces, a tab, digits, accents,
# characters the tokenizer never saw (byte fallback), and control pieces' names as plain text.
TEXT = "\nROMEO:\nWhat  say   you,\tJüliet? 1234\n\n  日本語 🙂 <s> </s> <unk> <0x41>\n   \nend\n"
PROMPT = "ROMEO:\n  What  say"
NEW_TOKENS = 40

HF_ONLY = r"""
import json, sys

class NothingOfOurs:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tracked_train":
            raise ImportError("tracked_train is not installed here")

sys.meta_path.insert(0, NothingOfOurs())
from transformers import AutoTokenizer, pipeline

folder, text, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(text)["input_ids"]
generate = pipeline("text-generation", model=folder)
out = generate(prompt, max_new_tokens=n, do_sample=False)[0]["generated_text"]
print(json.dumps({"ids": ids, "decoded": tok.decode(ids), "generated": out,
                  "ours": sorted(m for m in sys.modules if m.startswith("tracked_train"))}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("hf-tok")
    r = cli("run", "--run-name", "t", *sets("training.max_steps=12", "training.eval_every=12"), cwd=cwd)
    assert r.returncode == 0, r.stderr
    run_dir = cwd / "runs" / "t"
    ours = [sys.executable, "-m", "tracked_train"]
    env = {**os.environ, **SIDE_BY_SIDE}
    export = subprocess.Popen([*ours, "export", str(run_dir), "--format", "hf", "--out", str(cwd / "hf")], cwd=cwd,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gen = subprocess.run([*ours, "generate", str(run_dir), "--prompt", PROMPT, "--temperature", "0",
                          "--max-new-tokens", str(NEW_TOKENS)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    _, err = export.communicate(timeout=300)
    assert export.returncode == 0, err
    assert gen.returncode == 0, gen.stderr
    return run_dir, cwd / "hf", gen.stdout.removesuffix("\n")  # click.echo ends the text with a newline


def test_autotokenizer_and_pipeline_alone_match_ours(exported):
    import tracked_train

    run_dir, folder, our_text = exported
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(os.listdir(folder))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKED_TRAIN_", "PYTHONPATH"))}
    r = subprocess.run([sys.executable, "-c", HF_ONLY, str(folder), TEXT, PROMPT, str(NEW_TOKENS)], cwd=folder,
                       env={**clean, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    hf = json.loads(r.stdout.strip().splitlines()[-1])
    assert hf["ours"] == []

    _, tok = tracked_train.load(run_dir)
    ids = tok.encode(TEXT)
    assert hf["ids"] == ids
    assert tok.newline_id in ids and ids.count(tok.newline_id) == TEXT.count("\n")
    assert hf["decoded"] == tok.decode(ids) == TEXT

    assert our_text.startswith(PROMPT) and len(tok.encode(our_text)) > len(tok.encode(PROMPT))
    assert hf["generated"] == our_text


def _v1_tokenizer(lines: list[str]) -> Tokenizer:
    """A tokenizer as runs from before the HF export trained them: SentencePiece's marker before every line."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=384, model_type="bpe", character_coverage=1.0,
        byte_fallback=True, user_defined_symbols=["\n"], normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, minloglevel=2)
    tok = Tokenizer(model.getvalue())
    assert tok.sp.id_to_piece(tok.encode("a b")[0]).startswith("▁")  # the marker, as old runs have it
    return tok


@pytest.mark.parametrize(("model_type", "vocab_size"), [("bpe", 384), ("bpe", 1200), ("char", 384), ("v1", 384)])
def test_tokenizer_json_on_many_texts(model_type, vocab_size, tmp_path):
    """Every supported model type, and an old run's tokenizer, on texts from the corpus and a hostile alphabet."""
    import random

    from transformers import AutoTokenizer

    from tracked_train.hf_tokenizer import write

    lines = generate_lines(60_000, seed=0)
    if model_type == "v1":
        ours = _v1_tokenizer(lines)
    else:
        ours = train_tokenizer(lines, TokenizerConfig(vocab_size=vocab_size, model_type=model_type), "hf-tok-test")
        # No marker: decoding is concatenation, so decoding the new tokens alone continues the text exactly
        # (cut anywhere but inside a character's byte-fallback bytes).
        ids = ours.encode(TEXT)
        cuts = [i for i in range(len(ids)) if not ours.sp.is_byte(ids[i])]
        assert len(cuts) > 20 and all(ours.decode(ids[:i]) + ours.decode(ids[i:]) == TEXT for i in cuts)
    write(ours.model_bytes, tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    rng = random.Random(0)
    alphabet = "ab cé\n\t日🙂<>s/0x41▁  "
    texts = [TEXT, "", " ", "\n", "\n\n", "  a", "a  ", "\n".join(lines[:300])]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(1500)]
    texts += ["  ".join(rng.sample(lines, 3)) + rng.choice(["", "\n", " \n "]) for _ in range(300)]
    wrong = [t for t in texts if theirs(t)["input_ids"] != ours.encode(t)]
    assert not wrong, (len(wrong), wrong[:3])
    unequal = [t for t in texts if theirs.decode(ours.encode(t)) != ours.decode(ours.encode(t))]
    assert not unequal, (len(unequal), unequal[:3])
    assert theirs.decode(ours.encode(TEXT)) == TEXT


@pytest.mark.parametrize("model_type", ["unigram", "word"])
def test_unsupported_tokenizers_refused_in_one_line(model_type):
    from tracked_train.hf_tokenizer import check

    ours = train_tokenizer(generate_lines(60_000, seed=0), TokenizerConfig(vocab_size=384, model_type=model_type),
                           "hf-tok-test")
    with pytest.raises(UserError) as e:
        check(ours.model_bytes)
    assert f"model_type {model_type}" in str(e.value) and "\n" not in str(e.value)
