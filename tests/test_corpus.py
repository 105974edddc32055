"""The built-in corpus is deterministic, English-like, and its entropy rate is right."""

from __future__ import annotations

import collections
import math

from tracked_train import corpus


def test_deterministic_in_seed():
    assert corpus.generate_lines(5000, seed=1) == corpus.generate_lines(5000, seed=1)
    assert corpus.generate_lines(5000, seed=1) != corpus.generate_lines(5000, seed=2)


def test_looks_like_sentences():
    lines = corpus.generate_lines(20000, seed=0)
    assert all(line[0].isupper() and line.endswith(".") for line in lines)
    assert sum(len(line) + 1 for line in lines) >= 20000


def test_entropy_rate_matches_the_empirical_rate():
    """The exact rate equals -log p(text)/chars measured on generated text.

    Each sentence is parsed back into its template and word choices (unique by
    construction); summing the log-probabilities of those choices over a large
    sample must give the analytic rate.
    """
    g = corpus._Grammar.default()
    word_class = {w: (c, p) for c, (ws, ps) in g.classes.items() for w, p in zip(ws, ps)}
    template_p = {tuple(t): p for p, t in g.templates}
    n_p = dict(corpus._SENTENCES_PER_LINE)
    lines = corpus.generate_lines(400_000, seed=7)
    nll, chars = 0.0, 0
    for line in lines:
        sentences = [s for s in line.split(".") if s]
        nll -= math.log(n_p[len(sentences)])
        for s in sentences:
            words = s.strip().split(" ")
            words[0] = words[0][0].lower() + words[0][1:] if words[0] not in word_class else words[0]
            labels = tuple(word_class[w][0] if w in word_class else w for w in words)
            nll -= math.log(template_p[labels])
            nll -= sum(math.log(word_class[w][1]) for w in words if w in word_class)
        chars += len(line) + 1
    assert abs(nll / chars - corpus.entropy_rate()) < 0.01 * corpus.entropy_rate()
    assert 0.2 < corpus.entropy_rate() < 1.5  # English-like text sits near 1 nat/char
    assert len(collections.Counter(" ".join(lines).split())) > 100
