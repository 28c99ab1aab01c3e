"""Reading a feed as a conda channel: resolving feeds, snapshots and package blobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from condagate.conda.subdirs import require_known_subdir
from condagate.errors import PackageNotFound
from condagate.services.context import Services
from condagate.services.repodata_cache import SubdirSnapshot
from condagate.store import feeds as feed_store


@dataclass(frozen=True)
class FeedRef:
    id: int
    name: str


def resolve_feed(services: Services, name: str) -> FeedRef:
    with services.db.read() as session:
        feed = feed_store.get_feed(session=session, name=name)
        return FeedRef(feed.id, feed.name)


def subdir_snapshot(services: Services, feed_name: str, subdir: str) -> SubdirSnapshot:
    require_known_subdir(subdir)
    feed = resolve_feed(services, feed_name)
    return services.repodata.snapshot(feed_id=feed.id, subdir=subdir)


@dataclass(frozen=True)
class PackageBlob:
    feed_id: int
    subdir: str
    filename: str
    sha256: str
    path: Path


def package_blob(services: Services, feed_name: str, subdir: str, filename: str) -> PackageBlob:
    require_known_subdir(subdir)
    feed = resolve_feed(services, feed_name)
    snapshot = services.repodata.snapshot(feed_id=feed.id, subdir=subdir)
    record = snapshot.record(filename)
    if record is None:
        raise PackageNotFound(f"{subdir}/{filename} is not in feed {feed_name!r}")
    sha256 = str(record["sha256"])
    path = services.blobs.local_path(sha256)
    if not path.is_file():
        raise PackageNotFound(f"{subdir}/{filename} is listed in feed {feed_name!r} but its file is missing")
    return PackageBlob(feed.id, subdir, filename, sha256, path)
