"""Download counters per feed, file and day; written in batches by the download counter service."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from condagate.store.models import DownloadCount

CounterKey = tuple[int, str, str, date]


def add_downloads(*, session: Session, counts: Mapping[CounterKey, int]) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for (feed_id, subdir, filename, day), count in sorted(counts.items()):
        statement = insert(DownloadCount).values(
            feed_id=feed_id, subdir=subdir, filename=filename, day=day, count=count
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["feed_id", "subdir", "filename", "day"],
                set_={"count": DownloadCount.count + statement.excluded.count},
            )
        )


def downloads_by_file(*, session: Session, feed_id: int, filenames: list[str]) -> dict[tuple[str, str], int]:
    if not filenames:
        return {}
    rows = session.execute(
        select(DownloadCount.subdir, DownloadCount.filename, func.sum(DownloadCount.count))
        .where(DownloadCount.feed_id == feed_id, DownloadCount.filename.in_(filenames))
        .group_by(DownloadCount.subdir, DownloadCount.filename)
    )
    return {(subdir, filename): int(total) for subdir, filename, total in rows}


def downloads_of_feed(*, session: Session, feed_id: int) -> int:
    return int(session.scalar(select(func.sum(DownloadCount.count)).where(DownloadCount.feed_id == feed_id)) or 0)
