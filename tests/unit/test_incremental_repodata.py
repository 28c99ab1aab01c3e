"""Repodata is rebuilt incrementally: an upload re-encodes its subdir and re-shards one name only."""

from __future__ import annotations

from pathlib import Path

from condagate.conda.repodata import RepodataParts, encode_repodata
from condagate.services.context import Services
from condagate.services.feeds import create_feed
from condagate.services.repodata_cache import RepodataCache
from condagate.services.upload import store_upload
from condagate.settings import Settings

from package_factory import PackageSpec, write_package


def _upload(services: Services, path: Path) -> None:
    incoming = services.blobs.incoming()
    incoming.write(path.read_bytes())
    incoming.finish()
    store_upload(services, feed_name="inc", filename=path.name, incoming=incoming)


def test_one_upload_touches_one_shard_and_only_loads_new_rows(tmp_path: Path):
    services = Services.open(Settings(data_dir=tmp_path / "data"))
    try:
        create_feed(services, name="inc")
        for name in ("one", "two", "three"):
            _upload(services, write_package(tmp_path, PackageSpec(name)))
        feed_id = 1
        before = services.repodata.snapshot(feed_id=feed_id, subdir="noarch")
        before_shards = before.shards()
        assert services.repodata.snapshot(feed_id=feed_id, subdir="noarch") is before  # no change, no work
        _upload(services, write_package(tmp_path, PackageSpec("two", version="2.0")))
        after = services.repodata.snapshot(feed_id=feed_id, subdir="noarch")
        assert after is not before
        assert after.version.revision == before.version.revision + 1
        after_shards = after.shards()
        assert after_shards["one"] is before_shards["one"]
        assert after_shards["three"] is before_shards["three"]
        assert after_shards["two"][1] != before_shards["two"][1]
        old_digest = before_shards["two"][1].hex()
        assert services.repodata.shard(feed_id, after, "noarch", old_digest) == before_shards["two"][2]
        # Unchanged records are reused as the very same bytes objects, never re-read from the database.
        assert all(after.records[fn] is raw for fn, raw in before.records.items())
        assert len(after.records) == 4
        assert services.repodata.snapshot(feed_id=feed_id, subdir="linux-64").records == {}
    finally:
        services.close()


def test_incremental_snapshots_encode_what_a_full_build_encodes(tmp_path: Path):
    """Uploads laid over a snapshot (shards built in between or not, a file replaced) give the bytes,
    shards and listings that a cold build of the same records gives."""
    services = Services.open(Settings(data_dir=tmp_path / "data"))
    try:
        create_feed(services, name="inc")
        for name in ("one", "two"):
            _upload(services, write_package(tmp_path, PackageSpec(name)))
        feed_id = 1
        services.repodata.snapshot(feed_id=feed_id, subdir="noarch").shards()
        _upload(services, write_package(tmp_path, PackageSpec("two", version="2.0")))
        services.repodata.snapshot(feed_id=feed_id, subdir="noarch").by_name()  # shards not built
        _upload(services, write_package(tmp_path, PackageSpec("three"), ".tar.bz2"))
        services.repodata.snapshot(feed_id=feed_id, subdir="noarch")
        (tmp_path / "again").mkdir()
        replaced = write_package(tmp_path / "again", PackageSpec("one", summary="other bytes"))
        incoming = services.blobs.incoming()
        incoming.write(replaced.read_bytes())
        incoming.finish()
        store_upload(
            services, feed_name="inc", filename=replaced.name, incoming=incoming, force=True, may_overwrite=True
        )
        after = services.repodata.snapshot(feed_id=feed_id, subdir="noarch")
        cold = RepodataCache(services.db).snapshot(feed_id=feed_id, subdir="noarch")
        assert after.json.body == cold.json.body == encode_repodata("noarch", cold.records)
        assert after.zst.body == cold.zst.body
        assert {n: e[1] for n, e in after.shards().items()} == {n: e[1] for n, e in cold.shards().items()}
        assert {n: sorted(f) for n, f in after.by_name().items()} == {n: sorted(f) for n, f in cold.by_name().items()}
        assert set(after.shards()) == {"one", "two", "three"}
    finally:
        services.close()


def test_repodata_parts_encode_as_encode_repodata():
    records = {f"p{i % 7}-1.{i}-0" + (".conda" if i % 3 else ".tar.bz2"): b'{"i":%d}' % i for i in range(50)}
    records['q"uote-1-0.conda'] = b"{}"
    records["not-a-package.txt"] = b"{}"
    parts = RepodataParts.from_records({})
    assert parts.encode("noarch") == encode_repodata("noarch", {})
    parts.put(records.items())
    assert parts.encode("noarch") == encode_repodata("noarch", records)
    copy = parts.copy()
    copy.put([("p1-1.1-0.conda", b'{"new":1}'), ("a-0-0.tar.bz2", b"{}")])
    assert parts.encode("noarch") == encode_repodata("noarch", records)  # the original is unchanged
    changed = {**records, "p1-1.1-0.conda": b'{"new":1}', "a-0-0.tar.bz2": b"{}"}
    assert copy.encode("noarch") == encode_repodata("noarch", changed)
    assert RepodataParts.from_records(changed).encode("noarch") == copy.encode("noarch")
