"""Named cross-process locks behind one interface: one upstream download per file, one writer per
blob, one migration at a time -- whether the competing requests land in one worker, in several, or
on several replicas.

- ``FileLocks``: ``flock`` on files in the data folder (one host; SQLite).
- ``DatabaseLocks``: PostgreSQL session advisory locks, each on a dedicated connection, so every
  replica on the database is excluded and a killed process's locks end with its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from anyio.to_thread import run_sync as run_in_threadpool

from condagate.errors import Busy

log = logging.getLogger(__name__)


class Lock(Protocol):
    async def acquire(self, timeout: float) -> bool:
        """Wait (without blocking the event loop) until the lock is ours; False after ``timeout``."""

    def release(self) -> None: ...


class Locks(Protocol):
    description: str

    def lock(self, name: str) -> Lock:
        """A lock to take from async code and release later (it may outlive the request's handler)."""

    def held(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold the named lock for a short critical section (blocking; worker threads, not the event loop)."""


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


async def _poll(try_once: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not await try_once():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True


class FileLock:
    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / (_digest(name).hex()[:40] + ".lock")
        self._fd: int | None = None

    async def acquire(self, timeout: float) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

        async def try_once() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            if not await _poll(try_once, timeout):
                os.close(fd)
                return False
        except BaseException:  # cancelled while waiting
            os.close(fd)
            raise
        self._fd = fd
        return True

    def __del__(self) -> None:
        # A response that was never sent (the client left first) must not keep the file locked.
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class FileLocks:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"file locks in {folder}"

    def lock(self, name: str) -> FileLock:
        return FileLock(self.folder, name)

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / (_digest(name).hex()[:40] + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# The server's side of the connection: a lock whose holder's host died (power, network) must end in
# seconds, not after the operating system's default keepalive (two hours): the session's keepalives.
_SERVER_KEEPALIVES = (
    "SELECT set_config('tcp_keepalives_idle', '10', false), set_config('tcp_keepalives_interval', '5', false), "
    "set_config('tcp_keepalives_count', '3', false)"
)


def _connect(params: dict[str, Any]) -> Any:
    import psycopg

    try:
        connection = psycopg.connect(autocommit=True, **params)
    except psycopg.OperationalError as exc:  # e.g. "too many clients": a bound, not a bug
        log.warning("no database connection for a lock: %s", str(exc).strip()[:300])
        raise Busy("the database has no connection free for this request right now: try again shortly") from None
    try:
        connection.execute(_SERVER_KEEPALIVES)
    except BaseException:
        connection.close()
        raise
    return connection


def _advisory_key(name: str) -> int:
    """The signed 64-bit key PostgreSQL's advisory locks take, from the lock's name."""
    return int.from_bytes(_digest("condagate:" + name)[:8], "big", signed=True)


class DatabaseLock:
    def __init__(self, params: dict[str, Any], name: str) -> None:
        self._params = params
        self._key = _advisory_key(name)
        self._connection: Any = None

    async def acquire(self, timeout: float) -> bool:
        connection = await run_in_threadpool(lambda: _connect(self._params))

        async def try_once() -> bool:
            row = await run_in_threadpool(
                lambda: connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            )
            return bool(row and row[0])

        try:
            if not await _poll(try_once, timeout):
                connection.close()
                return False
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return True

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        # Closing the session ends its advisory locks (also what happens when the process dies).
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


class DatabaseLocks:
    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params
        self.description = "PostgreSQL advisory locks"

    def lock(self, name: str) -> DatabaseLock:
        return DatabaseLock(self._params, name)

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        with _connect(self._params) as connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (_advisory_key(name),))
            yield  # leaving the block closes the connection, which ends the lock


def open_locks(database_url: str, engine: Any, data_dir: Path) -> Locks:
    """Advisory locks on PostgreSQL (replicas share the database), ``flock`` in the data folder on SQLite."""
    if database_url.startswith("sqlite"):
        # Next to the database file: servers sharing one SQLite file (one host) share the locks too.
        database = database_url.removeprefix("sqlite:///")
        if database_url.startswith("sqlite:///") and database and database != ":memory:":
            return FileLocks(Path(database).parent / "locks")
        return FileLocks(data_dir / "locks")
    from condagate.store.pg_listener import connect_args

    return DatabaseLocks({**connect_args(engine), "application_name": "condagate-lock"})
