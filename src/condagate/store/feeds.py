"""Feed rows."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from condagate.errors import FeedExists, FeedNotFound
from condagate.store.models import Feed, PackageFile
from condagate.store.security import bump_revision


def get_feed(*, session: Session, name: str) -> Feed:
    feed = session.scalar(select(Feed).where(Feed.name == name))
    if feed is None:
        raise FeedNotFound(f"feed {name!r} does not exist")
    return feed


def list_feeds(*, session: Session) -> list[tuple[Feed, int]]:
    """Feeds by name, each with its number of package files."""
    counts = (
        select(PackageFile.feed_id, func.count(PackageFile.id).label("files")).group_by(PackageFile.feed_id).subquery()
    )
    rows = session.execute(
        select(Feed, func.coalesce(counts.c.files, 0))
        .outerjoin(counts, counts.c.feed_id == Feed.id)
        .order_by(Feed.name)
    )
    return [(feed, int(files)) for feed, files in rows]


def count_files(*, session: Session, feed_id: int) -> int:
    return int(session.scalar(select(func.count(PackageFile.id)).where(PackageFile.feed_id == feed_id)) or 0)


def create_feed(*, session: Session, name: str, description: str) -> Feed:
    existing = session.scalar(select(Feed.name).where(func.lower(Feed.name) == name.lower()))
    if existing is not None:
        # Unique regardless of case: MyTeam and myteam side by side only confuse people.
        raise FeedExists(f"a feed named {existing!r} already exists (feed names are unique regardless of case)")
    feed = Feed(name=name, description=description, created_at=datetime.now(UTC))
    session.add(feed)
    session.flush()
    bump_revision(session=session)  # grants and keys name feeds: their holders' view changes
    return feed


def update_feed(
    *, session: Session, feed: Feed, description: str | None = None, upstream_removals: str | None = None
) -> Feed:
    """Change what is given; None keeps the current value."""
    if description is not None:
        feed.description = description
    if upstream_removals is not None:
        feed.upstream_removals = upstream_removals
    session.flush()
    return feed


def delete_feed(*, session: Session, name: str) -> list[str]:
    """Delete a feed and its rows; returns the sha256 of its files, for blob clean-up."""
    feed = get_feed(session=session, name=name)
    digests = list(session.scalars(select(PackageFile.sha256).where(PackageFile.feed_id == feed.id)))
    session.delete(feed)
    session.flush()
    bump_revision(session=session)
    return digests
