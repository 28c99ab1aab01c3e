"""Giving memory a large build freed back to the operating system.

glibc's malloc keeps freed heap pages for reuse: after a large subdir's blocks let go of their JSON
(hundreds of MB in ~1 MB pieces), the worker's RSS would not move. ``malloc_trim`` returns those pages
(~20 ms after a 500,000-record build); elsewhere (another C library) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def return_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
