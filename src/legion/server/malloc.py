"""Large buffers go back to the operating system when they are freed.

glibc's malloc serves a large allocation (a request body, its parsed text, the encoded
input) from its own mapping, which is unmapped when it is freed; but each time such a
mapping is freed it raises the size it maps for from then on ("dynamic mmap threshold",
up to 32 MiB). After the first few large bodies, the next ones come from the heap and stay
in the process when freed: a server that took a burst of 10 MB bodies kept that memory.
Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``) turns the adjustment off, so every
allocation of ``MMAP_THRESHOLD`` bytes or more is mapped and unmapped on its own. Small
objects are Python's own allocator's and are not concerned.

Elsewhere than on glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("legion.server")

MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; whether it was done."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return done


__all__ = ["MMAP_THRESHOLD", "return_large_buffers"]
