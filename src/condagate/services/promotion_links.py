"""The approval flow's feed pairs: which feeds a source feed's packages may be promoted into."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from condagate.errors import (
    BadRequest,
    InvalidName,
    PromotionLinkNotFound,
)
from condagate.services import feeds
from condagate.services.context import Services
from condagate.store import feeds as feed_store
from condagate.store import promotions as promotion_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairInfo:
    source: feeds.FeedInfo
    target: feeds.FeedInfo


def create_pair(
    services: Services,
    *,
    source: str,
    target: str,
    connectors: list[str],
    source_description: str = "",
    target_description: str = "",
    actor: str = "",
) -> PairInfo:
    """The approval flow's two feeds in one step: ``source`` proxies ``connectors`` (hosted when none),
    ``target`` is hosted and receives what is promoted from ``source``. All three or nothing."""
    feeds.validate_feed_name(source)
    feeds.validate_feed_name(target)
    if source.lower() == target.lower():
        raise InvalidName("a pair needs two feeds: the source and the target have the same name")
    created = feeds.create_feed(
        services,
        name=source,
        connectors=connectors,
        description=source_description or f"Packages awaiting approval: promote them to {target}",
    )
    try:
        paired = feeds.create_feed(
            services, name=target, description=target_description or f"Approved packages, promoted from {source}"
        )
        try:
            link_target(services, source=source, target=target, actor=actor)
        except BaseException:
            feeds.delete_feed(services, name=target)
            raise
    except BaseException:
        feeds.delete_feed(services, name=source)
        raise
    log.info("%s created the feed pair %s -> %s", actor or "anonymous", source, target)
    return PairInfo(created, paired)


def link_target(services: Services, *, source: str, target: str, actor: str = "") -> bool:
    """Let ``source``'s promoters promote into ``target``; False when it already was a target."""
    if source == target:
        raise BadRequest(f"feed {source!r} cannot be its own promotion target")
    with services.db.write() as session:
        source_id = feed_store.get_feed(session=session, name=source).id
        target_id = feed_store.get_feed(session=session, name=target).id
        return promotion_store.add_link(
            session=session, source_feed_id=source_id, target_feed_id=target_id, created_by=actor
        )


def unlink_target(services: Services, *, source: str, target: str) -> None:
    with services.db.write() as session:
        source_id = feed_store.get_feed(session=session, name=source).id
        targets = promotion_store.target_names(session=session, source_feed_id=source_id)
        if target not in targets:
            raise PromotionLinkNotFound(f"feed {target!r} is not a promotion target of feed {source!r}")
        target_id = feed_store.get_feed(session=session, name=target).id
        promotion_store.remove_link(session=session, source_feed_id=source_id, target_feed_id=target_id)


def targets_of(services: Services, *, feed: str) -> list[str]:
    """The feeds ``feed``'s packages may be promoted into."""
    with services.db.read() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id
        return promotion_store.target_names(session=session, source_feed_id=feed_id)


def sources_of(services: Services, *, feed: str) -> list[str]:
    """The feeds whose packages may be promoted into ``feed``."""
    with services.db.read() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id
        return promotion_store.source_names(session=session, target_feed_id=feed_id)
