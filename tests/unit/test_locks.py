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
