"""A durable outbox for a tracking backend, drained by a background thread.

The training thread appends each event as one JSON line to ``spool.jsonl`` in
the run folder (a write and a flush, microseconds) and returns. A sender
thread reads what is not yet acknowledged, hands it to the backend in batches,
and records the acknowledged byte offset in ``state.json``. When the server is
down the events simply wait in the file (memory stays bounded), and are sent
in order when it answers again, at finish, or by ``tracked-train sync`` after
the process is gone. A kill -9 loses nothing that was appended.

Resending after a lost acknowledgement must be harmless, so backends send
events idempotently (a metric point carries its own timestamp).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("tracked_train")

SPOOL, STATE = "spool.jsonl", "state.json"


class Spool:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / SPOOL
        self.state: dict[str, Any] = {"acked": 0}
        if (self.folder / STATE).exists():
            self.state.update(json.loads((self.folder / STATE).read_text()))
        self._f = open(self.path, "a")
        self._lock = threading.Lock()

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def save_state(self, **updates: Any) -> None:
        self.state.update(updates)
        tmp = self.folder / f"{STATE}.tmp"
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.folder / STATE)

    def pending(self, limit: int = 5000) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` unacknowledged events as (byte offset after the event, event)."""
        out = []
        with open(self.path, "rb") as f:
            f.seek(self.state["acked"])
            offset = self.state["acked"]
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line still being written, or torn by a kill
                offset += len(raw)
                try:
                    out.append((offset, json.loads(raw)))
                except json.JSONDecodeError:
                    continue
                if len(out) >= limit:
                    break
        return out

    def unsent(self) -> int:
        return self.path.stat().st_size - self.state["acked"]

    def events(self):
        """Every complete event in the spool, sent or not (for the end-of-run figure)."""
        with open(self.path, "rb") as f:
            for raw in f:
                if raw.endswith(b"\n"):
                    try:
                        yield json.loads(raw)
                    except json.JSONDecodeError:
                        continue

    def close(self) -> None:
        with self._lock:
            self._f.close()


class Sender:
    """Drains a spool through ``send(events) -> None`` on a daemon thread.

    ``send`` raises when the backend is unreachable; the events stay pending
    and are retried with backoff (1 s doubling to 10 s).
    """

    def __init__(self, spool: Spool, send: Callable[[list[dict[str, Any]]], None], name: str,
                 interval_s: float = 1.0):
        self.spool, self.send, self.name, self.interval_s = spool, send, name, interval_s
        self.connected = True
        self._wake, self._stop = threading.Event(), threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"{name}-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def flush_once(self) -> bool:
        """Send everything pending now; True when the spool is fully acknowledged."""
        while True:
            batch = self.spool.pending()
            if not batch:
                return True
            self.send([e for _, e in batch])
            self.spool.save_state(acked=batch[-1][0])

    def _run(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(backoff or self.interval_s)
            self._wake.clear()
            try:
                done = self.flush_once()
                if not self.connected:
                    log.info("%s: server reachable again; spooled events sent", self.name)
                self.connected, backoff = True, 0.0
            except Exception as e:  # noqa: BLE001 - any failure: keep the events, retry later
                if self.connected:
                    log.warning("%s: server unreachable (%s); training continues, events are spooled to %s "
                                "and sent when it answers", self.name, str(e).splitlines()[0][:200],
                                self.spool.path)
                self.connected, backoff, done = False, min(10.0, max(1.0, backoff * 2)), False
            if self._stop.is_set() and (done or time.monotonic() >= self._deadline):
                return
            if self._stop.is_set():
                backoff = min(backoff, max(0.0, self._deadline - time.monotonic()))

    def close(self, timeout_s: float) -> bool:
        """Drain, retrying an unreachable server for up to ``timeout_s``; True when nothing is left unsent."""
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join()
        return self.spool.unsent() == 0
