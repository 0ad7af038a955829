"""Keep freed memory in the training process instead of handing it back to the operating system.

Each training step of the conv VAE allocates and frees activation buffers of about 12 MB. glibc's
malloc hands freed memory at the top of its heap back to the OS (and serves big blocks from fresh
mmap calls), so the next step page-faults the same amount back in, and the kernel zeroes every
page. Raising malloc's two thresholds keeps that memory for the next step, with the same numbers:
on this project's 2-core machine, 1.34x faster training with the other speed options off, 1.15x on
top of them (docs/speed.md). What a phase kept is handed back before the next one
(`hand_back_freed_memory`, between training and evaluation), so it never adds to the next phase's
peak. Both are no-ops where the C library is not glibc.
"""

import ctypes
import ctypes.util
from typing import Optional

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest: blocks up to 32 MiB come from the heap, reused
TRIM_THRESHOLD_BYTES = 2**30  # free memory at the heap's top is handed back only above 1 GiB


def _glibc_function(name: str) -> Optional[ctypes._CFuncPtr]:
    """Give back the C library's function `name`, or None where it has none (macOS, Windows, musl)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse; give back whether it took."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    took_mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    took_trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return took_mmap and took_trim


def hand_back_freed_memory() -> None:
    """Hand the free memory the process keeps back to the OS (glibc's malloc_trim)."""
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim.argtypes = [ctypes.c_size_t]
        malloc_trim(0)
