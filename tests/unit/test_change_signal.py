"""The change signal (store.change_signal), the lookups it guards (services.lookups), and its PostgreSQL
half (store.pg_listener) against the throwaway cluster: NOTIFY on commit only, never for quiet writes,
readers' fallback bound while the listener cannot vouch, reconnection, a clean stop."""

from __future__ import annotations

import os
import signal as signals
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from condagate.services.lookups import RecentLookups
from condagate.store.change_signal import ChangeSignal
from condagate.store.db import Database
from condagate.store.pg_listener import APPLICATION_NAME, ChangeListener, start_listener

from conftest import backend_database_url


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_processes_of_one_host_share_the_counter(tmp_path: Path) -> None:
    writer, reader = ChangeSignal(tmp_path / "run" / "changes"), ChangeSignal(tmp_path / "run" / "changes")
    try:
        before = reader.value()
        writer.bump()
        assert reader.value() != before
        assert reader.value() == writer.value()
        reader.heard()  # another host's change, heard by the reader's process only
        assert reader.value() != writer.value()
    finally:
        writer.close()
        reader.close()


def test_the_bound_is_none_only_while_every_writer_is_covered(tmp_path: Path) -> None:
    sqlite = ChangeSignal(tmp_path / "a" / "changes")  # every writer on this host
    postgres = ChangeSignal(tmp_path / "b" / "changes", max_age=30.0)
    try:
        assert sqlite.max_age() is None
        assert postgres.max_age() == 30.0  # no listener vouches
        postgres.vouch_until(time.monotonic() + 60)
        assert postgres.max_age() is None
        postgres.vouch_until(0.0)  # connection lost
        assert postgres.max_age() == 30.0
        postgres.vouch_until(time.monotonic() - 0.001)  # a heartbeat went unanswered
        assert postgres.max_age() == 30.0
    finally:
        sqlite.close()
        postgres.close()


def test_ready_entries_follow_the_signal_and_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signal = ChangeSignal(tmp_path / "run" / "changes", max_age=0.5)
    lookups = RecentLookups(signal)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    try:
        mark = signal.value()
        lookups.remember_ready("feed", "noarch", "located", mark)
        lookups.remember_ready_file("feed", "noarch", "a-1-0.conda", "feed-ref", "ab" * 32, mark)
        now[0] += 10.0
        # Not vouched: older than the signal's bound (the caller's 0.1 s or None is not what decides).
        assert lookups.ready_subdir("feed", "noarch", mark, None) is None
        assert lookups.ready_file("feed", "noarch", "a-1-0.conda", mark, None) is None
        signal.vouch_until(now[0] + 1.0)
        assert lookups.ready_subdir("feed", "noarch", mark, 0.1) == ("located", {})
        assert lookups.ready_file("feed", "noarch", "a-1-0.conda", mark, 0.1) == ("feed-ref", "ab" * 32)
        signal.heard()
        assert lookups.ready_subdir("feed", "noarch", signal.value(), 0.1) is None  # remembered before it
        assert lookups.ready_file("feed", "noarch", "a-1-0.conda", signal.value(), 0.1) is None
    finally:
        signal.close()


def test_without_a_signal_the_callers_bound_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = RecentLookups()
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    lookups.remember_ready("feed", "noarch", "located", 7)
    now[0] += 0.2
    assert lookups.ready_subdir("feed", "noarch", 7, None) == ("located", {})
    assert lookups.ready_subdir("feed", "noarch", 7, 0.1) is None


# --- PostgreSQL: the listener ---------------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[Database]:
    db = Database(backend_database_url("postgresql"))
    yield db
    db.dispose()


@pytest.fixture
def listening(database: Database, tmp_path: Path) -> Iterator[tuple[ChangeSignal, ChangeListener]]:
    signal = ChangeSignal(tmp_path / "run" / "changes", max_age=30.0)
    listener = start_listener(signal, database.engine)
    assert listener is not None
    try:
        assert wait_for(lambda: signal.max_age() is None), "the listener never vouched"
        yield signal, listener
    finally:
        signal.close()  # stops the listener
        assert not listener.thread_alive()


def _write(database: Database, quiet: bool = False) -> None:
    with database.write(quiet=quiet) as session:
        session.execute(text("SELECT 1"))


def test_a_commit_elsewhere_is_heard_and_quiet_or_rolled_back_writes_are_not(
    database: Database, listening: tuple[ChangeSignal, ChangeListener]
) -> None:
    signal, _ = listening
    before = signal.value()
    _write(database, quiet=True)
    with pytest.raises(RuntimeError), database.write() as session:
        session.execute(text("SELECT 1"))
        raise RuntimeError("rolled back")
    _write(database)
    # Notifications arrive in commit order: once the last write's is heard, any of the others would be too.
    assert wait_for(lambda: signal.value() != before)
    time.sleep(0.2)  # (only to let a wrongly sent duplicate arrive, so that the count below can catch it)
    assert signal.value() == before + 1


def test_the_listener_reconnects_and_readers_fall_back_meanwhile(
    database: Database, listening: tuple[ChangeSignal, ChangeListener]
) -> None:
    signal, listener = listening
    assert listener.connections == 1
    before = signal.value()
    url = database.engine.url
    maintenance = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(maintenance, autocommit=True) as admin:
        # No new connections for a moment, so that the listener stays disconnected while we look.
        admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false')
        try:
            terminated = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                (APPLICATION_NAME, url.database),
            ).fetchall()
            assert terminated == [(True,)]
            assert wait_for(lambda: signal.max_age() == 30.0), "readers must fall back while it is disconnected"
            time.sleep(0.3)  # a few refused reconnection attempts
            assert signal.max_age() == 30.0 and listener.connections == 1
        finally:
            admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true')
        assert wait_for(lambda: listener.connections == 2 and signal.max_age() is None)
    # Reconnected: one change reported for whatever was committed while nobody listened.
    assert signal.value() == before + 1
    _write(database)
    assert wait_for(lambda: signal.value() == before + 2)


def test_a_listener_that_cannot_connect_keeps_readers_on_the_fallback(tmp_path: Path) -> None:
    from servers import free_port

    signal = ChangeSignal(tmp_path / "run" / "changes", max_age=30.0)
    listener = ChangeListener(signal, {"host": "127.0.0.1", "port": free_port(), "dbname": "x", "connect_timeout": 1})
    listener.start()
    try:
        time.sleep(0.3)  # a few attempts (back-off from 0.1 s)
        assert signal.max_age() == 30.0
        assert listener.connections == 0
    finally:
        signal.attach(listener)
        signal.close()
    assert not listener.thread_alive()


def test_a_silent_connection_stops_vouching_until_it_answers_again(
    database: Database, listening: tuple[ChangeSignal, ChangeListener]
) -> None:
    """The listener's server process frozen (SIGSTOP): no error, no answer — the heartbeat's notification
    does not come back, so readers fall back; thawed, it vouches again on the same connection."""
    signal, listener = listening
    url = database.engine.url
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)) as admin:
        pids = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            (APPLICATION_NAME, url.database),
        ).fetchall()
    assert len(pids) == 1
    try:
        os.kill(pids[0][0], signals.SIGSTOP)
    except PermissionError:
        pytest.skip("the PostgreSQL server runs as another user here")
    try:
        assert wait_for(lambda: signal.max_age() == 30.0), "a silent connection must not be vouched for"
    finally:
        os.kill(pids[0][0], signals.SIGCONT)
    assert wait_for(lambda: signal.max_age() is None)
    assert listener.connections == 1
