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
from collections.abc import Iterable, Iterator
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

    def held_all(self, names: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """``held`` for several names at once, taken in sorted order (no two holders wait on each other)."""


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
    def held_all(self, names: Iterable[str]) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self.held(name))
            yield

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


# Lock connections one process opens at most; more waiters wait here, holding no connection.
MAX_LOCK_CONNECTIONS = 32


class DatabaseLock:
    """An advisory lock taken from async code. Waiters for one name in one process queue in memory first,
    so only one of them holds a database connection (a burst of requests for one file costs one); and
    a process holds at most ``MAX_LOCK_CONNECTIONS`` such connections."""

    def __init__(self, owner: DatabaseLocks, name: str) -> None:
        self._owner = owner
        self._name = name
        self._key = _advisory_key(name)
        self._connection: Any = None
        self._local: asyncio.Lock | None = None  # this process's queue for the name, while held

    async def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        local = self._owner._enter(self._name)
        queued_first = False
        connection = None
        try:
            try:
                await asyncio.wait_for(local.acquire(), timeout)
                queued_first = True
            except TimeoutError:
                return False
            connection = await self._connect(deadline)
            if connection is None:
                return False

            async def try_once() -> bool:
                row = await run_in_threadpool(
                    lambda: connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
                )
                return bool(row and row[0])

            if await _poll(try_once, max(0.0, deadline - time.monotonic())):
                self._connection, self._local = connection, local
                return True
            return False
        finally:
            if self._connection is None:  # not taken (timed out, failed, cancelled): undo every step
                if connection is not None:
                    self._close(connection)
                if queued_first:
                    local.release()
                self._owner._exit(self._name)

    async def _connect(self, deadline: float) -> Any:
        while self._owner.open_connections >= MAX_LOCK_CONNECTIONS:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        self._owner.open_connections += 1
        try:
            return await run_in_threadpool(lambda: _connect(self._owner.params))
        except BaseException:
            self._owner.open_connections -= 1
            raise

    def _close(self, connection: Any) -> None:
        with contextlib.suppress(Exception):
            connection.close()
        self._owner.open_connections -= 1

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        # Closing the session ends its advisory locks (also what happens when the process dies).
        if self._connection is not None and self._local is not None:
            self._close(self._connection)
            self._connection = None
            self._local.release()
            self._local = None
            self._owner._exit(self._name)


class DatabaseLocks:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.description = "PostgreSQL advisory locks"
        self.open_connections = 0  # DatabaseLock connections of this process
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}  # name -> (its queue, how many use it)

    def lock(self, name: str) -> DatabaseLock:
        return DatabaseLock(self, name)

    def _enter(self, name: str) -> asyncio.Lock:
        local, users = self._local.get(name) or (asyncio.Lock(), 0)
        self._local[name] = (local, users + 1)
        return local

    def _exit(self, name: str) -> None:
        local, users = self._local[name]
        if users <= 1:
            del self._local[name]
        else:
            self._local[name] = (local, users - 1)

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        with self.held_all([name]):
            yield

    @contextlib.contextmanager
    def held_all(self, names: Iterable[str]) -> Iterator[None]:
        with _connect(self.params) as connection:  # one connection, however many names
            for name in sorted(set(names)):
                connection.execute("SELECT pg_advisory_lock(%s)", (_advisory_key(name),))
            yield  # leaving the block closes the connection, which ends the locks


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
