"""One background worker: a handler function run on a daemon thread over a bounded queue.

The trackers use it so that the training thread only appends and returns: the
W&B metric rows and artifacts, and the webhook's alerts, are handled on a
thread of their own. Its rules, in one place:

* the queue is bounded: when it is full, ``put`` either waits (no item may be
  lost: W&B's rows) or drops the oldest item (the newest matter most: alerts);
* an item put with a ``key`` replaces a pending item with the same key (a newer
  ``last`` checkpoint makes an older one not yet logged pointless); ``put``
  returns the replaced item so the caller can clean up after it;
* ``hold=True`` keeps every item until ``close`` (W&B offline: `wandb sync`
  reads the artifacts later, so a long run keeps one per key, not one per save);
* a handler exception counts as failed and the thread goes on; the first one is
  logged as a warning, the rest are counted (``close`` reports them);
* ``flush`` and ``close`` take a deadline; ``close`` reports what was handled,
  failed, dropped, and left behind when the deadline passed. An item still in
  flight then is abandoned with its daemon thread: a hanging endpoint never
  holds the process.

Only the standard library's light modules are imported here (the CLI's
``--help`` must stay instant).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from .errors import describe

log = logging.getLogger("tracked_train")

T = TypeVar("T")


@dataclass(frozen=True)
class Report:
    """What became of the items put to a closed ``Background`` (an item replaced by its key is not counted)."""

    handled: int  # the handler returned
    failed: int  # the handler raised
    dropped: int  # pushed out of a full queue (``when_full="drop_oldest"``) before their turn
    left: int  # still queued or in flight when close's deadline passed: abandoned


class Background(Generic[T]):
    """Runs ``handler(item)`` on a daemon thread named ``name``, one item at a time, in the order put.

    ``maxsize`` bounds the items waiting (the one being handled is not counted);
    ``when_full`` says what ``put`` does when they reach it. ``failure_text(item,
    error)`` words the warning logged for the first handler exception (default:
    the thread's name and the error's first line).
    """

    def __init__(self, name: str, handler: Callable[[T], object], *, maxsize: int,
                 when_full: Literal["block", "drop_oldest"] = "block", hold: bool = False,
                 failure_text: Callable[[T, Exception], str] | None = None):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if hold and when_full == "block":  # nothing leaves a held queue before close: a full one would never free
            raise ValueError("a held queue cannot block when full: use when_full='drop_oldest'")
        self.name, self.maxsize, self.when_full, self.hold = name, maxsize, when_full, hold
        self._handler = handler
        self._failure_text = failure_text
        self.handled = self.failed = self.dropped = 0
        # Waiting items in put order. Keys are ("key", key) for keyed items, ("seq", n) for the others,
        # so a caller's key never meets an internal one; OrderedDict pops its oldest item in O(1).
        self._pending: OrderedDict[tuple[str, Hashable], T] = OrderedDict()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._busy = False  # an item is in the handler's hands
        self._closing = False
        self._stopped = False  # the thread has returned (or died): nobody will take another item
        self._report: Report | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """The items waiting (not counting the one being handled)."""
        return len(self._pending)

    def put(self, item: T, key: Hashable | None = None) -> T | None:
        """Queue ``item``; returns the pending item it replaced (same ``key``), else None.

        Raises RuntimeError after ``close`` or if the thread is gone: an item
        that would never be handled must not wait (or make training wait) silently.
        """
        with self._cond:
            self._check_running()
            replaced = self._pending.pop(("key", key), None) if key is not None else None
            # A replaced item gave its place up: the new one goes last, so items stay in the order put.
            if replaced is None and len(self._pending) >= self.maxsize:
                if self.when_full == "drop_oldest":
                    self._pending.popitem(last=False)
                    self.dropped += 1
                else:  # wakes when the thread takes an item, or dies (never wait on a dead thread)
                    self._cond.wait_for(lambda: len(self._pending) < self.maxsize or self._stopped)
                    self._check_running()
            self._pending[("key", key) if key is not None else ("seq", next(self._seq))] = item
            self._cond.notify_all()
        return replaced

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait up to ``timeout_s`` (None: no limit) until every item put so far is handled (or failed).

        True when it was; held items are not waited for (they are handled at close).
        """
        with self._cond:
            self._cond.wait_for(lambda: self._idle() or self._stopped, timeout_s)
            return self._idle()

    def close(self, timeout_s: float | None = None) -> Report:
        """Handle what is queued (held items too) within ``timeout_s`` (None: no limit), then stop the thread.

        Past the deadline, the waiting items are discarded and counted as left,
        with the one in flight, which is abandoned to its daemon thread. A second
        close returns the first one's report.
        """
        with self._cond:
            if self._report is not None:
                return self._report
            self._closing = True  # also releases held items
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._stopped, timeout_s)
            left = len(self._pending) + self._busy
            self._pending.clear()  # out of time: the thread ends after the item in flight, if any
            self._report = Report(self.handled, self.failed, self.dropped, left)
            return self._report

    def _check_running(self) -> None:
        if self._closing or self._stopped:
            raise RuntimeError(f"the background thread {self.name!r} is not running")

    def _takeable(self) -> bool:
        return bool(self._pending) and (not self.hold or self._closing)

    def _idle(self) -> bool:
        return not self._busy and not self._takeable()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._takeable() or self._closing)
                    if not self._pending:  # closing, and nothing left to do
                        return
                    _, item = self._pending.popitem(last=False)
                    self._busy = True
                    self._cond.notify_all()  # a place is free for a blocked put
                error: Exception | None = None
                try:
                    self._handler(item)
                except Exception as e:  # noqa: BLE001 - a lost item is counted and reported; the thread goes on
                    error = e
                with self._cond:
                    self._busy = False
                    self.handled += error is None
                    self.failed += error is not None
                    first_failure = error is not None and self.failed == 1
                    self._cond.notify_all()
                if first_failure:
                    text = (self._failure_text(item, error) if self._failure_text else
                            f"{self.name}: {describe(error, 200)} (further failures are counted at the end)")
                    log.warning("%s", text)
        finally:  # returned, or killed by a BaseException: wake whoever waits on this thread
            with self._cond:
                self._stopped = True
                self._cond.notify_all()
