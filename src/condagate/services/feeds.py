"""Creating, listing, updating and deleting feeds."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from condagate.errors import BadRequest, InvalidName, PermissionDenied
from condagate.services import vulnerabilities
from condagate.services.blob_cleanup import delete_if_unused
from condagate.services.context import Services
from condagate.services.policy import SCA_POLICIES, SEVERITY_LEVELS, FeedPolicy
from condagate.store import connectors as connector_store
from condagate.store import feeds as feed_store
from condagate.store import sca_state
from condagate.store.models import Feed

# Feed names are URL path segments next to the server's own routes: these would shadow them.
RESERVED_NAMES = frozenset(
    {
        "api",
        "t",
        "conda",
        "health",
        "static",
        "ui",
        "login",
        "logout",
        "feeds",
        "admin",
        "docs",
        "openapi.json",
        "new",
        "connectors",
    }
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def validate_feed_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid feed name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if ".." in name:
        raise InvalidName(f"invalid feed name {name!r}: '..' is not allowed in a name")
    if name.lower() in RESERVED_NAMES:
        raise InvalidName(f"the feed name {name!r} is reserved: choose another")
    return name


@dataclass(frozen=True)
class FeedInfo:
    name: str
    description: str
    created_at: datetime
    package_files: int = 0
    connectors: list[str] = field(default_factory=list)
    upstream_removals: str = "keep-cached"
    # SCA: see services.sca for what each setting does.
    vulnerability_policy: str = "off"
    min_severity: str = "high"
    hide_blocked: bool = True
    license_policy: str = "off"

    @property
    def kind(self) -> str:
        return "proxy" if self.connectors else "hosted"


@dataclass(frozen=True)
class ScaSettings:
    """A change of a feed's SCA settings: None keeps the current value."""

    vulnerability_policy: str | None = None
    min_severity: str | None = None
    hide_blocked: bool | None = None
    license_policy: str | None = None

    def check(self) -> None:
        for label, value in (
            ("vulnerability_policy", self.vulnerability_policy),
            ("license_policy", self.license_policy),
        ):
            if value is not None and value not in SCA_POLICIES:
                raise BadRequest(f"{label} must be one of {', '.join(SCA_POLICIES)}, not {value!r}")
        if self.min_severity is not None and self.min_severity not in SEVERITY_LEVELS:
            raise BadRequest(f"min_severity must be one of {', '.join(SEVERITY_LEVELS)}, not {self.min_severity!r}")

    @property
    def empty(self) -> bool:
        return all(
            v is None for v in (self.vulnerability_policy, self.min_severity, self.hide_blocked, self.license_policy)
        )

    def applied_to(self, policy: FeedPolicy) -> FeedPolicy:
        """``policy`` with these changes (what the feed would have)."""
        return FeedPolicy(
            policy.id,
            policy.name,
            self.vulnerability_policy if self.vulnerability_policy is not None else policy.vulnerability_policy,
            self.min_severity if self.min_severity is not None else policy.min_severity,
            self.hide_blocked if self.hide_blocked is not None else policy.hide_blocked,
            self.license_policy if self.license_policy is not None else policy.license_policy,
        )


def _info(feed: Feed, files: int, connectors: list[str]) -> FeedInfo:
    return FeedInfo(
        feed.name,
        feed.description,
        feed.created_at,
        files,
        connectors,
        feed.upstream_removals,
        feed.vulnerability_policy,
        feed.min_severity,
        feed.hide_blocked,
        feed.license_policy,
    )


UPSTREAM_REMOVALS = ("keep-cached", "follow-upstream")
MAX_DESCRIPTION = 2000


def _check_settings(*, description: str | None, connectors: list[str] | None, upstream_removals: str | None) -> None:
    if upstream_removals is not None and upstream_removals not in UPSTREAM_REMOVALS:
        raise BadRequest(f"upstream_removals must be one of {', '.join(UPSTREAM_REMOVALS)}")
    if connectors is not None and len(set(connectors)) != len(connectors):
        raise BadRequest("a connector is listed twice")
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise BadRequest(f"the description is longer than {MAX_DESCRIPTION} characters")


def create_feed(
    services: Services,
    *,
    name: str,
    description: str = "",
    connectors: list[str] | None = None,
    upstream_removals: str = "keep-cached",
) -> FeedInfo:
    """A hosted feed, or with ``connectors`` (in order of precedence) a proxy feed that may also host.
    ``upstream_removals``: whether a cached file stays listed once its upstream removes it."""
    validate_feed_name(name)
    connectors = connectors or []
    _check_settings(description=description, connectors=connectors, upstream_removals=upstream_removals)
    with services.db.write() as session:
        connector_ids = [connector_store.get_connector(session=session, name=c).id for c in connectors]
        feed = feed_store.create_feed(session=session, name=name, description=description)
        feed.upstream_removals = upstream_removals
        connector_store.set_feed_connectors(session=session, feed_id=feed.id, connector_ids=connector_ids)
        return _info(feed, 0, connectors)


def list_feeds(services: Services) -> list[FeedInfo]:
    with services.db.read() as session:
        return [
            _info(feed, files, [c.name for c in connector_store.connectors_of_feed(session=session, feed_id=feed.id)])
            for feed, files in feed_store.list_feeds(session=session)
        ]


def get_feed(services: Services, *, name: str) -> FeedInfo:
    with services.db.read() as session:
        feed = feed_store.get_feed(session=session, name=name)
        connectors = [c.name for c in connector_store.connectors_of_feed(session=session, feed_id=feed.id)]
        files = feed_store.count_files(session=session, feed_id=feed.id)
        return _info(feed, files, connectors)


def update_feed(
    services: Services,
    *,
    name: str,
    description: str | None = None,
    connectors: list[str] | None = None,
    upstream_removals: str | None = None,
    may_attach: bool = True,
    sca: ScaSettings | None = None,
) -> FeedInfo:
    """Change what is given (None keeps it). ``connectors`` replaces the feed's list, in order of
    precedence; an empty list detaches them all. Attaching a connector the feed does not use yet needs
    ``may_attach`` (what creating a proxy feed needs: manage-feed system-wide); detaching and
    reordering do not. Every worker's channel follows at once: its merged repodata is keyed by the
    connectors and settings it reads from the database on each request. ``sca``: the vulnerability and
    license policies; a change bumps the SCA revision in the same transaction, so that every worker's
    filtered repodata and download checks follow within about a second."""
    _check_settings(description=description, connectors=connectors, upstream_removals=upstream_removals)
    if sca is not None:
        sca.check()
    sca_changed = False
    with services.db.write() as session:
        feed = feed_store.get_feed(session=session, name=name)
        if connectors is not None:
            current = [c.name for c in connector_store.connectors_of_feed(session=session, feed_id=feed.id)]
            added = [c for c in connectors if c not in current]
            if added and not may_attach:
                raise PermissionDenied(
                    f"attaching connectors ({', '.join(added)}) needs the 'manage-feed' permission system-wide, "
                    "as creating a proxy feed does; detaching and reordering need it on the feed only"
                )
            connector_ids = [connector_store.get_connector(session=session, name=c).id for c in connectors]
            connector_store.set_feed_connectors(session=session, feed_id=feed.id, connector_ids=connector_ids)
        feed_store.update_feed(session=session, feed=feed, description=description, upstream_removals=upstream_removals)
        if sca is not None and not sca.empty:
            changed = sca.applied_to(FeedPolicy.of(feed))
            if changed != FeedPolicy.of(feed):
                feed.vulnerability_policy = changed.vulnerability_policy
                feed.min_severity = changed.min_severity
                feed.hide_blocked = changed.hide_blocked
                feed.license_policy = changed.license_policy
                session.flush()
                sca_state.bump_revision(session=session)
                sca_changed = True
    if sca_changed:
        vulnerabilities.note_change(services)  # this process follows at once
    services.lookups.forget_feed(name)  # downloads here see the change at once (other workers within a second)
    return get_feed(services, name=name)


def delete_feed(services: Services, *, name: str) -> None:
    with services.db.write() as session:
        feed_id = feed_store.get_feed(session=session, name=name).id
        digests = feed_store.delete_feed(session=session, name=name)
    services.repodata.forget_feed(feed_id)
    services.lookups.forget_feed(name)
    for digest in set(digests):
        delete_if_unused(services, digest)
