"""A change signal shared by every process on one host: one 64-bit counter in a memory-mapped file
(``DATA_DIR/run/changes``) that every database write bumps after its commit.

Readers compare the counter with the value they saw before reading the database (nanoseconds, no
system call): unchanged means nothing was committed since, so what they built from that read is
still current. Bumps take an ``flock`` (writes are rare); reads take none (an aligned 8-byte load).
Processes on other hosts (PostgreSQL replicas) do not share the file: readers there also bound how
long they trust a read (``services.lookups``).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path

_COUNTER = struct.Struct("<Q")


class ChangeSignal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _COUNTER.size:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size < _COUNTER.size:
                    os.ftruncate(self._fd, mmap.PAGESIZE)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, mmap.PAGESIZE)

    def value(self) -> int:
        return int(_COUNTER.unpack_from(self._map, 0)[0])

    def bump(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _COUNTER.pack_into(self._map, 0, (self.value() + 1) % (1 << 64))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
