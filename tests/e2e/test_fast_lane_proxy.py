"""The channel's fast lane (web.fast_lane) for proxy feeds: a subdir's repodata, shard index and shards
are answered by the lane exactly as the routes answer them while every upstream snapshot merged into it
is current and not due for revalidation; a due, failing or always-revalidated upstream sends requests
through the route, and an upload into the proxy feed is listed at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from starlette.testclient import TestClient
from test_fast_lane import _asgi

from conftest import BACKENDS, backend_database_url, upload
from package_factory import PackageSpec
from servers import ADMIN_KEY, Server
from upstream_channel import UpstreamChannel

HEADERS = {"X-API-Key": ADMIN_KEY}
SUBDIR = "linux-64"
# A package the upstream publishes during a test.
NEW_UPSTREAM_PACKAGE = "numpy-2.1.0-py311h0_0.conda"


class App:
    """condagate in-process (lifespan and all), with a count of what the channel routes resolve (subdirs
    and package files): a request the lane answers resolves nothing."""

    def __init__(self, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
        from condagate.services import channel

        self.client = client
        self.services: Any = client.app.state.services  # type: ignore[attr-defined]
        self.routed = 0
        for resolution in ("feed_subdir", "locate_package"):
            real = getattr(channel, resolution)

            def counted(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                self.routed += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(channel, resolution, counted)

    def proxy_feed(self, upstream_url: str, **connector_fields: object) -> str:
        connector, feed = f"up-{uuid.uuid4().hex[:8]}", f"proxy-{uuid.uuid4().hex[:8]}"
        created = self.client.post(
            "/api/connectors", json={"name": connector, "url": upstream_url, **connector_fields}, headers=HEADERS
        )
        assert created.status_code == 201, created.text
        created = self.client.post("/api/feeds", json={"name": feed, "connectors": [connector]}, headers=HEADERS)
        assert created.status_code == 201, created.text
        return feed

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.client.get(path, headers={**HEADERS, **(headers or {})})

    def through_lane(self, path: str, headers: dict[str, str] | None = None) -> Any:
        """GET ``path``, asserting the lane answered (the route resolved nothing)."""
        before = self.routed
        response = self.get(path, headers)
        assert self.routed == before, f"{path} went through the route"
        return response

    def through_route(self, path: str, headers: dict[str, str] | None = None) -> Any:
        before = self.routed
        response = self.get(path, headers)
        assert self.routed > before, f"{path} was answered by the lane"
        return response


@contextmanager
def in_process(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    from condagate.services.bootstrap import ensure_admin_key
    from condagate.settings import Settings
    from condagate.web.app import create_app

    settings = Settings(
        data_dir=tmp_path / "data", database_url=backend_database_url(backend), admin_api_key=ADMIN_KEY
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        app = App(client, monkeypatch)
        ensure_admin_key(app.services)
        app.services.access.reload()
        yield app


def _later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every wall clock reading in the process moves ``seconds`` on (cache lifetimes are minutes)."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + seconds)


def _publish_new_package(upstream: UpstreamChannel) -> None:
    upstream.add(PackageSpec("numpy", "2.1.0", "py311h0_0", subdir=SUBDIR))
    upstream.index()


def _listed(response: Any) -> set[str]:
    return set(response.json()["packages.conda"]) | set(response.json()["packages"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_lane_answers_a_proxy_feed_as_the_routes(
    backend: str, tmp_path: Path, upstream: UpstreamChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message for message (GET, HEAD, 304) for repodata in every variant, the shard index and a shard."""
    with in_process(tmp_path, backend, monkeypatch) as app:
        feed = app.proxy_feed(upstream.url)
        base = f"/conda/{feed}/{SUBDIR}/"
        for warm in ("repodata.json", "repodata.json.bz2", "repodata_shards.msgpack.zst"):
            assert app.through_route(base + warm).status_code == 200  # the route builds and remembers them
        index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(app.get(base + _SHARD_INDEX).content))
        shard = next(iter(index["shards"].values())).hex()
        assert app.get(base + f"shards/{shard}.msgpack.zst").status_code == 200
        names = [*_REPODATA, _SHARD_INDEX, f"shards/{shard}.msgpack.zst"]
        for name in names:
            path = base + name
            for method in ("GET", "HEAD"):
                before = app.routed
                fast = _asgi(app.client, method, path, HEADERS)
                assert app.routed == before, (method, name)  # the lane answered
                assert fast == _asgi(app.client, method, path + "?through=route", HEADERS), (method, name)
                assert fast[0]["status"] == 200
                assert b"x-condagate-stale" not in dict(fast[0]["headers"])
                etag = dict(fast[0]["headers"])[b"etag"].decode()
                conditional = {**HEADERS, "If-None-Match": etag}
                before = app.routed
                fast_304 = _asgi(app.client, method, path, conditional)
                assert app.routed == before, (method, name)
                assert fast_304 == _asgi(app.client, method, path + "?through=route", conditional), (method, name)
                assert fast_304[0]["status"] == 304
        assert "numpy-2.0.0-py311h0_0.conda" in _listed(app.through_lane(base + "repodata.json"))
        # A proxied package download is the route's, always (verification and caching).
        app.through_route(base + "numpy-2.0.0-py311h0_0.conda")
        app.through_route(base + "numpy-2.0.0-py311h0_0.conda")


_SHARD_INDEX = "repodata_shards.msgpack.zst"
_REPODATA = [
    "repodata.json",
    "repodata.json.zst",
    "repodata.json.bz2",
    "current_repodata.json",
    "current_repodata.json.zst",
    "current_repodata.json.bz2",
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_once_the_lifetime_is_over_the_route_revalidates_and_lists_the_upstreams_change(
    backend: str, tmp_path: Path, upstream: UpstreamChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process(tmp_path, backend, monkeypatch) as app:
        feed = app.proxy_feed(upstream.url, cache_minutes=1)
        path = f"/conda/{feed}/{SUBDIR}/repodata.json"
        app.through_route(path)
        fetched = upstream.count(f"/{SUBDIR}/repodata.json.zst")
        _publish_new_package(upstream)
        # Within the lifetime the route would not ask the upstream either: the lane serves what was merged.
        for _ in range(3):
            assert NEW_UPSTREAM_PACKAGE not in _listed(app.through_lane(path))
        assert upstream.count(f"/{SUBDIR}/repodata.json.zst") == fetched
        _later(monkeypatch, 61)
        # Due: the route answers (with the last merge) and revalidates in the background, until the new
        # state is merged; the lane then serves that.
        app.through_route(path)
        deadline = time.monotonic() + 20
        while NEW_UPSTREAM_PACKAGE not in _listed(app.get(path)):
            assert time.monotonic() < deadline, "the upstream's change was never listed"
            time.sleep(0.05)
        assert upstream.count(f"/{SUBDIR}/repodata.json.zst") == fetched + 1
        # The lane takes the new merge over once the route remembered it with nothing written after
        # (the fetch's own bookkeeping may still commit right after the merge: the lane then waits).
        while True:
            before = app.routed
            listed = _listed(app.get(path))
            if app.routed == before:
                break
            assert time.monotonic() < deadline, "the lane never served the new merge"
            time.sleep(0.05)
        assert NEW_UPSTREAM_PACKAGE in listed


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_upstream_sends_requests_through_the_route_with_the_stale_notice(
    backend: str, tmp_path: Path, upstream: UpstreamChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process(tmp_path, backend, monkeypatch) as app:
        feed = app.proxy_feed(upstream.url, cache_minutes=1)
        path = f"/conda/{feed}/{SUBDIR}/repodata.json.zst"
        fresh = app.through_route(path)
        assert "x-condagate-stale" not in app.through_lane(path).headers
        upstream.faults.status = 500
        _later(monkeypatch, 61)
        deadline = time.monotonic() + 20
        while "x-condagate-stale" not in app.get(path).headers:  # the background revalidation fails
            assert time.monotonic() < deadline, "the failure was never noticed"
            time.sleep(0.05)
        for _ in range(3):
            stale = app.through_route(path)
            assert stale.status_code == 200 and stale.content == fresh.content
            assert "x-condagate-stale" in stale.headers
        stale_messages = _asgi(app.client, "GET", path, HEADERS)
        assert stale_messages == _asgi(app.client, "GET", path + "?through=route", HEADERS)


def test_cache_lifetime_zero_revalidates_every_request(server: Server, upstream: UpstreamChannel) -> None:
    """Never the lane: the upstream sees a conditional request for every request."""
    from test_proxy_feed import make_proxy_feed

    _, feed = make_proxy_feed(server, upstream.url, cache_minutes=0)
    path = f"/conda/{feed}/{SUBDIR}/repodata.json.zst"
    with server.client() as client:
        assert client.get(path).status_code == 200
        for request in range(1, 6):
            response = client.get(path)
            assert response.status_code == 200 and "x-condagate-stale" not in response.headers
            assert upstream.conditional_hits[f"/{SUBDIR}/repodata.json.zst"] >= request - 1
        # Requests wait for the revalidation (briefly): by now every one of them has reached the upstream.
        deadline = time.monotonic() + 5
        while upstream.conditional_hits[f"/{SUBDIR}/repodata.json.zst"] < 5:
            assert time.monotonic() < deadline, upstream.conditional_hits
            time.sleep(0.05)


def test_an_upload_into_a_proxy_feed_is_listed_at_once(
    server: Server, upstream: UpstreamChannel, make_package: Any
) -> None:
    from test_proxy_feed import make_proxy_feed

    _, feed = make_proxy_feed(server, upstream.url)
    local = make_package(subdir=SUBDIR)
    path = f"/conda/{feed}/{SUBDIR}/repodata.json"
    with server.client() as client:
        for _ in range(3):  # remembered by the route, then served by the lane
            listed = _listed(client.get(path))
            assert "numpy-2.0.0-py311h0_0.conda" in listed and local.name not in listed
        assert upload(server, feed, local).status_code == 201
        served = client.get(path)
        assert local.name in _listed(served) and "numpy-2.0.0-py311h0_0.conda" in _listed(served)
        shard_index = client.get(f"/conda/{feed}/{SUBDIR}/repodata_shards.msgpack.zst").content
        names = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(shard_index))["shards"]
        assert served.json()["packages.conda"][local.name]["name"] in names


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_proxy_feed_with_an_sca_policy_stays_on_the_routes(
    backend: str, tmp_path: Path, upstream: UpstreamChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process(tmp_path, backend, monkeypatch) as app:
        feed = app.proxy_feed(upstream.url)
        path = f"/conda/{feed}/{SUBDIR}/repodata.json"
        app.through_route(path)
        app.through_lane(path)
        patched = app.client.patch(f"/api/feeds/{feed}", json={"vulnerability_policy": "warn"}, headers=HEADERS)
        assert patched.status_code == 200, patched.text
        for _ in range(3):
            assert "numpy-2.0.0-py311h0_0.conda" in _listed(app.through_route(path))


def test_the_lane_sends_a_large_subdirs_zst_in_chunks_and_leaves_its_json_file_to_the_route(
    tmp_path: Path, upstream: UpstreamChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large subdir's .zst is kept and sent in chunks, never joined: the lane sends the same messages
    (headers, then each chunk) as the route's ChunksResponse, for GET, HEAD and 304. Its JSON is not
    kept at all (``Encoded.deferred``): the lane leaves it to the route, which sends this host's file."""
    from test_spliced_repodata import large_repodata

    from condagate.web import channel as channel_routes
    from condagate.web import responses

    body = large_repodata(40_000)  # ~13 MB of JSON, ~0.6 MB of .zst: sent in chunks from 64 kB on here
    monkeypatch.setattr(responses, "JOIN_BELOW", 64 * 1024)
    monkeypatch.setattr(channel_routes, "JOIN_BELOW", 64 * 1024)
    (upstream.root / SUBDIR / "repodata.json").write_bytes(body)
    (upstream.root / SUBDIR / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    with in_process(tmp_path, "sqlite", monkeypatch) as app:
        feed = app.proxy_feed(upstream.url)
        path = f"/conda/{feed}/{SUBDIR}/repodata.json"
        routed = app.through_route(path)
        assert routed.status_code == 200 and len(routed.content) > 10 * 1024 * 1024
        zst_path = path + ".zst"
        zst_routed = app.through_route(zst_path + "?through=route")
        assert zstandard.ZstdDecompressor().decompress(zst_routed.content) == routed.content
        for method in ("GET", "HEAD"):
            before = app.routed
            fast = _asgi(app.client, method, zst_path, HEADERS)
            assert app.routed == before, method  # the lane answered
            assert fast == _asgi(app.client, method, zst_path + "?through=route", HEADERS), method
            if method == "GET":
                assert len(fast) > 3 and all(m.get("more_body") for m in fast[1:-1])  # chunks, not one body
                assert b"".join(m["body"] for m in fast[1:]) == zst_routed.content
            conditional = {**HEADERS, "If-None-Match": zst_routed.headers["etag"]}
            fast_304 = _asgi(app.client, method, zst_path, conditional)
            assert fast_304[0]["status"] == 304
            assert fast_304 == _asgi(app.client, method, zst_path + "?through=route", conditional)
            before = app.routed
            answered = app.client.request(method, path, headers=HEADERS)
            assert app.routed == before + 1, method  # the JSON: the route, from the file
            assert answered.status_code == 200 and answered.headers["etag"] == routed.headers["etag"]
            assert answered.content == (routed.content if method == "GET" else b"")
            assert int(answered.headers["content-length"]) == len(routed.content)
