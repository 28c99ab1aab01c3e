"""Promotion links (source feed -> target feeds) and the promotion history."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from condagate.store.models import Feed, Promotion, PromotionTarget


def target_names(*, session: Session, source_feed_id: int) -> list[str]:
    rows = session.scalars(
        select(Feed.name)
        .join(PromotionTarget, PromotionTarget.target_feed_id == Feed.id)
        .where(PromotionTarget.source_feed_id == source_feed_id)
        .order_by(Feed.name)
    )
    return list(rows)


def source_names(*, session: Session, target_feed_id: int) -> list[str]:
    rows = session.scalars(
        select(Feed.name)
        .join(PromotionTarget, PromotionTarget.source_feed_id == Feed.id)
        .where(PromotionTarget.target_feed_id == target_feed_id)
        .order_by(Feed.name)
    )
    return list(rows)


def is_linked(*, session: Session, source_feed_id: int, target_feed_id: int) -> bool:
    found = session.scalar(
        select(PromotionTarget.source_feed_id).where(
            PromotionTarget.source_feed_id == source_feed_id, PromotionTarget.target_feed_id == target_feed_id
        )
    )
    return found is not None


def add_link(*, session: Session, source_feed_id: int, target_feed_id: int, created_by: str) -> bool:
    """Link a target to a source; False when it already was."""
    if is_linked(session=session, source_feed_id=source_feed_id, target_feed_id=target_feed_id):
        return False
    session.add(
        PromotionTarget(
            source_feed_id=source_feed_id,
            target_feed_id=target_feed_id,
            created_at=datetime.now(UTC),
            created_by=created_by,
        )
    )
    session.flush()
    return True


def remove_link(*, session: Session, source_feed_id: int, target_feed_id: int) -> bool:
    result = session.execute(
        delete(PromotionTarget).where(
            PromotionTarget.source_feed_id == source_feed_id, PromotionTarget.target_feed_id == target_feed_id
        )
    )
    return bool(getattr(result, "rowcount", 0))


def add_entries(*, session: Session, entries: Iterable[Promotion]) -> None:
    session.add_all(list(entries))
    session.flush()


def last_promotions(*, session: Session, target_feed: str, files: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(subdir, filename) -> the source feed of the latest promotion of that file into ``target_feed``."""
    if not files:
        return {}
    wanted = or_(*[and_(Promotion.subdir == subdir, Promotion.filename == fn) for subdir, fn in files])
    rows = session.execute(
        select(Promotion.subdir, Promotion.filename, Promotion.source_feed)
        .where(Promotion.target_feed == target_feed, Promotion.action == "promote", wanted)
        .order_by(Promotion.at, Promotion.id)
    )
    return {(subdir, filename): source for subdir, filename, source in rows}


def was_promoted(*, session: Session, target_feed: str, name: str, version: str) -> bool:
    found = session.scalar(
        select(Promotion.id)
        .where(
            Promotion.target_feed == target_feed,
            Promotion.action == "promote",
            Promotion.name == name,
            Promotion.version == version,
        )
        .limit(1)
    )
    return found is not None


def _history_filter(
    feed: str | None, name: str | None, version: str | None, visible_feeds: set[str] | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if feed is not None:
        if visible_feeds is None:
            conditions.append(or_(Promotion.source_feed == feed, Promotion.target_feed == feed))
        else:
            # Entries whose other feed the reader may not see are left out, as everywhere.
            seen = sorted(visible_feeds)
            conditions.append(
                or_(
                    and_(Promotion.source_feed == feed, Promotion.target_feed.in_(seen)),
                    and_(Promotion.target_feed == feed, Promotion.source_feed.in_(seen)),
                )
            )
    elif visible_feeds is not None:
        seen = sorted(visible_feeds)
        conditions.append(and_(Promotion.source_feed.in_(seen), Promotion.target_feed.in_(seen)))
    if name is not None:
        conditions.append(Promotion.name == name)
    if version is not None:
        conditions.append(Promotion.version == version)
    return conditions


def history(
    *,
    session: Session,
    feed: str | None = None,
    name: str | None = None,
    version: str | None = None,
    visible_feeds: set[str] | None = None,
    offset: int = 0,
    limit: int | None = 50,
) -> tuple[list[Promotion], int]:
    """Entries newest first, and how many match in all."""
    conditions = _history_filter(feed, name, version, visible_feeds)
    total = session.scalar(select(func.count(Promotion.id)).where(*conditions)) or 0
    query = select(Promotion).where(*conditions).order_by(Promotion.at.desc(), Promotion.id.desc()).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query)), int(total)
