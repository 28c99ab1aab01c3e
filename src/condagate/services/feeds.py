"""Creating, listing and deleting feeds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from condagate.errors import InvalidName
from condagate.services.context import Services
from condagate.store import feeds as feed_store
from condagate.store.packages import sha256_in_use

# Feed names are URL path segments next to the server's own routes: these would shadow them.
RESERVED_NAMES = frozenset(
    {"api", "t", "conda", "health", "static", "ui", "login", "logout", "feeds", "admin", "docs", "openapi.json"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def validate_feed_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidName(
            f"invalid feed name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() in RESERVED_NAMES:
        raise InvalidName(f"the feed name {name!r} is reserved: choose another")
    return name


@dataclass(frozen=True)
class FeedInfo:
    name: str
    description: str
    created_at: datetime
    package_files: int = 0


def create_feed(services: Services, *, name: str, description: str = "") -> FeedInfo:
    validate_feed_name(name)
    with services.db.write() as session:
        feed = feed_store.create_feed(session=session, name=name, description=description)
        return FeedInfo(feed.name, feed.description, feed.created_at)


def list_feeds(services: Services) -> list[FeedInfo]:
    with services.db.read() as session:
        return [
            FeedInfo(feed.name, feed.description, feed.created_at, files)
            for feed, files in feed_store.list_feeds(session=session)
        ]


def get_feed(services: Services, *, name: str) -> FeedInfo:
    with services.db.read() as session:
        feed = feed_store.get_feed(session=session, name=name)
        return FeedInfo(feed.name, feed.description, feed.created_at)


def delete_feed(services: Services, *, name: str) -> None:
    with services.db.write() as session:
        feed_id = feed_store.get_feed(session=session, name=name).id
        digests = feed_store.delete_feed(session=session, name=name)
    services.repodata.forget_feed(feed_id)
    with services.db.read() as session:
        unused = [digest for digest in set(digests) if not sha256_in_use(session=session, sha256=digest)]
    for digest in unused:
        services.blobs.delete(digest)
