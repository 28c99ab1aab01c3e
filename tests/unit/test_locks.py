"""Named cross-process locks, both kinds: ``flock`` in a folder (one host, SQLite) and PostgreSQL
advisory locks (replicas on one database). One holder at a time, across processes; a killed holder's
lock ends with it (a replica that dies mid-download must not block the others)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from condagate.store.locks import Locks, open_locks

from conftest import backend_database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_database_url(request.param) or f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture
def locks(database_url: str, tmp_path: Path) -> Locks:
    return open_locks(database_url, create_engine(database_url), tmp_path)


def _hold_in_child(database_url: str, name: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """Another process that takes the lock, says so on stdout, then sleeps until killed."""
    source = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from sqlalchemy import create_engine
        from condagate.store.locks import open_locks
        locks = open_locks({database_url!r}, create_engine({database_url!r}), Path({str(tmp_path)!r}))
        with locks.held({name!r}):
            print("held", flush=True)
            time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline().strip() == b"held"
    return child


def test_one_holder_at_a_time_in_one_process(locks: Locks) -> None:
    async def scenario() -> None:
        first = locks.lock("connector/1/noarch/a.conda")
        assert await first.acquire(timeout=1)
        second = locks.lock("connector/1/noarch/a.conda")
        assert not await second.acquire(timeout=0.3)  # held: the second waits, then gives up
        other = locks.lock("connector/1/noarch/b.conda")
        assert await other.acquire(timeout=1)  # another name is another lock
        first.release()
        assert await second.acquire(timeout=1)
        second.release()
        other.release()

    asyncio.run(scenario())


def test_held_excludes_threads(locks: Locks) -> None:
    inside: list[int] = []
    overlap: list[bool] = []

    def work(index: int) -> None:
        with locks.held("blob/abc"):
            inside.append(index)
            overlap.append(len(inside) > 1)
            time.sleep(0.05)
            inside.remove(index)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlap == [False] * 4


def test_a_killed_holders_lock_is_free_again(locks: Locks, database_url: str, tmp_path: Path) -> None:
    child = _hold_in_child(database_url, "migrations", tmp_path)
    try:
        waiter = locks.lock("migrations")
        assert not asyncio.run(waiter.acquire(timeout=0.3))  # another process holds it
        child.kill()
        child.wait()
        assert asyncio.run(waiter.acquire(timeout=10))
        waiter.release()
    finally:
        child.kill()
        child.wait()


def test_held_all_takes_every_name(locks: Locks) -> None:
    with locks.held_all(["blob/b", "blob/a", "blob/a"]):
        others = [locks.lock(name) for name in ("blob/a", "blob/b")]
        assert [asyncio.run(other.acquire(timeout=0.2)) for other in others] == [False, False]
    free = locks.lock("blob/a")
    assert asyncio.run(free.acquire(timeout=1))
    free.release()


def test_waiters_for_one_name_hold_one_database_connection(tmp_path: Path) -> None:
    """A burst of requests for one file in one process: one connection, not one per waiter (PostgreSQL
    only: a ``flock`` holds no connection)."""
    database_url = backend_database_url("postgresql")
    engine = create_engine(database_url)
    locks = open_locks(database_url, engine, tmp_path)

    def lock_connections() -> int:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'condagate-lock'"
            return int(connection.exec_driver_sql(query).scalar_one())

    async def scenario() -> tuple[int, list[bool]]:
        first = locks.lock("connector/1/linux-64/big.conda")
        assert await first.acquire(timeout=1)
        waiters = [locks.lock("connector/1/linux-64/big.conda") for _ in range(10)]
        waiting = [asyncio.create_task(waiter.acquire(timeout=5)) for waiter in waiters]
        await asyncio.sleep(0.5)
        during = await asyncio.to_thread(lock_connections)
        first.release()
        results = []
        for waiter, task in zip(waiters, waiting, strict=True):  # each in turn, as downloads would
            results.append(await task)
            waiter.release()
        return during, results

    during, results = asyncio.run(scenario())
    assert during == 1 and results == [True] * 10
    assert lock_connections() == 0
    engine.dispose()
