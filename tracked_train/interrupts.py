"""Signals during training: stop cleanly, or report status.

SIGINT or SIGTERM asks the loop to finish its current step, save ``last`` and
stop with reason ``interrupted``; a second SIGINT raises KeyboardInterrupt at
once. SIGUSR1 asks for a status line. Handlers only set flags (the loop acts on
them between steps) and acknowledge a stop at once on stderr: a slow step
would otherwise leave the user in silence. The previous handlers come back on
exit.

On an interactive terminal, typing ``stop`` or ``status`` and Enter does the
same as SIGINT or SIGUSR1. Off a terminal stdin is never read.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

_listening: Interrupts | None = None  # the Interrupts in force, for the stdin reader
_reader: threading.Thread | None = None


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run


def _read_commands() -> None:
    for line in sys.stdin:
        word, target = line.strip().lower(), _listening
        if target is None or not word:
            continue
        if word == "stop":
            target.request_stop("the stop command")
        elif word == "status":
            target.status_requested = True
        else:
            os.write(2, f"unknown command {word!r}; type stop or status, then Enter\n".encode())


class Deferred:
    """Signals while a run's ending reaches the trackers (the model upload, the final status): the first SIGINT or
    SIGTERM waits until the ending is complete, so no tracker is left RUNNING (a batch scheduler's time-limit
    SIGTERM lands exactly there); a second one stops at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if _main_rank():
            os.write(2, f"\n{self.received}: finishing the run's ending on every tracker first "
                        "(again to stop at once)\n".encode())

    def __enter__(self) -> Deferred:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Interrupts:
    # What a stop request is answered with: the built-in loop saves `last` itself; a loop of your own decides.
    ACK = "stopping after this step, then saving checkpoints/last"

    def __init__(self, ack: str = ACK) -> None:
        self.ack = ack
        self.requested: str | None = None  # name of the signal that asked us to stop
        self.status_requested = False
        self._previous: dict[int, object] = {}

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request_stop(signal.Signals(signum).name)

    def request_stop(self, by: str) -> None:
        self.requested = self.requested or by
        if _main_rank():
            # os.write, not logging: a handler that takes the logging lock can deadlock the thread it interrupted.
            os.write(2, f"\n{by}: {self.ack} (Ctrl-C again to stop at once)\n".encode())

    def _on_status(self, signum: int, frame: FrameType | None) -> None:
        self.status_requested = True

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in ((signal.SIGINT, self._on_stop), (signal.SIGTERM, self._on_stop),
                                 (signal.SIGUSR1, self._on_status)):
                self._previous[sig] = signal.signal(sig, handler)
            global _listening, _reader
            if _main_rank() and sys.stdin is not None and sys.stdin.isatty():
                _listening = self
                if _reader is None:  # one reader for the process: a line goes to the Interrupts in force
                    _reader = threading.Thread(target=_read_commands, name="stdin-commands", daemon=True)
                    _reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _listening
        if _listening is self:
            _listening = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
