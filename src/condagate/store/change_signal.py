"""The change signal: what tells a process that something a channel serves may have changed since it
read the database, without asking the database.

Two halves, one value (``ChangeSignal.value``):
- the host's: a 64-bit counter in a memory-mapped file (``DATA_DIR/run/changes``) that every database
  write on this host bumps after its commit, read without a system call (an aligned 8-byte load;
  bumps take an ``flock``, writes are rare);
- other hosts' (PostgreSQL): a process-local counter that this process's change listener
  (``store.pg_listener``) bumps when a ``NOTIFY`` of another process's commit arrives.

Readers compare the value with what they saw before reading the database: unchanged means nothing was
committed since, so what they built from that read is still current. That holds for every writer the
signal covers: all of them on SQLite (every writer is on this host), and on PostgreSQL while the
listener vouches for its connection. Otherwise readers also bound how long they trust a read
(``max_age``).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from pathlib import Path
from typing import Protocol

_COUNTER = struct.Struct("<Q")


class _Listener(Protocol):
    def stop(self) -> None: ...


class ChangeSignal:
    def __init__(self, path: Path, max_age: float | None = None) -> None:
        """``max_age``: how long a read may be trusted while other hosts' changes are not covered
        (PostgreSQL without a vouching listener); None where every writer is on this host (SQLite)."""
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
        self._fallback_max_age = max_age
        self._every_writer_here = max_age is None
        self._heard = 0  # other hosts' changes, as this process's listener heard of them (one writer thread)
        self._vouched_until = 0.0  # monotonic time until which the listener vouches for its connection
        self._listener: _Listener | None = None

    def value(self) -> int:
        return int(_COUNTER.unpack_from(self._map, 0)[0]) + self._heard

    def bump(self) -> None:
        """After a commit in this process: every process on the host sees it."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _COUNTER.pack_into(self._map, 0, (int(_COUNTER.unpack_from(self._map, 0)[0]) + 1) % (1 << 64))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def heard(self) -> None:
        """The listener heard of a commit elsewhere (or may have missed some: after a reconnect)."""
        self._heard += 1

    def vouch_until(self, deadline: float) -> None:
        """The listener: every commit elsewhere up to ``deadline`` (``time.monotonic()``) reaches
        ``heard`` unless the listener says otherwise first; 0 withdraws (connection lost)."""
        self._vouched_until = deadline

    def max_age(self) -> float | None:
        """How long a read may be trusted while the value stands still: None (as long as it stands
        still) when the signal covers every writer now, else the fallback bound."""
        if self._every_writer_here or time.monotonic() < self._vouched_until:
            return None
        return self._fallback_max_age

    def attach(self, listener: _Listener) -> None:
        """A listener that feeds ``heard`` and ``vouch_until``; ``close`` stops it."""
        self._listener = listener

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self._map.close()
        os.close(self._fd)
