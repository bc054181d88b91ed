"""glibc's malloc, set for training on the CPU: large tensors are reused, not page-faulted anew.

A training step on the CPU allocates and frees the same large activations every step. glibc
serves blocks above its mmap threshold (128 KiB at first, raised dynamically up to 32 MiB)
with a fresh `mmap` and returns them to the system on `free`, so every step touches those
pages for the first time again: a page fault and a zeroed page per 4 KiB. A CIFAR network's
first-stage maps are 8 MiB each at batch 128 (16 channels of 32x32 floats), and RegNet's cells
add several such maps per block, gates and their gradients, so this is a large share of a step. PyTorch's CPU tuning guide
recommends an allocator that keeps freed memory (jemalloc or tcmalloc through LD_PRELOAD);
the same effect with glibc is three `mallopt` settings, made here in-process:

- M_MMAP_THRESHOLD = 32 MiB (glibc's maximum): blocks up to that size come from the heap;
- M_TRIM_THRESHOLD = 2 GiB: freed heap memory is kept for the next step, not given back;
- M_TOP_PAD = 256 MiB: the heap grows in large steps.

The cost: the process keeps its peak heap until it exits (as with jemalloc or tcmalloc).
Measured with benchmarks/step_time.py (see the step-time section of docs/performance.md).
Elsewhere than glibc (macOS, musl, Windows) this does nothing. Set SELFREG_MALLOC=system to
leave the allocator as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # <malloc.h>
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: (2 << 30) - 1, M_TOP_PAD: 256 << 20}

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Apply SETTINGS once per process; True when glibc took them."""
    global _done
    if _done is None:
        _done = os.environ.get("SELFREG_MALLOC", "") != "system" and _apply()
    return _done


def _apply() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
