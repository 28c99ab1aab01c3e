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


# Worth a trim from this many bytes let go of (a 500,000-record subdir's JSON, shard bodies, a written
# JSON file's decompressed chunks); one more record frees one block and does not pay it.
WORTH_RETURNING = 64 * 1024 * 1024


def return_freed_memory(freed: int = WORTH_RETURNING) -> None:
    """Give freed heap pages back, when ``freed`` bytes (a caller's estimate) make it worth the ~20 ms."""
    trim = _malloc_trim()
    if trim is not None and freed >= WORTH_RETURNING:
        trim(0)
