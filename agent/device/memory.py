"""Process memory settings: fewer glibc malloc arenas.

glibc gives threads their own malloc arenas, up to 8 per core; a threaded agent (cameras, inference,
store, sync, web requests) then holds tens of MB of RSS in half-empty arenas, growing with every new
thread. Measured with the health page polled (benchmarks/web_overhead.py): RSS climbed by ~90 MB
over 90 s with the default, and stayed flat with a few arenas (ARENAS). Setting it at run time (mallopt) applies
to threads created afterwards, which is every thread the agent makes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 4


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """True when glibc took the limit; False elsewhere (musl, macOS): nothing to do there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library: no lookup, no subprocess
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_ARENA_MAX, arenas) == 1
    log.debug("malloc arenas limited to %d: %s", arenas, done)
    return done


def trim_heap() -> bool:
    """Give freed heap memory back to the system (glibc malloc_trim). Loading a model parses and
    rewrites it in memory, and glibc keeps what that freed: 16 MB of RSS for a YOLOv8n."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return malloc_trim(0) == 1
