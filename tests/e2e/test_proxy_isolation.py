"""A sick upstream hurts only its own feed: single flight, a remembered failure, partial feeds."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import zstandard

from conftest import upload
from package_factory import PackageSpec, write_package
from rattler_client import solve_and_install
from servers import Server, start_server
from tarpit import Tarpit, ThrottledRelay
from upstream_channel import UpstreamChannel


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tarpit() -> Iterator[Tarpit]:
    pit = Tarpit("drip", interval=0.5)
    yield pit
    pit.stop()


@pytest.fixture(scope="module")
def isolated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("isolation") / "data")
    yield server
    server.stop()


def _connector(server: Server, url: str, **fields: object) -> str:
    name = _name("up")
    with server.admin() as admin:
        created = admin.post("/api/connectors", json={"name": name, "url": url, "timeout_seconds": 2, **fields})
        assert created.status_code == 201, created.text
    return name


def _feed(server: Server, connectors: list[str]) -> str:
    name = _name("feed")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": name, "connectors": connectors}).status_code == 201
    return name


def test_a_tarpit_upstream_freezes_nothing_else(isolated_server: Server, tarpit: Tarpit, tmp_path):
    server = isolated_server
    sick = _feed(server, [_connector(server, tarpit.url, check=False)])
    hosted = _feed(server, [])
    package = write_package(tmp_path, PackageSpec("healthy", subdir="noarch"))
    assert upload(server, hosted, package).status_code == 201

    def hammer(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return client.get(f"/conda/{sick}/linux-64/repodata.json").status_code

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        storm = [pool.submit(hammer, i) for i in range(200)]
        time.sleep(0.5)  # the storm is on: every worker thread would be waiting on the upstream
        with server.client(timeout=10) as client:
            for _ in range(20):
                assert client.get("/health").status_code == 200
                assert client.get(f"/conda/{hosted}/noarch/repodata.json").status_code == 200
                assert client.get(f"/conda/{hosted}/noarch/{package.name}").content == package.read_bytes()
        statuses = [future.result() for future in storm]
    assert set(statuses) <= {502, 504}, statuses
    assert time.monotonic() - started < 25  # each waited for the one fetch's deadline, not in turn
    assert tarpit.connections == 1  # 200 requests, one fetch
    # The failure is remembered: the next requests answer at once, without a new connection.
    with server.client(timeout=10) as client:
        again = client.get(f"/conda/{sick}/linux-64/repodata.json")
        assert again.status_code in (502, 504)
        assert "unreachable" in again.json()["error"]["message"] or "not answered" in again.json()["error"]["message"]
    assert tarpit.connections == 1


def test_a_dead_connector_does_not_hide_a_working_one(isolated_server: Server, upstream: UpstreamChannel, tmp_path):
    server = isolated_server
    dead = _connector(server, "http://127.0.0.1:9/channel", check=False)  # nothing listens on the discard port
    working = _connector(server, upstream.url)
    feed = _feed(server, [dead, working])
    own = write_package(tmp_path, PackageSpec("own-package", subdir="linux-64"))
    assert upload(server, feed, own).status_code == 201
    with server.client() as client:
        response = client.get(f"/conda/{feed}/linux-64/repodata.json")
        assert response.status_code == 200, response.text
        names = {record["name"] for record in response.json()["packages.conda"].values()}
        assert {"numpy", "own-package"} <= names  # the working connector's and the feed's own
        notice = response.headers["x-condagate-stale"]
        assert dead in notice and "no data" in notice and "127.0.0.1:9" not in notice  # no details for anonymous
        listing = client.get(f"/api/feeds/{feed}/packages").json()
        assert {"numpy", "own-package"} <= {item["name"] for item in listing["items"]}
        assert client.get(f"/api/feeds/{feed}/packages/own-package").status_code == 200
    with server.admin() as admin:
        detailed = admin.get(f"/conda/{feed}/linux-64/repodata.json").headers["x-condagate-stale"]
        assert dead in detailed and "unreachable" in detailed


def test_cached_data_is_never_held_back_by_a_failing_revalidation(
    isolated_server: Server, upstream: UpstreamChannel
):
    """Lifetime 0: every request revalidates, but waits for it at most a moment, then serves the copy."""
    server = isolated_server
    feed = _feed(server, [_connector(server, upstream.url, cache_minutes=0)])
    url = f"/conda/{feed}/linux-64/repodata.json"
    with server.client(timeout=10) as client:
        fresh = client.get(url)
        assert fresh.status_code == 200
        upstream.faults.delay = 5.0  # the upstream now takes 5 s per answer
        started = time.monotonic()
        served = client.get(url)
        elapsed = time.monotonic() - started
    assert served.status_code == 200 and served.json() == fresh.json()
    assert elapsed < 4  # not the upstream's 5 s: the revalidation wait is bounded (0.5 s by default)


@pytest.mark.parametrize("policy", ["keep-cached", "follow-upstream"])
def test_a_served_file_stays_installable_after_the_upstream_removes_it(
    isolated_server: Server, upstream: UpstreamChannel, tmp_path, policy: str
):
    server = isolated_server
    connector = _connector(server, upstream.url)
    feed = _name("sticky")
    with server.admin() as admin:
        created = admin.post("/api/feeds", json={"name": feed, "connectors": [connector], "upstream_removals": policy})
        assert created.status_code == 201, created.text
    channel_url = f"{server.url}/conda/{feed}"
    installed = solve_and_install(channel_url, ["numpy ==1.26.4"], tmp_path / "first")
    assert "numpy=1.26.4=py311h0_0" in installed  # downloaded through the proxy: now cached
    # The upstream removes the package and its record.
    (upstream.root / "linux-64" / "numpy-1.26.4-py311h0_0.conda").unlink()
    upstream.index()
    with server.admin() as admin:
        assert admin.post(f"/api/connectors/{connector}/refresh", json={"subdirs": ["linux-64"]}).status_code == 200
    with server.client() as client:
        listed = client.get(f"/conda/{feed}/linux-64/repodata.json").json()["packages.conda"]
        detail = client.get(f"/api/feeds/{feed}/packages/numpy").json()
    files = {f["filename"]: f for v in detail["versions"] for f in v["files"]}
    if policy == "follow-upstream":
        assert "numpy-1.26.4-py311h0_0.conda" not in listed
        return
    assert "numpy-1.26.4-py311h0_0.conda" in listed and "numpy-2.0.0-py311h0_0.conda" in listed
    assert files["numpy-1.26.4-py311h0_0.conda"]["removed_upstream_at"]
    assert not files["numpy-2.0.0-py311h0_0.conda"]["removed_upstream_at"]
    again = solve_and_install(channel_url, ["numpy ==1.26.4"], tmp_path / "again")
    assert "numpy=1.26.4=py311h0_0" in again


@pytest.fixture(scope="module")
def streaming_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Every upstream file streams to its client (none is fetched whole before the first byte)."""
    server = start_server(
        tmp_path_factory.mktemp("streaming") / "data", extra_env={"CONDAGATE_PROXY_VERIFY_BEFORE_SEND_BYTES": "1024"}
    )
    yield server
    server.stop()


def _cached_files(server: Server, connector: str) -> int:
    with server.admin() as admin:
        return int(admin.get(f"/api/connectors/{connector}").json()["cached_files"])


def _temp_files(server: Server) -> list[str]:
    root = server.data_dir / "blobs"
    return [p.name for p in root.rglob("*") if p.is_file() and "tmp" in p.relative_to(root).parts]


def test_a_download_nobody_waits_for_stops_unless_it_is_mirrored(
    streaming_server: Server, upstream: UpstreamChannel
):
    server = streaming_server
    big = upstream.add(PackageSpec("big", "1.0", "0", subdir="noarch", files={"payload.bin": os.urandom(4_000_000)}))
    upstream.index()
    relay = ThrottledRelay(upstream.port, bytes_per_second=1_000_000)  # 4 s for the whole file
    try:
        connector = _connector(server, f"http://127.0.0.1:{relay.port}", timeout_seconds=10)
        feed = _feed(server, [connector])
        path = f"/conda/{feed}/noarch/{big.name}"
        with server.client() as client:
            assert client.get(f"/conda/{feed}/noarch/repodata.json").status_code == 200
            with client.stream("GET", path) as response:  # an anonymous client that gives up early
                assert response.status_code == 200
                next(response.iter_bytes(65536))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_temp_files(server) or relay.closed_early == 0):
            time.sleep(0.1)
        assert _temp_files(server) == [] and relay.closed_early == 1  # stopped: nothing kept, upstream let go
        assert relay.relayed < big.stat().st_size
        assert _cached_files(server, connector) == 0
        # Mirroring (a caller allowed to add to the feed) finishes the download after the client leaves.
        with server.admin() as admin, admin.stream("GET", path, params={"mirror": "1"}) as response:
            assert response.status_code == 200
            next(response.iter_bytes(65536))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _cached_files(server, connector) == 0:
            time.sleep(0.2)
        assert _cached_files(server, connector) == 1
        with server.client() as client:
            assert client.get(path).content == big.read_bytes()
    finally:
        relay.stop()


def _inject(upstream: UpstreamChannel, subdir: str, extra: dict[str, bytes]) -> None:
    """Add raw (possibly hostile) records to the upstream's repodata, in .json and .zst."""
    path = upstream.root / subdir / "repodata.json"
    text = path.read_bytes()
    marker = b'"packages.conda":{'
    compact = json.dumps(json.loads(text), separators=(",", ":")).encode()
    assert marker in compact
    injected = b"".join(json.dumps(name).encode() + b":" + raw + b"," for name, raw in extra.items())
    body = compact.replace(marker, marker + injected, 1)
    path.write_bytes(body)
    path.with_suffix(".json.zst").write_bytes(zstandard.ZstdCompressor().compress(body))


def test_hostile_upstream_records_are_dropped_not_served(isolated_server: Server, upstream: UpstreamChannel):
    server = isolated_server
    good = {"name": "evil", "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "linux-64"}
    deep = b"[" * 3000 + b"]" * 3000
    hostile = {
        "evil-1.0-0.conda": json.dumps({**good, "url": "https://elsewhere.example/evil.conda",
                                        "channel": "https://elsewhere.example"}).encode(),
        "evil-1.1-0.conda": json.dumps({**good, "version": "1.1", "size": 2**64}).encode(),
        "evil-1.2-0.conda": json.dumps({**good, "version": "1.2"}).encode()[:-1] + b',"x":' + deep + b"}",
        "evil-1.3-0\x07.conda": json.dumps({**good, "version": "1.3", "build": "0\x07"}).encode(),
        "evil-1.4-0.conda": json.dumps({**good, "version": "1.4", "build_number": -5}).encode(),
        "evil-1.5-0.conda": json.dumps({**good, "version": "1.5", "depends": "notalist"}).encode(),
    }
    _inject(upstream, "linux-64", hostile)
    connector = _connector(server, upstream.url)
    feed = _feed(server, [connector])
    with server.client() as client:
        response = client.get(f"/conda/{feed}/linux-64/repodata.json")
        assert response.status_code == 200, response.text
        listed = response.json()["packages.conda"]
        assert client.get(f"/conda/{feed}/linux-64/repodata_shards.msgpack.zst").status_code == 200
    assert "numpy-2.0.0-py311h0_0.conda" in listed  # the good records beside them survive
    evil = {name: record for name, record in listed.items() if name.startswith("evil")}
    assert list(evil) == ["evil-1.0-0.conda"]  # the only one that is fine once url/channel are removed
    assert "url" not in evil["evil-1.0-0.conda"] and "channel" not in evil["evil-1.0-0.conda"]
    with server.admin() as admin:
        health = admin.get(f"/api/connectors/{connector}").json()["health"]
    linux = next(state for state in health if state["subdir"] == "linux-64")
    assert linux["dropped_records"] == 5
    assert len(linux["dropped_examples"]) == 5 and all(reason for _, reason in linux["dropped_examples"])


def test_upstream_details_are_for_administrators_only(isolated_server: Server, upstream: UpstreamChannel):
    server = isolated_server
    connector = _connector(server, upstream.url)
    feed = _feed(server, [connector])
    path = f"/conda/{feed}/linux-64/numpy-1.26.4-py311h0_0.conda"
    with server.client() as anonymous, server.admin() as admin:
        assert anonymous.get(f"/conda/{feed}/linux-64/repodata.json").status_code == 200
        upstream.faults.status = 500
        upstream.faults.paths = (".conda",)
        public = anonymous.get(path)
        detailed = admin.get(path)
    assert public.status_code == detailed.status_code == 502
    shown = public.json()["error"]["message"]
    assert connector in shown and "numpy-1.26.4-py311h0_0.conda" in shown  # says what and through which connector
    assert "500" not in shown and str(upstream.port) not in shown  # but not what the upstream answered, or where
    assert "500" in detailed.json()["error"]["message"]
