"""The REST API over feeds and packages, and its OpenAPI document."""

from __future__ import annotations

from conftest import upload
from servers import Server


def test_packages_listing_search_and_paging(server: Server, feed: str, make_package):
    for index in range(7):
        upload(server, feed, make_package(f"lib-{index:02d}", summary=f"library {index}"))
    upload(server, feed, make_package("tool-x", ".tar.bz2", subdir="linux-64"))
    upload(server, feed, make_package("tool-x", version="1.1", subdir="win-64"))
    with server.client() as client:
        first = client.get(f"/api/feeds/{feed}/packages", params={"limit": 5}).json()
        assert first["total"] == 8
        assert [item["name"] for item in first["items"]] == [f"lib-{i:02d}" for i in range(5)]
        rest = client.get(f"/api/feeds/{feed}/packages", params={"limit": 5, "offset": 5}).json()
        assert [item["name"] for item in rest["items"]] == ["lib-05", "lib-06", "tool-x"]
        tool = rest["items"][-1]
        assert tool["latest_version"] == "1.1" and tool["subdirs"] == ["linux-64", "win-64"] and tool["files"] == 2
        found = client.get(f"/api/feeds/{feed}/packages", params={"search": "TOOL"}).json()
        assert [item["name"] for item in found["items"]] == ["tool-x"]
        assert client.get(f"/api/feeds/{feed}/packages", params={"search": "%"}).json()["total"] == 0
        bad = client.get(f"/api/feeds/{feed}/packages", params={"limit": 0})
        assert bad.status_code == 400 and "limit" in bad.json()["error"]["message"]
        assert client.get("/api/feeds/missing-feed/packages").status_code == 404


def test_package_detail(server: Server, feed: str, make_package):
    for version in ("1.9", "1.10", "1.10.1rc1"):
        upload(server, feed, make_package("versioned", version=version, depends=["python >=3.9"]))
    upload(server, feed, make_package("versioned", ".tar.bz2", version="1.10", subdir="linux-64", build="h1_1",
                                      build_number=1))
    with server.client() as client:
        detail = client.get(f"/api/feeds/{feed}/packages/versioned").json()
        missing = client.get(f"/api/feeds/{feed}/packages/not-there")
    assert [v["version"] for v in detail["versions"]] == ["1.10.1rc1", "1.10", "1.9"]
    assert detail["latest_version"] == "1.10.1rc1"
    files = detail["versions"][1]["files"]
    assert [(f["subdir"], f["build"]) for f in files] == [("linux-64", "h1_1"), ("noarch", "0")]
    assert files[1]["depends"] == ["python >=3.9"] and files[1]["license"] == "MIT"
    assert len(files[1]["sha256"]) == 64 and len(files[1]["md5"]) == 32 and files[1]["size"] > 0
    assert detail["about"]["summary"] == "The versioned test package"
    assert missing.status_code == 404 and "not-there" in missing.json()["error"]["message"]


def test_openapi_document_and_health(server: Server):
    with server.client() as client:
        document = client.get("/api/openapi.json").json()
        health = client.get("/health")
    assert health.json()["status"] == "ok"
    paths = document["paths"]
    for path in (
        "/api/feeds",
        "/api/feeds/{feed}",
        "/api/feeds/{feed}/upload/{filename}",
        "/api/channels/{feed}/upload/{filename}",
        "/api/v1/upload/{feed}",
        "/conda/{feed}/{subdir}/{filename}",
    ):
        assert path in paths, path
    assert "put" in paths["/conda/{feed}/{subdir}/{filename}"]
