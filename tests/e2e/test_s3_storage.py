"""The S3-compatible blob store, end to end: a condagate server keeps its blobs in a bucket of a real S3
API server (moto's, on 127.0.0.1), on SQLite and on PostgreSQL. Everything the channel tests check holds
here too (stored under the sha256, identical bytes, ETag/304, Last-Modified, HEAD, Range, repodata
variants and shards, a real client's install, deletes, proxy caching with the upstream gone,
``condagate check``), and with ``CONDAGATE_S3_REDIRECT=on`` package downloads are presigned redirects."""

from __future__ import annotations

import bz2
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgpack
import pytest
import zstandard
from test_proxy_feed import make_proxy_feed

from conftest import BACKENDS, backend_database_url, upload
from rattler_client import solve_and_install
from s3_server import S3Server, object_key, running_s3, server_env
from servers import Server, condagate_command, start_server, wait_until
from upstream_channel import UpstreamChannel

MakePackage = Callable[..., Path]
PREFIX = "site/blobs"


@dataclass
class Stored:
    """A condagate server whose blobs are in ``bucket`` under ``prefix`` of the S3 server ``s3``."""

    s3: S3Server
    server: Server
    bucket: str
    prefix: str = PREFIX

    def key(self, sha256: str) -> str:
        return object_key(self.prefix, sha256)

    def object(self, sha256: str) -> bytes | None:
        return self.s3.object_bytes(self.bucket, self.key(sha256))

    def blob_keys(self) -> set[str]:
        return set(self.s3.keys(self.bucket, f"{self.prefix}/blobs/"))

    def feed(self) -> str:
        name = "s3-" + uuid.uuid4().hex[:10]
        with self.server.admin() as client:
            response = client.post("/api/feeds", json={"name": name})
            assert response.status_code == 201, response.text
        return name

    def local_files(self) -> list[Path]:
        """Files the server left in its data folder's blob and temp folders (an S3 store keeps none)."""
        data = self.server.data_dir
        folders = [folder for folder in (data / "blobs", data / "tmp") if folder.exists()]
        return [path for folder in folders for path in folder.rglob("*") if path.is_file()]


def start_s3_server(s3: S3Server, root: Path, backend: str, **extra: str) -> Stored:
    bucket = s3.new_bucket()
    env = {
        **server_env(s3.url, bucket, PREFIX),
        # failed upstream checks may be retried after 0.2 s (stale repodata is checked below)
        "CONDAGATE_UPSTREAM_BACKOFF_SECONDS": "0.2",
        "CONDAGATE_UPSTREAM_MAX_BACKOFF_SECONDS": "0.2",
        **extra,
    }
    server = start_server(root / "data", backend_database_url(backend), extra_env=env)
    return Stored(s3, server, bucket)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    backend_database_url(request.param)  # skips (or fails in CI) without PostgreSQL
    return str(request.param)


@pytest.fixture(scope="module")
def stored(s3: S3Server, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """One condagate server on the S3 store per database backend."""
    setup = start_s3_server(s3, tmp_path_factory.mktemp(f"s3-{backend}"), backend)
    yield setup
    setup.server.stop()


@pytest.fixture(scope="module")
def redirecting(s3: S3Server, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """A second server, answering package downloads with presigned redirects."""
    setup = start_s3_server(
        s3, tmp_path_factory.mktemp(f"s3-redirect-{backend}"), backend,
        CONDAGATE_S3_REDIRECT="on", CONDAGATE_S3_REDIRECT_SECONDS="120",
    )
    yield setup
    setup.server.stop()


def _uploaded(stored: Stored, feed: str, path: Path) -> dict[str, Any]:
    response = upload(stored.server, feed, path)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _get(server: Server, path: str, **kwargs: Any) -> httpx.Response:
    with server.client() as client:
        return client.get(path, **kwargs)


def _listed(server: Server, feed: str, subdir: str = "noarch") -> set[str]:
    document = _get(server, f"/conda/{feed}/{subdir}/repodata.json").json()
    return set(document["packages"]) | set(document["packages.conda"])


# --- uploads, downloads, caching headers ----------------------------------------------------------


@pytest.mark.parametrize("extension", [".conda", ".tar.bz2"])
def test_an_upload_is_stored_under_its_sha256_and_downloads_identically(
    stored: Stored, make_package: MakePackage, extension: str
):
    feed = stored.feed()
    path = make_package("stored", extension, files={"data.bin": bytes(range(256)) * 300})
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    result = _uploaded(stored, feed, path)
    assert result["sha256"] == sha256
    assert stored.object(sha256) == data  # whole, under its name
    assert stored.key(sha256) in stored.blob_keys()
    assert stored.local_files() == []  # nothing kept on the server's disk: no blob, no temp file
    download = _get(stored.server, f"/conda/{feed}/noarch/{path.name}")
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-length"] == str(len(data))
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["etag"] == f'"{sha256}"'
    assert download.headers["cache-control"] == "public, no-cache"
    assert "location" not in download.headers  # streamed: no redirect unless configured
    # Uploading the same bytes to another feed stores no second object.
    other = stored.feed()
    _uploaded(stored, other, path)
    assert sorted(k for k in stored.blob_keys() if k.endswith(sha256)) == [stored.key(sha256)]


def test_etag_last_modified_head_and_range(stored: Stored, make_package: MakePackage):
    feed = stored.feed()
    path = make_package("ranged", files={"data.bin": bytes(range(256)) * 400})
    _uploaded(stored, feed, path)
    data, size = path.read_bytes(), path.stat().st_size
    server, url = stored.server, f"/conda/{feed}/noarch/{path.name}"
    full = _get(server, url)
    assert full.status_code == 200 and full.content == data
    etag, last_modified = full.headers["etag"], full.headers["last-modified"]
    assert full.headers["accept-ranges"] == "bytes"

    not_modified = _get(server, url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert _get(server, url, headers={"If-None-Match": '"other"'}).status_code == 200
    assert _get(server, url, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert _get(server, url, headers={"If-Modified-Since": last_modified}).status_code == 304
    earlier = format_datetime(parsedate_to_datetime(last_modified) - timedelta(hours=1), usegmt=True)
    assert _get(server, url, headers={"If-Modified-Since": earlier}).content == data
    # If-None-Match wins over If-Modified-Since
    both = {"If-None-Match": '"other"', "If-Modified-Since": last_modified}
    assert _get(server, url, headers=both).status_code == 200

    with server.client() as client:
        head = client.head(url)
        head_304 = client.head(url, headers={"If-None-Match": etag})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size) and head.headers["etag"] == etag
    assert head.headers["last-modified"] == last_modified
    assert head_304.status_code == 304

    part = _get(server, url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.headers["content-length"] == "100"
    open_ended = _get(server, url, headers={"Range": f"bytes={size - 10}-"})
    assert open_ended.status_code == 206 and open_ended.content == data[-10:]
    suffix = _get(server, url, headers={"Range": "bytes=-25"})
    assert suffix.status_code == 206 and suffix.content == data[-25:]
    assert suffix.headers["content-range"] == f"bytes {size - 25}-{size - 1}/{size}"
    longer_than_file = _get(server, url, headers={"Range": f"bytes=-{size + 100}"})
    assert longer_than_file.status_code == 206 and longer_than_file.content == data
    past_the_end = _get(server, url, headers={"Range": f"bytes=10-{size + 1000}"})
    assert past_the_end.status_code == 206 and past_the_end.content == data[10:]
    assert past_the_end.headers["content-range"] == f"bytes 10-{size - 1}/{size}"
    last_byte = _get(server, url, headers={"Range": f"bytes={size - 1}-{size - 1}"})
    assert last_byte.status_code == 206 and last_byte.content == data[-1:]

    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 5}-", "bytes=-0"):
        refused = _get(server, url, headers={"Range": unsatisfiable})
        assert refused.status_code == 416, unsatisfiable
        assert refused.headers["content-range"] == f"bytes */{size}", unsatisfiable
        assert refused.headers["content-type"].startswith("application/problem+json")

    same = _get(server, url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status_code == 206 and same.content == data[:10]
    by_date = _get(server, url, headers={"Range": "bytes=0-9", "If-Range": last_modified})
    assert by_date.status_code == 206 and by_date.content == data[:10]
    older = format_datetime(parsedate_to_datetime(last_modified) - timedelta(days=1), usegmt=True)
    assert _get(server, url, headers={"Range": "bytes=0-9", "If-Range": older}).content == data
    weak = _get(server, url, headers={"Range": "bytes=0-9", "If-Range": f"W/{etag}"})
    assert weak.status_code == 200 and weak.content == data  # If-Range compares strongly
    changed = _get(server, url, headers={"Range": "bytes=0-9", "If-Range": '"an-older-etag"'})
    assert changed.status_code == 200 and changed.content == data  # the whole, current file
    several = _get(server, url, headers={"Range": "bytes=0-9,20-29"})
    assert several.status_code in (200, 206) and (several.content == data or several.status_code == 206)

    missing = _get(server, f"/conda/{feed}/noarch/nothere-1.0-0.conda")
    assert missing.status_code == 404


def test_a_forced_replacement_is_served_and_the_old_object_freed(stored: Stored, make_package: MakePackage):
    feed = stored.feed()
    first = make_package("replaced", files={"data.txt": b"first " + uuid.uuid4().bytes})
    second = make_package("replaced", files={"data.txt": b"second, different " + uuid.uuid4().bytes})
    old = _uploaded(stored, feed, first)["sha256"]
    assert upload(stored.server, feed, second).status_code == 409  # not without --force
    assert stored.object(old) == first.read_bytes()
    assert upload(stored.server, feed, second, force="true").status_code == 201
    assert _get(stored.server, f"/conda/{feed}/noarch/{first.name}").content == second.read_bytes()
    assert stored.object(old) is None
    assert stored.object(hashlib.sha256(second.read_bytes()).hexdigest()) == second.read_bytes()


# --- repodata, shards, a real client ---------------------------------------------------------------


def test_repodata_variants_and_shards_list_the_uploads(stored: Stored, make_package: MakePackage):
    feed = stored.feed()
    conda = make_package("alpha", subdir="linux-64")
    tarball = make_package("beta", ".tar.bz2", subdir="linux-64", depends=["alpha"])
    for path in (conda, tarball):
        _uploaded(stored, feed, path)
    server = stored.server
    plain = _get(server, f"/conda/{feed}/linux-64/repodata.json")
    zst = _get(server, f"/conda/{feed}/linux-64/repodata.json.zst")
    bz = _get(server, f"/conda/{feed}/linux-64/repodata.json.bz2")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zst.content) == plain.content
    assert bz2.decompress(bz.content) == plain.content
    document = plain.json()
    assert set(document["packages.conda"]) == {conda.name} and set(document["packages"]) == {tarball.name}
    for path, key in ((conda, "packages.conda"), (tarball, "packages")):
        record = document[key][path.name]
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["size"] == path.stat().st_size
    etag = plain.headers["etag"]
    assert _get(server, f"/conda/{feed}/linux-64/repodata.json", headers={"If-None-Match": etag}).status_code == 304

    index_response = _get(server, f"/conda/{feed}/linux-64/repodata_shards.msgpack.zst")
    assert index_response.status_code == 200
    index = msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(index_response.content))
    assert index["version"] == 1 and index["info"]["subdir"] == "linux-64"
    assert set(index["shards"]) == {"alpha", "beta"}
    for name, path, key in (("alpha", conda, "packages.conda"), ("beta", tarball, "packages")):
        digest = index["shards"][name]
        shard_response = _get(server, f"/conda/{feed}/linux-64/shards/{digest.hex()}.msgpack.zst")
        assert shard_response.status_code == 200
        assert hashlib.sha256(shard_response.content).digest() == digest
        shard = msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(shard_response.content))
        assert set(shard[key]) == {path.name}
        assert shard[key][path.name]["sha256"] == hashlib.sha256(path.read_bytes()).digest()


def test_a_real_client_solves_and_installs_from_the_s3_store(
    stored: Stored, make_package: MakePackage, tmp_path: Path
):
    _solve_and_install_through(stored, make_package, tmp_path)


def test_a_real_client_follows_presigned_redirects_to_the_store(
    redirecting: Stored, make_package: MakePackage, tmp_path: Path
):
    feed = _solve_and_install_through(redirecting, make_package, tmp_path)

    def both_redirected() -> bool:  # the access log is written off the request path, a moment later
        lines = [line for line in redirecting.server.log().splitlines() if f"GET /conda/{feed}/" in line]
        return any('.conda 302"' in line for line in lines) and any('.tar.bz2 302"' in line for line in lines)

    assert wait_until(both_redirected)


def _solve_and_install_through(stored: Stored, make_package: MakePackage, tmp_path: Path) -> str:
    feed = stored.feed()
    name = "app" + uuid.uuid4().hex[:6]
    _uploaded(stored, feed, make_package("lib" + name, ".tar.bz2", subdir="linux-64", files={"lib/x.so": b"x" * 5000}))
    _uploaded(stored, feed, make_package(name, depends=["lib" + name]))
    channel = f"{stored.server.url}/conda/{feed}"
    for sharded in (False, True):
        prefix = tmp_path / f"env-{sharded}"
        installed = solve_and_install(channel, [name], prefix, sharded=sharded)
        assert installed == [f"{name}=1.0=0", f"lib{name}=1.0=0"]
        assert (prefix / "lib" / "x.so").read_bytes() == b"x" * 5000
    return feed


# --- deleting ---------------------------------------------------------------------------------------


def test_deleting_a_file_removes_its_object_once_no_other_file_uses_it(stored: Stored, make_package: MakePackage):
    first, second = stored.feed(), stored.feed()
    shared = make_package("shared")
    own = make_package("own")
    sha_shared = _uploaded(stored, first, shared)["sha256"]
    _uploaded(stored, second, shared)
    sha_own = _uploaded(stored, first, own)["sha256"]
    with stored.server.admin() as admin:
        removed = admin.delete(f"/api/feeds/{first}/files/noarch/{shared.name}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["blobs_freed"] == []  # the other feed still serves these bytes
        assert stored.object(sha_shared) == shared.read_bytes()
        assert admin.get(f"/conda/{second}/noarch/{shared.name}").content == shared.read_bytes()
        assert admin.get(f"/conda/{first}/noarch/{shared.name}").status_code == 404

        removed = admin.delete(f"/api/feeds/{second}/files/noarch/{shared.name}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["blobs_freed"] == [sha_shared]
        assert stored.object(sha_shared) is None
        assert _listed(stored.server, second) == set()

        removed = admin.delete(f"/api/feeds/{first}/packages/own")
        assert removed.status_code == 200, removed.text
        assert stored.object(sha_own) is None
        assert _listed(stored.server, first) == set()


# --- proxy feeds -----------------------------------------------------------------------------------


def test_a_proxied_file_is_verified_cached_in_s3_and_served_with_the_upstream_gone(
    stored: Stored, upstream: UpstreamChannel
):
    server = stored.server
    connector, feed = make_proxy_feed(server, upstream.url, cache_minutes=0)
    name = "numpy-1.26.4-py311h0_0.conda"
    good = (upstream.root / "linux-64" / name).read_bytes()
    sha256 = hashlib.sha256(good).hexdigest()
    url = f"/conda/{feed}/linux-64/{name}"
    with server.client() as client:
        fresh = client.get(f"/conda/{feed}/linux-64/repodata.json")
        assert fresh.status_code == 200 and "x-condagate-stale" not in fresh.headers
        assert fresh.json()["packages.conda"][name]["sha256"] == sha256
        assert client.get(f"/conda/{feed}/noarch/repodata.json").status_code == 200

        # A corrupt upstream answer is refused and never reaches the bucket.
        upstream.faults.wrong_bytes = True
        upstream.faults.paths = (".conda",)
        refused = client.get(url)
        assert refused.status_code == 502 and "sha256 differs" in refused.json()["error"]["message"]
        assert stored.object(sha256) is None
        upstream.faults = type(upstream.faults)()

        first = client.get(url)
        assert first.status_code == 200 and first.content == good
        assert upstream.count(f"/linux-64/{name}") == 2
        assert stored.object(sha256) == good  # cached in the bucket, under its sha256
        assert stored.local_files() == []

        upstream.stop()
        time.sleep(0.3)  # past the back-off of the last check: the next request checks (and fails)
        second = client.get(url)
        assert second.status_code == 200 and second.content == good
        assert second.headers["etag"] == f'"{sha256}"'
        assert "immutable" in second.headers["cache-control"]  # an upstream file never changes
        part = client.get(url, headers={"Range": "bytes=5-14"})
        assert part.status_code == 206 and part.content == good[5:15]
        stale = client.get(f"/conda/{feed}/linux-64/repodata.json")
        assert stale.status_code == 200 and stale.json() == fresh.json()
        assert connector in stale.headers["x-condagate-stale"]
        never_fetched = client.get(f"/conda/{feed}/noarch/requests-2.32.3-pyhd_0.conda")
        assert never_fetched.status_code == 502
        assert "unreachable" in never_fetched.json()["error"]["message"]
        assert "not cached" in never_fetched.json()["error"]["message"]


# --- condagate check ---------------------------------------------------------------------------------


def run_check(stored: Stored, *args: str) -> subprocess.CompletedProcess[str]:
    """``condagate check`` with the server's own configuration (data dir, database, storage URL, S3)."""
    env = {k: v for k, v in stored.server.env.items() if k != "COLUMNS"}
    return subprocess.run(
        [*condagate_command(), "check", *args], capture_output=True, text=True, env=env, timeout=300
    )


def check_json(stored: Stored, *args: str, status: int) -> dict[str, Any]:
    result = run_check(stored, "--json", *args)
    assert result.returncode == status, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def own_stored(s3: S3Server, backend: str, tmp_path: Path) -> Iterator[Stored]:
    setup = start_s3_server(s3, tmp_path, backend)
    yield setup
    setup.server.stop()


def test_check_finds_the_s3_store_consistent_and_an_object_deleted_behind_its_back(
    own_stored: Stored, make_package: MakePackage
):
    stored = own_stored
    feed = stored.feed()
    kept, gone, altered = (make_package(what) for what in ("kept", "gone", "altered"))
    shas = {path.name: _uploaded(stored, feed, path)["sha256"] for path in (kept, gone, altered)}

    clean = run_check(stored)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.startswith("no problems: checked 3 blob(s)"), clean.stdout
    report = check_json(stored, status=0)
    assert report["clean"] and report["summary"]["package_files"] == 3

    stored.s3.delete_object(stored.bucket, stored.key(shas[gone.name]))
    other_bytes = bytearray(altered.read_bytes())
    other_bytes[len(other_bytes) // 2] ^= 0xFF
    stored.s3.client().put_object(Bucket=stored.bucket, Key=stored.key(shas[altered.name]), Body=bytes(other_bytes))

    report = check_json(stored, status=1)
    found = {problem["kind"]: problem for problem in report["problems"]}
    assert sorted(found) == ["missing_blob", "wrong_sha256"], report
    assert found["missing_blob"]["subject"] == f"{feed}/noarch/{gone.name}"
    assert found["wrong_sha256"]["subject"] == f"{feed}/noarch/{altered.name}"
    assert found["wrong_sha256"]["actual_sha256"] == hashlib.sha256(other_bytes).hexdigest()
    text = run_check(stored)
    assert text.returncode == 1 and f"missing_blob: {feed}/noarch/{gone.name}" in text.stdout

    repaired = check_json(stored, "--repair", status=0)
    assert all(problem["repaired"] for problem in repaired["problems"]), repaired
    assert stored.object(shas[altered.name]) is None  # moved aside: other bytes than its name says
    quarantined = stored.s3.keys(stored.bucket, f"{stored.prefix}/quarantine/")
    assert quarantined == [f"{stored.prefix}/quarantine/{shas[altered.name]}"]
    assert _listed(stored.server, feed) == {kept.name}
    assert _get(stored.server, f"/conda/{feed}/noarch/{gone.name}").status_code in (404, 410)
    assert check_json(stored, status=0)["problems"] == []


# --- presigned redirects -------------------------------------------------------------------------------


def _downloads(server: Server, feed: str, package: str) -> dict[str, int]:
    with server.admin() as client:
        detail = client.get(f"/api/feeds/{feed}/packages/{package}").json()
    return {f["filename"]: f["downloads"] for v in detail["versions"] for f in v["files"]}


def test_package_downloads_redirect_to_a_presigned_url(redirecting: Stored, make_package: MakePackage):
    stored = redirecting
    feed = stored.feed()
    name = "redirected" + uuid.uuid4().hex[:6]
    path = make_package(name, files={"data.bin": bytes(range(256)) * 100})
    data = path.read_bytes()
    sha256 = _uploaded(stored, feed, path)["sha256"]
    url = f"/conda/{feed}/noarch/{path.name}"
    with stored.server.client() as client:
        answer = client.get(url)
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert urlsplit(location).netloc == urlsplit(stored.s3.url).netloc  # the object store itself
        assert sha256 in urlsplit(location).path
        assert "no-store" in answer.headers["cache-control"]
        followed = httpx.get(location, timeout=30)
        assert followed.status_code == 200 and followed.content == data
        # saved under the package's name by a browser, not under the object's
        assert followed.headers["content-disposition"] == f'attachment; filename="{path.name}"'
        assert client.get(url, follow_redirects=True).content == data  # what a client following it sees

        head = client.head(url)  # a probe: answered here, never redirected
        assert head.status_code == 200 and head.content == b"" and "location" not in head.headers
        assert head.headers["content-length"] == str(len(data)) and head.headers["etag"] == f'"{sha256}"'
        assert client.get(url, headers={"If-None-Match": f'"{sha256}"'}).status_code == 304
        for variant in ("repodata.json", "repodata.json.zst", "repodata.json.bz2", "repodata_shards.msgpack.zst"):
            listed = client.get(f"/conda/{feed}/noarch/{variant}")
            assert listed.status_code == 200 and "location" not in listed.headers, variant
        assert path.name in client.get(f"/conda/{feed}/noarch/repodata.json").json()["packages.conda"]


def test_redirected_downloads_are_counted(redirecting: Stored, make_package: MakePackage):
    stored = redirecting
    feed = stored.feed()
    name = "counted" + uuid.uuid4().hex[:6]
    path = make_package(name)
    _uploaded(stored, feed, path)
    url = f"/conda/{feed}/noarch/{path.name}"
    with stored.server.client() as client:
        assert client.get(url).status_code == 302
        assert client.get(url, follow_redirects=True).content == path.read_bytes()
        assert client.head(url).status_code == 200  # a probe, not a download
        assert client.get(url, headers={"If-None-Match": client.head(url).headers["etag"]}).status_code == 304
    assert wait_until(lambda: _downloads(stored.server, feed, name) == {path.name: 2}), _downloads(
        stored.server, feed, name
    )


def test_a_feed_that_needs_a_key_refuses_an_anonymous_download_before_any_redirect(
    redirecting: Stored, make_package: MakePackage
):
    stored = redirecting
    server = stored.server
    path = make_package("private")
    feed = stored.feed()
    _uploaded(stored, feed, path)
    url = f"/conda/{feed}/noarch/{path.name}"
    with server.admin() as admin:
        key = admin.post("/api/apikeys", json={"feeds": [feed], "permissions": ["view"]})
        assert key.status_code == 201, key.text
        removed = admin.delete("/api/grants", params={"principal": "anonymous", "permission": "view"})
        assert removed.status_code == 204, removed.text
    try:
        with server.client() as anonymous:
            assert wait_until(lambda: anonymous.get(url).status_code == 401)
            refused = anonymous.get(url)
            assert refused.status_code == 401 and "location" not in refused.headers
            assert refused.headers["www-authenticate"] == 'Basic realm="condagate"'
            assert anonymous.head(url).status_code == 401
        with server.client(auth=("api", key.json()["key"])) as keyed:
            allowed = keyed.get(url)
            assert allowed.status_code == 302
            assert httpx.get(allowed.headers["location"], timeout=30).content == path.read_bytes()
    finally:
        with server.admin() as admin:
            restored = admin.post("/api/grants", json={"principal": "anonymous", "permission": "view"})
            assert restored.status_code == 201, restored.text
