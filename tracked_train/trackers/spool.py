"""A durable outbox for a tracking backend, drained by a background thread.

The training thread appends each event as one JSON line to ``spool.jsonl`` in
the run folder (a write and a flush, microseconds) and returns. A sender
thread reads what is not yet acknowledged, hands it to the backend's sink, and
the sink acknowledges the byte offset after each group the server accepted
(``state.json``). When the server is down the events wait in the file (memory
stays bounded) and are sent in order when it answers again, at finish, or by
``tracked-train sync`` after the process is gone. A kill -9 loses nothing
that was appended.

Nothing leaves the spool unsent without a record of it:

- an event the server refuses for good goes to ``rejected.jsonl`` with the reason;
- a line that cannot be read back (a damaged file) goes to ``quarantine.jsonl``;
- when the backend will take nothing now (the run is gone from the server, no
  permission), the sink raises :class:`Blocked`: everything stays pending.

Resending after a lost acknowledgement must be harmless, so backends send
events idempotently (a metric point carries its own timestamp).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..errors import describe

log = logging.getLogger("tracked_train")

SPOOL, STATE, REJECTED, QUARANTINE = "spool.jsonl", "state.json", "rejected.jsonl", "quarantine.jsonl"


class Blocked(Exception):
    """The backend will not take anything now (its run is gone, no permission): keep everything pending."""


class BadEvent(Exception):
    """An event the sink cannot even interpret (an unknown kind, missing fields): quarantine it."""


class Event(Protocol):
    """What a backend spools besides plain dicts: its own typed event, written as one JSON object."""

    def to_json(self) -> dict[str, Any]: ...


class Spool:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / SPOOL
        self.state: dict[str, Any] = {"acked": 0}
        state_file = self.folder / STATE
        if state_file.exists():
            try:
                loaded = json.loads(state_file.read_text())
                size = self.path.stat().st_size if self.path.exists() else 0
                if not (isinstance(loaded, dict) and isinstance(loaded.get("acked", 0), int)
                        and 0 <= loaded.get("acked", 0) <= size):
                    raise ValueError("not a spool state (or an offset beyond the spool)")
                self.state.update(loaded)
            except (ValueError, OSError) as e:
                # Without the offset every event would be sent again: harmless (sends are idempotent).
                log.warning("%s is damaged (%s); resending the spool from its start", state_file, describe(e))
                os.replace(state_file, state_file.with_suffix(".json.damaged"))
        self._terminate_torn_line()
        self._quarantined = self._quarantined_offsets()
        self._f = open(self.path, "a")
        self._lock = threading.Lock()

    def _terminate_torn_line(self) -> None:
        """A line cut by a kill or a full disk would swallow the next event appended: end it first."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")

    def append(self, event: Event | dict[str, Any]) -> None:
        line = json.dumps(event if isinstance(event, dict) else event.to_json()) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def save_state(self, **updates: Any) -> None:
        self.state.update(updates)
        tmp = self.folder / f"{STATE}.tmp"
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.folder / STATE)

    def ack(self, offset: int) -> None:
        """Everything before byte ``offset`` is delivered (or set aside with a record)."""
        if offset > self.state["acked"]:
            self.save_state(acked=offset)

    def pending(self, limit: int | None = 5000) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` unacknowledged events as (byte offset after the event, event).

        Lines that are not a JSON object are quarantined on the way (and acknowledged
        if nothing readable precedes them), so they never block what follows.
        """
        out: list[tuple[int, dict[str, Any]]] = []
        with open(self.path, "rb") as f:
            f.seek(self.state["acked"])
            offset = self.state["acked"]
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                offset += len(raw)
                try:
                    event = json.loads(raw)
                    if not isinstance(event, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    self.quarantine(raw.decode("utf-8", "replace").rstrip("\n"), describe(e), offset)
                    if not out:
                        self.ack(offset)
                    continue
                out.append((offset, event))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def quarantine(self, raw: str, reason: str, offset: int) -> None:
        """Set aside the line ending at byte ``offset`` (once: the line stays in the spool until acknowledged)."""
        if offset in self._quarantined:
            return
        self._quarantined.add(offset)
        log.warning("%s: an unreadable line was set aside in %s (%s)", self.path, QUARANTINE, reason)
        self._record(QUARANTINE, {"offset": offset, "line": raw, "reason": reason})

    def _quarantined_offsets(self) -> set[int]:
        try:
            lines = (self.folder / QUARANTINE).read_bytes().splitlines()
        except FileNotFoundError:
            return set()
        out = set()
        for line in lines:
            try:
                out.add(int(json.loads(line)["offset"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def reject(self, event: dict[str, Any], reason: str) -> None:
        """The server refused ``event`` for good: keep it, with the reason, for a person to look at."""
        self._record(REJECTED, {"event": event, "reason": reason})

    def _record(self, name: str, record: dict[str, Any]) -> None:
        with open(self.folder / name, "a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def count(self, name: str) -> int:
        """Lines in ``rejected.jsonl`` or ``quarantine.jsonl``."""
        try:
            with open(self.folder / name, "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def unsent(self) -> int:
        return self.path.stat().st_size - self.state["acked"]

    def events(self) -> Iterator[dict[str, Any]]:
        """Every readable event in the spool, sent or not (for the end-of-run figure)."""
        with open(self.path, "rb") as f:
            for raw in f:
                if raw.endswith(b"\n"):
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        yield event

    def close(self) -> None:
        with self._lock:
            self._f.close()


Sink = Callable[[list[tuple[int, dict[str, Any]]]], None]


class Sender:
    """Drains a spool through ``sink(batch)`` on a daemon thread.

    The sink sends a batch of (offset, event) in order and acknowledges as it
    goes (``spool.ack``). Anything it raises keeps the rest pending: retried with
    backoff (1 s doubling to 10 s; 30 s while :class:`Blocked`). The thread never
    dies of an exception: a sender that stopped would leave events unsent silently.
    """

    def __init__(self, spool: Spool, sink: Sink, name: str, interval_s: float = 1.0):
        self.spool, self.sink, self.name, self.interval_s = spool, sink, name, interval_s
        self.connected = True
        self.blocked: str | None = None  # why the backend takes nothing now
        self._wake, self._stop = threading.Event(), threading.Event()
        self._deadline = float("inf")
        self._discard: list[Path] = []
        self._discard_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"{name}-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def discard(self, path: Path) -> None:
        """Remove an upload snapshot a newer one superseded (done on this thread, between batches)."""
        with self._discard_lock:
            self._discard.append(path)

    def _remove_discarded(self) -> None:
        from .snapshot import remove

        with self._discard_lock:
            paths, self._discard = self._discard, []
        for p in paths:
            remove(p)

    def flush_once(self) -> bool:
        """Send everything pending now; True when the spool is fully acknowledged."""
        while True:
            self._remove_discarded()
            batch = self.spool.pending()
            if not batch:
                return True
            self.sink(batch)
            if self.spool.state["acked"] < batch[-1][0]:
                raise RuntimeError("the sink returned without acknowledging its batch")  # a bug: do not loop

    def _run(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(backoff or self.interval_s)
            self._wake.clear()
            done = False
            stopping = self._stop.is_set()  # before the flush: events appended by finish() are in it
            try:
                done = self.flush_once()
                if not self.connected or self.blocked:
                    log.info("%s: server reachable again; spooled events sent", self.name)
                self.connected, self.blocked, backoff = True, None, 0.0
            except Blocked as e:
                if self.blocked != str(e):
                    log.error("%s: %s; nothing more is sent, everything stays in %s", self.name, e, self.spool.path)
                self.blocked, backoff = str(e), 30.0
            except Exception as e:  # noqa: BLE001 - any failure: keep the events, retry later
                if self.connected:
                    log.warning("%s: server unreachable (%s); training continues, events are spooled to %s "
                                "and sent when it answers", self.name, describe(e, 200), self.spool.path)
                self.connected, backoff = False, min(10.0, max(1.0, backoff * 2))
            if stopping and (done or time.monotonic() >= self._deadline):
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
