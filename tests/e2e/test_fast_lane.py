"""The channel's fast lane (web.fast_lane) answers exactly as the channel routes do, sees uploads at
once, and answers without the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from starlette.testclient import TestClient

from conftest import upload
from servers import ADMIN_KEY, Server

# Headers that differ between two answers for reasons other than the path taken.
_VARYING = {"date"}


def _answer(client: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    response = client.get(path, headers=headers or {})
    kept = [(k.lower(), v) for k, v in response.headers.multi_items() if k.lower() not in _VARYING]
    return response.status_code, kept, response.content


def _resources(client: Any, feed: str, package: Path) -> list[str]:
    base = f"/conda/{feed}/linux-64/"
    for warm in ("repodata.json", "repodata.json.bz2", "repodata_shards.msgpack.zst"):
        assert client.get(base + warm).status_code == 200  # the route builds and remembers them
    index = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(client.get(base + "repodata_shards.msgpack.zst").content)
    )
    shard = next(iter(index["shards"].values())).hex()
    names = [
        "repodata.json",
        "repodata.json.zst",
        "repodata.json.bz2",
        "current_repodata.json",
        "current_repodata.json.zst",
        "repodata_shards.msgpack.zst",
        f"shards/{shard}.msgpack.zst",
        package.name,
        "missing-1.0-0.conda",
    ]
    return [base + name for name in names]


def test_fast_lane_answers_byte_for_byte_as_the_routes(server: Server, feed: str, make_package: Any) -> None:
    package = make_package(subdir="linux-64")
    assert upload(server, feed, package).status_code == 201
    with server.admin() as admin:
        key = admin.post("/api/apikeys", json={"feeds": [feed], "permissions": ["view"]}).json()["key"]
        paths = _resources(admin, feed, package)
    callers = [server.admin(), server.client(headers={"X-API-Key": key}), server.client()]
    try:
        for client in callers:
            for path in paths:
                fast = _answer(client, path)
                routed = _answer(client, path + "?through=route")  # a query string always falls through
                assert fast == routed, path
                etag = dict(fast[1]).get("etag")
                if etag:
                    conditional = {"If-None-Match": etag}
                    fast_304 = _answer(client, path, conditional)
                    assert fast_304 == _answer(client, path + "?through=route", conditional), path
                    assert fast_304[0] == 304
    finally:
        for client in callers:
            client.close()


def test_an_upload_is_listed_at_once(server: Server, feed: str, make_package: Any) -> None:
    first, second = make_package(subdir="linux-64"), make_package(subdir="linux-64")
    assert upload(server, feed, first).status_code == 201
    with server.admin() as admin:
        for _ in range(3):
            assert first.name in admin.get(f"/conda/{feed}/linux-64/repodata.json").json()["packages.conda"]
        assert upload(server, feed, second).status_code == 201
        listed = admin.get(f"/conda/{feed}/linux-64/repodata.json").json()["packages.conda"]
        assert first.name in listed and second.name in listed
        assert admin.delete(f"/api/feeds/{feed}/files/linux-64/{second.name}").status_code in (200, 204)
        assert second.name not in admin.get(f"/conda/{feed}/linux-64/repodata.json").json()["packages.conda"]


def test_the_fast_lane_needs_no_database(tmp_path: Path, make_package: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process: once the route has resolved the subdir, the lane answers without a database
    read; a query string (the route) does read it."""
    from condagate.services.bootstrap import ensure_admin_key
    from condagate.settings import Settings
    from condagate.web.app import create_app

    settings = Settings(data_dir=tmp_path / "data", admin_api_key=ADMIN_KEY)
    app = create_app(settings)
    package = make_package(subdir="linux-64")
    headers = {"X-API-Key": ADMIN_KEY}
    with TestClient(app, raise_server_exceptions=False) as client:
        services = app.state.services
        ensure_admin_key(services)
        services.access.reload()
        assert client.post("/api/feeds", json={"name": "lane"}, headers=headers).status_code == 201
        uploaded = client.post(f"/api/feeds/lane/upload/{package.name}", content=package.read_bytes(), headers=headers)
        assert uploaded.status_code == 201
        assert client.get("/conda/lane/linux-64/repodata.json", headers=headers).status_code == 200

        def no_database(*args: object, **kwargs: object) -> None:
            raise AssertionError("the database was read")

        monkeypatch.setattr(services.db, "read", no_database)
        assert package.name in client.get("/conda/lane/linux-64/repodata.json", headers=headers).text
        assert client.get(f"/conda/lane/linux-64/{package.name}", headers=headers).content == package.read_bytes()
        assert client.get("/conda/lane/linux-64/repodata.json?x=1", headers=headers).status_code == 500


def test_head_answers_as_the_routes(server: Server, feed: str, make_package: Any) -> None:
    package = make_package(subdir="linux-64")
    assert upload(server, feed, package).status_code == 201
    with server.admin() as admin:
        paths = _resources(admin, feed, package)
        for path in paths:
            fast, routed = admin.head(path), admin.head(path + "?through=route")
            assert fast.status_code == routed.status_code, path
            assert fast.content == routed.content == b"", path
            kept = [(k.lower(), v) for k, v in fast.headers.multi_items() if k.lower() not in _VARYING]
            assert kept == [(k.lower(), v) for k, v in routed.headers.multi_items() if k.lower() not in _VARYING]


_SETTINGS_VARIANTS = {
    "pathsend": {},
    "accel": {"accel_redirect": "/_condagate_blobs/"},
    "sendfile": {"sendfile_header": "X-Sendfile"},
}


def _asgi(client: TestClient, method: str, path: str, headers: dict[str, str], pathsend: bool = True) -> list[Any]:
    """What the app sends for one request, as a server offering (or not) the pathsend extension sees it."""
    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "extensions": {"http.response.pathsend": {}} if pathsend else {},
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append({**message, "headers": [h for h in message.get("headers", []) if h[0] != b"date"]})

    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    return sent


@pytest.mark.parametrize("variant", sorted(_SETTINGS_VARIANTS))
def test_a_download_fills_the_lane_and_is_sent_as_the_route_sends_it(
    variant: str, tmp_path: Path, make_package: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No repodata request in this process: the first download goes through the route (one database
    read), the next ones through the lane without the database, message for message as the route
    answers (GET with pathsend, HEAD, 304); a commit sends the next download back through the route."""
    from condagate.services.bootstrap import ensure_admin_key
    from condagate.settings import Settings
    from condagate.web.app import create_app

    settings = Settings(data_dir=tmp_path / "data", admin_api_key=ADMIN_KEY, **_SETTINGS_VARIANTS[variant])
    app = create_app(settings)
    package, other = make_package(subdir="linux-64"), make_package(subdir="linux-64")
    headers = {"X-API-Key": ADMIN_KEY}
    path = f"/conda/lane/linux-64/{package.name}"
    with TestClient(app, raise_server_exceptions=False) as client:
        services = app.state.services
        ensure_admin_key(services)
        services.access.reload()
        assert client.post("/api/feeds", json={"name": "lane"}, headers=headers).status_code == 201
        uploaded = client.post(f"/api/feeds/lane/upload/{package.name}", content=package.read_bytes(), headers=headers)
        assert uploaded.status_code == 201
        reads = 0
        real_read = services.db.read

        def counted_read(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return real_read(*args, **kwargs)

        monkeypatch.setattr(services.db, "read", counted_read)
        from condagate.services import channel

        routed = 0
        real_locate = channel.locate_package

        def counted_locate(*args: Any, **kwargs: Any) -> Any:
            nonlocal routed
            routed += 1
            return real_locate(*args, **kwargs)

        monkeypatch.setattr(channel, "locate_package", counted_locate)
        first = _asgi(client, "GET", path, headers)
        assert reads > 0 and routed == 1  # the route, which records the file for the lane
        etag = f'"{services.lookups.ready_file("lane", "linux-64", package.name, services.changes.value(), None)[1]}"'
        counted = sum(services.downloads._pending.values())
        reads = 0
        answers = {}
        for method, extra in (
            ("GET", {}),
            ("HEAD", {}),
            ("GET", {"If-None-Match": etag}),
            ("HEAD", {"If-None-Match": etag}),
        ):
            answers[(method, bool(extra))] = fast = _asgi(client, method, path, {**headers, **extra})
            assert reads == 0 and routed == 1, (method, extra)  # the lane
            assert fast == _asgi(client, method, path + "?through=route", {**headers, **extra}), (method, extra)
            assert routed == 2
            reads, routed = 0, 1
        assert answers[("GET", False)] == first
        start, end = answers[("GET", False)]
        assert start["status"] == 200
        if variant == "pathsend":
            assert end == {
                "type": "http.response.pathsend",
                "path": str(services.blobs.file_for_sending(etag.strip('"'))),
                "headers": [],
            }
            assert (b"accept-ranges", b"bytes") in start["headers"]
        else:
            assert end["type"] == "http.response.body" and end["body"] == b""
        assert answers[("GET", True)][0]["status"] == 304
        # first + the lane's GET + the route's GET: HEAD and 304 are not downloads
        assert sum(services.downloads._pending.values()) == counted + 2
        # Without the pathsend extension the lane still answers (Starlette's FileResponse reads the file).
        reads = routed = 0
        plain = _asgi(client, "GET", path, headers, pathsend=False)
        assert reads == routed == 0 and plain == _asgi(client, "GET", path + "?through=route", headers, pathsend=False)
        # A commit moves the change signal: the next download asks the database again, once.
        uploaded = client.post(f"/api/feeds/lane/upload/{other.name}", content=other.read_bytes(), headers=headers)
        assert uploaded.status_code == 201
        reads = routed = 0
        assert _asgi(client, "GET", path, headers) == first
        assert reads > 0 and routed == 1
        reads = routed = 0
        assert _asgi(client, "GET", path, headers) == first
        assert reads == routed == 0
