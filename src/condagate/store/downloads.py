"""Download counters per feed, file and day; written in batches by the download counter service."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from condagate.store.models import DownloadCount, Feed, PrincipalDownload

CounterKey = tuple[int, str, str, str, date]  # feed id, subdir, file name, package name, day
PrincipalKey = tuple[int, str, str, date]  # feed id, file name, who (user, key or anonymous), day


def _add_counts(
    session: Session,
    model: type[DownloadCount] | type[PrincipalDownload],
    keys: tuple[str, ...],
    counts: Mapping[tuple[Any, ...], int],
) -> None:
    """Upsert ``count += n`` per key (``keys`` name the key tuple's columns, feed_id first); counts of
    feeds deleted meanwhile are dropped (they would fail the whole batch)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    feed_ids = {key[0] for key in counts}
    existing = set(session.scalars(select(Feed.id).where(Feed.id.in_(feed_ids)))) if feed_ids else set()
    conflict = [column for column in keys if column != "name"]  # the primary key
    for key, count in sorted(counts.items()):
        if key[0] not in existing:
            continue
        statement = insert(model).values(**dict(zip(keys, key, strict=True)), count=count)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=conflict, set_={"count": model.count + statement.excluded.count}
            )
        )


def add_downloads(*, session: Session, counts: Mapping[CounterKey, int]) -> None:
    _add_counts(session, DownloadCount, ("feed_id", "subdir", "filename", "name", "day"), counts)


def add_principal_downloads(*, session: Session, counts: Mapping[PrincipalKey, int]) -> None:
    _add_counts(session, PrincipalDownload, ("feed_id", "filename", "principal", "day"), counts)


def top_downloaders(*, session: Session, feed_id: int, since: date, limit: int) -> list[tuple[str, int]]:
    total = func.sum(PrincipalDownload.count)
    rows = session.execute(
        select(PrincipalDownload.principal, total)
        .where(PrincipalDownload.feed_id == feed_id, PrincipalDownload.day >= since)
        .group_by(PrincipalDownload.principal)
        .order_by(total.desc(), PrincipalDownload.principal)
        .limit(limit)
    )
    return [(principal, int(count)) for principal, count in rows]


def downloads_by_file(*, session: Session, feed_id: int, filenames: list[str]) -> dict[tuple[str, str], int]:
    if not filenames:
        return {}
    rows = session.execute(
        select(DownloadCount.subdir, DownloadCount.filename, func.sum(DownloadCount.count))
        .where(DownloadCount.feed_id == feed_id, DownloadCount.filename.in_(filenames))
        .group_by(DownloadCount.subdir, DownloadCount.filename)
    )
    return {(subdir, filename): int(total) for subdir, filename, total in rows}


def downloads_by_name(*, session: Session, feed_id: int, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    rows = session.execute(
        select(DownloadCount.name, func.sum(DownloadCount.count))
        .where(DownloadCount.feed_id == feed_id, DownloadCount.name.in_(names))
        .group_by(DownloadCount.name)
    )
    return {name: int(total) for name, total in rows}


def top_packages(*, session: Session, feed_id: int, since: date, limit: int) -> list[tuple[str, int]]:
    total = func.sum(DownloadCount.count)
    rows = session.execute(
        select(DownloadCount.name, total)
        .where(DownloadCount.feed_id == feed_id, DownloadCount.day >= since)
        .group_by(DownloadCount.name)
        .order_by(total.desc(), DownloadCount.name)
        .limit(limit)
    )
    return [(name, int(count)) for name, count in rows]


def per_day(*, session: Session, feed_id: int, since: date, name: str | None = None) -> list[tuple[date, int]]:
    query = select(DownloadCount.day, func.sum(DownloadCount.count)).where(
        DownloadCount.feed_id == feed_id, DownloadCount.day >= since
    )
    if name is not None:
        query = query.where(DownloadCount.name == name)
    rows = session.execute(query.group_by(DownloadCount.day).order_by(DownloadCount.day))
    return [(day, int(count)) for day, count in rows]


def per_file(*, session: Session, feed_id: int, name: str) -> list[tuple[str, str, int]]:
    rows = session.execute(
        select(DownloadCount.subdir, DownloadCount.filename, func.sum(DownloadCount.count))
        .where(DownloadCount.feed_id == feed_id, DownloadCount.name == name)
        .group_by(DownloadCount.subdir, DownloadCount.filename)
    )
    return [(subdir, filename, int(count)) for subdir, filename, count in rows]


def downloads_of_feed(*, session: Session, feed_id: int) -> int:
    return int(session.scalar(select(func.sum(DownloadCount.count)).where(DownloadCount.feed_id == feed_id)) or 0)
