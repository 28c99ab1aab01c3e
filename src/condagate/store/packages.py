"""Package file rows and the per-subdir revision that orders their changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from condagate.store import upstream_state
from condagate.store.models import CachedPackage, Feed, FeedConnector, PackageFile, SubdirState


@dataclass(frozen=True)
class SubdirVersion:
    revision: int
    generation: int
    updated_at: datetime | None = None


def subdir_version(*, session: Session, feed_id: int, subdir: str) -> SubdirVersion:
    row = session.execute(
        select(SubdirState.revision, SubdirState.generation, SubdirState.updated_at).where(
            SubdirState.feed_id == feed_id, SubdirState.subdir == subdir
        )
    ).first()
    return SubdirVersion(0, 0) if row is None else SubdirVersion(int(row[0]), int(row[1]), row[2])


def feed_versions(*, session: Session, feed_id: int) -> tuple[tuple[str, int, int], ...]:
    """(subdir, revision, generation) of every subdir of a feed: changes whenever any record does."""
    rows = session.execute(
        select(SubdirState.subdir, SubdirState.revision, SubdirState.generation)
        .where(SubdirState.feed_id == feed_id)
        .order_by(SubdirState.subdir)
    )
    return tuple((subdir, int(revision), int(generation)) for subdir, revision, generation in rows)


def populated_subdirs(*, session: Session, feed_id: int) -> list[str]:
    served = select(PackageFile.subdir).where(PackageFile.feed_id == feed_id, PackageFile.broken_reason.is_(None))
    return sorted(set(session.scalars(served.distinct())))


def bump_revision(*, session: Session, feed_id: int, subdir: str, removal: bool = False) -> int:
    """Take the next revision of a subdir inside the caller's transaction (its row lock orders writers)."""
    now = datetime.now(UTC)
    values = {"feed_id": feed_id, "subdir": subdir, "revision": 0, "generation": 0, "updated_at": now}
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(SubdirState).values(**values).on_conflict_do_nothing())
    changes = {"revision": SubdirState.revision + 1, "updated_at": now}
    if removal:
        changes["generation"] = SubdirState.generation + 1
    revision = session.scalar(
        update(SubdirState)
        .where(SubdirState.feed_id == feed_id, SubdirState.subdir == subdir)
        .values(**changes)
        .returning(SubdirState.revision)
    )
    assert revision is not None
    return int(revision)


def find_file(*, session: Session, feed_id: int, subdir: str, filename: str) -> PackageFile | None:
    return session.scalar(
        select(PackageFile).where(
            PackageFile.feed_id == feed_id, PackageFile.subdir == subdir, PackageFile.filename == filename
        )
    )


def records_since(*, session: Session, feed_id: int, subdir: str, revision: int) -> list[tuple[str, str, str, int]]:
    """(filename, name, record JSON, revision) of rows changed after ``revision``."""
    rows = session.execute(
        select(PackageFile.filename, PackageFile.name, PackageFile.record, PackageFile.revision).where(
            PackageFile.feed_id == feed_id,
            PackageFile.subdir == subdir,
            PackageFile.revision > revision,
            PackageFile.broken_reason.is_(None),
        )
    )
    return [(fn, name, record, int(rev)) for fn, name, record, rev in rows]


def delete_file(*, session: Session, row: PackageFile) -> None:
    session.execute(delete(PackageFile).where(PackageFile.id == row.id))


def sha256_in_use(*, session: Session, sha256: str) -> bool:
    """Whether a feed's package, a connector's cached file or a connector's kept upstream repodata
    (``store.upstream_state``) still needs the blob."""
    if session.scalar(select(PackageFile.id).where(PackageFile.sha256 == sha256).limit(1)) is not None:
        return True
    if session.scalar(select(CachedPackage.size).where(CachedPackage.sha256 == sha256).limit(1)) is not None:
        return True
    return upstream_state.sha256_in_use(session=session, sha256=sha256)


def files_of_names(*, session: Session, feed_id: int, names: list[str]) -> list[PackageFile]:
    if not names:
        return []
    return list(
        session.scalars(
            select(PackageFile)
            .where(
                PackageFile.feed_id == feed_id,
                PackageFile.broken_reason.is_(None),
                or_(*[PackageFile.name == n for n in names]),
            )
            .order_by(PackageFile.name, PackageFile.subdir, PackageFile.filename)
        )
    )


def all_files(*, session: Session, feed_id: int) -> list[PackageFile]:
    served = select(PackageFile).where(PackageFile.feed_id == feed_id, PackageFile.broken_reason.is_(None))
    return list(session.scalars(served))


def files_matching(
    *,
    session: Session,
    feed_id: int,
    name: str | None = None,
    version: str | None = None,
    subdir: str | None = None,
    filename: str | None = None,
) -> list[PackageFile]:
    """A feed's own files, narrowed by whichever of name, version, subdir and file name are given."""
    query = select(PackageFile).where(PackageFile.feed_id == feed_id)
    if name is not None:
        query = query.where(PackageFile.name == name)
    if version is not None:
        query = query.where(PackageFile.version == version)
    if subdir is not None:
        query = query.where(PackageFile.subdir == subdir)
    if filename is not None:
        query = query.where(PackageFile.filename == filename)
    return list(session.scalars(query.order_by(PackageFile.subdir, PackageFile.filename)))


def delete_files(*, session: Session, ids: list[int]) -> None:
    if ids:
        session.execute(delete(PackageFile).where(PackageFile.id.in_(ids)))


def cached_copies(
    *,
    session: Session,
    connector_ids: list[int],
    name: str | None = None,
    subdir: str | None = None,
    filename: str | None = None,
) -> list[CachedPackage]:
    """Upstream files the connectors have cached, by file name, or by package name (which older rows
    lack: then their file names, NAME-VERSION-BUILD.EXT, say it; callers check the split exactly)."""
    if not connector_ids:
        return []
    query = select(CachedPackage).where(CachedPackage.connector_id.in_(connector_ids))
    if filename is not None:
        query = query.where(CachedPackage.filename == filename)
    if name is not None:
        query = query.where(
            or_(CachedPackage.name == name, CachedPackage.filename.startswith(name + "-", autoescape=True))
        )
    if subdir is not None:
        query = query.where(CachedPackage.subdir == subdir)
    return list(
        session.scalars(query.order_by(CachedPackage.subdir, CachedPackage.filename, CachedPackage.connector_id))
    )


def delete_cached_copy(*, session: Session, connector_id: int, subdir: str, filename: str) -> None:
    session.execute(
        delete(CachedPackage).where(
            CachedPackage.connector_id == connector_id,
            CachedPackage.subdir == subdir,
            CachedPackage.filename == filename,
        )
    )


def feeds_using_connectors(*, session: Session, connector_ids: list[int]) -> list[tuple[int, str, int]]:
    """(feed id, feed name, connector id) of every feed that proxies one of the connectors."""
    if not connector_ids:
        return []
    rows = session.execute(
        select(FeedConnector.feed_id, Feed.name, FeedConnector.connector_id)
        .join(Feed, Feed.id == FeedConnector.feed_id)
        .where(FeedConnector.connector_id.in_(connector_ids))
        .order_by(FeedConnector.feed_id)
    )
    return [(int(feed_id), str(name), int(connector_id)) for feed_id, name, connector_id in rows]
