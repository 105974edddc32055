"""One process per run folder: an exclusive ``flock`` on ``<run>/.lock``.

``run``, ``resume`` and ``sync`` hold it for as long as they work on a folder,
so a second process cannot write the same checkpoints or send the same events
twice. The kernel drops the lock when its process dies, even by kill -9, so a
crashed run never leaves a stale lock behind. The file holds the owner's pid
and command for the message a second process prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path

from .errors import RunFolderBusy, UserError

FILENAME = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / FILENAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot open {self.path} ({e.strerror}); check that the run folder is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path.parent} is in use by {owner}; wait for it to end "
                                "(or stop it) before running, resuming or syncing this folder") from None
        os.ftruncate(fd, 0)
        command = " ".join(["tracked-train", *sys.argv[1:2]])
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({command})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
