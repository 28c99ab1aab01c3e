"""Connector rows, which feeds use them, their health, and the upstream files they have cached."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from condagate.errors import Conflict, NotFound
from condagate.store import upstream_state
from condagate.store.models import CachedPackage, Connector, ConnectorSubdirState, Feed, FeedConnector


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def get_connector(*, session: Session, name: str) -> Connector:
    connector = session.scalar(select(Connector).where(Connector.name == name))
    if connector is None:
        raise NotFound(f"connector {name!r} does not exist")
    return connector


def find_connector(*, session: Session, name: str) -> Connector | None:
    return session.scalar(select(Connector).where(Connector.name == name))


def list_connectors(*, session: Session) -> list[Connector]:
    return list(session.scalars(select(Connector).order_by(Connector.name)))


def add_connector(*, session: Session, connector: Connector) -> Connector:
    if find_connector(session=session, name=connector.name) is not None:
        raise Conflict(f"a connector named {connector.name!r} already exists")
    connector.created_at = datetime.now(UTC)
    session.add(connector)
    session.flush()
    return connector


def delete_connector(*, session: Session, name: str) -> list[str]:
    """Delete an unused connector; returns the sha256 of the files it had cached and of the upstream
    repodata it kept, for blob clean-up."""
    connector = get_connector(session=session, name=name)
    used_by = feeds_using(session=session, connector_id=connector.id)
    if used_by:
        raise Conflict(
            f"connector {name!r} is used by the feeds {', '.join(used_by)}: detach it from them first, "
            "or delete it with detach (API ?detach=true, CLI --detach)"
        )
    digests = list(session.scalars(select(CachedPackage.sha256).where(CachedPackage.connector_id == connector.id)))
    session.execute(delete(CachedPackage).where(CachedPackage.connector_id == connector.id))
    digests += upstream_state.remove(session=session, connector_id=connector.id)
    session.delete(connector)
    return digests


def detach_connector(*, session: Session, connector_id: int) -> list[str]:
    """Remove a connector from every feed that uses it; returns those feeds' names."""
    feeds = feeds_using(session=session, connector_id=connector_id)
    session.execute(delete(FeedConnector).where(FeedConnector.connector_id == connector_id))
    session.flush()
    return feeds


def forget_health(*, session: Session, connector_id: int) -> None:
    """Drop the connector's per-subdir health (its upstream moved: it described the old one)."""
    session.execute(delete(ConnectorSubdirState).where(ConnectorSubdirState.connector_id == connector_id))


def feeds_using(*, session: Session, connector_id: int) -> list[str]:
    rows = session.scalars(
        select(Feed.name)
        .join(FeedConnector, FeedConnector.feed_id == Feed.id)
        .where(FeedConnector.connector_id == connector_id)
    )
    return sorted(rows)


def set_feed_connectors(*, session: Session, feed_id: int, connector_ids: list[int]) -> None:
    session.execute(delete(FeedConnector).where(FeedConnector.feed_id == feed_id))
    for position, connector_id in enumerate(connector_ids):
        session.add(FeedConnector(feed_id=feed_id, connector_id=connector_id, position=position))
    session.flush()


def connectors_of_feed(*, session: Session, feed_id: int) -> list[Connector]:
    return list(
        session.scalars(
            select(Connector)
            .join(FeedConnector, FeedConnector.connector_id == Connector.id)
            .where(FeedConnector.feed_id == feed_id)
            .order_by(FeedConnector.position)
        )
    )


def record_health(
    *,
    session: Session,
    connector_id: int,
    subdir: str,
    ok: bool,
    response_ms: int,
    etag: str = "",
    records: int | None = None,
    error: str = "",
    failing_since: datetime | None = None,
    next_try_at: datetime | None = None,
    dropped: tuple[int, str] | None = None,  # how many records were dropped, and examples (JSON)
) -> None:
    now = datetime.now(UTC)
    insert = _insert(session)
    session.execute(
        insert(ConnectorSubdirState)
        .values(connector_id=connector_id, subdir=subdir, etag="", records=0, last_error="", response_ms=0)
        .on_conflict_do_nothing()
    )
    state = session.get(ConnectorSubdirState, (connector_id, subdir))
    assert state is not None
    state.last_checked_at = now
    state.response_ms = response_ms
    if ok:
        state.last_success_at = now
        state.etag = etag
        if records is not None:
            state.records = records
        state.last_error = ""
        state.failing_since = None
        state.next_try_at = None
        if dropped is not None:
            state.dropped_records, state.dropped_examples = dropped[0], dropped[1][:8000]
    else:
        state.last_error_at = now
        state.last_error = error[:2000]
        state.failing_since = failing_since
        state.next_try_at = next_try_at


def health_of(*, session: Session, connector_id: int) -> list[ConnectorSubdirState]:
    return list(
        session.scalars(
            select(ConnectorSubdirState)
            .where(ConnectorSubdirState.connector_id == connector_id)
            .order_by(ConnectorSubdirState.subdir)
        )
    )


def cached_package(*, session: Session, connector_id: int, subdir: str, filename: str) -> CachedPackage | None:
    return session.get(CachedPackage, (connector_id, subdir, filename))


def add_cached_package(
    *,
    session: Session,
    connector_id: int,
    subdir: str,
    filename: str,
    sha256: str,
    size: int,
    record: str = "",
    name: str = "",
) -> None:
    insert = _insert(session)
    session.execute(
        insert(CachedPackage)
        .values(
            connector_id=connector_id,
            subdir=subdir,
            filename=filename,
            sha256=sha256,
            size=size,
            cached_at=datetime.now(UTC),
            record=record,
            name=name,
        )
        .on_conflict_do_nothing()
    )


@dataclass(frozen=True)
class StickyRecord:
    """A cached file's record, as the upstream listed it when the file was cached."""

    connector_id: int
    filename: str
    name: str
    record: bytes
    removed_upstream_at: datetime | None


def sticky_records(*, session: Session, connector_ids: list[int], subdir: str) -> list[StickyRecord]:
    if not connector_ids:
        return []
    rows = session.execute(
        select(
            CachedPackage.connector_id,
            CachedPackage.filename,
            CachedPackage.name,
            CachedPackage.record,
            CachedPackage.removed_upstream_at,
        ).where(
            CachedPackage.connector_id.in_(connector_ids), CachedPackage.subdir == subdir, CachedPackage.record != ""
        )
    )
    return [StickyRecord(cid, file, name, record.encode(), removed) for cid, file, name, record, removed in rows]


def mark_removed_upstream(*, session: Session, connector_id: int, subdir: str, listed: Container[str]) -> int:
    """Note when cached files disappear from (or come back to) the upstream's listing; returns how many changed."""
    now = datetime.now(UTC)
    changed = 0
    for row in session.scalars(
        select(CachedPackage).where(CachedPackage.connector_id == connector_id, CachedPackage.subdir == subdir)
    ):
        present = row.filename in listed
        if present and row.removed_upstream_at is not None:
            row.removed_upstream_at, changed = None, changed + 1
        elif not present and row.removed_upstream_at is None:
            row.removed_upstream_at, changed = now, changed + 1
    return changed


def cached_filenames(*, session: Session, connector_ids: list[int], filenames: list[str]) -> set[tuple[str, str]]:
    """(subdir, filename) of the given files cached by any of the connectors."""
    if not connector_ids or not filenames:
        return set()
    rows = session.execute(
        select(CachedPackage.subdir, CachedPackage.filename).where(
            CachedPackage.connector_id.in_(connector_ids), CachedPackage.filename.in_(filenames)
        )
    )
    return {(subdir, filename) for subdir, filename in rows}


def count_cached(*, session: Session, connector_id: int) -> tuple[int, int]:
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(CachedPackage.size), 0)).where(
            CachedPackage.connector_id == connector_id
        )
    ).one()
    return int(count), int(size)
