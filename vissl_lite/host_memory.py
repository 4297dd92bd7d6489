"""On the CPU, keep the memory a step frees for the next step (glibc ``mallopt``): training, eval.

A CPU training step allocates and frees the same large tensors every step: a ResNet-18's
activations at batch 128 and 32 px are 34 MB each, over a gigabyte in all. glibc's malloc serves
blocks above its mmap threshold (dynamic, at most 32 MB) with fresh ``mmap`` pages that ``free``
unmaps again, and gives the free top of its heap back to the kernel past its trim threshold. The
next step then faults the same memory back in as zeroed pages, in the kernel, on the training
process's own time. Measured (issue 28, ``benchmarks/throughput.py`` on a 2-core machine, SimCLR
ResNet-18 batch 128 at 32 px, docs/benchmarks.md): 570,000 minor page faults and 0.9 s of system
time per 4.1 s step.

``reused_host_memory(True)`` serves every block from the heap (``M_MMAP_MAX=0``) and never trims
it (``M_TRIM_THRESHOLD``), so freed activations are reused by the next step: under 3,500 faults
and 0.03 s of system time per step, 34.8 against 31.1 images/s end to end (medians of 3 and 2
runs), for 5% more peak resident memory at 32 px and 22% at 224 px (the heap keeps its largest
size until the run ends). PyTorch's CPU performance guide gets the same effect by preloading
jemalloc or tcmalloc; ``mallopt`` needs neither an install nor ``LD_PRELOAD``. On leaving,
glibc's default values are put back (its dynamic adjustment of the thresholds stays off) and the
held memory is returned (``malloc_trim``), so a script or a test session that trains in-process
keeps its usual allocator afterwards. DataLoader workers forked during the run inherit the
setting.

``vissl-lite eval`` (and each part of ``eval report``) does the same on CPU: a kNN evaluation
(ResNet-18 features of 5,000 + 1,000 CIFAR-10 images, batch 256, 2 cores) took 28.6-29.6 s
with it against 36.0-38.1 s without, 0.4 against 12-13 million page faults.

Only glibc's ``mallopt`` has these meanings; elsewhere (macOS, musl) this does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from typing import Iterator, Optional

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: glibc's defaults (malloc/malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2 ** 31 - 1     # mallopt takes an int


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc (the only one whose ``mallopt`` does what is set here);
    looked up once per process."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def supported() -> bool:
    return _glibc() is not None


@contextlib.contextmanager
def reused_host_memory(enabled: bool) -> Iterator[bool]:
    """While inside: freed host memory stays in the process for reuse (when ``enabled`` and the
    C library is glibc). Yields whether the setting is in effect."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
