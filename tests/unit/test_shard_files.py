"""A large subdir's shard bodies live in this host's files, not in every worker's memory: the same
bytes are served, a lost or damaged file is encoded again, a +1 writes only its names' shards, and a
folder that cannot be written keeps the bodies in memory."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from condagate.conda.repodata import FRAME_BYTES_ENV
from condagate.services import shard_files, subdir_snapshot
from condagate.services.context import Services
from condagate.services.feeds import create_feed
from condagate.services.repodata_cache import RepodataCache
from condagate.services.shard_files import ShardFiles
from condagate.services.subdir_snapshot import IN_FILE, ShardEntry, SubdirSnapshot
from condagate.services.upload import store_upload
from condagate.settings import Settings

from package_factory import PackageSpec, write_package

FEED_ID = 1


def _upload(services: Services, path: Path) -> None:
    incoming = services.blobs.incoming()
    incoming.write(path.read_bytes())
    incoming.finish()
    store_upload(services, feed_name="big", filename=path.name, incoming=incoming)


@pytest.fixture
def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(FRAME_BYTES_ENV, "2048")  # small subdirs take the large subdirs' (spliced) path
    opened = Services.open(Settings(data_dir=tmp_path / "data"))
    create_feed(opened, name="big")
    for name in ("one", "two", "three"):
        _upload(opened, write_package(tmp_path, PackageSpec(name)))
    yield opened
    opened.close()


def _folder(services: Services) -> Path:
    return services.settings.data_dir / "encoded" / "shards" / str(FEED_ID)


def _spilled(snapshot: SubdirSnapshot) -> dict[str, ShardEntry]:
    """The snapshot's shards once their bodies went to the files (on the writer thread)."""
    shards = snapshot.shards()
    assert snapshot._spilling is not None
    snapshot._spilling.result(timeout=60)
    return shards


def _in_memory(services: Services) -> dict[str, tuple[bytes, bytes]]:
    """name -> (digest, body) as a cache without shard files builds them."""
    cold = RepodataCache(services.db).snapshot(feed_id=FEED_ID, subdir="noarch")
    return {name: (entry[1], entry[2]) for name, entry in cold.shards().items()}


def test_bodies_go_to_files_and_the_same_bytes_are_served(services: Services):
    expected = _in_memory(services)
    snapshot = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    shards = _spilled(snapshot)
    assert {name: entry[1] for name, entry in shards.items()} == {name: d for name, (d, _b) in expected.items()}
    assert all(entry[2] == IN_FILE for entry in shards.values())  # nothing kept in memory
    files = sorted(path.name for path in _folder(services).iterdir())
    assert files == sorted(d.hex() + ".msgpack.zst" for d, _b in expected.values())
    for digest, body in expected.values():
        assert services.repodata.shard(FEED_ID, snapshot, "noarch", digest.hex()) == body
        assert snapshot.built_shard(digest.hex()) is None  # the fast lane leaves a file's shard to the route
    assert snapshot.shard_index().body  # the index needs only the digests


def test_a_first_build_writes_the_bodies_as_it_builds(services: Services, monkeypatch: pytest.MonkeyPatch):
    """Written by the build itself, one by one: none waits in memory for the writer thread (at 500,000
    records they were ~80 MB on top of the build)."""
    expected = _in_memory(services)
    left: list[int] = []

    def spill_later(shards: dict[str, ShardEntry], *args: object) -> Future[int]:
        left.append(sum(1 for entry in shards.values() if entry[2]))  # bodies the build left for the writer
        done: Future[int] = Future()
        done.set_result(0)
        return done

    monkeypatch.setattr(subdir_snapshot, "spill_later", spill_later)
    snapshot = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    shards = snapshot.shards()
    assert left == [0] and shards and all(entry[2] == IN_FILE for entry in shards.values())
    assert set(snapshot._shards_by_digest.values()) == {IN_FILE}  # type: ignore[union-attr]
    files = sorted(path.name for path in _folder(services).iterdir())
    assert files == sorted(d.hex() + ".msgpack.zst" for d, _b in expected.values())  # no temp file left
    for digest, body in expected.values():
        assert services.repodata.shard(FEED_ID, snapshot, "noarch", digest.hex()) == body


def test_a_lost_or_damaged_file_is_encoded_again(services: Services):
    expected = _in_memory(services)
    snapshot = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    _spilled(snapshot)
    lost, damaged = expected["one"], expected["two"]
    (_folder(services) / (lost[0].hex() + ".msgpack.zst")).unlink()
    (_folder(services) / (damaged[0].hex() + ".msgpack.zst")).write_bytes(b"not the shard")
    for digest, body in (lost, damaged):
        assert services.repodata.shard(FEED_ID, snapshot, "noarch", digest.hex()) == body
        assert (_folder(services) / (digest.hex() + ".msgpack.zst")).read_bytes() == body  # written back


def test_one_upload_writes_its_names_shards_and_the_old_one_stays_fetchable(services: Services, tmp_path: Path):
    before = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    old = _spilled(before)["two"][1]
    written_before = set(os.listdir(_folder(services)))
    _upload(services, write_package(tmp_path, PackageSpec("two", version="2.0")))
    after = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    new = _spilled(after)["two"][1]
    assert set(os.listdir(_folder(services))) - written_before == {new.hex() + ".msgpack.zst"}
    assert services.repodata.shard(FEED_ID, after, "noarch", new.hex()) == _in_memory(services)["two"][1]
    # The superseded shard: a client may hold the older index.
    retired = services.repodata.shard(FEED_ID, after, "noarch", old.hex())
    assert retired is not None and hashlib.sha256(retired).digest() == old


def test_a_folder_that_cannot_be_written_keeps_the_bodies_in_memory(services: Services):
    folder = services.settings.data_dir / "encoded" / "shards"
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_bytes(b"a file where the folder goes")
    expected = _in_memory(services)
    snapshot = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    shards = _spilled(snapshot)
    assert all(entry[2] != IN_FILE for entry in shards.values())
    for digest, body in expected.values():
        assert services.repodata.shard(FEED_ID, snapshot, "noarch", digest.hex()) == body
        assert snapshot.built_shard(digest.hex()) == body


def test_a_failed_write_is_not_retried_at_once(tmp_path: Path):
    blocker = tmp_path / "shards"
    blocker.write_bytes(b"a file")
    files = ShardFiles(blocker).of_feed(1)
    body = b"shard bytes"
    digest = hashlib.sha256(body).digest()
    assert files.put(digest, body) is False
    blocker.unlink()
    assert files.put(digest, body) is False  # within RETRY_SECONDS: not tried
    assert not blocker.exists()


def test_unused_files_go_and_a_listed_one_comes_back(services: Services):
    expected = _in_memory(services)
    snapshot = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    _spilled(snapshot)
    old = time.time() - shard_files.UNUSED_SECONDS - 60
    for path in _folder(services).iterdir():
        os.utime(path, (old, old))
    stray = _folder(services) / ".writing-crashed"
    stray.write_bytes(b"half")
    os.utime(stray, (old, old))
    services.repodata._shard_files.prune()  # type: ignore[union-attr]
    assert list(_folder(services).iterdir()) == []
    digest, body = expected["three"]
    assert services.repodata.shard(FEED_ID, snapshot, "noarch", digest.hex()) == body


def test_unused_files_go_even_while_nothing_can_be_written(tmp_path: Path):
    """A full disk is when unused files must go: a failed write prunes as a good one does."""
    files = ShardFiles(tmp_path / "shards")
    old_body = b"an old shard"
    old_digest = hashlib.sha256(old_body).digest()
    assert files.of_feed(1).put(old_digest, old_body)
    old_file = tmp_path / "shards" / "1" / (old_digest.hex() + ".msgpack.zst")
    long_ago = time.time() - shard_files.UNUSED_SECONDS - 60
    os.utime(old_file, (long_ago, long_ago))
    (tmp_path / "shards" / "2").write_bytes(b"a file where feed 2's folder goes: its writes fail")
    files = ShardFiles(tmp_path / "shards")  # another process: it has not pruned yet
    body = b"a new shard"
    assert files.of_feed(2).put(hashlib.sha256(body).digest(), body) is False
    assert not old_file.exists()


def test_a_subdir_that_becomes_small_still_serves_the_shards_in_files(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Its next snapshots keep the entries of unchanged names, whose bodies are in files."""
    expected = _in_memory(services)
    _spilled(services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch"))
    monkeypatch.delenv(FRAME_BYTES_ENV)  # the subdir is small again
    _upload(services, write_package(tmp_path, PackageSpec("four")))
    small = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    assert not small.json.is_deferred() and small.shards()["one"][2] == IN_FILE
    for name in ("one", "two", "three"):
        digest, body = expected[name]
        assert services.repodata.shard(FEED_ID, small, "noarch", digest.hex()) == body
    assert small.shards()["four"][2]  # a new small subdir's shard is kept in memory


def test_names_are_checked_and_feeds_are_apart(tmp_path: Path):
    files = ShardFiles(tmp_path / "shards")
    body = b"shard bytes"
    digest = hashlib.sha256(body).digest()
    assert files.of_feed(1).put(digest, body)
    assert files.of_feed(1).get(digest.hex()) == body
    assert files.of_feed(2).get(digest.hex()) is None  # a feed never reads another's
    (tmp_path / "secret").write_bytes(b"x")
    for name in ("../../secret", digest.hex()[:63], digest.hex().upper(), digest.hex() + "/..", ""):
        assert files.of_feed(1).get(name) is None
    files.forget_feed(1)
    assert files.of_feed(1).get(digest.hex()) is None


def test_a_filtered_view_serves_the_same_shards_from_files(services: Services):
    from condagate.services.filtered_repodata import FilteredSubdir

    snapshot = services.repodata.snapshot(feed_id=FEED_ID, subdir="noarch")
    hidden = frozenset(fn for fn, name in snapshot.names.items() if name == "two")
    view = FilteredSubdir.build(snapshot, hidden, None)
    _spilled(snapshot)
    cold = RepodataCache(services.db).snapshot(feed_id=FEED_ID, subdir="noarch")
    expected = FilteredSubdir.build(cold, hidden, None).shards()
    assert set(view.shards()) == set(expected) == {"one", "three"}
    assert view._spilling is not None
    view._spilling.result(timeout=60)
    for name, entry in expected.items():
        assert view.shards()[name][2] == IN_FILE
        assert view.shard_by_digest(entry[1].hex()) == entry[2]
