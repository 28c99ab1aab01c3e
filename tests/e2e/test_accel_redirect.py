"""Behind nginx (opt-in, README "Behind nginx"): condagate authorises and counts, nginx sends the bytes.

condagate runs with ``CONDAGATE_ACCEL_REDIRECT=/_condagate_blobs/`` behind a real nginx (Debian's
nginx-light, on 127.0.0.1 only, in a temporary folder) whose server block is the README's own,
read from README.md with only the addresses and the blob folder filled in. Downloads through nginx
carry the uploaded bytes and the headers a client needs, are counted, honour Range and HEAD; a caller
without view gets the refusal and never the bytes; the internal location is unreachable from outside.
Directly, condagate answers with the header and an empty body; ``CONDAGATE_SENDFILE_HEADER`` names the
blob's absolute path. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from conftest import backend_database_url
from package_factory import PackageSpec, write_package
from servers import Server, free_port, start_server, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
README = Path(__file__).resolve().parents[2] / "README.md"
ACCEL_PREFIX = "/_condagate_blobs/"

# Around the README's server block, what a Debian nginx.conf's http block gives it (default_type),
# plus what a test needs: its own folder for everything, in the foreground, on 127.0.0.1 only.
NGINX_MAIN = """\
daemon off;
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{
    sendfile on;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
{readme}
}}
"""


def readme_nginx_config() -> str:
    """The nginx block of the README's "Behind nginx" section, exactly as written there."""
    text = README.read_text()
    section = text[text.index("## Behind nginx") :]
    section = section[: section.index("\n## ", 1)]
    match = re.search(r"```nginx\n(.*?)```", section, re.DOTALL)
    assert match, "the README's nginx section has no nginx configuration"
    return match.group(1)


def _fill(template: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert template.count(old) == 1, f"the README's configuration changed: {old!r}"
        template = template.replace(old, new)
    return template


@dataclass
class Accel:
    server: Server
    nginx_url: str
    work: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def accel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Accel]:
    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: scripts/test installs nginx-light")
        pytest.skip("nginx is not installed here (apt-get install nginx-light)")
    work = tmp_path_factory.mktemp(f"accel-{request.param}")
    server = start_server(
        work / "data", backend_database_url(request.param), extra_env={"CONDAGATE_ACCEL_REDIRECT": ACCEL_PREFIX}
    )
    nginx: subprocess.Popen[bytes] | None = None
    try:
        with server.admin() as admin:  # every feed private: anonymous callers see nothing
            removed = admin.delete("/api/grants", params={"principal": "anonymous", "permission": "view"})
            assert removed.status_code == 204, removed.text
        with server.client() as anonymous:
            assert wait_until(lambda: anonymous.get("/api/feeds").status_code == 401)
        port = free_port()
        server_block = _fill(
            readme_nginx_config(),
            {
                "server 127.0.0.1:8000;": f"server {server.url.removeprefix('http://')};",
                "listen 80;": f"listen 127.0.0.1:{port};",
                "alias /var/lib/condagate/blobs/;": f"alias {server.data_dir / 'blobs'}/;",
            },
        )
        # As root, nginx's workers would run as nobody, who cannot enter pytest's 0700 folders.
        user = "user root;\n" if os.geteuid() == 0 else ""
        config = work / "nginx.conf"
        config.write_text(NGINX_MAIN.format(user=user, work=work, readme=server_block))
        nginx = subprocess.Popen([NGINX, "-c", str(config), "-p", str(work)], stderr=subprocess.PIPE)
        nginx_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(nginx_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if nginx.poll() is not None or time.monotonic() > deadline:
                log = (work / "error.log").read_text(errors="replace") if (work / "error.log").exists() else ""
                stderr = nginx.stderr.read().decode(errors="replace") if nginx.poll() is not None else ""  # type: ignore[union-attr]
                pytest.fail(f"nginx did not start: {stderr}{log}")
            time.sleep(0.1)
        yield Accel(server, nginx_url, work)
    finally:
        if nginx is not None and nginx.poll() is None:
            nginx.terminate()
            try:
                nginx.wait(timeout=20)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        server.stop()


@dataclass
class Uploaded:
    feed: str
    path: str  # /conda/FEED/noarch/FILENAME
    data: bytes
    sha256: str


def _hosted_package(server: Server, work: Path, extension: str = ".conda") -> Uploaded:
    feed = "accel-" + uuid.uuid4().hex[:8]
    directory = work / uuid.uuid4().hex[:8]
    directory.mkdir()
    package = write_package(
        directory,
        PackageSpec(f"accel-{uuid.uuid4().hex[:6]}", "1.0", "0", files={"share/payload.bin": os.urandom(200_000)}),
        extension,
    )
    data = package.read_bytes()
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
        uploaded = admin.post(f"/api/feeds/{feed}/upload/{package.name}", content=data)
        assert uploaded.status_code == 201, uploaded.text
    return Uploaded(feed, f"/conda/{feed}/noarch/{package.name}", data, hashlib.sha256(data).hexdigest())


def _downloads(server: Server, feed: str) -> int:
    with server.admin() as admin:
        response = admin.get(f"/api/feeds/{feed}/downloads")
        assert response.status_code == 200, response.text
        return int(response.json()["total"])


def _blob_relative(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


@pytest.mark.parametrize("extension", [".conda", ".tar.bz2"])
def test_a_download_through_nginx_is_the_upload_with_its_headers_and_is_counted(accel: Accel, extension: str):
    package = _hosted_package(accel.server, accel.work, extension)
    blob = accel.server.data_dir / "blobs" / _blob_relative(package.sha256)
    with httpx.Client(base_url=accel.nginx_url, headers=accel.server.admin_headers, timeout=60) as client:
        repodata = client.get(f"/conda/{package.feed}/noarch/repodata.json")  # the fast lane is ready now
        assert repodata.status_code == 200, repodata.text
        for _ in range(3):  # the first may come from the route, the rest from the fast lane: same answer
            response = client.get(package.path)
            assert response.status_code == 200, response.text
            assert response.content == package.data
            assert hashlib.sha256(response.content).hexdigest() == package.sha256
            assert response.headers["content-length"] == str(len(package.data))
            assert response.headers["cache-control"] == "public, no-cache"  # a hosted file can be replaced
            assert "x-accel-redirect" not in response.headers  # nginx consumes it
            # nginx keeps Cache-Control from condagate's answer but not its ETag or Last-Modified: the
            # static file's answer carries nginx's own, made from the blob's mtime and size.
            mtime, size = int(blob.stat().st_mtime), blob.stat().st_size
            assert response.headers["etag"] == f'"{mtime:x}-{size:x}"'
            assert response.headers["etag"] != f'"{package.sha256}"'
            assert response.headers["last-modified"] == formatdate(mtime, usegmt=True)
            etag = response.headers["etag"]
        # Revalidation works with either ETag: condagate answers its own (the sha256) with 304 before
        # any redirect, nginx answers its own after the redirect.
        assert client.get(package.path, headers={"If-None-Match": f'"{package.sha256}"'}).status_code == 304
        assert client.get(package.path, headers={"If-None-Match": etag}).status_code == 304
        since = client.get(package.path, headers={"If-Modified-Since": formatdate(mtime, usegmt=True)})
        assert since.status_code == 304 and since.headers["etag"] == f'"{package.sha256}"'  # condagate's
    # 3 downloads, and the revalidation with nginx's ETag: condagate redirected it (a 200 there)
    assert wait_until(lambda: _downloads(accel.server, package.feed) == 4)
    time.sleep(0.5)
    assert _downloads(accel.server, package.feed) == 4


def test_range_and_head_through_nginx(accel: Accel):
    package = _hosted_package(accel.server, accel.work)
    size = len(package.data)
    with httpx.Client(base_url=accel.nginx_url, headers=accel.server.admin_headers, timeout=60) as client:
        part = client.get(package.path, headers={"Range": "bytes=100-1099"})
        assert part.status_code == 206, part.text
        assert part.content == package.data[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{size}"
        assert part.headers["content-length"] == "1000"
        tail = client.get(package.path, headers={"Range": "bytes=-500"})
        assert tail.status_code == 206 and tail.content == package.data[-500:]
        head = client.head(package.path)
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str(size)
        assert head.headers["cache-control"] == "public, no-cache"
        assert "x-accel-redirect" not in head.headers
        assert client.get(package.path).content == package.data  # the one whole download
    assert wait_until(lambda: _downloads(accel.server, package.feed) == 1)
    time.sleep(0.5)  # two flush periods: Range parts and HEAD are never counted
    assert _downloads(accel.server, package.feed) == 1


def test_a_caller_without_view_never_gets_the_bytes_through_nginx(accel: Accel):
    package = _hosted_package(accel.server, accel.work)
    other = "accel-other-" + uuid.uuid4().hex[:6]
    with accel.server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": other}).status_code == 201
        created = admin.post("/api/apikeys", json={"feeds": [other], "permissions": ["view"]})
        assert created.status_code == 201, created.text
    callers = {
        "anonymous": ({}, 401),
        "key for another feed": ({"X-API-Key": created.json()["key"]}, 404),
        "wrong key": ({"X-API-Key": "cg_wrong_" + uuid.uuid4().hex}, 401),
    }
    with httpx.Client(base_url=accel.nginx_url, timeout=60) as client:
        for who, (headers, status) in callers.items():
            for method in ("GET", "HEAD"):
                for extra in ({}, {"Range": "bytes=0-99"}):
                    response = client.request(method, package.path, headers={**headers, **extra})
                    assert response.status_code == status, (who, method, extra, response.text)
                    assert package.data[:64] not in response.content, who
                    assert response.headers.get("content-length") != str(len(package.data)), who
                    assert "x-accel-redirect" not in response.headers
            token = client.get(f"/t/{headers.get('X-API-Key', 'cg_none')}{package.path}")
            assert token.status_code in (401, 404) and package.data[:64] not in token.content, who
    time.sleep(0.5)
    assert _downloads(accel.server, package.feed) == 0


def test_the_internal_location_is_not_reachable_from_outside(accel: Accel):
    package = _hosted_package(accel.server, accel.work)
    blob_path = ACCEL_PREFIX + _blob_relative(package.sha256)
    with httpx.Client(base_url=accel.nginx_url, headers=accel.server.admin_headers, timeout=60) as client:
        for path in (blob_path, ACCEL_PREFIX, ACCEL_PREFIX.rstrip("/"), blob_path.replace("/_", "//_", 1)):
            response = client.get(path)
            assert response.status_code == 404, (path, response.status_code)
            assert package.data[:64] not in response.content
        # Encoded: nginx decodes the path before it picks the location, so it is still the internal one.
        encoded = client.get(blob_path.replace("_condagate_blobs", "%5Fcondagate%5Fblobs"))
        assert encoded.status_code == 404 and package.data[:64] not in encoded.content
        # The blob exists and the same client may download it: only through condagate.
        assert client.get(package.path).content == package.data


def test_condagate_itself_answers_with_the_header_and_no_body(accel: Accel):
    package = _hosted_package(accel.server, accel.work)
    with accel.server.admin() as direct:
        assert direct.get(f"/conda/{package.feed}/noarch/repodata.json").status_code == 200
        for _ in range(2):  # the route, then the fast lane
            response = direct.get(package.path)
            assert response.status_code == 200
            assert response.content == b""
            assert response.headers["x-accel-redirect"] == ACCEL_PREFIX + _blob_relative(package.sha256)
            assert response.headers["etag"] == f'"{package.sha256}"'
            assert response.headers["cache-control"] == "public, no-cache"
        head = direct.head(package.path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["x-accel-redirect"] == ACCEL_PREFIX + _blob_relative(package.sha256)
        assert direct.get(package.path, headers={"If-None-Match": f'"{package.sha256}"'}).status_code == 304
    assert wait_until(lambda: _downloads(accel.server, package.feed) == 2)


@pytest.fixture(params=["sqlite", "postgresql"])
def sendfile_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    server = start_server(
        tmp_path / "data", backend_database_url(request.param), extra_env={"CONDAGATE_SENDFILE_HEADER": "X-Sendfile"}
    )
    yield server
    server.stop()


def test_sendfile_header_names_the_blobs_absolute_path(sendfile_server: Server, tmp_path: Path):
    package = _hosted_package(sendfile_server, tmp_path)
    blob = sendfile_server.data_dir / "blobs" / _blob_relative(package.sha256)
    assert blob.is_absolute() and blob.read_bytes() == package.data
    with sendfile_server.admin() as direct:
        assert direct.get(f"/conda/{package.feed}/noarch/repodata.json").status_code == 200
        for _ in range(2):  # the route, then the fast lane
            response = direct.get(package.path)
            assert response.status_code == 200
            assert response.content == b""
            assert response.headers["x-sendfile"] == str(blob)
            assert "x-accel-redirect" not in response.headers
            assert response.headers["etag"] == f'"{package.sha256}"'
    assert wait_until(lambda: _downloads(sendfile_server, package.feed) == 2)
