"""Training data: one code path over a `datasets` dataset with a `text` column.

``builtin`` generates its corpus, ``text`` reads local files with the `text`
builder, ``hf`` calls ``datasets.load_dataset(hf_name, hf_config)``. Every
source ends as two token streams (train, validation).

Batches are a pure function of (seed, position): the stream is cut into
``seq_len + 1`` windows, each epoch visits them in a permutation seeded by
(seed, epoch), and a checkpoint only needs the number of sequences consumed to
resume the data order exactly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config, DataConfig
from .errors import UserError, describe


def check_files(cfg: DataConfig) -> None:
    """Fail before a run folder exists if a named data file is missing or empty."""
    if cfg.source != "text":
        return
    for f in (*cfg.train_files, *cfg.valid_files):
        p = Path(f)
        if not p.is_file():
            raise UserError(f"data file '{f}' does not exist; check data.train_files / data.valid_files")
        if p.stat().st_size == 0:
            raise UserError(f"data file '{f}' is empty; point data.train_files / data.valid_files at text")
        _check_text(p)


def _check_text(path: Path) -> None:
    """A UTF-8 text file, or one line saying what it is instead (read in chunks: memory stays flat)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                nul = chunk.find(b"\x00")
                if nul >= 0:
                    raise UserError(f"data file '{path}' is binary (a NUL byte at offset {offset + nul}); "
                                    "data.train_files / data.valid_files must be UTF-8 text")
                decoder.decode(chunk)
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise UserError(f"data file '{path}' is not UTF-8 text (byte {offset + e.start}: {e.reason}); "
                        "convert it, e.g. `iconv -f latin1 -t utf-8`") from None
    except OSError as e:
        raise UserError(f"data file '{path}' cannot be read ({e.strerror}); check its permissions") from None


def _lines(ds) -> list[str]:
    # wikitext keeps a trailing "\n" on each line; the text builder does not.
    return [t[:-1] if t.endswith("\n") else t for t in ds["text"]]


def load_lines(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train lines, validation lines) from the configured source."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if cfg.source == "builtin":
        from .corpus import generate_lines

        train = generate_lines(cfg.builtin_chars, seed=cfg.builtin_seed)
        valid = generate_lines(max(cfg.builtin_chars // 20, 10_000), seed=cfg.builtin_seed + 1_000_003)
        dd = datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({"text": train}),
            "validation": datasets.Dataset.from_dict({"text": valid}),
        })
    elif cfg.source == "text":
        files = {"train": list(cfg.train_files)}
        if cfg.valid_files:
            files["validation"] = list(cfg.valid_files)
        dd = datasets.load_dataset("text", data_files=files)
    else:
        try:
            dd = datasets.load_dataset(cfg.hf_name, cfg.hf_config)
        except Exception as e:  # hub unreachable, unknown name, missing config...
            first = describe(e)
            raise UserError(f"could not load dataset '{cfg.hf_name}' ({cfg.hf_config}): {first}; "
                            "check data.hf_name / data.hf_config and the network, "
                            "or use data.source=text with local files") from None
    if "text" not in dd["train"].column_names:
        raise UserError(f"dataset has no 'text' column (columns: {dd['train'].column_names}); "
                        "use a dataset with a text column")
    train = _lines(dd["train"])
    if "validation" in dd:
        valid = _lines(dd["validation"])
    else:
        cut = int(len(train) * (1 - cfg.val_split))
        train, valid = train[:cut], train[cut:]
    if not any(t.strip() for t in train):
        raise UserError("the training split holds no text; check data.train_files / data.hf_name")
    if not any(t.strip() for t in valid):
        raise UserError("the validation split holds no text; set data.valid_files or a larger data.val_split")
    return train, valid


def fingerprint(lines: list[str]) -> str:
    h = hashlib.sha256()
    for ln in lines:
        h.update(ln.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class Stream:
    tokens: np.ndarray  # int32 token ids
    n_chars: int  # characters of text they encode, for nats-per-character figures

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / max(len(self.tokens), 1)


def to_stream(tokenizer, lines: list[str]) -> Stream:
    return Stream(tokenizer.encode_lines(lines), sum(len(ln) + 1 for ln in lines))


class Batches:
    """Deterministic batches of (input, target) windows, addressed by position."""

    def __init__(self, stream: Stream, seq_len: int, seed: int):
        import torch

        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = (len(stream.tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(f"the data holds {len(stream.tokens)} tokens, fewer than one sequence of "
                            f"model.seq_len={seq_len}; lower model.seq_len or add data")
        self.tokens = torch.from_numpy(stream.tokens.astype(np.int64))
        self._perm_epoch, self._perm = -1, None

    def _window(self, index: int) -> int:
        epoch, i = divmod(index, self.n_windows)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return int(self._perm[i])

    def get(self, position: int, batch_size: int):
        """The batch of ``batch_size`` sequences starting at sequence ``position``."""
        import torch

        starts = [self._window(position + j) * self.seq_len for j in range(batch_size)]
        x = torch.stack([self.tokens[s : s + self.seq_len] for s in starts])
        y = torch.stack([self.tokens[s + 1 : s + 1 + self.seq_len] for s in starts])
        return x, y

    def eval_batches(self, n: int, batch_size: int):
        """A fixed set of the first windows, in order, so every eval sees the same text."""
        import torch

        total = min(n * batch_size, self.n_windows)
        for b in range(0, total, batch_size):
            starts = [(b + j) * self.seq_len for j in range(min(batch_size, total - b))]
            x = torch.stack([self.tokens[s : s + self.seq_len] for s in starts])
            y = torch.stack([self.tokens[s + 1 : s + 1 + self.seq_len] for s in starts])
            yield x, y


@dataclass(frozen=True)
class DatasetInfo:
    """One split as trackers record it: an MLflow dataset input, a W&B config entry, a metrics.jsonl event."""

    context: str  # "training" | "validation"
    name: str
    source_type: str  # "local" (files), "hugging_face" (the hub), "code" (the built-in generator)
    source: str  # file paths, hub name and config, or the generator's settings
    digest: str  # sha256 of the split's lines, as `fingerprint` computes it
    lines: int
    chars: int


def dataset_infos(cfg: DataConfig, train: list[str], valid: list[str], train_hash: str,
                  valid_hash: str) -> tuple[DatasetInfo, ...]:
    if cfg.source == "builtin":
        kind, name = "code", "builtin"
        sources = (f"tracked_train.corpus chars={cfg.builtin_chars} seed={cfg.builtin_seed}",) * 2
    elif cfg.source == "text":
        kind, name = "local", Path(cfg.train_files[0]).stem if cfg.train_files else "text"
        held_out = f"last {cfg.val_split:g} of {', '.join(cfg.train_files)}"
        sources = (", ".join(cfg.train_files), ", ".join(cfg.valid_files) if cfg.valid_files else held_out)
    else:
        kind, name = "hugging_face", f"{cfg.hf_name}" + (f"/{cfg.hf_config}" if cfg.hf_config else "")
        sources = (f"{name} train", f"{name} validation")
    return tuple(DatasetInfo(ctx, name, kind, src, digest, len(lines), sum(len(ln) + 1 for ln in lines))
                 for ctx, src, digest, lines in (("training", sources[0], train_hash, train),
                                                 ("validation", sources[1], valid_hash, valid)))


@dataclass
class Data:
    train: Batches
    valid: Batches
    valid_chars_per_token: float
    datasets: tuple[DatasetInfo, ...] = ()
    valid_chars_per_byte: float = 1.0  # characters per UTF-8 byte of the validation text, for bits per byte


def chars_per_byte(lines: list[str]) -> float:
    """Characters per UTF-8 byte of ``lines`` as the streams hold them (each line and its newline)."""
    chars = sum(len(ln) + 1 for ln in lines)
    return chars / max(sum(len(ln.encode("utf-8", "surrogatepass")) + 1 for ln in lines), 1)


def prepare(cfg: Config, tokenizer_from: bytes | None = None):
    """Load the text, get a tokenizer (trained, cached, or the checkpoint's), tokenize.

    Returns ``(Data, Tokenizer)``.
    """
    from .tokenizer import Tokenizer, cache_dir, train_tokenizer

    train_lines, valid_lines = load_lines(cfg.data)
    data_hash = fingerprint(train_lines)
    if tokenizer_from is not None:
        tok = Tokenizer(tokenizer_from)
    else:
        tok = train_tokenizer(train_lines, cfg.tokenizer, data_hash)
    tok_hash = hashlib.sha256(tok.model_bytes).hexdigest()[:16]
    valid_hash = fingerprint(valid_lines)
    streams = []
    for lines, lines_hash in ((train_lines, data_hash), (valid_lines, valid_hash)):
        key = hashlib.sha256(f"{lines_hash}|{tok_hash}".encode()).hexdigest()[:24]
        cached = cache_dir() / "tokens" / f"{key}.npz"
        if cached.exists():
            z = np.load(cached)
            streams.append(Stream(z["tokens"], int(z["n_chars"])))
            continue
        s = to_stream(tok, lines)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, tokens=s.tokens, n_chars=np.int64(s.n_chars))
        tmp.replace(cached)
        streams.append(s)
    train, valid = streams
    seq = cfg.model.seq_len
    infos = dataset_infos(cfg.data, train_lines, valid_lines, data_hash, valid_hash)
    return Data(Batches(train, seq, cfg.training.seed), Batches(valid, seq, cfg.training.seed),
                valid.chars_per_token, infos, chars_per_byte(valid_lines)), tok
