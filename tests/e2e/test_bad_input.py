"""Bad uploads over HTTP, on every upload route: a clear 4xx with a message naming the problem,
and nothing stored — no blob, no temp file left, no database row, no repodata change."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from package_factory import (
    Member,
    PackageSpec,
    conda_entries,
    index_json,
    write_conda,
    write_package,
    write_random,
    write_truncated,
    write_with_members,
    write_with_metadata,
    write_zip,
    zero_bomb_zst,
)
from servers import Server, postgres_database, start_server

ROUTES = ["api", "quetz", "prefix-raw", "prefix-multipart", "artifactory"]
SUBDIRS = ("noarch", "linux-64")
SMALL_LIMIT = 64 * 1024
BOUNDARY = "condagate-test-boundary"

Body = bytes | Iterator[bytes]


# --- sending uploads the way each client protocol does ---


def multipart(filename: str, data: bytes, part_headers: dict[str, str] | None = None,
              field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body built by hand, so tests control every byte (and can break it)."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
    head += "".join(f"{name}: {value}\r\n" for name, value in (part_headers or {}).items())
    head += "Content-Type: application/octet-stream\r\n\r\n"
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def chunked(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def route_target(route: str, feed: str, filename: str, subdir: str | None = None) -> tuple[str, str]:
    """(method, path) of each upload protocol."""
    name = quote(filename, safe="")
    return {
        "api": ("POST", f"/api/feeds/{feed}/upload/{name}"),
        "quetz": ("POST", f"/api/channels/{feed}/upload/{name}"),
        "artifactory": ("PUT", f"/conda/{feed}/{subdir or 'noarch'}/{name}"),
    }.get(route, ("POST", f"/api/v1/upload/{feed}"))


# Where each protocol declares the sha256: a query parameter or a header (prefix multipart: a part header).
SHA256_HEADERS = {"prefix-raw": "X-File-Sha256", "artifactory": "X-Checksum-Sha256"}


def send(server: Server, route: str, feed: str, filename: str, data: bytes, *, subdir: str | None = None,
         sha256: str | None = None, force: bool = False, stream: bool = False) -> httpx.Response:
    """Upload ``data`` named ``filename`` the way the ``route`` protocol does; ``stream`` sends it chunked."""
    method, target = route_target(route, feed, filename, subdir)
    params = {"force": "true"} if force else {}
    headers = {"X-File-Name": filename} if route == "prefix-raw" else {}
    if route == "api" and subdir is not None:
        params["subdir"] = subdir
    if sha256 is not None and route in ("api", "quetz"):
        params["sha256"] = sha256
    if sha256 is not None and route in SHA256_HEADERS:
        headers[SHA256_HEADERS[route]] = sha256
    if route == "prefix-multipart":
        data, headers["Content-Type"] = multipart(filename, data, {"x-file-sha256": sha256} if sha256 else None)
    body: Body = chunked(data) if stream else data
    with server.admin() as client:
        return client.request(method, target, content=body, params=params, headers=headers)


def send_file(server: Server, route: str, feed: str, path: Path, **kwargs: Any) -> httpx.Response:
    return send(server, route, feed, path.name, path.read_bytes(), **kwargs)


def assert_error(response: httpx.Response, status: int, code: str, message: str) -> str:
    """The one error shape, problem details (RFC 9457) with condagate's ``code`` and, for earlier
    clients, ``error: {code, message}``; the message matching ``message``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail", "code", "message", "error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["status"] == status and body["code"] == code and body["detail"] == body["error"]["message"], body
    assert body["error"]["code"] == code, body
    assert re.search(message, body["error"]["message"]), body["error"]["message"]
    return str(body["error"]["message"])


# --- what is stored, before and after ---


@dataclass(frozen=True)
class Stored:
    blobs: frozenset[str]
    repodata: dict[str, bytes]
    packages: Any


def blob_files(server: Server) -> frozenset[str]:
    root = server.data_dir / "blobs"
    return frozenset(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent != root / "tmp")


def stored(server: Server, feed: str) -> Stored:
    with server.admin() as client:
        repodata = {}
        for subdir in SUBDIRS:
            response = client.get(f"/conda/{feed}/{subdir}/repodata.json")
            assert response.status_code == 200, response.text
            repodata[subdir] = response.content
            # Sharded repodata must stay servable too (its index holds a creation time: status only).
            shards = client.get(f"/conda/{feed}/{subdir}/repodata_shards.msgpack.zst")
            assert shards.status_code == 200, shards.text
        packages = client.get(f"/api/feeds/{feed}/packages")
        assert packages.status_code == 200, packages.text
    return Stored(blob_files(server), repodata, packages.json())


def assert_nothing_stored(server: Server, feed: str, before: Stored) -> None:
    after = stored(server, feed)
    assert after.blobs == before.blobs, "a blob was left behind"
    assert after.repodata == before.repodata, "repodata changed"
    assert after.packages == before.packages, "a package row was added or changed"
    assert list((server.data_dir / "blobs" / "tmp").iterdir()) == [], "a temp upload file was left behind"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refused_request(server: Server, feed: str, request: Callable[[httpx.Client], httpx.Response], status: int,
                    code: str, message: str) -> str:
    """Make a bad request, check the error, and check nothing was stored."""
    before = stored(server, feed)
    with server.admin() as client:
        text = assert_error(request(client), status, code, message)
    assert_nothing_stored(server, feed, before)
    return text


def refused(server: Server, feed: str, route: str, filename: str, data: bytes, status: int, code: str,
            message: str, **kwargs: Any) -> str:
    """Send a bad upload, check the error, and check nothing was stored."""
    return refused_request(server, feed, lambda _: send(server, route, feed, filename, data, **kwargs),
                           status, code, message)


# --- broken and hostile archives (built per test in tmp_path) ---


META = PackageSpec("meta")
Build = Callable[[Path], Path]


def _members(place: str, extra: list[Member]) -> Build:
    return lambda directory: write_with_members(directory, place, extra)


def _index(raw: bytes, extension: str = ".conda") -> Build:
    return lambda directory: write_with_metadata(directory, extension, META, index=raw)


def _meta(**changes: Any) -> bytes:
    return index_json(META, **changes)


def _truncated(extension: str) -> Build:
    def build(directory: Path) -> Path:
        spec = PackageSpec("cut", files={f"share/cut/{n}.bin": os.urandom(2000) for n in range(8)})
        whole = write_package(directory, spec, extension)
        (directory / "half").mkdir()
        return write_truncated(whole, directory / "half")

    return build


def _bomb(directory: Path) -> Path:
    """300 MiB of zeros in the info tar, about 10 KiB uploaded: over the default 256 MiB budget, yet fast."""
    spec = PackageSpec("bomb")
    info = zero_bomb_zst(spec.info_members(), 300 << 20)
    return write_zip(directory / f"{spec.stem}.conda", conda_entries(spec, info=info))


SYMLINK_OUT = [Member("share/link", kind=tarfile.SYMTYPE, linkname="../../../etc/passwd")]
HARDLINK_OUT = [Member("share/hard", kind=tarfile.LNKTYPE, linkname="../etc/shadow")]

BAD_ARCHIVES: dict[str, tuple[Build, str]] = {
    "random-conda": (lambda d: write_random(d, "junk-1.0-0.conda"), r"not a \.conda \(zip\) archive"),
    "random-tar-bz2": (lambda d: write_random(d, "junk-1.0-0.tar.bz2"), r"not a bzip2-compressed tar archive"),
    "truncated-conda": (_truncated(".conda"), r"not a \.conda \(zip\) archive"),
    "truncated-tar-bz2": (_truncated(".tar.bz2"), r"\.tar\.bz2 archive is not a readable tar archive"),
    "conda-without-info": (lambda d: write_conda(d, PackageSpec("noinfo"), skip_info=True),
                           r"has no info-noinfo-1\.0-0\.tar\.zst member"),
    "missing-index-conda": (lambda d: write_with_metadata(d, ".conda", META, drop=("info/index.json",)),
                            r"has no info/index\.json"),
    "missing-index-tar-bz2": (lambda d: write_with_metadata(d, ".tar.bz2", META, drop=("info/index.json",)),
                              r"has no info/index\.json"),
    "index-not-json": (_index(b'{"name": "meta"'), r"info/index\.json is not valid JSON"),
    "index-array": (_index(b'["meta"]', ".tar.bz2"), r"info/index\.json must hold a JSON object"),
    "index-no-name": (_index(_meta(name=...)), r"info/index\.json has no 'name' string"),
    "index-no-version": (_index(_meta(version=...), ".tar.bz2"), r"has no 'version' string"),
    "index-no-build": (_index(_meta(build=...)), r"has no 'build' string"),
    "index-build-number-string": (_index(_meta(build_number="1")), r"'build_number' must be an integer"),
    "index-depends-string": (_index(_meta(depends="python")), r"'depends' must be a list of strings"),
    "index-depends-numbers": (_index(_meta(depends=[3]), ".tar.bz2"), r"'depends' must be a list of strings"),
    "index-nan": (_index(_meta()[:-1] + b', "x": NaN}'), r"NaN is not a JSON value"),
    "index-other-name": (_index(_meta(name="other")),
                         r"file name 'meta-1\.0-0\.conda' does not match its info/index\.json \(name 'other'"),
    "index-other-version": (_index(_meta(version="9"), ".tar.bz2"),
                            r"'meta-1\.0-0\.tar\.bz2' does not match .*version '9'"),
    # Each of these once passed validation and then failed to re-encode: a 500 instead of a 400.
    "index-int-over-64-bits": (_index(_meta(size_hint=2**64)), r"size_hint is an integer outside the 64-bit"),
    "index-lone-surrogate": (_index(_meta()[:-1] + b', "license_family": "\\udcff"}', ".tar.bz2"),
                             r"info/index\.json: license_family holds text that is not valid Unicode"),
    "about-lone-surrogate": (lambda d: write_with_metadata(d, ".conda", META, about=b'{"summary": "\\ud800"}'),
                             r"info/about\.json: summary holds text that is not"),
    "absolute-member": (_members("conda-info", [Member("/etc/evil", b"x")]), r"'/etc/evil' has an absolute path"),
    "dotdot-member": (_members("tar.bz2", [Member("../evil", b"x")]), r"'\.\./evil' contains '\.\.'"),
    "dotdot-in-payload": (_members("conda-pkg", [Member("bin/../../evil", b"x")]), r"contains '\.\.'"),
    "symlink-out-info": (_members("conda-info", SYMLINK_OUT), r"link 'share/link' points outside the package"),
    "symlink-out-pkg": (_members("conda-pkg", SYMLINK_OUT), r"link 'share/link' points outside the package"),
    "symlink-out-tar-bz2": (_members("tar.bz2", SYMLINK_OUT), r"link 'share/link' points outside the package"),
    "hardlink-out-info": (_members("conda-info", HARDLINK_OUT), r"link 'share/hard' points outside the package"),
    "hardlink-out-pkg": (_members("conda-pkg", HARDLINK_OUT), r"link 'share/hard' points outside the package"),
    "hardlink-out-tar-bz2": (_members("tar.bz2", HARDLINK_OUT), r"link 'share/hard' points outside the package"),
    "device-file": (_members("conda-pkg", [Member("dev/null", kind=tarfile.CHRTYPE)]), r"is a device or fifo"),
    "device-file-tar-bz2": (_members("tar.bz2", [Member("dev/sda", kind=tarfile.BLKTYPE)]), r"is a device"),
    "duplicate-member": (_members("conda-info", [Member("info/x", b"1"), Member("info/x", b"2")]),
                         r"'info/x' appears twice"),
    "duplicate-member-tar-bz2": (_members("tar.bz2", [Member("a", b"1"), Member("a", b"2")]), r"appears twice"),
    "compression-bomb": (_bomb, r"decompresses to more than 268435456 bytes: refusing a likely compression bomb"),
}


@pytest.mark.parametrize("case", BAD_ARCHIVES)
def test_bad_archive_is_refused_and_nothing_stored(server: Server, feed: str, tmp_path: Path, case: str) -> None:
    build, message = BAD_ARCHIVES[case]
    path = build(tmp_path)
    refused(server, feed, "api", path.name, path.read_bytes(), 400, "invalid_package", message)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", ["random-conda", "truncated-tar-bz2", "index-other-name", "symlink-out-pkg"])
def test_bad_archive_is_refused_on_every_route(server: Server, feed: str, tmp_path: Path, route: str,
                                               case: str) -> None:
    build, message = BAD_ARCHIVES[case]
    path = build(tmp_path)
    refused(server, feed, route, path.name, path.read_bytes(), 400, "invalid_package", message)


def test_a_valid_upload_after_refusals_is_stored(server: Server, feed: str, tmp_path: Path) -> None:
    """The control: the snapshot does see a stored package (blob, row and repodata all change)."""
    before = stored(server, feed)
    path = write_package(tmp_path, PackageSpec("fine"))
    response = send_file(server, "api", feed, path)
    assert response.status_code == 201, response.text
    after = stored(server, feed)
    assert after.blobs - before.blobs == {_blob_name(sha256_of(path.read_bytes()))}
    assert after.repodata["noarch"] != before.repodata["noarch"]
    assert after.repodata["linux-64"] == before.repodata["linux-64"]
    assert [item["name"] for item in after.packages["items"]] == ["fine"]


def _blob_name(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


# --- file names ---

BAD_NAMES = ["evil.txt", "Upper-1.0-0.conda", "with space-1.0-0.conda", "x.conda", "x-1.0-0.conda.exe"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("filename", BAD_NAMES)
def test_file_name_that_is_not_a_package_name_is_refused(server: Server, feed: str, tmp_path: Path, route: str,
                                                         filename: str) -> None:
    data = write_package(tmp_path, PackageSpec("x")).read_bytes()
    refused(server, feed, route, filename, data, 400, "invalid_package",
            re.escape(repr(filename)) + r" is not a (valid )?conda package file name")


@pytest.mark.parametrize("route", ["prefix-raw", "prefix-multipart"])
def test_path_as_file_name_is_refused(server: Server, feed: str, tmp_path: Path, route: str) -> None:
    """Routes taking the name from a header or a part see the path itself."""
    data = write_package(tmp_path, PackageSpec("x")).read_bytes()
    refused(server, feed, route, "../x-1.0-0.conda", data, 400, "invalid_package",
            r"'\.\./x-1\.0-0\.conda' is not a valid conda package file name")


# --- subdirs ---


WRONG_SUBDIR = r"built for subdir 'noarch' but was uploaded to 'linux-64'"


@pytest.mark.parametrize(
    ("route", "subdir", "status", "code", "message"),
    [
        ("artifactory", "linux-64", 400, "invalid_package", WRONG_SUBDIR),
        ("api", "linux-64", 400, "invalid_package", WRONG_SUBDIR),
        ("artifactory", "mars-64", 404, "subdir_not_found", r"unknown subdir 'mars-64'"),
        ("api", "mars-64", 404, "subdir_not_found", r"unknown subdir 'mars-64'"),
    ],
)
def test_subdir_other_than_the_package_is_refused(server: Server, feed: str, tmp_path: Path, route: str,
                                                  subdir: str, status: int, code: str, message: str) -> None:
    """Artifactory puts to /conda/FEED/SUBDIR/FILE; the API takes ?subdir=. A noarch package fits neither."""
    path = write_package(tmp_path, PackageSpec("plain"))
    refused(server, feed, route, path.name, path.read_bytes(), status, code, message, subdir=subdir)


# --- declared checksums ---


@pytest.mark.parametrize("route", ROUTES)
def test_declared_sha256_that_does_not_match_is_refused(server: Server, feed: str, tmp_path: Path,
                                                        route: str) -> None:
    data = write_package(tmp_path, PackageSpec("summed")).read_bytes()
    wrong = sha256_of(b"something else")
    message = refused(server, feed, route, "summed-1.0-0.conda", data, 400, "checksum_mismatch",
                      r"sha256 is [0-9a-f]{64}, but [0-9a-f]{64} was declared", sha256=wrong)
    assert sha256_of(data) in message and wrong in message


@pytest.mark.parametrize("route", ROUTES)
def test_declared_sha256_that_matches_is_accepted(server: Server, feed: str, tmp_path: Path, route: str) -> None:
    """The control: the header or parameter is the one each route reads (a right one, upper case, passes)."""
    data = write_package(tmp_path, PackageSpec("summed")).read_bytes()
    response = send(server, route, feed, "summed-1.0-0.conda", data, sha256=sha256_of(data).upper())
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256_of(data)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("declared", ["not-a-checksum", "g" * 64, "ab" * 31, "ab" * 33])
def test_malformed_sha256_is_refused(server: Server, feed: str, tmp_path: Path, route: str, declared: str) -> None:
    data = write_package(tmp_path, PackageSpec("summed")).read_bytes()
    refused(server, feed, route, "summed-1.0-0.conda", data, 400, "bad_request",
            re.escape(repr(declared)) + r" is not 64 hex digits", sha256=declared)


@pytest.mark.parametrize("route", ["api", "quetz", "prefix-raw", "artifactory"])
def test_malformed_sha256_is_refused_before_the_body_is_read(server: Server, feed: str, route: str) -> None:
    before = stored(server, feed)
    method, target = route_target(route, feed, "summed-1.0-0.conda")
    headers = {"X-File-Name": "summed-1.0-0.conda"} if route == "prefix-raw" else {}
    if route in SHA256_HEADERS:
        headers[SHA256_HEADERS[route]] = "not-hex"
    else:
        target += "?sha256=not-hex"
    answer = _answer_to_unfinished_body(server, target, headers, os.urandom(64 * 1024), method)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"'not-hex' is not 64 hex digits" in answer
    assert_nothing_stored(server, feed, before)


# --- existing packages ---


@pytest.mark.parametrize("route", ROUTES)
def test_existing_package_is_refused_with_409(server: Server, feed: str, tmp_path: Path, route: str) -> None:
    first = write_package(tmp_path, PackageSpec("twice"))
    assert send_file(server, route, feed, first).status_code == 201
    other = tmp_path / "other"
    other.mkdir()
    second = write_package(other, PackageSpec("twice", summary="a different build of the same file name"))
    assert second.read_bytes() != first.read_bytes()
    message = refused(server, feed, route, second.name, second.read_bytes(), 409, "package_exists",
                      r"noarch/twice-1\.0-0\.conda already exists in this feed")
    assert "force" in message
    assert _record(server, feed, second.name)["sha256"] == sha256_of(first.read_bytes())


def _record(server: Server, feed: str, filename: str, subdir: str = "noarch") -> dict[str, Any]:
    with server.client() as client:
        repodata = client.get(f"/conda/{feed}/{subdir}/repodata.json").json()
    key = "packages.conda" if filename.endswith(".conda") else "packages"
    return dict(repodata[key][filename])


def _create_feed(server: Server) -> str:
    name = "feed-" + uuid.uuid4().hex[:10]
    with server.admin() as client:
        assert client.post("/api/feeds", json={"name": name}).status_code == 201
    return name


@pytest.mark.parametrize("route", ["api", "quetz", "artifactory"])
def test_force_replaces_and_deletes_the_old_blob_once_unreferenced(server: Server, feed: str, tmp_path: Path,
                                                                    route: str) -> None:
    old = write_package(tmp_path, PackageSpec("replaced", files={"share/v": b"old\n"}), ".tar.bz2")
    old_sha = sha256_of(old.read_bytes())
    other_feed = _create_feed(server)
    for target in (feed, other_feed):
        assert send_file(server, route, target, old).status_code == 201
    (tmp_path / "new").mkdir()
    new = write_package(tmp_path / "new", PackageSpec("replaced", files={"share/v": b"new\n"}), ".tar.bz2")
    new_sha = sha256_of(new.read_bytes())
    old_blob = server.data_dir / "blobs" / _blob_name(old_sha)

    response = send_file(server, route, feed, new, force=True)
    assert response.status_code == 201, response.text
    assert response.json()["replaced"] is True and response.json()["sha256"] == new_sha
    assert _record(server, feed, new.name)["sha256"] == new_sha
    assert old_blob.is_file(), "the old blob is still used by the other feed"

    assert send_file(server, route, other_feed, new, force=True).status_code == 201
    assert _record(server, other_feed, new.name)["sha256"] == new_sha
    assert not old_blob.exists(), "the old blob is no longer used anywhere"
    assert (server.data_dir / "blobs" / _blob_name(new_sha)).is_file()
    with server.admin() as client:
        detail = client.get(f"/api/feeds/{feed}/packages/replaced").json()
        assert [f["sha256"] for v in detail["versions"] for f in v["files"]] == [new_sha]
        assert client.get(f"/conda/{feed}/noarch/{new.name}").content == new.read_bytes()


# --- unknown feeds ---


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_feed_is_404_on_every_route(server: Server, feed: str, tmp_path: Path, route: str) -> None:
    """The snapshot of another feed still sees any blob or temp file the refused upload left."""
    path = write_package(tmp_path, PackageSpec("lost"))
    missing = "no-such-feed-" + uuid.uuid4().hex[:6]
    refused_request(server, feed, lambda _: send_file(server, route, missing, path), 404, "feed_not_found",
                    rf"feed '{missing}' does not exist")


# --- empty and malformed bodies ---


@pytest.mark.parametrize("route", ROUTES)
def test_empty_body_is_refused(server: Server, feed: str, route: str) -> None:
    refused(server, feed, route, "empty-1.0-0.conda", b"", 400, "invalid_package", r"the upload is empty")


NO_FILE_PART = r"the multipart upload has no complete 'file' part with a file name"
MALFORMED_MULTIPART = {
    "garbage": (b"this is not multipart at all", BOUNDARY, r"malformed multipart/form-data body"),
    "no-boundary": (multipart("x-1.0-0.conda", b"data")[0], None, r"malformed multipart/form-data body: .*boundary"),
    "unterminated": (multipart("x-1.0-0.conda", b"data")[0][:-30], BOUNDARY, NO_FILE_PART),
    "no-file-part": (multipart("x-1.0-0.conda", b"data", field="other")[0], BOUNDARY, NO_FILE_PART),
    "no-file-name": (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"\r\n\r\ndata\r\n--{BOUNDARY}--\r\n'.encode(),
        BOUNDARY, NO_FILE_PART,
    ),
}


@pytest.mark.parametrize("case", MALFORMED_MULTIPART)
def test_malformed_multipart_is_refused(server: Server, feed: str, case: str) -> None:
    body, boundary, message = MALFORMED_MULTIPART[case]
    headers = {"Content-Type": "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")}
    refused_request(server, feed, lambda client: client.post(f"/api/v1/upload/{feed}", content=body, headers=headers),
                    400, "bad_request", message)


def test_prefix_upload_without_multipart_or_file_name_is_refused(server: Server, feed: str) -> None:
    refused_request(server, feed, lambda client: client.post(f"/api/v1/upload/{feed}", content=b"raw bytes"),
                    400, "bad_request", r"multipart/form-data part 'file', or raw with an X-File-Name header")


# --- oversize uploads, on a server that accepts at most 64 KiB ---


@pytest.fixture(scope="module")
def small_server(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Same database kind as ``server``, its own database and data folder, and a 64 KiB upload limit."""
    database_url = (postgres_database() or "") if server.database_url else ""
    instance = start_server(tmp_path_factory.mktemp("small-server") / "data", database_url,
                            extra_env={"CONDAGATE_MAX_UPLOAD_BYTES": str(SMALL_LIMIT)})
    yield instance
    instance.stop()


def _oversize_package(directory: Path) -> Path:
    # Random, so incompressible: over the limit even with the allowance multipart framing gets.
    spec = PackageSpec("huge", files={"share/huge/blob": os.urandom(SMALL_LIMIT * 8)})
    path = write_package(directory, spec)
    assert path.stat().st_size > SMALL_LIMIT
    return path


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("stream", "message"),
    [(False, rf"the upload is \d+ bytes; this server accepts at most {SMALL_LIMIT}"),
     (True, rf"the upload exceeds this server's limit of {SMALL_LIMIT} bytes")],
    ids=["content-length", "chunked"],
)
def test_upload_over_the_limit_is_413(small_server: Server, tmp_path: Path, route: str, stream: bool,
                                      message: str) -> None:
    """A declared Content-Length is refused before reading; a chunked body once it passes the limit."""
    feed = _create_feed(small_server)
    path = _oversize_package(tmp_path)
    refused(small_server, feed, route, path.name, path.read_bytes(), 413, "payload_too_large", message,
            stream=stream)


@pytest.mark.parametrize("route", ROUTES)
def test_upload_under_the_limit_is_accepted(small_server: Server, tmp_path: Path, route: str) -> None:
    """The control for the two above: the limit, not the route, refuses them; chunked bodies work."""
    feed = _create_feed(small_server)
    path = write_package(tmp_path, PackageSpec("small"))
    response = send_file(small_server, route, feed, path, stream=True)
    assert response.status_code == 201, response.text


def _answer_to_unfinished_body(server: Server, target: str, headers: dict[str, str], body: bytes,
                               method: str = "POST") -> bytes:
    """Send ``body`` chunked and never send its end: only a server that stops reading answers."""
    url = urlsplit(server.url)
    head = f"{method} {target} HTTP/1.1\r\nHost: {url.netloc}\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in {**headers, **server.admin_headers}.items())
    with socket.create_connection((url.hostname, url.port), timeout=15) as sock:
        sock.sendall(head.encode() + b"\r\n")
        try:
            for piece in chunked(body):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        except OSError:
            pass  # the server may close the connection once it has answered
        return sock.recv(65536)


@pytest.mark.parametrize("route", ["api", "prefix-multipart"])
def test_server_answers_413_without_reading_the_rest_of_an_endless_body(small_server: Server, route: str) -> None:
    feed = _create_feed(small_server)
    before = stored(small_server, feed)
    endless = os.urandom(SMALL_LIMIT * 8)
    if route == "api":
        answer = _answer_to_unfinished_body(small_server, f"/api/feeds/{feed}/upload/huge-1.0-0.conda", {}, endless)
    else:
        body, content_type = multipart("huge-1.0-0.conda", endless)
        answer = _answer_to_unfinished_body(small_server, f"/api/v1/upload/{feed}", {"Content-Type": content_type},
                                            body[: -len(BOUNDARY) - 8])
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer
    assert b"payload_too_large" in rest and f"limit of {SMALL_LIMIT} bytes".encode() in rest
    assert_nothing_stored(small_server, feed, before)


def _package_of_about(directory: Path, size: int) -> Path:
    """A package within a few bytes under ``size``: random payload, resized until the archive fits."""
    payload = size
    for attempt in range(8):
        (directory / str(attempt)).mkdir()
        spec = PackageSpec("edge", files={"share/edge/blob": os.urandom(payload)})
        path = write_package(directory / str(attempt), spec)
        if size - 64 < path.stat().st_size <= size:
            return path
        payload -= path.stat().st_size - size + 32
    raise AssertionError("could not build a package of the wanted size")


def test_multipart_package_at_the_limit_is_accepted(small_server: Server, tmp_path: Path) -> None:
    """The limit is on the package: multipart framing around a package of the limit's size is allowed."""
    feed = _create_feed(small_server)
    path = _package_of_about(tmp_path, SMALL_LIMIT)
    response = send_file(small_server, "prefix-multipart", feed, path)
    assert int(response.request.headers["content-length"]) > SMALL_LIMIT
    assert response.status_code == 201, response.text
