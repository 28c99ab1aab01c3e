"""Download counting, several worker processes, graceful shutdown and deleting feeds."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from conftest import upload
from servers import Server, start_server, wait_until


def test_downloads_are_counted_per_file(server: Server, feed: str, make_package):
    first = make_package("counted", version="1.0")
    second = make_package("counted", version="2.0")
    upload(server, feed, first)
    upload(server, feed, second)
    with server.client() as client:
        for _ in range(3):
            assert client.get(f"/conda/{feed}/noarch/{first.name}").status_code == 200
        assert client.get(f"/conda/{feed}/noarch/{second.name}").status_code == 200
        client.head(f"/conda/{feed}/noarch/{second.name}")  # a probe, not a download
        client.get(f"/conda/{feed}/noarch/{second.name}", headers={"Range": "bytes=10-20"})  # a resumption

        def counts() -> dict[str, int]:
            detail = client.get(f"/api/feeds/{feed}/packages/counted").json()
            return {f["filename"]: f["downloads"] for v in detail["versions"] for f in v["files"]}

        assert wait_until(lambda: counts() == {first.name: 3, second.name: 1}), counts()
        assert client.get(f"/api/feeds/{feed}/packages/counted").json()["downloads"] == 4


def test_download_statistics_name_the_user_or_key(server: Server, feed: str, make_package):
    package = make_package("named-downloads")
    upload(server, feed, package)
    with server.admin() as admin:
        created = admin.post("/api/apikeys", json={"feeds": [feed], "permissions": ["view"]}).json()
    with server.client(headers={"X-API-Key": created["key"]}) as keyed:
        for _ in range(2):
            assert keyed.get(f"/conda/{feed}/noarch/{package.name}").status_code == 200
    with server.client() as anonymous:
        assert anonymous.get(f"/conda/{feed}/noarch/{package.name}").status_code == 200

        def downloaders() -> dict[str, int]:
            stats = anonymous.get(f"/api/feeds/{feed}/downloads").json()
            return {row["principal"]: row["downloads"] for row in stats["top_downloaders"]}

        assert wait_until(lambda: downloaders() == {f"key {created['id']}": 2, "anonymous": 1}), downloaders()


def test_counts_still_flow_after_a_feed_with_pending_counts_is_deleted(server: Server, make_package):
    doomed, kept = "gone-" + uuid.uuid4().hex[:6], "kept-" + uuid.uuid4().hex[:6]
    package = make_package("counted-twice")
    with server.admin() as client:
        for name in (doomed, kept):
            client.post("/api/feeds", json={"name": name})
            upload(server, name, package)
        assert client.get(f"/conda/{doomed}/noarch/{package.name}").status_code == 200
        assert client.delete(f"/api/feeds/{doomed}").status_code == 204  # before its count is written
        assert client.get(f"/conda/{kept}/noarch/{package.name}").status_code == 200
        assert wait_until(lambda: client.get(f"/api/feeds/{kept}/downloads").json()["total"] == 1)
        # A new feed never inherits anything of the deleted one (ids are not reused).
        assert client.post("/api/feeds", json={"name": doomed}).status_code == 201
        assert client.get(f"/api/feeds/{doomed}/downloads").json()["total"] == 0
        assert client.get(f"/conda/{doomed}/noarch/repodata.json").json()["packages.conda"] == {}


def test_delete_feed_removes_its_packages_and_unshared_blobs(server: Server, make_package):
    name = "doomed-" + uuid.uuid4().hex[:6]
    package = make_package("doomed")
    with server.admin() as client:
        client.post("/api/feeds", json={"name": name})
        upload(server, name, package)
        sha256 = client.get(f"/conda/{name}/noarch/repodata.json").json()["packages.conda"][package.name]["sha256"]
        blob = server.data_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256
        assert blob.is_file()
        assert client.delete(f"/api/feeds/{name}").status_code == 204
        assert client.get(f"/api/feeds/{name}").status_code == 404
        assert client.get(f"/conda/{name}/noarch/repodata.json").status_code == 404
        assert not blob.exists()
        assert client.delete(f"/api/feeds/{name}").status_code == 404


def test_two_workers_serve_consistent_repodata_under_concurrent_uploads(tmp_path: Path, make_package):
    server = start_server(tmp_path / "multi", extra_env={"CONDAGATE_WORKERS": "2"})
    try:
        with server.admin() as client:
            client.post("/api/feeds", json={"name": "busy"})
        packages = [make_package(f"parallel-{i}") for i in range(24)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda p: upload(server, "busy", p).status_code, packages))
        assert statuses == [201] * len(packages)
        expected = {p.name for p in packages}
        with server.client() as client:
            # Each request may land on either worker: all must see every upload.
            for _ in range(10):
                repodata = client.get("/conda/busy/noarch/repodata.json").json()
                assert set(repodata["packages.conda"]) == expected
    finally:
        server.stop()


def test_graceful_shutdown_finishes_a_running_upload(tmp_path: Path, make_package):
    server = start_server(tmp_path / "graceful")
    package = make_package("slow-upload", files={"blob.bin": bytes(range(256)) * 2000})
    data = package.read_bytes()
    try:
        with server.admin() as client:
            client.post("/api/feeds", json={"name": "grace"})

        def slow_body() -> Iterator[bytes]:
            for offset in range(0, len(data), len(data) // 20 + 1):
                yield data[offset : offset + len(data) // 20 + 1]
                time.sleep(0.1)

        def stop_soon() -> None:
            time.sleep(0.6)
            server.process.send_signal(signal.SIGTERM)

        threading.Thread(target=stop_soon).start()
        response = httpx.post(f"{server.url}/api/feeds/grace/upload/{package.name}", content=slow_body(),
                              headers=server.admin_headers, timeout=30)
        assert response.status_code == 201, response.text
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    restarted = start_server(server.data_dir)
    try:
        with restarted.client() as client:
            assert client.get(f"/conda/grace/noarch/{package.name}").content == data
    finally:
        restarted.stop()
