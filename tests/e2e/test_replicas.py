"""Replicas: two ``condagate serve`` processes on one PostgreSQL database and one S3 bucket (moto's
server), each with a data folder of its own, requests alternating between them -- what a site behind
a load balancer runs (README, "Replicas: S3 storage and several servers").

- an upload on A is listed on B (repodata.json, its .zst, the shard index);
- 20 concurrent misses for one upstream file, spread over both, make one upstream GET (the advisory
  lock is shared by the replicas) and every client gets the same, right bytes;
- A killed (SIGKILL, every process of it) in the middle of a proxied download: its lock ends with its
  database connection, B serves the file, and nothing half-stored is left in the bucket or the temp
  folders (A's leftover is removed when A starts again);
- two replicas started together on an empty database both come up, the schema migrated once, to head.

PostgreSQL only: advisory locks and the change notification are what make replicas work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import psycopg
import pytest
import zstandard
from cryptography.fernet import Fernet

from conftest import backend_database_url, upload
from package_factory import PackageSpec
from s3_server import S3Server, running_s3, server_env
from servers import Server, start_server
from upstream_channel import UpstreamChannel

SMALL = PackageSpec("crowded", "1.0", "0", subdir="linux-64", files={"lib/crowded.bin": os.urandom(300_000)})
# Above proxy_verify_before_send_bytes (8 MiB): streamed to its first client while it downloads.
LARGE = PackageSpec("hefty", "1.0", "0", subdir="linux-64", files={"lib/hefty.bin": os.urandom(12 * 1024 * 1024)})
PAUSE_AT = 3 * 1024 * 1024  # the upstream sends this much of LARGE, then holds the rest


def _poll(condition: Any, seconds: float = 30.0) -> bool:
    """A functional bound (the change signal's figures are the bench's), not a timing assertion."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def _plain_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (granian's workers and whatever they started), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_hard(server: Server) -> None:
    """SIGKILL the replica: its main process and every worker at once (no clean-up runs anywhere)."""
    pids = [server.process.pid, *_descendants(server.process.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    assert _poll(lambda: not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids), 30)


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


class Replicas:
    def __init__(self, root: Path, database_url: str, s3: S3Server, bucket: str, env: dict[str, str]) -> None:
        self.root, self.database_url, self.s3, self.bucket, self.env = root, database_url, s3, bucket, env
        self.servers: dict[str, Server] = {}

    def start(self, name: str) -> Server:
        self.servers[name] = start_server(self.root / name, self.database_url, extra_env=self.env)
        return self.servers[name]

    @property
    def a(self) -> Server:
        return self.servers["a"]

    @property
    def b(self) -> Server:
        return self.servers["b"]

    def alternating(self) -> Iterator[Server]:
        while True:
            yield self.a
            yield self.b

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def lock_connections(self) -> int:
        """Advisory locks held now on the database (by any replica)."""
        with psycopg.connect(_plain_url(self.database_url), autocommit=True) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
            ).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamChannel]:
    channel = UpstreamChannel(tmp_path_factory.mktemp("replicas-upstream") / "channel")
    channel.add(SMALL)
    channel.add(LARGE)
    channel.index()
    channel.start()
    yield channel
    channel.faults.resume.set()
    channel.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    backend_database_url("postgresql")  # skips here, before moto starts, where there is no PostgreSQL
    with running_s3(tmp_path_factory.mktemp("replicas-s3")) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Replicas]:
    database_url = backend_database_url("postgresql")
    bucket = s3.new_bucket()
    env = {
        **server_env(s3.url, bucket, "condagate"),
        # Every replica decrypts the upstream credentials the others stored: one key for all.
        "CONDAGATE_SECRET_KEY": Fernet.generate_key().decode(),
    }
    group = Replicas(tmp_path_factory.mktemp("replicas"), database_url, s3, bucket, env)
    try:
        group.start("a")
        group.start("b")
        yield group
    finally:
        group.stop()


def _record(upstream: UpstreamChannel, spec: PackageSpec) -> tuple[str, dict[str, Any]]:
    repodata = json.loads((upstream.root / spec.subdir / "repodata.json").read_bytes())
    for filename, record in repodata["packages.conda"].items():
        if record["name"] == spec.name:
            return filename, record
    raise AssertionError(f"{spec.name} is not in the upstream's repodata")


def _proxy_feed(replicas: Replicas, upstream: UpstreamChannel) -> str:
    connector, feed = "up-" + uuid.uuid4().hex[:8], "proxy-" + uuid.uuid4().hex[:8]
    with replicas.a.admin() as admin:
        assert admin.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 201
        assert admin.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
    for server in (replicas.a, replicas.b):  # both know the upstream's repodata before any package is asked
        with server.client() as client:
            assert client.get(f"/conda/{feed}/linux-64/repodata.json").status_code == 200
    return feed


def _listing(server: Server, feed: str) -> dict[str, set[str]]:
    base = f"/conda/{feed}/linux-64/"
    with server.client() as client:
        plain = client.get(base + "repodata.json")
        zst = client.get(base + "repodata.json.zst")
        index = client.get(base + "repodata_shards.msgpack.zst")
    assert plain.status_code == zst.status_code == index.status_code == 200
    shards = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index.content))["shards"]
    return {
        "json": set(plain.json()["packages.conda"]),
        "zst": set(json.loads(zstandard.ZstdDecompressor().decompress(zst.content))["packages.conda"]),
        "shards": set(shards),
    }


def _blob_key(sha256: str) -> str:
    return f"condagate/blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _temp_files(server: Server) -> list[Path]:
    folder = server.data_dir / "tmp"
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def test_an_upload_on_a_is_listed_on_b(replicas: Replicas, make_package: Any) -> None:
    feed = "hosted-" + uuid.uuid4().hex[:8]
    with replicas.a.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
    first = make_package(name="first" + uuid.uuid4().hex[:6], subdir="linux-64")
    assert upload(replicas.a, feed, first).status_code == 201
    assert _poll(lambda: first.name in _listing(replicas.b, feed)["json"])  # B reads the feed (and keeps it)
    name = "second" + uuid.uuid4().hex[:6]
    second = make_package(name=name, subdir="linux-64")
    assert upload(replicas.a, feed, second).status_code == 201

    def listed_on_b() -> bool:
        listing = _listing(replicas.b, feed)
        return second.name in listing["json"] and second.name in listing["zst"] and name in listing["shards"]

    assert _poll(listed_on_b), _listing(replicas.b, feed)
    # The bytes are in the bucket, not in A's folder: B serves them, and so does A.
    for server in (replicas.b, replicas.a):
        with server.client() as client:
            assert client.get(f"/conda/{feed}/linux-64/{second.name}").content == second.read_bytes()
    sha256 = hashlib.sha256(second.read_bytes()).hexdigest()
    assert _blob_key(sha256) in replicas.s3.keys(replicas.bucket)
    assert not list((replicas.a.data_dir / "blobs").rglob(sha256))


def _at_once(replicas: Replicas, upstream: UpstreamChannel, count: int, path: str, slow: str) -> list[httpx.Response]:
    """``count`` GETs of ``path``, alternating between the replicas, sent together while the upstream
    answers requests for ``slow`` a second late (the first is still running when the rest come)."""
    targets = [server for server, _ in zip(replicas.alternating(), range(count), strict=False)]
    barrier = threading.Barrier(len(targets))

    def fetch(server: Server) -> httpx.Response:
        with server.client(timeout=60) as client:
            barrier.wait()
            return client.get(path)

    upstream.faults.delay, upstream.faults.paths = 1.0, (slow,)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
            return list(pool.map(fetch, targets))
    finally:
        upstream.faults.delay, upstream.faults.paths = 0.0, ()


def test_concurrent_misses_on_both_replicas_make_one_upstream_get(
    replicas: Replicas, upstream: UpstreamChannel
) -> None:
    feed = _proxy_feed(replicas, upstream)
    filename, record = _record(upstream, SMALL)
    path = f"/linux-64/{filename}"
    before = upstream.count(path)
    responses = _at_once(replicas, upstream, 20, f"/conda/{feed}/linux-64/{filename}", filename)
    assert [response.status_code for response in responses] == [200] * 20, [r.text[:200] for r in responses]
    assert {hashlib.sha256(response.content).hexdigest() for response in responses} == {record["sha256"]}
    assert upstream.count(path) - before == 1
    assert _blob_key(record["sha256"]) in replicas.s3.keys(replicas.bucket)


def test_a_cold_subdir_asked_on_both_replicas_at_once_is_fetched_from_the_upstream_once(
    replicas: Replicas, upstream: UpstreamChannel
) -> None:
    """The upstream's repodata is asked for by one process at a time over the replicas (a lock per
    connector subdir): the other finds the copy the first kept, validated just now, and sends nothing."""
    connector, feed = "up-" + uuid.uuid4().hex[:8], "proxy-" + uuid.uuid4().hex[:8]
    with replicas.a.admin() as admin:
        assert admin.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 201
        assert admin.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
    path = "/linux-64/repodata.json.zst"
    before = upstream.count(path)
    responses = _at_once(replicas, upstream, 6, f"/conda/{feed}{path}", path)
    assert [response.status_code for response in responses] == [200] * 6, [r.text[:200] for r in responses]
    assert len({response.content for response in responses}) == 1  # every answer lists the upstream's files
    listed = json.loads(zstandard.ZstdDecompressor().decompress(responses[0].content))["packages.conda"]
    assert _record(upstream, SMALL)[0] in listed
    assert upstream.count(path) - before == 1


def test_a_replica_killed_mid_download_leaves_nothing_half_stored(
    replicas: Replicas, upstream: UpstreamChannel
) -> None:
    feed = _proxy_feed(replicas, upstream)
    filename, record = _record(upstream, LARGE)
    path = f"/linux-64/{filename}"
    url = f"/conda/{feed}/linux-64/{filename}"
    keys_before = set(replicas.s3.keys(replicas.bucket))
    assert _blob_key(record["sha256"]) not in keys_before
    assert _temp_files(replicas.a) == [] and _temp_files(replicas.b) == []
    upstream.faults.resume.clear()
    upstream.faults.pause_after, upstream.faults.paths = PAUSE_AT, (filename,)
    received = 0
    got_bytes = threading.Event()
    ended = threading.Event()

    def download_from_a() -> None:
        nonlocal received
        with contextlib.suppress(httpx.HTTPError), replicas.a.client() as client, client.stream("GET", url) as answer:
            for chunk in answer.iter_bytes():
                received += len(chunk)
                got_bytes.set()
        ended.set()

    reader = threading.Thread(target=download_from_a, daemon=True)
    reader.start()
    try:
        assert got_bytes.wait(60), replicas.a.log()[-3000:]  # A is streaming what it has so far
        # (less a write buffer's worth: the rest is in A's memory)
        assert _poll(lambda: any(path.stat().st_size >= PAUSE_AT // 2 for path in _temp_files(replicas.a)))
        assert upstream.count(path) == 1
        locks_held = replicas.lock_connections()
        assert locks_held >= 1  # A's lock on the file (an advisory lock on a connection of its own)
        _kill_hard(replicas.a)
        assert ended.wait(30) and received < record["size"]  # A's client got part of the file, never all
        assert _poll(lambda: replicas.lock_connections() < locks_held)  # A's connection, and lock, are gone
        leftovers = _temp_files(replicas.a)
        assert leftovers, "A was killed with its download's temp file in place"
    finally:
        upstream.faults.pause_after, upstream.faults.paths = None, ()
        upstream.faults.resume.set()  # A's stalled upstream request ends (nobody reads it any more)
        reader.join(30)
    # Nothing of A's download reached the bucket.
    assert _blob_key(record["sha256"]) not in replicas.s3.keys(replicas.bucket)
    assert replicas.s3.client().list_multipart_uploads(Bucket=replicas.bucket).get("Uploads", []) == []
    with replicas.b.client() as client:
        served = client.get(url)
    assert served.status_code == 200, served.text[:500]
    assert hashlib.sha256(served.content).hexdigest() == record["sha256"]
    assert upstream.count(path) == 2  # A's (killed) and B's
    # The bucket: the complete object for that sha256; anything else new is a whole blob of kept state
    # (upstream repodata a replica stored meanwhile, if any), never part of a file; no upload left open.
    client = replicas.s3.client()
    new_keys = set(replicas.s3.keys(replicas.bucket)) - keys_before
    assert _blob_key(record["sha256"]) in new_keys
    for key in new_keys:
        name = key.rsplit("/", 1)[-1]
        assert key == _blob_key(name), f"{key} is not a blob"
        body = client.get_object(Bucket=replicas.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == name, f"{key} holds other bytes than its name says"
    stored = client.get_object(Bucket=replicas.bucket, Key=_blob_key(record["sha256"]))["Body"].read()
    assert len(stored) == record["size"]
    assert client.list_multipart_uploads(Bucket=replicas.bucket).get("Uploads", []) == []
    assert _temp_files(replicas.b) == []
    # A starts again (same data folder): its leftover is removed, and it serves the file from the bucket.
    assert leftovers == _temp_files(replicas.a)
    replicas.start("a")
    assert _temp_files(replicas.a) == []
    with replicas.a.client() as client:
        again = client.get(url)
    assert again.status_code == 200 and hashlib.sha256(again.content).hexdigest() == record["sha256"]
    assert upstream.count(path) == 2


def _alembic_revisions() -> tuple[str, int]:
    """The head revision, and how many revisions lead to it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from condagate.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    head = scripts.get_current_head()
    assert head is not None
    return head, len(list(scripts.walk_revisions()))


def test_replicas_started_together_on_an_empty_database_migrate_once(
    tmp_path: Path, s3: S3Server
) -> None:
    database_url = backend_database_url("postgresql")
    if os.environ.get("CONDAGATE_TEST_POSTGRES_URL"):
        pytest.skip("needs an empty database of its own (CONDAGATE_TEST_POSTGRES_URL gives every test one)")
    with psycopg.connect(_plain_url(database_url), autocommit=True) as connection:
        tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables is not None and tables[0] == 0
    env = server_env(s3.url, s3.new_bucket(), "together")
    barrier = threading.Barrier(2)

    def start(name: str) -> Server:
        barrier.wait()
        return start_server(tmp_path / name, database_url, extra_env=env)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start, name) for name in ("a", "b")]
        started: list[Server] = []
        failures: list[BaseException] = []
        for future in futures:
            try:
                started.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - reported below, after the others are stopped
                failures.append(exc)
    try:
        assert not failures, failures
        for server in started:
            with server.client() as client:
                assert client.get("/health").json()["status"] == "ok"
                assert client.get("/api/feeds", headers=server.admin_headers).status_code == 200
        with psycopg.connect(_plain_url(database_url), autocommit=True) as connection:
            versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        head, revisions = _alembic_revisions()
        assert versions == [(head,)]
        # Each schema change ran once, in one replica, the other found the schema current (alembic
        # logs every step it runs).
        steps = [
            (server.data_dir.name, line.split("Running upgrade", 1)[1].split('"')[0])
            for server in started
            for line in server.log().splitlines()
            if "Running upgrade" in line
        ]
        assert len(steps) == len({step for _, step in steps}) == revisions, steps
        assert len({replica for replica, _ in steps}) == 1, steps
    finally:
        for server in started:
            server.stop()
