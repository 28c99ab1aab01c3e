"""Proxy feeds: a connector to a (local) upstream channel, a cache that outlives the upstream."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import upload
from package_factory import PackageSpec
from rattler_client import query, solve_and_install
from servers import Server, condagate_command, start_server
from upstream_channel import UpstreamChannel


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_proxy_feed(server: Server, upstream_url: str, **connector_fields: object) -> tuple[str, str]:
    connector, feed = _name("up"), _name("proxy")
    with server.admin() as client:
        created = client.post("/api/connectors", json={"name": connector, "url": upstream_url, **connector_fields})
        assert created.status_code == 201, created.text
        response = client.post("/api/feeds", json={"name": feed, "connectors": [connector]})
        assert response.status_code == 201, response.text
        assert response.json()["kind"] == "proxy" and response.json()["connectors"] == [connector]
    return connector, feed


def test_install_through_the_proxy_then_with_the_upstream_gone(
    server: Server, upstream: UpstreamChannel, tmp_path: Path
):
    _, feed = make_proxy_feed(server, upstream.url)
    channel = f"{server.url}/conda/{feed}"
    installed = solve_and_install(channel, ["numpy"], tmp_path / "env1")
    assert installed == ["numpy=2.0.0=py311h0_0", "python=3.11.9=h0_0"]
    assert upstream.count("/linux-64/numpy-2.0.0-py311h0_0.conda") == 1
    assert upstream.count("/linux-64/python-3.11.9-h0_0.tar.bz2") == 1

    upstream.stop()
    installed = solve_and_install(channel, ["numpy"], tmp_path / "env2")  # fresh client cache: all from condagate
    assert installed == ["numpy=2.0.0=py311h0_0", "python=3.11.9=h0_0"]
    with server.client() as client:
        missing = client.get(f"/conda/{feed}/noarch/requests-2.32.3-pyhd_0.conda")
    assert missing.status_code == 502
    assert "unreachable" in missing.json()["error"]["message"] and "not cached" in missing.json()["error"]["message"]


def test_repodata_is_the_upstreams_with_urls_pointing_at_condagate(server: Server, upstream: UpstreamChannel):
    upstream.index(base_url=upstream.url)  # CEP-15 repodata v2 with an absolute base_url
    _, feed = make_proxy_feed(server, upstream.url)
    with server.client() as client:
        served = client.get(f"/conda/{feed}/linux-64/repodata.json").json()
    original = json.loads((upstream.root / "linux-64" / "repodata.json").read_bytes())
    assert "base_url" not in served["info"] and served["repodata_version"] == 1
    assert served["packages.conda"] == original["packages.conda"]  # upstream records are served as they are
    assert served["packages"] == original["packages"]
    records = query(f"{server.url}/conda/{feed}", ["numpy"])
    assert records == ["numpy=1.26.4=py311h0_0", "numpy=2.0.0=py311h0_0", "python=3.11.9=h0_0"]
    sharded = query(f"{server.url}/conda/{feed}", ["numpy"], sharded=True)
    assert sharded == records


def test_filters_and_local_packages_win(server: Server, upstream: UpstreamChannel, make_package):
    _, feed = make_proxy_feed(server, upstream.url, include=["numpy*", "python"], exclude=["*-dbg"])
    with server.client() as client:
        names = {
            r["name"] for r in client.get(f"/conda/{feed}/linux-64/repodata.json").json()["packages.conda"].values()
        }
        assert names == {"numpy"}
        assert client.get(f"/conda/{feed}/noarch/repodata.json").json()["packages.conda"] == {}
    # A feed may host its own packages beside its connector's; the same file name: the local one wins.
    local = make_package("numpy", version="2.0.0", build="py311h0_0", subdir="linux-64")
    assert upload(server, feed, local).status_code == 201
    with server.client() as client:
        record = client.get(f"/conda/{feed}/linux-64/repodata.json").json()["packages.conda"][local.name]
        assert record["size"] == local.stat().st_size
        assert client.get(f"/conda/{feed}/linux-64/{local.name}").content == local.read_bytes()
    assert upstream.count(f"/linux-64/{local.name}") == 0


@pytest.fixture(scope="module")
def quick_retry_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A server whose failed upstream checks may be retried after 0.2 s (the default back-off is 30 s)."""
    server = start_server(
        tmp_path_factory.mktemp("quick-retry") / "data",
        extra_env={"CONDAGATE_UPSTREAM_BACKOFF_SECONDS": "0.2", "CONDAGATE_UPSTREAM_MAX_BACKOFF_SECONDS": "0.2"},
    )
    yield server
    server.stop()


def test_conditional_refresh_and_stale_repodata(quick_retry_server: Server, upstream: UpstreamChannel):
    server = quick_retry_server
    connector, feed = make_proxy_feed(server, upstream.url, cache_minutes=0)
    url = f"/conda/{feed}/linux-64/repodata.json"
    with server.client() as client:
        fresh = client.get(url)
        assert fresh.status_code == 200 and "x-condagate-stale" not in fresh.headers
        client.get(url)
        assert upstream.conditional_hits["/linux-64/repodata.json.zst"] >= 1  # If-None-Match answered 304
        for fault in ("status", "garbage", "truncate", "down"):
            if fault == "status":
                upstream.faults.status = 500
            elif fault == "garbage":
                upstream.faults.garbage_repodata = True
            elif fault == "truncate":
                # A changed upstream (so no 304) whose new repodata arrives cut short.
                upstream.add(PackageSpec("numpy", "2.1.0", "py311h0_0", subdir="linux-64"))
                upstream.index()
                upstream.faults.truncate = True
            else:
                upstream.stop()
            time.sleep(0.3)  # past the back-off of the previous failure: this request checks again
            stale = client.get(url)
            assert stale.status_code == 200, fault
            assert stale.json() == fresh.json(), fault
            assert connector in stale.headers["x-condagate-stale"], fault
            upstream.faults = type(upstream.faults)()
        health = client.get(f"/api/connectors/{connector}").json()
    linux = next(h for h in health["health"] if h["subdir"] == "linux-64")
    assert linux["last_error"] and linux["last_success_at"] and linux["records"] == 4
    upstream.start()
    time.sleep(0.3)
    with server.client() as client:
        # The upstream changed while it was away: the next check picks the change up.
        recovered = client.get(url)
        assert "x-condagate-stale" not in recovered.headers
        assert "numpy-2.1.0-py311h0_0.conda" in recovered.json()["packages.conda"]


def _blob_files(server: Server, upstream: UpstreamChannel) -> set[str]:
    """The blobs of package files: not the upstream repodata kept for every replica (the upstream's
    repodata.json.zst as received)."""
    kept = {hashlib.sha256(path.read_bytes()).hexdigest() for path in upstream.root.glob("*/repodata.json.zst")}
    return {
        p.name for p in (server.data_dir / "blobs").rglob("*") if p.is_file() and p.parent.name != "tmp"
    } - kept


def test_corrupt_or_truncated_upstream_files_are_never_cached(server: Server, upstream: UpstreamChannel):
    _, feed = make_proxy_feed(server, upstream.url)
    path = f"/conda/{feed}/linux-64/numpy-1.26.4-py311h0_0.conda"
    good = (upstream.root / "linux-64" / "numpy-1.26.4-py311h0_0.conda").read_bytes()
    with server.admin() as client:  # administrators read the upstream's details; others a fixed phrase
        client.get(f"/conda/{feed}/linux-64/repodata.json")
        blobs = _blob_files(server, upstream)
        for fault, message in (("wrong_bytes", "sha256 differs"), ("truncate", "broke off")):
            setattr(upstream.faults, fault, True)
            upstream.faults.paths = (".conda",)
            refused = client.get(path)  # small files are checked before the first byte goes out
            assert refused.status_code == 502 and message in refused.json()["error"]["message"], refused.text
            upstream.faults = type(upstream.faults)()
        assert _blob_files(server, upstream) == blobs
        upstream.faults.status = 404
        upstream.faults.paths = (".conda",)
        gone = client.get(path)
        assert gone.status_code == 502 and "404" in gone.json()["error"]["message"]
        upstream.faults = type(upstream.faults)()
        assert client.get(path).content == good
        upstream.stop()
        assert client.get(path).content == good  # now from the cache


def test_large_files_stream_and_a_mismatch_cuts_the_connection(tmp_path: Path, upstream: UpstreamChannel):
    upstream.add(PackageSpec("big", "1.0", "0", subdir="linux-64", files={"blob.bin": os.urandom(3_000_000)}))
    upstream.index()
    server = start_server(tmp_path / "streaming", extra_env={"CONDAGATE_PROXY_VERIFY_BEFORE_SEND_BYTES": "1000000"})
    try:
        _, feed = make_proxy_feed(server, upstream.url)
        name = "big-1.0-0.conda"
        good = (upstream.root / "linux-64" / name).read_bytes()
        with server.client() as client:
            client.get(f"/conda/{feed}/linux-64/repodata.json")
            for fault in ("wrong_bytes", "truncate"):
                setattr(upstream.faults, fault, True)
                upstream.faults.paths = (".conda",)
                with pytest.raises(httpx.HTTPError):  # never the full promised Content-Length of wrong bytes
                    client.get(f"/conda/{feed}/linux-64/{name}")
                upstream.faults = type(upstream.faults)()
            assert _blob_files(server, upstream) == set()
            streamed = client.get(f"/conda/{feed}/linux-64/{name}")
            assert streamed.content == good and streamed.headers["content-length"] == str(len(good))
            upstream.stop()
            assert client.get(f"/conda/{feed}/linux-64/{name}").content == good
    finally:
        server.stop()


def test_a_stalled_client_does_not_hold_up_others(tmp_path: Path, upstream: UpstreamChannel):
    upstream.add(PackageSpec("huge", "1.0", "0", subdir="linux-64", files={"blob.bin": os.urandom(8_000_000)}))
    upstream.index()
    server = start_server(tmp_path / "stalled", extra_env={"CONDAGATE_PROXY_VERIFY_BEFORE_SEND_BYTES": "1000"})
    try:
        _, feed = make_proxy_feed(server, upstream.url)
        url = f"{server.url}/conda/{feed}/linux-64/huge-1.0-0.conda"
        expected = (upstream.root / "linux-64" / "huge-1.0-0.conda").read_bytes()
        httpx.get(f"{server.url}/conda/{feed}/linux-64/repodata.json")
        with httpx.stream("GET", url, timeout=30) as stalled:
            assert stalled.status_code == 200
            # Reads a little, then stops reading (the iterator is kept: dropping it would close the
            # connection, and a download nobody waits for any more is stopped).
            chunks = stalled.iter_raw(65536)
            next(chunks)
            started = time.monotonic()
            second = httpx.get(url, timeout=30)
            assert second.status_code == 200 and second.content == expected
            assert time.monotonic() - started < 10
        assert upstream.count("/linux-64/huge-1.0-0.conda") == 1
    finally:
        server.stop()


def test_concurrent_requests_for_one_uncached_file_fetch_it_once(tmp_path: Path, upstream: UpstreamChannel):
    server = start_server(tmp_path / "two-workers", extra_env={"CONDAGATE_WORKERS": "2"})
    try:
        _, feed = make_proxy_feed(server, upstream.url)
        path = f"/conda/{feed}/linux-64/numpy-1.26.4-py311h0_0.conda"
        with server.client() as client:
            client.get(f"/conda/{feed}/linux-64/repodata.json")
        upstream.faults.delay = 0.5
        upstream.faults.paths = (".conda",)

        def fetch(_: int) -> bytes:
            with server.client() as client:
                response = client.get(path)
                assert response.status_code == 200
                return response.content

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            bodies = list(pool.map(fetch, range(20)))
        expected = (upstream.root / "linux-64" / "numpy-1.26.4-py311h0_0.conda").read_bytes()
        assert all(body == expected for body in bodies)
        assert upstream.count("/linux-64/numpy-1.26.4-py311h0_0.conda") == 1
    finally:
        server.stop()


def test_never_fetched_upstream_down_is_a_clear_502(server: Server, upstream: UpstreamChannel):
    upstream.stop()
    connector, feed = make_proxy_feed(server, upstream.url, check=False)
    with server.client() as client:
        response = client.get(f"/conda/{feed}/linux-64/repodata.json")
    assert response.status_code == 502
    assert connector in response.json()["error"]["message"] and "unreachable" in response.json()["error"]["message"]


def test_cached_repodata_survives_a_restart_with_the_upstream_down(tmp_path: Path, upstream: UpstreamChannel):
    server = start_server(tmp_path / "restart")
    try:
        _, feed = make_proxy_feed(server, upstream.url)
        with server.client() as client:
            first = client.get(f"/conda/{feed}/linux-64/repodata.json").json()
    finally:
        server.stop()
    upstream.stop()
    again = start_server(server.data_dir)
    try:
        with again.client() as client:
            response = client.get(f"/conda/{feed}/linux-64/repodata.json")
        assert response.status_code == 200 and response.json() == first
    finally:
        again.stop()


def test_private_upstream_credentials_are_sent_and_never_shown(server: Server, upstream: UpstreamChannel):
    upstream.faults.required_authorization = "Basic " + base64.b64encode(b"mirror:s3cret").decode()
    connector, feed = make_proxy_feed(server, upstream.url, username="mirror", password="s3cret")
    token_connector = _name("tok")
    with server.admin() as client:
        assert client.get(f"/conda/{feed}/noarch/repodata.json").status_code == 200
        assert client.get(f"/conda/{feed}/noarch/pure-1.0-0.tar.bz2").status_code == 200
        shown = client.get(f"/api/connectors/{connector}").json()
        listed = client.get("/api/connectors").json()
        assert (
            client.post(
                "/api/connectors",
                json={"name": token_connector, "url": upstream.url, "token": "t0ken-value", "check": False},
            ).status_code
            == 201
        )
        token_shown = client.get(f"/api/connectors/{token_connector}").json()
    assert shown["authentication"] == "basic" and token_shown["authentication"] == "token"
    for document in (shown, listed, token_shown):
        assert "s3cret" not in json.dumps(document) and "t0ken-value" not in json.dumps(document)
    assert {"anaconda", "conda-forge"} <= {c["name"] for c in listed}
    assert next(c for c in listed if c["name"] == "conda-forge")["url"] == "https://conda.anaconda.org/conda-forge"


def test_connector_and_feed_validation(server: Server, upstream: UpstreamChannel):
    with server.admin() as client:
        for body, message in [
            ({"name": "bad name", "url": upstream.url}, "invalid"),
            ({"name": _name("c"), "url": "ftp://example.org/x"}, "http(s)"),
            ({"name": _name("c"), "url": "http://user:pw@example.org/x"}, "credentials"),
            ({"name": _name("c"), "url": upstream.url, "subdirs": ["linux-99"]}, "unknown subdir"),
            ({"name": _name("c"), "url": upstream.url, "timeout_seconds": 0}, "timeout"),
        ]:
            response = client.post("/api/connectors", json=body)
            assert response.status_code in (400, 404), body
            assert message in response.json()["error"]["message"], response.text
        unknown = client.post("/api/feeds", json={"name": _name("f"), "connectors": ["no-such-connector"]})
        assert unknown.status_code == 404 and "no-such-connector" in unknown.json()["error"]["message"]
        connector, feed = make_proxy_feed(server, upstream.url)
        in_use = client.delete(f"/api/connectors/{connector}")
        assert in_use.status_code == 409 and feed in in_use.json()["error"]["message"]
        assert client.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 409


def test_cli_creates_connectors_and_proxy_feeds_and_mirrors(server: Server, upstream: UpstreamChannel, tmp_path: Path):
    scratch = tmp_path / "cli-tmp"  # the CLI's temp folder: mirroring must leave nothing in it
    scratch.mkdir()
    env = {
        **server.env,
        "CONDAGATE_URL": server.url,
        "CONDAGATE_API_KEY": server.api_key,
        "COLUMNS": "200",
        "TMPDIR": str(scratch),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=300)

    connector, feed = _name("cli-up"), _name("cli-proxy")
    created = cli("connector", "create", connector, upstream.url, "--exclude", "*-dbg", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["exclude"] == ["*-dbg"]
    made = cli("feed", "create", feed, "--connector", connector, "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["connectors"] == [connector]
    mirrored = cli("mirror", feed, "numpy 1.26.*", "--subdir", "linux-64", "--with-deps", "--json")
    assert mirrored.returncode == 0, mirrored.stderr
    assert json.loads(mirrored.stdout)["packages"] == [
        "linux-64/numpy-1.26.4-py311h0_0.conda",
        "linux-64/python-3.11.9-h0_0.tar.bz2",
    ]
    shown = cli("connector", "show", connector)
    assert shown.returncode == 0 and "linux-64" in shown.stdout and "cached_files: 2" in shown.stdout
    upstream.stop()
    installed = solve_and_install(f"{server.url}/conda/{feed}", ["numpy 1.26.*"], tmp_path / "offline")
    assert installed == ["numpy=1.26.4=py311h0_0", "python=3.11.9=h0_0"]
    nothing = cli("mirror", feed, "no-such-package", "--subdir", "linux-64")
    assert nothing.returncode == 1 and "no-such-package" in nothing.stderr
    assert list(scratch.iterdir()) == []  # the resolver's repodata cache (it may hold a key) is gone


def test_feed_lists_upstream_packages_with_cache_marks_and_download_statistics(
    server: Server, upstream: UpstreamChannel
):
    _, feed = make_proxy_feed(server, upstream.url)
    with server.client() as client:
        for _ in range(3):
            assert client.get(f"/conda/{feed}/noarch/requests-2.32.3-pyhd_0.conda").status_code == 200
        assert client.get(f"/conda/{feed}/linux-64/python-3.11.9-h0_0.tar.bz2").status_code == 200
        listing = client.get(f"/api/feeds/{feed}/packages").json()
        assert [item["name"] for item in listing["items"]] == ["numpy", "numpy-dbg", "pure", "python", "requests"]
        requests_item = next(item for item in listing["items"] if item["name"] == "requests")
        assert requests_item["cached_files"] == 1 and not requests_item["local"]
        numpy = client.get(f"/api/feeds/{feed}/packages/numpy").json()
        assert [v["version"] for v in numpy["versions"]] == ["2.0.0", "1.26.4"]
        assert all(not f["cached"] for v in numpy["versions"] for f in v["files"])
        assert numpy["versions"][0]["files"][0]["origin"] != "local"

        def stats() -> dict:  # type: ignore[type-arg]
            return client.get(f"/api/feeds/{feed}/downloads").json()

        deadline = time.monotonic() + 10
        while stats()["total"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        result = stats()
    assert result["total"] == 4
    assert result["top_packages"] == [{"name": "requests", "downloads": 3}, {"name": "python", "downloads": 1}]
    assert len(result["per_day"]) == 1 and result["per_day"][0]["downloads"] == 4
