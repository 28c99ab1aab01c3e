"""A large subdir's repodata kept in blocks, each compressed on its own and spliced into one zstd frame:
one more record re-encodes one block, and the result is the same, byte for byte and ETag for ETag, as a
cold encode of the same records; every reader decodes the spliced frame."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest
import zstandard

from condagate.conda.repodata import (
    FRAME_BYTES_ENV,
    RepodataParts,
    compress_bz2,
    compress_bz2_chunks,
    compress_zstd,
    encode_repodata,
)
from condagate.conda.shards import ShardIndexEntries, encode_shard_index
from condagate.conda.zstd_splice import SEPARATOR, frame_of
from condagate.services.context import Services
from condagate.services.feeds import create_feed
from condagate.services.layered_mapping import Layered, overlaid
from condagate.services.repodata_cache import RepodataCache
from condagate.services.subdir_snapshot import encode_subdir
from condagate.services.upload import store_upload
from condagate.settings import Settings
from condagate.upstream.repodata_fetch import decompress_zstd
from zstd_readers import conda_decodes, frames_in

from package_factory import PackageSpec, write_package

MOMENT = datetime(2026, 1, 1, tzinfo=UTC)


def records_of(count: int, seed: int = 1) -> dict[str, bytes]:
    rnd = random.Random(seed)
    records = {}
    for i in range(count):
        name = f"pkg{rnd.randrange(count // 4 + 1)}"
        extension = ".conda" if i % 3 else ".tar.bz2"
        depends = ",".join(f'"dep{rnd.randrange(500)} >={rnd.randrange(9)}"' for _ in range(rnd.randrange(1, 8)))
        record = f'{{"build":"h{i:08x}_0","depends":[{depends}],"name":"{name}","sha256":"{rnd.randbytes(32).hex()}"}}'
        records[f"{name}-1.{i}-h{i:08x}_0{extension}"] = record.encode()
    return records


@pytest.mark.parametrize("frame_bytes", ["1", "3000", ""])
def test_blocks_after_changes_are_the_blocks_of_a_cold_encode(monkeypatch: pytest.MonkeyPatch, frame_bytes: str):
    monkeypatch.setenv(FRAME_BYTES_ENV, frame_bytes)
    rnd = random.Random(7)
    current = records_of(1500)
    current.update({'q"uote-1-0.conda': b"{}", "\u00fc-1-0.tar.bz2": b"{}", "new\n-1-0.conda": b"[]"})
    parts = RepodataParts.from_records(current)
    for step in range(120):
        count = rnd.randrange(1, 4)
        added = [(f"new{rnd.randrange(10**6)}-{step}-0.conda", b'{"step":%d}' % step) for _ in range(count)]
        added.append((rnd.choice(sorted(current)), b'{"replaced":%d}' % step))
        before = parts.encode("noarch")
        changed = parts.copy()
        changed.put(added)
        assert parts.encode("noarch") == before  # a copy is changed, never the value readers hold
        parts = changed
        current.update(added)
        assert parts.encode("noarch") == encode_repodata("noarch", current)
    cold = RepodataParts.from_records(current)
    assert parts.zst_pieces("noarch") == cold.zst_pieces("noarch")  # same blocks, compressed alike
    zst = b"".join(frame_of(parts.zst_pieces("noarch")))
    spliced = b"".join(parts.json_chunks("noarch", spliced=True))
    assert frames_in(zst) == 1 and conda_decodes(zst) == spliced
    assert json.loads(spliced) == json.loads(encode_repodata("noarch", current))


def test_empty_and_single_kind_subdirs_encode_as_encode_repodata(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(FRAME_BYTES_ENV, "1")
    parts = RepodataParts.from_records({})
    assert parts.encode("noarch") == encode_repodata("noarch", {})
    parts.put([("a-1-0.tar.bz2", b"{}")])
    assert parts.encode("noarch") == encode_repodata("noarch", {"a-1-0.tar.bz2": b"{}"})
    parts.put([("b-1-0.conda", b"{}"), ("a-0-0.tar.bz2", b"[]")])
    expected = {"a-1-0.tar.bz2": b"{}", "b-1-0.conda": b"{}", "a-0-0.tar.bz2": b"[]"}
    assert parts.encode("noarch") == encode_repodata("noarch", expected)
    assert len(parts) == 3


def test_a_large_subdir_is_one_spliced_frame_that_every_reader_decodes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FRAME_BYTES_ENV, raising=False)
    records = records_of(30_000)  # ~7 MB of JSON: past the 4 MiB from which frames are used
    parts = RepodataParts.from_records(records)
    body = encode_repodata("linux-64", records)
    json_encoded, zst_encoded = encode_subdir(parts, "linux-64", MOMENT)
    # The JSON is not kept: the blocks let go of it once compressed; it is decompressed from the .zst.
    assert json_encoded.is_deferred() and not json_encoded.joined()
    assert parts._blocks[0] and all(block._body is None for kind in parts._blocks for block in kind)
    assert parts.encode("linux-64") == body  # a released block's bytes come back from its piece
    spliced = json_encoded.body
    assert b"".join(json_encoded.iter_chunks()) == spliced and len(list(json_encoded.iter_chunks())) > 3
    assert json.loads(spliced) == json.loads(body) and json_encoded.size == len(spliced)
    assert spliced.replace(SEPARATOR, b"") == body  # whitespace between the blocks, nothing else
    zst = zst_encoded.body
    assert frames_in(zst) == 1 and len(zst_encoded.chunks) > 3
    assert conda_decodes(zst) == spliced
    assert zstandard.ZstdDecompressor().decompress(zst) == spliced  # one frame, with its content size
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst))
    assert reader.read() == spliced
    assert decompress_zstd(zst) == spliced  # condagate proxying condagate
    if shutil.which("zstd"):  # the reference implementation's command-line tool, where installed
        assert subprocess.run(["zstd", "-dcq"], input=zst, capture_output=True, check=True).stdout == spliced

    # One more record: one block re-encoded; the result is a cold encode's, ETag included.
    changed = parts.copy()
    changed.put([("pkg1-9-0.conda", b'{"name":"pkg1"}')])
    after_json, after_zst = encode_subdir(changed, "linux-64", MOMENT)
    records["pkg1-9-0.conda"] = b'{"name":"pkg1"}'
    cold_json, cold_zst = encode_subdir(RepodataParts.from_records(records), "linux-64", MOMENT)
    assert after_zst.body == cold_zst.body and after_zst.etag == cold_zst.etag != zst_encoded.etag
    assert after_json.etag == cold_json.etag and after_json.body == cold_json.body
    assert after_json.body.replace(SEPARATOR, b"") == encode_repodata("linux-64", records)
    new_chunks = set(after_zst.chunks) - set(zst_encoded.chunks)
    assert len(new_chunks) == 2  # the frame header (its content size) and the one block changed


def test_a_small_subdir_stays_one_frame_at_level_3(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FRAME_BYTES_ENV, raising=False)
    records = records_of(500)
    json_encoded, zst_encoded = encode_subdir(RepodataParts.from_records(records), "noarch", MOMENT)
    assert json_encoded.body == encode_repodata("noarch", records)
    assert zst_encoded.body == compress_zstd(json_encoded.body, 3)


def test_bz2_of_chunks_is_bz2_of_the_whole():
    chunks = [encode_repodata("noarch", records_of(300, seed)) for seed in range(4)]
    assert compress_bz2_chunks(chunks) == compress_bz2(b"".join(chunks))


def test_layered_mapping_reads_as_the_merged_dict():
    base = {f"f{i}": i for i in range(10)}
    layered = overlaid(base, {"f3": 30, "new": 99})
    assert isinstance(layered, Layered)
    merged = {**base, "f3": 30, "new": 99}
    assert dict(layered) == merged and layered == merged and len(layered) == 11
    assert layered["f3"] == 30 and layered.get("f4") == 4 and layered.get("nope", -1) == -1
    assert "new" in layered and "nope" not in layered and list(layered) == list(merged)
    again = overlaid(layered, {"f4": 40})
    assert again == {**merged, "f4": 40} and layered == merged and base == {f"f{i}": i for i in range(10)}
    assert isinstance(again, Layered) and again._base is base  # never a layer over a layer
    big = overlaid(base, {f"g{i}": i for i in range(5000)})
    assert type(big) is dict and len(big) == 5010  # a large overlay is folded into one dict


def test_shard_index_entries_pack_as_msgpack_does():
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for count in (0, 1, 15, 16, 70_000):  # the map header's three sizes
        digests = {f"name{i}": hashlib.sha256(b"%d" % i).digest() for i in range(count)}
        info = {"base_url": "./", "shards_base_url": "./shards/", "subdir": "noarch"}
        document = {"version": 1, "info": {**info, "created_at": "2026-01-01T00:00:00.000000Z"}, "shards": digests}
        packed = msgpack.packb({**document, "shards": dict(sorted(digests.items()))}, use_bin_type=True)
        assert zstandard.ZstdDecompressor().decompress(encode_shard_index("noarch", digests, moment)) == packed
        entries = ShardIndexEntries.of(digests)
        changed = entries.copy()
        changed.update({"name1": b"x" * 32, "new": b"y" * 32, "name0": None})
        after = {**digests, "name1": b"x" * 32, "new": b"y" * 32}
        after.pop("name0", None)
        assert changed.encode("noarch", moment) == encode_shard_index("noarch", after, moment)
        assert entries.encode("noarch", moment) == encode_shard_index("noarch", digests, moment)


def test_uploads_into_a_spliced_subdir_serve_what_a_cold_build_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(FRAME_BYTES_ENV, "1")
    services = Services.open(Settings(data_dir=tmp_path / "data"))
    try:
        create_feed(services, name="inc")
        for name in ("one", "two", "three"):
            _upload(services, write_package(tmp_path, PackageSpec(name)))
        services.repodata.snapshot(feed_id=1, subdir="noarch").shard_index()
        _upload(services, write_package(tmp_path, PackageSpec("two", version="2.0")))
        services.repodata.snapshot(feed_id=1, subdir="noarch").shard_index()
        _upload(services, write_package(tmp_path, PackageSpec("four"), ".tar.bz2"))
        after = services.repodata.snapshot(feed_id=1, subdir="noarch")
        cold = RepodataCache(services.db).snapshot(feed_id=1, subdir="noarch")
        assert after.zst.body == cold.zst.body and after.zst.etag == cold.zst.etag
        assert after.json.body == cold.json.body and SEPARATOR in after.json.body
        assert conda_decodes(after.zst.body) == after.json.body
        assert json.loads(after.json.body) == json.loads(encode_repodata("noarch", cold.records))

        def shards_of(index: bytes) -> object:
            return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index))["shards"]

        assert shards_of(after.shard_index().body) == shards_of(cold.shard_index().body)
        assert set(shards_of(after.shard_index().body)) == {"one", "two", "three", "four"}  # type: ignore[arg-type]
    finally:
        services.close()


def _upload(services: Services, path: Path) -> None:
    incoming = services.blobs.incoming()
    incoming.write(path.read_bytes())
    incoming.finish()
    store_upload(services, feed_name="inc", filename=path.name, incoming=incoming)


@pytest.mark.parametrize("count", [500, 30_000])  # one join; blocks spliced, their JSON let go of
def test_a_filtered_view_reuses_its_encodings_while_the_same_records_are_hidden(
    monkeypatch: pytest.MonkeyPatch, count: int
):
    from condagate.services.filtered_repodata import FilteredSubdir
    from condagate.services.subdir_snapshot import SubdirSnapshot
    from condagate.store.packages import SubdirVersion

    monkeypatch.delenv(FRAME_BYTES_ENV, raising=False)
    records = records_of(count)
    names = {filename: filename.rsplit("-", 2)[0] for filename in records}
    json_encoded, zst_encoded = encode_subdir(RepodataParts.from_records(records), "linux-64", MOMENT)
    snapshot = SubdirSnapshot(
        "linux-64", SubdirVersion(1, 1, MOMENT), (), {}, {}, records, names, MOMENT, json_encoded, zst_encoded
    )
    hidden = frozenset(sorted(records)[::7])
    first = FilteredSubdir.build(snapshot, hidden, None)
    expected = encode_repodata("linux-64", {fn: raw for fn, raw in records.items() if fn not in hidden})
    assert first.json.body.replace(SEPARATOR, b"") == expected
    again = FilteredSubdir.build(snapshot, frozenset(hidden), first)  # same records hidden: nothing encoded
    assert again.json is first.json and again.zst is first.zst
    other = FilteredSubdir.build(snapshot, hidden - {min(hidden)}, again)
    assert other.json is not first.json and other.zst.etag != first.zst.etag
    assert other.json.last_modified > first.json.last_modified  # the body moved, so does the date
    assert conda_decodes(other.zst.body) == other.json.body


def test_a_large_subdir_is_compressed_while_it_is_cut_and_encodes_as_before(monkeypatch: pytest.MonkeyPatch):
    """``from_records(compress=True)``: once past the spliced size, each block is compressed as it is
    cut and lets go of its JSON (a large subdir's JSON is never all in memory); the encodings are the
    same bytes and ETags. A small subdir is left as it was (one join at level 3)."""
    monkeypatch.delenv(FRAME_BYTES_ENV, raising=False)
    records = records_of(30_000)
    eager = RepodataParts.from_records(records, compress=True)
    blocks = [block for kind in eager._blocks for block in kind]
    assert len(blocks) > 4 and all(block._body is None and block._piece is not None for block in blocks)
    released = eager.release_json()
    assert released == sum(block.size for block in blocks) and eager.release_json() == 0
    lazy_json, lazy_zst = encode_subdir(RepodataParts.from_records(records), "linux-64", MOMENT)
    eager_json, eager_zst = encode_subdir(eager, "linux-64", MOMENT)
    assert (eager_zst.etag, eager_zst.body) == (lazy_zst.etag, lazy_zst.body)
    assert (eager_json.etag, eager_json.body) == (lazy_json.etag, lazy_json.body)

    small = RepodataParts.from_records(records_of(500), compress=True)
    assert all(block._body is not None and block._piece is None for kind in small._blocks for block in kind)
    assert small.encode("noarch") == encode_repodata("noarch", records_of(500))
