"""The conda channel protocol as clients rely on it: variants, shards, caching headers, HEAD, Range."""

from __future__ import annotations

import bz2
import hashlib
import json
import time
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime

import msgpack
import pytest
import zstandard

from condagate.conda.subdirs import KNOWN_SUBDIRS

from conftest import upload
from servers import Server


def get(server: Server, path: str, **kwargs):  # type: ignore[no-untyped-def]
    with server.client() as client:
        return client.get(path, **kwargs)


def test_every_known_subdir_answers_empty_repodata_and_unknown_is_404(server: Server, feed: str):
    for subdir in KNOWN_SUBDIRS:
        response = get(server, f"/conda/{feed}/{subdir}/repodata.json")
        assert response.status_code == 200, subdir
        assert response.json() == {
            "info": {"subdir": subdir},
            "packages": {},
            "packages.conda": {},
            "removed": [],
            "repodata_version": 1,
        }
    unknown = get(server, f"/conda/{feed}/linux-99/repodata.json")
    assert unknown.status_code == 404
    assert "unknown subdir" in unknown.json()["error"]["message"]
    assert get(server, "/conda/no-such-feed/noarch/repodata.json").status_code == 404


def test_records_carry_the_fields_conda_index_writes(server: Server, feed: str, make_package):
    path = make_package(
        "rich-record",
        ".tar.bz2",
        version="3.2.1",
        build="py_2",
        build_number=2,
        depends=["python >=3.8"],
        constrains=["other <2"],
        license="BSD-3-Clause",
        extra_index={"track_features": "", "license_family": "BSD"},
    )
    assert upload(server, feed, path).status_code == 201
    repodata = get(server, f"/conda/{feed}/noarch/repodata.json").json()
    record = repodata["packages"][path.name]
    data = path.read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["md5"] == hashlib.md5(data).hexdigest()  # noqa: S324
    assert record["size"] == len(data)
    assert {
        k: record[k]
        for k in (
            "name",
            "version",
            "build",
            "build_number",
            "depends",
            "constrains",
            "license",
            "license_family",
            "subdir",
            "noarch",
        )
    } == {
        "name": "rich-record",
        "version": "3.2.1",
        "build": "py_2",
        "build_number": 2,
        "depends": ["python >=3.8"],
        "constrains": ["other <2"],
        "license": "BSD-3-Clause",
        "license_family": "BSD",
        "subdir": "noarch",
        "noarch": "generic",
    }
    assert record["timestamp"] > 1_600_000_000_000  # milliseconds
    assert repodata["packages.conda"] == {}


def test_variants_are_the_same_bytes(server: Server, feed: str, make_package):
    upload(server, feed, make_package("same", ".conda", subdir="linux-64"))
    upload(server, feed, make_package("same", ".tar.bz2", subdir="linux-64", version="2"))
    plain = get(server, f"/conda/{feed}/linux-64/repodata.json")
    zst = get(server, f"/conda/{feed}/linux-64/repodata.json.zst")
    bz = get(server, f"/conda/{feed}/linux-64/repodata.json.bz2")
    current = get(server, f"/conda/{feed}/linux-64/current_repodata.json")
    assert plain.headers["content-type"] == "application/json"
    assert zst.headers["content-type"] == "application/zstd"
    assert bz.headers["content-type"] == "application/x-bzip2"
    assert zstandard.ZstdDecompressor().decompress(zst.content) == plain.content
    assert bz2.decompress(bz.content) == plain.content
    assert current.json() == plain.json()
    assert len(plain.json()["packages"]) == 1 and len(plain.json()["packages.conda"]) == 1
    for response in (plain, zst, bz):
        assert int(response.headers["content-length"]) == len(response.content)
        assert response.headers["cache-control"] == "public, max-age=30"


def test_etag_last_modified_304_and_head(server: Server, feed: str, make_package):
    upload(server, feed, make_package("cached"))
    url = f"/conda/{feed}/noarch/repodata.json.zst"
    first = get(server, url)
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    assert get(server, url, headers={"If-None-Match": etag}).status_code == 304
    assert get(server, url, headers={"If-None-Match": '"something-else"'}).status_code == 200
    assert get(server, url, headers={"If-Modified-Since": last_modified}).status_code == 304
    earlier = format_datetime(parsedate_to_datetime(last_modified) - timedelta(hours=1), usegmt=True)
    assert get(server, url, headers={"If-Modified-Since": earlier}).status_code == 200
    with server.client() as client:
        head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(first.content)) and head.headers["etag"] == etag
    upload(server, feed, make_package("cached-too"))
    changed = get(server, url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    # A change within the same second still moves Last-Modified forward (it has whole seconds only).
    upload(server, feed, make_package("cached-three"))
    again = get(server, url, headers={"If-Modified-Since": changed.headers["last-modified"]})
    assert again.status_code == 200
    moved = parsedate_to_datetime(again.headers["last-modified"])
    assert moved > parsedate_to_datetime(changed.headers["last-modified"])


def test_package_files_etag_range_head(server: Server, feed: str, make_package):
    path = make_package("ranged", files={"data.bin": bytes(range(256)) * 400})
    upload(server, feed, path)
    data = path.read_bytes()
    url = f"/conda/{feed}/noarch/{path.name}"
    full = get(server, url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-type"] == "application/octet-stream"
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    # a feed's own file may be replaced with --force: cached, but revalidated (a 304 by its sha256 ETag)
    assert full.headers["cache-control"] == "public, no-cache"
    assert get(server, url, headers={"If-None-Match": full.headers["etag"]}).status_code == 304
    assert get(server, url, headers={"If-Modified-Since": full.headers["last-modified"]}).status_code == 304
    assert get(server, url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    part = get(server, url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = get(server, url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert get(server, url, headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416
    with server.client() as client:
        head = client.head(url)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(data))
    missing = get(server, f"/conda/{feed}/noarch/nothere-1.0-0.conda")
    assert missing.status_code == 404 and "not in feed" in missing.json()["error"]["message"]


def test_shards_follow_cep16(server: Server, feed: str, make_package):
    upload(server, feed, make_package("alpha", subdir="linux-64"))
    upload(server, feed, make_package("beta", ".tar.bz2", subdir="linux-64", depends=["alpha"]))
    index_response = get(server, f"/conda/{feed}/linux-64/repodata_shards.msgpack.zst")
    assert index_response.status_code == 200
    index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index_response.content))
    assert index["version"] == 1
    assert index["info"]["subdir"] == "linux-64"
    assert index["info"]["base_url"] == "./" and index["info"]["shards_base_url"] == "./shards/"
    assert set(index["shards"]) == {"alpha", "beta"}
    repodata = get(server, f"/conda/{feed}/linux-64/repodata.json").json()
    for digest in index["shards"].values():
        shard_response = get(server, f"/conda/{feed}/linux-64/shards/{digest.hex()}.msgpack.zst")
        assert shard_response.status_code == 200
        assert hashlib.sha256(shard_response.content).digest() == digest
        assert "immutable" in shard_response.headers["cache-control"]
        shard = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(shard_response.content))
        for key in ("packages", "packages.conda"):
            for filename, record in shard[key].items():
                expected = repodata[key][filename]
                assert record["sha256"] == bytes.fromhex(expected["sha256"])
                assert record["md5"] == bytes.fromhex(expected["md5"])
                assert {k: v for k, v in record.items() if k not in ("sha256", "md5")} == {
                    k: v for k, v in expected.items() if k not in ("sha256", "md5")
                }
    # A change to one name changes that name's shard only; the old shard stays fetchable.
    old_alpha, old_beta = index["shards"]["alpha"], index["shards"]["beta"]
    upload(server, feed, make_package("alpha", subdir="linux-64", version="2.0"))
    index = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(
            get(server, f"/conda/{feed}/linux-64/repodata_shards.msgpack.zst").content
        )
    )
    assert index["shards"]["beta"] == old_beta and index["shards"]["alpha"] != old_alpha
    assert get(server, f"/conda/{feed}/linux-64/shards/{old_alpha.hex()}.msgpack.zst").status_code == 200
    assert get(server, f"/conda/{feed}/linux-64/shards/{'0' * 64}.msgpack.zst").status_code == 404


def test_channeldata(server: Server, feed: str, make_package):
    upload(server, feed, make_package("described", version="1.9", summary="Does things"))
    upload(server, feed, make_package("described", version="1.10", subdir="osx-arm64", summary="Does things"))
    document = get(server, f"/conda/{feed}/channeldata.json").json()
    assert document["channeldata_version"] == 1
    assert document["subdirs"] == ["noarch", "osx-arm64"]
    entry = document["packages"]["described"]
    assert entry["version"] == "1.10"  # conda order, not string order
    assert entry["subdirs"] == ["noarch", "osx-arm64"]
    assert entry["summary"] == "Does things" and entry["license"] == "MIT"
    assert get(server, f"/conda/{feed}/notices.json").status_code == 404


@pytest.mark.parametrize("form", ["path-token", "basic"])
def test_channel_reachable_with_credentials_in_url(server: Server, feed: str, make_package, form: str):
    path = make_package("authed")
    upload(server, feed, path)
    with server.client() as client:
        if form == "path-token":
            response = client.get(f"/t/{server.api_key}/conda/{feed}/noarch/{path.name}")
        else:
            response = client.get(f"/conda/{feed}/noarch/{path.name}", auth=("api", server.api_key))
    assert response.status_code == 200 and response.content == path.read_bytes()
    bad = get(server, f"/t/wrong-key-{form}/conda/{feed}/noarch/repodata.json")
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == 'Basic realm="condagate"'
    # The access log is structured and never records a path token.
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "condagate.access"]
    assert {"method": "GET", "path": f"/t/***/conda/{feed}/noarch/repodata.json", "status": 401}.items() <= next(
        line for line in reversed(access) if line["path"].endswith(f"{feed}/noarch/repodata.json")
    ).items()
    assert f"wrong-key-{form}" not in server.log()


def test_repodata_json_is_valid_for_many_names(server: Server, feed: str, make_package):
    names = [f"bulk-{i}" for i in range(12)]
    for name in names:
        upload(server, feed, make_package(name, ".tar.bz2" if len(name) % 2 else ".conda"))
    document = json.loads(get(server, f"/conda/{feed}/noarch/repodata.json").content)
    found = {record["name"] for key in ("packages", "packages.conda") for record in document[key].values()}
    assert found == set(names)


def test_a_forced_replacement_is_downloaded_at_once(server: Server, feed: str, make_package):
    first = make_package("replaced", files={"data.txt": b"first"})
    second = make_package("replaced", files={"data.txt": b"second, different bytes"})
    assert first.name == second.name and first.read_bytes() != second.read_bytes()
    upload(server, feed, first)
    url = f"/conda/{feed}/noarch/{first.name}"
    assert get(server, url).content == first.read_bytes()
    assert upload(server, feed, second, force="true").status_code == 201
    assert get(server, url).content == second.read_bytes()
    record = get(server, f"/conda/{feed}/noarch/repodata.json").json()["packages.conda"][first.name]
    assert record["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
