"""Where and how a run computes: the device, the precision, and the CPU allocator's behaviour."""

from __future__ import annotations

import ctypes
import sys

import torch


def pick_device(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_precision(choice: str, device: str) -> str:
    """``auto``: bf16 autocast where it is faster than fp32, else fp32 (fp16 + GradScaler on old GPUs)."""
    if choice != "auto":
        return choice
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return "bf16"  # measured 1.9x fp32 on an AVX512-BF16 CPU (docs/benchmarks.md)
    return "fp32"


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory mapped instead of handing it back to the OS.

    By default glibc trims the heap and unmaps large freed blocks, so on the CPU
    each step's activations are page-faulted in again: measured 4x the minor page
    faults and 11-15 % of a small model's step (docs/benchmarks.md). PyTorch's
    CUDA allocator caches freed blocks for the same reason. Returns whether the
    settings were applied (only on glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    # A fixed mmap threshold (the largest glibc accepts) also stops it raising the threshold on its own.
    return all([libc.mallopt(m_mmap_threshold, 32 << 20), libc.mallopt(m_trim_threshold, 1 << 30),
                libc.mallopt(m_top_pad, 64 << 20)])
