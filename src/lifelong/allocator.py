"""Keep freed tensor memory in the process instead of handing it back to the OS after every request.

Scoring allocates the same large temporaries on every request (DIN's (candidates x behaviors x width)
activations, a long-sequence search's (candidates x keys) scores). glibc's malloc serves blocks above its
mmap threshold with fresh ``mmap`` calls and returns them with ``munmap`` on free, and it trims the top of
its heaps when they shrink; either way the next request's pages are new, and touching them costs a page
fault per 4 KiB. On the serving DIN of ``benchmarks/serve_load.py`` (200 candidates, L = 50, one thread)
that was about half the time of a request: 7.9 ms against 3.5 ms with the settings below (measured
2026-12-07 on the two-core AMD EPYC machine of the project).

:func:`keep_freed_memory` raises the mmap threshold to glibc's maximum (32 MiB: larger blocks still map
directly) and the trim threshold to 1 GiB, so freed blocks are reused. The process's resident size then
stays at its peak working set instead of shrinking between requests: meant for a serving process and for
latency benchmarks, where that peak is reached on every request anyway. ``lifelong serve`` calls it unless
``LIFELONG_MALLOC=default`` is set. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed blocks (see the module docstring); True when the settings took
    effect, False where there is no glibc or ``LIFELONG_MALLOC=default`` asks to leave malloc alone."""
    if os.environ.get("LIFELONG_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
