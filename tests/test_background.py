"""The background worker on its own: order, full queues, keys, holding, flush, close's deadline, failures.

A handler held on a threading.Event stands in for a slow or hanging backend; nothing here sleeps or times.
"""

from __future__ import annotations

import logging
import threading

import pytest

from tracked_train.background import Background, Report
from tracked_train.testing import wait_until

WAIT_S = 60  # a generous bound for things that happen at once: only reached if the test is failing


class Gate:
    """A handler that records items, and holds on the first one until ``release``."""

    def __init__(self, hold_first: bool = True) -> None:
        self.items: list = []
        self.entered = threading.Event()  # the handler has the first item
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, item) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        self.items.append(item)

    def release(self) -> None:
        self.gate.set()


def test_items_are_handled_in_the_order_put():
    h = Gate(hold_first=False)
    bg = Background("t-order", h, maxsize=100)
    for i in range(50):
        bg.put(i)
    assert bg.close(WAIT_S) == Report(handled=50, failed=0, dropped=0, left=0)
    assert h.items == list(range(50))


def test_drop_oldest_when_full_counts_the_dropped():
    h = Gate()
    bg = Background("t-drop", h, maxsize=3, when_full="drop_oldest")
    bg.put("busy")
    assert h.entered.wait(WAIT_S)  # "busy" is in the handler's hands: the queue holds what follows
    for i in range(5):
        bg.put(i)  # never waits
    assert len(bg) == 3 and bg.dropped == 2
    h.release()
    assert bg.close(WAIT_S) == Report(handled=4, failed=0, dropped=2, left=0)
    assert h.items == ["busy", 2, 3, 4]


def test_a_full_blocking_queue_waits_for_a_free_place():
    h = Gate()
    bg = Background("t-block", h, maxsize=2)
    bg.put("busy")
    assert h.entered.wait(WAIT_S)
    bg.put(1)
    bg.put(2)
    released_first: list[bool] = []

    def third() -> None:
        bg.put(3)
        released_first.append(h.gate.is_set())  # a place could only free after the handler was released

    putter = threading.Thread(target=third, daemon=True)
    putter.start()
    wait_until(lambda: bg._cond._waiters, "the put to wait on the queue")  # CPython's Condition: its waiters
    assert putter.is_alive() and len(bg) == 2 and bg.dropped == 0
    h.release()
    putter.join(WAIT_S)
    assert released_first == [True]
    assert bg.close(WAIT_S) == Report(handled=4, failed=0, dropped=0, left=0)
    assert h.items == ["busy", 1, 2, 3]


def test_a_key_replaces_the_pending_item_and_returns_it():
    h = Gate()
    bg = Background("t-key", h, maxsize=10)
    bg.put("busy", key="last")  # taken at once: nothing pending to replace later
    assert h.entered.wait(WAIT_S)
    assert bg.put("last-1", key="last") is None
    assert bg.put("best-1", key="best") is None
    assert bg.put("plain") is None
    assert bg.put("last-2", key="last") == "last-1"  # the caller cleans up after the replaced one
    assert len(bg) == 3
    h.release()
    report = bg.close(WAIT_S)
    assert h.items == ["busy", "best-1", "plain", "last-2"]  # the newer item goes last, after what came before it
    assert report == Report(handled=4, failed=0, dropped=0, left=0)  # a replaced item is not counted


def test_held_items_wait_for_close():
    h = Gate(hold_first=False)
    bg = Background("t-hold", h, maxsize=2, when_full="drop_oldest", hold=True)
    bg.put("a", key="best")
    bg.put("b", key="last")
    assert bg.put("c", key="last") == "b"
    assert bg.flush(WAIT_S)  # held items are not waited for
    assert h.items == [] and len(bg) == 2
    assert bg.close(WAIT_S) == Report(handled=2, failed=0, dropped=0, left=0)
    assert h.items == ["a", "c"]


def test_a_held_queue_cannot_block():
    with pytest.raises(ValueError, match="held"):
        Background("t-bad", print, maxsize=1, hold=True)


def test_flush_waits_until_everything_put_is_handled():
    h = Gate()
    bg = Background("t-flush", h, maxsize=10)
    for i in range(3):
        bg.put(i)
    assert h.entered.wait(WAIT_S)
    assert not bg.flush(0)  # the handler is held: not done
    h.release()
    assert bg.flush(WAIT_S)
    assert h.items == [0, 1, 2] and bg.handled == 3 and len(bg) == 0
    bg.put(3)  # flush does not close
    assert bg.close(WAIT_S).handled == 4


def test_close_at_its_deadline_reports_what_was_left():
    h = Gate()
    bg = Background("t-stuck", h, maxsize=10)
    for i in range(4):
        bg.put(i)
    assert h.entered.wait(WAIT_S)
    report = bg.close(0)  # the handler is stuck on item 0: the deadline passes
    assert report == Report(handled=0, failed=0, dropped=0, left=4)  # three waiting and the one in flight
    assert bg.close(WAIT_S) is report  # closing again reports the same
    with pytest.raises(RuntimeError, match="not running"):
        bg.put(5)
    h.release()  # the abandoned item finishes on its daemon thread; the discarded ones are never handled
    assert bg.flush(WAIT_S)
    assert h.items == [0]


def test_a_handler_exception_counts_as_failed_and_the_thread_goes_on(caplog):
    handled = []

    def handler(item: int) -> None:
        if item % 2:
            raise ValueError(f"odd item {item}\nsecond line")
        handled.append(item)

    with caplog.at_level(logging.WARNING, logger="tracked_train"):
        bg = Background("t-fail", handler, maxsize=10)
        for i in range(5):
            bg.put(i)
        report = bg.close(WAIT_S)
    assert report == Report(handled=3, failed=2, dropped=0, left=0)
    assert handled == [0, 2, 4]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["t-fail: odd item 1 (further failures are counted at the end)"]  # the first only, one line


def test_the_failure_text_is_the_callers():
    seen = threading.Event()
    texts = []

    def failure_text(item, e) -> str:
        texts.append((item, type(e).__name__))
        seen.set()
        return "custom"

    bg = Background("t-text", lambda item: 1 / 0, maxsize=1, failure_text=failure_text)
    bg.put("x")
    assert seen.wait(WAIT_S)
    assert bg.close(WAIT_S).failed == 1 and texts == [("x", "ZeroDivisionError")]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_a_dead_thread_never_blocks_the_caller():
    h = Gate()

    def handler(item) -> None:
        h(item)
        raise SystemExit  # a BaseException ends the thread itself

    bg = Background("t-dead", handler, maxsize=1)
    bg.put(0)
    assert h.entered.wait(WAIT_S)
    bg.put(1)  # the queue is now full
    failed = []

    def blocked_put() -> None:
        try:
            bg.put(2)
        except RuntimeError as e:
            failed.append(e)

    putter = threading.Thread(target=blocked_put, daemon=True)
    putter.start()
    h.release()  # the thread dies: the waiting put gives up instead of waiting forever
    putter.join(WAIT_S)
    assert not putter.is_alive() and len(failed) == 1
    assert bg.close(WAIT_S) == Report(handled=0, failed=0, dropped=0, left=2)  # one waiting, one it died on
    bg._thread.join(WAIT_S)  # its exception is reported here, inside this test's filterwarnings
