"""The allocator settings CPU runs rely on for speed (docs/benchmarks.md, (c))."""

import sys

import pytest

from tracked_train.device import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_glibc_accepts_every_setting():
    # mallopt answers 0 for a value it refuses (e.g. an mmap threshold above its 32 MiB cap).
    assert keep_freed_memory() is True
