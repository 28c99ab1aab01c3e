"""Replicas on one PostgreSQL database: a change committed on one is visible on the others through the
change listener's NOTIFY (store.pg_listener), not through the fallback bound.

Three ``condagate serve`` processes share the database and the blob folder but not a data folder, so no
memory-mapped change counter either: A writes; B listens; C runs without a listener (the control).
Every server trusts what it read for ``CONDAGATE_CHANGE_MAX_AGE_SECONDS=30`` when nothing vouches for
other replicas' changes, so a change that shows on B within seconds was carried by the notification,
and C, still serving what it read before, shows that nothing else would have carried it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import psycopg
import pytest
import zstandard
from cryptography.fernet import Fernet

from conftest import backend_database_url, upload
from servers import Server, start_server, wait_until

FALLBACK_SECONDS = 30.0  # without a notification, a replica would keep what it read this long
WITHIN_SECONDS = 5.0  # a functional bound (a sixth of the fallback), not a performance figure
LISTENER = "condagate change listener"  # store.pg_listener.APPLICATION_NAME


class Replicas:
    def __init__(self, writer: Server, listening: Server, deaf: Server, database_url: str) -> None:
        self.writer, self.listening, self.deaf = writer, listening, deaf
        url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.database = url.rsplit("/", 1)[1]
        self._url = url

    def listener_pids(self) -> set[int]:
        """The listeners that listen (both LISTENs done: on the changes and their own heartbeat channel)."""
        with psycopg.connect(self._url, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s "
                "AND state = 'idle' AND (query LIKE 'LISTEN condagate_heartbeat%%' OR query LIKE 'SELECT pg_notify%%')",
                (LISTENER, self.database),
            ).fetchall()
        return {row[0] for row in rows}

    def terminate_listeners(self) -> int:
        with psycopg.connect(self._url, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                (LISTENER, self.database),
            ).fetchall()
        return len(rows)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    database_url = backend_database_url("postgresql")
    root = tmp_path_factory.mktemp("replicas")
    shared = {
        "CONDAGATE_STORAGE_URL": str(root / "blobs"),  # one blob folder (S3 is a later issue)
        "CONDAGATE_SECRET_KEY": Fernet.generate_key().decode(),
        "CONDAGATE_CHANGE_MAX_AGE_SECONDS": str(FALLBACK_SECONDS),
    }
    started: list[Server] = []
    try:
        for name, extra in (("a", {}), ("b", {}), ("c", {"CONDAGATE_CHANGE_LISTENER": "off"})):
            started.append(start_server(root / name, database_url, extra_env={**shared, **extra}))
        group = Replicas(started[0], started[1], started[2], database_url)
        # A's and B's listeners (one worker each; C has none) listen before anything is read. (More where
        # CONDAGATE_TEST_POSTGRES_URL gives every test the same database.)
        assert wait_until(lambda: len(group.listener_pids()) >= 2, 30, every=0.005), [s.log() for s in started]
        yield group
    finally:
        for server in reversed(started):
            server.stop()


def _listing(server: Server, feed: str, subdir: str, through_route: bool = False) -> dict[str, set[str]]:
    """What the replica lists, from repodata.json, its .zst and the shard index (file and package names)."""
    query = "?through=route" if through_route else ""  # a query string skips the fast lane
    base = f"/conda/{feed}/{subdir}/"
    with server.client() as client:
        plain = client.get(base + "repodata.json" + query)
        zst = client.get(base + "repodata.json.zst" + query)
        index = client.get(base + "repodata_shards.msgpack.zst" + query)
    assert plain.status_code == zst.status_code == index.status_code == 200
    from_zst = zstandard.ZstdDecompressor().decompress(zst.content)
    return {
        "json": set(plain.json()["packages.conda"]),
        "zst": set(json.loads(from_zst)["packages.conda"]),
        "shards": set(msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index.content))["shards"]),
    }


def _lists(server: Server, feed: str, package: Path, name: str) -> bool:
    listing = _listing(server, feed, "linux-64")
    return package.name in listing["json"] and package.name in listing["zst"] and name in listing["shards"]


def _lists_none(server: Server, feed: str, package: Path, name: str) -> bool:
    listing = _listing(server, feed, "linux-64")
    return package.name not in listing["json"] | listing["zst"] and name not in listing["shards"]


def _feed_with_one_package(replicas: Replicas, make_package: Any) -> tuple[str, Path]:
    """A feed on A with one package, resolved (and so remembered by the fast lane) on B and C."""
    feed = "replicas-" + str(time.monotonic_ns())
    with replicas.writer.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
    first = make_package(name="first" + str(time.monotonic_ns()), subdir="linux-64")
    assert upload(replicas.writer, feed, first).status_code == 201
    for reader in (replicas.listening, replicas.deaf):
        for _ in range(2):  # the route resolves and builds; the second round comes from the fast lane
            assert first.name in _listing(reader, feed, "linux-64")["json"]
    return feed, first


def _upload_and_time(replicas: Replicas, feed: str, package: Path, name: str) -> float:
    assert upload(replicas.writer, feed, package).status_code == 201
    started = time.monotonic()
    assert wait_until(lambda: _lists(replicas.listening, feed, package, name), WITHIN_SECONDS, every=0.005), (
        f"{package.name} was not listed on the listening replica within {WITHIN_SECONDS} s"
    )
    return time.monotonic() - started


def test_an_upload_on_one_replica_is_listed_on_another_through_the_notification(
    replicas: Replicas, make_package: Any
) -> None:
    feed, first = _feed_with_one_package(replicas, make_package)
    name = "second" + str(time.monotonic_ns())
    second = make_package(name=name, subdir="linux-64")
    elapsed = _upload_and_time(replicas, feed, second, name)
    print(f"listed on the other replica {elapsed * 1000:.1f} ms after A's 201")
    # The control: C (no listener) still serves what it read before, though the database has the file:
    # nothing but the notification carried the change to B.
    assert _listing(replicas.deaf, feed, "linux-64")["json"] == {first.name}
    assert second.name in _listing(replicas.deaf, feed, "linux-64", through_route=True)["json"]
    # B serves the file itself too (the blob folder is shared).
    with replicas.listening.client() as client:
        assert client.get(f"/conda/{feed}/linux-64/{second.name}").content == second.read_bytes()


def test_a_deletion_on_one_replica_disappears_on_another(replicas: Replicas, make_package: Any) -> None:
    feed, first = _feed_with_one_package(replicas, make_package)
    name = "doomed" + str(time.monotonic_ns())
    doomed = make_package(name=name, subdir="linux-64")
    _upload_and_time(replicas, feed, doomed, name)
    assert _lists(replicas.listening, feed, doomed, name)  # remembered by B's fast lane again
    with replicas.writer.admin() as admin:
        assert admin.delete(f"/api/feeds/{feed}/files/linux-64/{doomed.name}").status_code in (200, 204)
    assert wait_until(lambda: _lists_none(replicas.listening, feed, doomed, name), WITHIN_SECONDS, every=0.005)
    assert _lists(replicas.listening, feed, first, first.name.split("-")[0])


def test_changes_propagate_after_the_listeners_connections_are_killed(replicas: Replicas, make_package: Any) -> None:
    before = replicas.listener_pids()
    assert len(before) >= 2
    assert replicas.terminate_listeners() >= 2
    reconnected = wait_until(lambda: len(replicas.listener_pids() - before) >= 2, 30, every=0.005)
    assert reconnected, "the listeners did not reconnect"
    # B resolves the feed after its listener is back, so only a notification can move it from here.
    feed, _ = _feed_with_one_package(replicas, make_package)
    name = "after" + str(time.monotonic_ns())
    _upload_and_time(replicas, feed, make_package(name=name, subdir="linux-64"), name)
    assert "lost its connection" in replicas.listening.log()
