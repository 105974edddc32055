"""What a person watching the run sees: config table, progress, final verdict.

Everything also goes to ``train.log`` in the run folder. On a terminal the
progress is a rich bar (step, loss, LR, tok/s, ETA); off a terminal (CI, a
pipe, nohup) it is plain lines at each evaluation and about every 1 %.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tracked_train")

# Dense bf16 peak of accelerators we can recognise, for MFU without configuration.
_KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


class _Redacting(logging.Formatter):
    """Removes URI credentials from every line, tracebacks included: exception texts quote URIs."""

    def format(self, record: logging.LogRecord) -> str:
        from .redact import redact_text

        return redact_text(super().format(record))


FILE_ONLY = {"file_only": True}  # ``log.error(..., extra=FILE_ONLY)``: for train.log, not the console


def fit(line: str, width: int) -> str:
    """``line`` in lines of at most ``width``: a `` | ``-separated status line loses its last fields (the
    least important), other text wraps under its second column (the config table's values)."""
    fields = line.split(" | ")
    while len(fields) > 1 and len(" | ".join(fields)) > width:
        fields.pop()
    line = " | ".join(fields)
    if len(line) <= width:
        return line
    import re
    import textwrap

    first = re.match(r"\s*\S+\s+", line)
    hang = " " * (len(first.group()) if first and len(first.group()) < width // 2 else 2)
    return "\n".join(textwrap.wrap(line, width, subsequent_indent=hang, break_on_hyphens=False))


class _ConsoleHandler(logging.Handler):
    """Prints records above the rich bar while one is shown, to stderr otherwise.

    On a terminal each line of a message fits its width (train.log keeps them whole).
    """

    rich_console = None

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):
            return
        msg = self.format(record)
        if sys.stderr.isatty():
            import shutil

            width = shutil.get_terminal_size().columns
            msg = "\n".join(fit(line, width) for line in msg.split("\n"))
        if self.rich_console is not None:
            self.rich_console.print(msg, highlight=False, markup=False)
        else:
            print(msg, file=sys.stderr, flush=True)


_console_handler = _ConsoleHandler()


def setup_logging(log_file: Path | None = None) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    # A full disk makes train.log unwritable: the run goes on and says so once, without a traceback per line.
    logging.raiseExceptions = False
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    if _console_handler not in log.handlers:
        _console_handler.setFormatter(_Redacting("%(message)s"))
        log.addHandler(_console_handler)
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(_Redacting("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


def config_table(flat: dict[str, Any]) -> str:
    """One line per config section: ``training   batch_size=16 lr=0.001 ...``."""
    sections: dict[str, list[str]] = {}
    for key, value in flat.items():
        sec, _, name = key.partition(".")
        name = name or key  # `task`: a value of its own, no section
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        sections.setdefault(sec, []).append(f"{name}={shown}")
    width = max(map(len, sections))
    return "\n".join(f"  {sec:<{width}}  {' '.join(items)}" for sec, items in sections.items())


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def memory_mib() -> tuple[str, float]:
    """("cuda", MiB allocated peak) when CUDA is in use, else ("rss", MiB resident)."""
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return "cuda", torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return "rss", psutil.Process().memory_info().rss / 2**20


def peak_tflops(configured: float | None, device: str) -> float | None:
    if configured is not None:
        return configured
    if device.startswith("cuda"):  # "cuda:0" under torchrun
        import torch

        name = torch.cuda.get_device_name(device)
        for key, value in _KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return value
    return None


class Progress:
    def __init__(self, total_steps: int, start_step: int, mode: str, flops_per_token: float,
                 peak_tflops: float | None):
        self.total, self.start_step = total_steps, start_step
        self.flops_per_token, self.peak = flops_per_token, peak_tflops
        self.t0 = time.perf_counter()
        self.every = max(1, total_steps // 100)
        self.last: dict[str, float] = {}
        self.parts: dict[str, float] = {}
        self.quiet = mode == "off"  # non-zero ranks under torchrun
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self._bar = self._task = None
        if use_bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, stats="")
            self._bar.start()
            _ConsoleHandler.rich_console = self._bar.console

    def set_total(self, total_steps: int) -> None:
        """A time budget's planned steps replace ``max_steps`` as the total."""
        self.total, self.every = total_steps, max(1, total_steps // 100)
        if self._bar is not None:
            self._bar.update(self._task, total=total_steps)

    def restart_clock(self, step: int) -> None:
        """Measure the rate (and the ETA) from ``step`` on: the first step's compilation and allocations are
        not typical of the others."""
        self.t0, self.start_step = time.perf_counter(), step

    def mfu(self, tok_s: float) -> float | None:
        """Model FLOPs utilisation in percent of the device's dense bf16 peak; None where the peak is unknown
        (known GPUs, or ``console.peak_tflops``) or the task does not count its FLOPs."""
        if not self.peak or not self.flops_per_token:
            return None
        return 100 * self.flops_per_token * tok_s / (self.peak * 1e12)

    def update(self, step: int, loss: float, lr: float, tok_s: float, tokens_seen: int,
               parts: dict[str, float] | None = None) -> None:
        """``parts``: the loss's named components (a task's own), shown after the total."""
        self.last = {"step": step, "loss": loss, "lr": lr, "tok_s": tok_s, "tokens_seen": tokens_seen}
        self.parts = parts or {}
        if self._bar is not None:
            self._bar.update(self._task, completed=step,
                             stats=f"loss {loss:.3f}  lr {lr:.2e}  {tok_s:,.0f} tok/s")
        elif step % self.every == 0 and not self.quiet:
            log.info(self.status_line())

    def status_line(self) -> str:
        if not self.last:
            return "starting"
        step = int(self.last["step"])
        elapsed = time.perf_counter() - self.t0
        done = step - self.start_step
        it_s = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / it_s if it_s > 0 else 0.0
        kind, mib = memory_mib()
        parts = [
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%)",
            f"loss {self.last['loss']:.4f}" + (" (" + ", ".join(f"{k} {v:.4f}" for k, v in self.parts.items()) + ")"
                                               if self.parts else ""),
            f"lr {self.last['lr']:.2e}",
            f"{self.last['tok_s']:,.0f} tok/s", f"tokens {self.last['tokens_seen']:,}",
            f"elapsed {fmt_duration(elapsed)}", f"ETA {fmt_duration(eta)}", f"{it_s:.2f} it/s",
            f"{kind} {mib:,.0f} MiB",
        ]
        if (mfu := self.mfu(self.last["tok_s"])) is not None:
            parts.append(f"MFU {mfu:.1f}%")
        return " | ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            _ConsoleHandler.rich_console = None
            self._bar = None
