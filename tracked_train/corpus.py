"""The built-in corpus: English-like text from a seeded probabilistic grammar.

It lets `tracked-train run` work offline with no files and ships no
third-party text. Because the source is known, so is its entropy rate: the
lowest loss any model can reach, in nats per character. A run on this corpus
reports how close it came to that floor.

Each line is a paragraph of one to three sentences; each sentence picks a
template, then one word per slot from disjoint word classes with Zipf-like
weights. Templates have distinct slot sequences and the classes are disjoint,
so a line decodes to exactly one sequence of choices: the entropy of a line is
the sum of the entropies of its choices, and the rate is their expectation
divided by the expected line length (both computed exactly below).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_WORDS = {
    "NAME": "Ada Bram Cora Dane Elin Fenn Gwen Hugo Iris Jory Kira Lars Mira Nils Orla Piet Rhea Sven Tova Ulla",
    "NOUN": (
        "river garden lantern stone window letter mountain harbour forest candle bridge market "
        "orchard meadow tower shadow kettle wagon island valley ribbon compass mirror blanket "
        "feather ladder basket chimney barrel anchor"
    ),
    "PLACE": "Avonmere Brightwater Coldharbour Dunmoor Eastwick Farrowdale Glenholt Hollowfield Ironbridge Juniper",
    "ADJ": (
        "old quiet bright small green heavy silver hidden narrow gentle broken warm distant "
        "golden hollow wooden patient crooked"
    ),
    "VT": "found carried painted mended opened watched followed remembered built lifted traded buried",
    "VI": "slept waited laughed wandered listened vanished rested sang",
    "ADV": "slowly quietly often gladly carefully suddenly softly early",
    "TIME": "yesterday tonight tomorrow",
}

# (weight, template); lower-case words are fixed text, upper-case are word classes.
_TEMPLATES = [
    (6, "the ADJ NOUN VT the NOUN"),
    (5, "NAME VT the ADJ NOUN ADV"),
    (4, "NAME VI in PLACE"),
    (4, "the NOUN VI ADV"),
    (3, "NAME and NAME VT a NOUN near the NOUN"),
    (3, "in PLACE NAME VT the NOUN TIME"),
    (2, "NAME VI because the NOUN was ADJ"),
    (2, "a ADJ NOUN VI by the NOUN"),
    (1, "TIME NAME VI"),
]
_SENTENCES_PER_LINE = [(1, 0.3), (2, 0.45), (3, 0.25)]


def _zipf(n: int) -> list[float]:
    w = [1.0 / (i + 1) ** 0.9 for i in range(n)]
    total = sum(w)
    return [x / total for x in w]


@dataclass(frozen=True)
class _Grammar:
    classes: dict[str, tuple[list[str], list[float]]]
    templates: list[tuple[float, list[str]]]

    @classmethod
    def default(cls) -> _Grammar:
        classes = {k: (v.split(), _zipf(len(v.split()))) for k, v in _WORDS.items()}
        total = sum(w for w, _ in _TEMPLATES)
        return cls(classes, [(w / total, t.split()) for w, t in _TEMPLATES])


def _entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def entropy_rate(grammar: _Grammar | None = None) -> float:
    """Exact entropy rate of the built-in source in nats per character."""
    g = grammar or _Grammar.default()
    h_sent = _entropy([p for p, _ in g.templates])
    len_sent = 0.0
    for p, slots in g.templates:
        h, length = 0.0, len(slots) - 1 + 1  # spaces between words, final "."
        for s in slots:
            if s in g.classes:
                words, probs = g.classes[s]
                h += _entropy(probs)
                length += sum(pw * len(w) for w, pw in zip(words, probs))
            else:
                length += len(s)
        h_sent += p * h
        len_sent += p * length
    counts, probs = zip(*_SENTENCES_PER_LINE)
    mean_n = sum(n * p for n, p in _SENTENCES_PER_LINE)
    h_line = _entropy(list(probs)) + mean_n * h_sent
    len_line = mean_n * (len_sent + 1)  # n sentences, n-1 spaces, one newline
    return h_line / len_line


def _sentence(rng: random.Random, g: _Grammar, template_cum: list[float]) -> str:
    slots = rng.choices(g.templates, cum_weights=template_cum)[0][1]
    words = []
    for s in slots:
        if s in g.classes:
            choices, probs = g.classes[s]
            words.append(rng.choices(choices, weights=probs)[0])
        else:
            words.append(s)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def generate_lines(n_chars: int, seed: int) -> list[str]:
    """At least ``n_chars`` characters of text, as lines, deterministic in ``seed``."""
    g = _Grammar.default()
    rng = random.Random(seed)
    cum, acc = [], 0.0
    for p, _ in g.templates:
        acc += p
        cum.append(acc)
    counts = [n for n, _ in _SENTENCES_PER_LINE]
    weights = [p for _, p in _SENTENCES_PER_LINE]
    lines, total = [], 0
    while total < n_chars:
        n = rng.choices(counts, weights=weights)[0]
        line = " ".join(_sentence(rng, g, cum) for _ in range(n))
        lines.append(line)
        total += len(line) + 1
    return lines
