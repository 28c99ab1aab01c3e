"""The queries of ``condagate check``: every row that refers to a blob, subdir revisions against their
rows, and the repairs (marking package files broken, restoring a subdir's revision)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from condagate.store import packages as package_store
from condagate.store.models import CachedPackage, Connector, Feed, PackageFile, SubdirState

_BATCH = 1000


@dataclass(frozen=True)
class FileRow:
    """A feed's package file as far as a check needs it."""

    id: int
    feed_id: int
    feed: str
    subdir: str
    filename: str
    name: str
    version: str
    build: str
    sha256: str
    md5: str
    size: int
    record: str
    broken_reason: str | None


@dataclass(frozen=True)
class CachedRow:
    """A connector's cached copy of an upstream file."""

    connector_id: int
    connector: str
    subdir: str
    filename: str
    name: str
    sha256: str
    size: int
    record: str


@dataclass(frozen=True)
class SubdirRows:
    """What a feed subdir's rows say its revision must be at least."""

    feed_id: int
    feed: str
    subdir: str
    files: int
    max_revision: int


def package_files(*, session: Session) -> Iterator[FileRow]:
    """Every package file of every feed, read in batches."""
    query = (
        select(
            PackageFile.id,
            PackageFile.feed_id,
            Feed.name,
            PackageFile.subdir,
            PackageFile.filename,
            PackageFile.name,
            PackageFile.version,
            PackageFile.build,
            PackageFile.sha256,
            PackageFile.md5,
            PackageFile.size,
            PackageFile.record,
            PackageFile.broken_reason,
        )
        .join(Feed, Feed.id == PackageFile.feed_id)
        .order_by(Feed.name, PackageFile.subdir, PackageFile.filename)
        .execution_options(yield_per=_BATCH)
    )
    for row in session.execute(query):
        values: tuple[Any, ...] = tuple(row)  # more columns than select()'s typed overloads cover
        yield FileRow(*values)


def cached_packages(*, session: Session) -> Iterator[CachedRow]:
    """Every cached upstream file of every connector, read in batches."""
    query = (
        select(
            CachedPackage.connector_id,
            Connector.name,
            CachedPackage.subdir,
            CachedPackage.filename,
            CachedPackage.name,
            CachedPackage.sha256,
            CachedPackage.size,
            CachedPackage.record,
        )
        .join(Connector, Connector.id == CachedPackage.connector_id)
        .order_by(Connector.name, CachedPackage.subdir, CachedPackage.filename)
        .execution_options(yield_per=_BATCH)
    )
    for row in session.execute(query):
        yield CachedRow(*row)


def referenced_sha256(*, session: Session) -> set[str]:
    """The sha256 of every blob a row refers to: feeds' package files and connectors' cached copies
    (the tables ``packages.sha256_in_use`` asks about)."""
    files = session.scalars(select(PackageFile.sha256).distinct())
    cached = session.scalars(select(CachedPackage.sha256).distinct())
    return set(files) | set(cached)


def subdirs_with_rows(*, session: Session) -> list[SubdirRows]:
    """Each feed subdir that has package files (broken ones included: they were served once)."""
    rows = session.execute(
        select(PackageFile.feed_id, Feed.name, PackageFile.subdir, func.count(), func.max(PackageFile.revision))
        .join(Feed, Feed.id == PackageFile.feed_id)
        .group_by(PackageFile.feed_id, Feed.name, PackageFile.subdir)
        .order_by(Feed.name, PackageFile.subdir)
    )
    return [SubdirRows(int(fid), name, subdir, int(n), int(top or 0)) for fid, name, subdir, n, top in rows]


def subdir_revisions(*, session: Session) -> dict[tuple[int, str], int]:
    """(feed id, subdir) -> the revision its state row holds."""
    rows = session.execute(select(SubdirState.feed_id, SubdirState.subdir, SubdirState.revision))
    return {(int(fid), subdir): int(revision) for fid, subdir, revision in rows}


def connector_ids(*, session: Session) -> set[int]:
    return {int(cid) for cid in session.scalars(select(Connector.id))}


def mark_broken(*, session: Session, file_id: int, sha256: str, reason: str) -> bool:
    """Mark one package file broken (it leaves the repodata: the subdir's generation is bumped so that
    every server process rebuilds it whole); False when the row is gone or names other bytes now."""
    row = session.scalar(select(PackageFile).where(PackageFile.id == file_id, PackageFile.sha256 == sha256))
    if row is None:
        return False
    package_store.bump_revision(session=session, feed_id=row.feed_id, subdir=row.subdir, removal=True)
    row.broken_reason = reason
    row.checked_at = datetime.now(UTC)
    return True


def clear_broken(*, session: Session, file_id: int, sha256: str) -> bool:
    """Serve a file marked broken again (its blob is intact now): it gets a new revision, so that
    incremental repodata readers pick it up."""
    row = session.scalar(select(PackageFile).where(PackageFile.id == file_id, PackageFile.sha256 == sha256))
    if row is None or row.broken_reason is None:
        return False
    row.revision = package_store.bump_revision(session=session, feed_id=row.feed_id, subdir=row.subdir)
    row.broken_reason = None
    row.checked_at = datetime.now(UTC)
    return True


def restore_subdir_revision(*, session: Session, feed_id: int, subdir: str) -> int:
    """Give a subdir a state row at least as new as its newest file, in a new generation (every
    process rebuilds its repodata whole); returns the revision."""
    top = session.scalar(
        select(func.max(PackageFile.revision)).where(PackageFile.feed_id == feed_id, PackageFile.subdir == subdir)
    )
    revision = int(top or 0)
    state = session.get(SubdirState, (feed_id, subdir))
    now = datetime.now(UTC)
    if state is None:
        session.add(SubdirState(feed_id=feed_id, subdir=subdir, revision=revision, generation=1, updated_at=now))
        return revision
    state.revision = max(int(state.revision), revision)
    state.generation = int(state.generation) + 1
    state.updated_at = now
    return int(state.revision)


def forget_cached_package(*, session: Session, connector_id: int, subdir: str, filename: str, sha256: str) -> bool:
    """Drop a cached copy's row (the next download fetches the file again); False when it changed meanwhile."""
    result = session.execute(
        delete(CachedPackage).where(
            CachedPackage.connector_id == connector_id,
            CachedPackage.subdir == subdir,
            CachedPackage.filename == filename,
            CachedPackage.sha256 == sha256,
        )
    )
    return bool(getattr(result, "rowcount", 0))
