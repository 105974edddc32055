"""Signals during training: stop cleanly, or report status.

SIGINT or SIGTERM asks the loop to finish its current step, save ``last`` and
stop with reason ``interrupted``; a second SIGINT raises KeyboardInterrupt at
once. SIGUSR1 asks for a status line. Handlers only set flags (the loop acts on
them between steps) and acknowledge a stop at once on stderr: a slow step
would otherwise leave the user in silence. The previous handlers come back on
exit.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class Interrupts:
    def __init__(self) -> None:
        self.requested: str | None = None  # name of the signal that asked us to stop
        self.status_requested = False
        self._previous: dict[int, object] = {}

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
            # os.write, not logging: a handler that takes the logging lock can deadlock the thread it interrupted.
            os.write(2, f"\n{self.requested}: stopping after this step, then saving checkpoints/last "
                        "(Ctrl-C again to stop at once)\n".encode())

    def _on_status(self, signum: int, frame: FrameType | None) -> None:
        self.status_requested = True

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in ((signal.SIGINT, self._on_stop), (signal.SIGTERM, self._on_stop),
                                 (signal.SIGUSR1, self._on_status)):
                self._previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
