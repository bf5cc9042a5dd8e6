"""How this process's C library treats freed memory (a CPU speed setting of the command line)."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel. By default a
    large block (over 128 KiB, a threshold that rises towards 32 MiB as blocks are freed) is a fresh
    mmap, zero-filled page by page on first touch and unmapped when freed, so a network's forward pass
    faults its activations in anew on every call.
    Measured on the 2-core CPU, scoring at batch 8, three pairs of processes in turn: DiffusionAD
    `cpu` 2.3× fewer page faults and 10–23 % less time per image, TimeNet `cpu` 3.5× fewer and 8–19 %.
    The process keeps its peak memory until it exits; process-wide, so the command line calls it, not
    the library. False where the C library is not glibc (nothing changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
