"""The pure conda domain: file names, records, repodata bytes, shards, version order."""

from __future__ import annotations

import hashlib
import json

import msgpack
import pytest
import zstandard

from condagate.conda.channeldata import PackageFileSummary, encode_channeldata
from condagate.conda.records import encode_record, normalise_timestamp
from condagate.conda.repodata import encode_repodata
from condagate.conda.shards import encode_shard, encode_shard_index
from condagate.conda.subdirs import parse_package_filename
from condagate.conda.versions import latest_version, sort_versions_descending
from condagate.errors import InvalidPackage


@pytest.mark.parametrize(
    ("filename", "parts"),
    [
        ("numpy-1.26.4-py311h0_0.conda", ("numpy", "1.26.4", "py311h0_0", ".conda")),
        ("python-dateutil-2.9.0.post0-pyhd8ed1ab_0.tar.bz2",
         ("python-dateutil", "2.9.0.post0", "pyhd8ed1ab_0", ".tar.bz2")),
        ("_libgcc_mutex-0.1-conda_forge.tar.bz2", ("_libgcc_mutex", "0.1", "conda_forge", ".tar.bz2")),
        ("openssl-3.0.0!1-h0_0.conda", ("openssl", "3.0.0!1", "h0_0", ".conda")),
    ],
)
def test_parse_package_filename(filename: str, parts: tuple[str, str, str, str]):
    parsed = parse_package_filename(filename)
    assert (parsed.name, parsed.version, parsed.build, parsed.extension) == parts
    assert str(parsed) == filename


@pytest.mark.parametrize("filename", ["x.zip", "../a-1-0.conda", "A-1-0.conda", "a-1.conda", "a b-1-0.conda",
                                      "a-1-0.conda/..", "a-1-0.tar.gz", "-1-0.conda"])
def test_bad_package_filenames(filename: str):
    with pytest.raises(InvalidPackage):
        parse_package_filename(filename)


def test_repodata_is_assembled_from_record_bytes():
    records = {
        "b-1-0.conda": encode_record({"name": "b", "version": "1", "sha256": "ab" * 32}),
        "a-1-0.tar.bz2": encode_record({"name": "a", "version": "1"}),
        'q"uote-1-0.conda': encode_record({"name": 'q"uote'}),
    }
    document = json.loads(encode_repodata("linux-64", records))
    assert document == {
        "info": {"subdir": "linux-64"},
        "packages": {"a-1-0.tar.bz2": {"name": "a", "version": "1"}},
        "packages.conda": {"b-1-0.conda": {"name": "b", "sha256": "ab" * 32, "version": "1"},
                           'q"uote-1-0.conda': {"name": 'q"uote'}},
        "removed": [],
        "repodata_version": 1,
    }
    assert json.loads(encode_repodata("noarch", {}))["packages"] == {}
    v2 = json.loads(encode_repodata("noarch", {}, base_url="https://mirror/conda/x/noarch/"))
    assert v2["repodata_version"] == 2 and v2["info"]["base_url"] == "https://mirror/conda/x/noarch/"


def test_timestamps_become_milliseconds():
    assert normalise_timestamp(1_700_000_000) == 1_700_000_000_000
    assert normalise_timestamp(1_700_000_000_123) == 1_700_000_000_123
    assert normalise_timestamp(1_700_000_000.5) == 1_700_000_000_500


def test_shard_is_content_addressed_with_binary_checksums():
    record = {"name": "a", "version": "1", "sha256": "ab" * 32, "md5": "cd" * 16}
    digest, body = encode_shard([("a-1-0.conda", record), ("a-1-0.tar.bz2", record)])
    assert digest == hashlib.sha256(body).digest()
    shard = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(body))
    assert shard["packages.conda"]["a-1-0.conda"]["sha256"] == bytes.fromhex("ab" * 32)
    assert shard["packages"]["a-1-0.tar.bz2"]["md5"] == bytes.fromhex("cd" * 16)
    assert shard["removed"] == []
    assert encode_shard([("a-1-0.conda", record)])[0] == encode_shard([("a-1-0.conda", dict(record))])[0]
    index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(encode_shard_index("noarch", {"a": digest})))
    assert index["shards"] == {"a": digest}
    assert index["info"]["base_url"] == "./" and index["info"]["shards_base_url"] == "./shards/"


def test_conda_version_order():
    assert sort_versions_descending(["1.9", "1.10", "1.10rc1", "1.2", "2.0.dev0"]) == [
        "2.0.dev0", "1.10", "1.10rc1", "1.9", "1.2",
    ]
    assert latest_version(["0.9", "0.10"]) == "0.10"
    assert latest_version([]) is None


def test_channeldata_takes_latest_version_by_conda_order():
    files = [
        PackageFileSummary("x", "1.9", "noarch", 2, {"summary": "old"}),
        PackageFileSummary("x", "1.10", "linux-64", 1, {"summary": "new"}),
    ]
    document = json.loads(encode_channeldata(files, ["noarch", "linux-64"]))
    assert document["packages"]["x"]["version"] == "1.10"
    assert document["packages"]["x"]["summary"] == "new"
    assert document["packages"]["x"]["subdirs"] == ["linux-64", "noarch"]
    assert document["subdirs"] == ["linux-64", "noarch"]
