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
