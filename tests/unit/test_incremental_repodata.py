"""Repodata is rebuilt incrementally: an upload re-encodes its subdir and re-shards one name only."""

from __future__ import annotations

from pathlib import Path

from condagate.services.context import Services
from condagate.services.feeds import create_feed
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
