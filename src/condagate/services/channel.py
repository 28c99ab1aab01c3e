"""Reading a feed as a conda channel: resolving feeds, snapshots and where a package file comes from.

The feed's SCA settings (``services.policy.FeedPolicy``) travel with what is resolved here, read in the same session
as the feed, so that ``services.sca_filter`` can filter the served repodata and ``services.sca`` check downloads without
asking the database again.

A proxy feed's subdir also carries the terms under which the fast lane (``web.fast_lane``) may serve it again
(``UpstreamTerms``): as long as the route would hand back the same bytes and headers without starting a fetch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.orm import Session

from condagate.conda.subdirs import require_known_subdir
from condagate.errors import PackageBroken, PackageNotFound, UpstreamTimeout, UpstreamUnavailable
from condagate.services.connectors import config_of
from condagate.services.context import Services
from condagate.services.policy import FeedPolicy
from condagate.services.subdir_snapshot import SubdirSnapshot
from condagate.store import connectors as connector_store
from condagate.store import feeds as feed_store
from condagate.store import packages as package_store
from condagate.store.blobs import StoredBlob
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_cache import Pending, UpstreamSnapshot


@dataclass(frozen=True)
class FeedRef:
    id: int
    name: str
    connectors: list[ConnectorConfig] = field(default_factory=list)
    keep_cached: bool = True  # cached files stay listed after their upstream removes them
    policy: FeedPolicy | None = None  # None: the feed's policies are off

    @property
    def sca(self) -> FeedPolicy:
        return self.policy or FeedPolicy(self.id, self.name)

    def connector_name(self, connector_id: int) -> str:
        return next((c.name for c in self.connectors if c.id == connector_id), str(connector_id))


def resolve_feed(services: Services, name: str) -> FeedRef:
    with services.db.read() as session:
        return _feed_ref(session, name)


def _feed_ref(session: Session, name: str) -> FeedRef:
    feed = feed_store.get_feed(session=session, name=name)
    connectors = [config_of(row) for row in connector_store.connectors_of_feed(session=session, feed_id=feed.id)]
    return FeedRef(feed.id, feed.name, connectors, feed.upstream_removals != "follow-upstream", FeedPolicy.of(feed))


@dataclass(frozen=True)
class UpstreamTerms:
    """While a proxy feed's subdir, as resolved, is still what the route would answer (together with the
    change signal, which covers everything read from the database): each upstream snapshot merged into it
    is still the one the upstream cache holds (a refresh, a 304 included, or a failure replaces the
    object), and none is due for revalidation yet (a due one makes the route start a fetch)."""

    upstreams: tuple[tuple[int, UpstreamSnapshot], ...]  # (connector id, the snapshot merged), per connector
    valid_until: float  # time.time(): the first connector's check is due after this

    def hold(self, services: Services, subdir: str) -> bool:
        if time.time() >= self.valid_until:
            return False
        peek = services.upstream.peek
        return all(peek(connector_id, subdir) is upstream for connector_id, upstream in self.upstreams)


@dataclass(frozen=True)
class FeedSubdir:
    feed: FeedRef
    snapshot: SubdirSnapshot
    pending: list[Pending] = field(default_factory=list)  # upstream fetches worth waiting for, then ask again
    # A proxy feed's subdir the fast lane may serve (see ``upstream_terms``); None: the routes answer it.
    upstream_terms: UpstreamTerms | None = None

    @property
    def stale_notice(self) -> str:
        """What the ``X-Condagate-Stale`` header says to administrators: which upstreams failed, and why."""
        return "; ".join(f"{self.feed.connector_name(cid)}: {error}" for cid, error in self.snapshot.stale)

    @property
    def public_stale_notice(self) -> str:
        """The same for everyone else: which upstreams, not what they answered (a fixed phrase)."""
        missing = set(self.snapshot.missing)
        return "; ".join(
            f"{self.feed.connector_name(cid)}: {'no data' if cid in missing else 'serving the last good copy'}"
            for cid, _ in self.snapshot.stale
        )

    def require_data(self) -> None:
        """Only a subdir with nothing at all to serve — no own package, no connector with data — fails,
        and only because its upstreams failed (an upstream that lists nothing is an empty subdir)."""
        snapshot = self.snapshot
        if snapshot.records or not snapshot.missing or snapshot.local_records:
            return
        names = ", ".join(repr(self.feed.connector_name(cid)) for cid in snapshot.missing)
        errors = dict(snapshot.stale)
        # A fixed phrase: what the upstream answered is for administrators (the connector's page).
        if all(errors.get(cid) == "still fetching" for cid in snapshot.missing):
            message = f"connector {names} has not answered yet and nothing of {snapshot.subdir} is cached"
            raise UpstreamTimeout(message, public=message)
        message = f"connector {names} is unreachable and nothing of {snapshot.subdir} is cached"
        raise UpstreamUnavailable(message, public=message)


def feed_subdir(services: Services, feed_name: str, subdir: str, wait: bool = True, refresh: bool = True) -> FeedSubdir:
    """Never waits on an upstream: what is there now, plus the fetches a request may wait for
    (asynchronously, see ``web.channel``) before asking again with ``refresh=False``."""
    require_known_subdir(subdir)
    mark = services.changes.value()  # before the read: a commit after it moves the signal
    with services.db.read() as session:  # one session for the feed and the subdir's revision
        feed = _feed_ref(session, feed_name)
        version = package_store.subdir_version(session=session, feed_id=feed.id, subdir=subdir)
    snapshot, pending = services.repodata.snapshot_and_pending(
        feed_id=feed.id,
        subdir=subdir,
        connectors=feed.connectors,
        version=version,
        wait=wait,
        refresh=refresh,
        keep_cached=feed.keep_cached,
    )
    terms = upstream_terms(services, feed, snapshot) if feed.connectors and wait and not pending else None
    located = FeedSubdir(feed, snapshot, pending, terms)
    if not pending:
        services.lookups.remember_subdir(feed_name, subdir, located)
        if wait:  # (without waiting, an older snapshot may be handed back as it is)
            services.lookups.remember_ready(feed_name, subdir, located, mark)
    return located


def upstream_terms(services: Services, feed: FeedRef, snapshot: SubdirSnapshot) -> UpstreamTerms | None:
    """The terms under which ``snapshot`` stays the route's answer for the feed's subdir without a commit,
    or None when it may not be served again without the route (it would start a fetch, wait for one, or
    name a stale upstream). Called right after ``snapshot_and_pending`` built it from the upstream views."""
    if snapshot.stale:  # the route adds X-Condagate-Stale (a connector failed, or has no data yet)
        return None
    merged = dict(snapshot.upstream_version)  # connector id -> generation merged into the snapshot
    upstreams: list[tuple[int, UpstreamSnapshot]] = []
    valid_until = math.inf
    for connector in feed.connectors:
        if not connector.serves_subdir(snapshot.subdir):
            continue  # the route does not ask this connector for this subdir either
        if connector.cache_minutes <= 0:
            return None  # the route revalidates on every request
        upstream = services.upstream.peek(connector.id, snapshot.subdir)
        if upstream is None or upstream.stale or merged.get(connector.id) != upstream.generation:
            # Changed since the views were taken, or the merge being built was not waited for: the
            # snapshot is not (or no longer) the merge of what the cache holds.
            return None
        upstreams.append((connector.id, upstream))
        valid_until = min(valid_until, upstream.checked_at + connector.cache_minutes * 60)
    if len(upstreams) != len(merged):
        return None
    return UpstreamTerms(tuple(upstreams), valid_until)


def subdir_snapshot(services: Services, feed_name: str, subdir: str) -> SubdirSnapshot:
    return feed_subdir(services, feed_name, subdir).snapshot


@dataclass(frozen=True)
class PackageBlob:
    """A file the server has: a feed's own package, or an upstream package already cached."""

    feed_id: int
    subdir: str
    filename: str
    sha256: str
    stored: StoredBlob  # its size and modification time in the blob store, when located
    replaceable: bool = False  # a feed's own file (upload --force may replace it), not an upstream one
    # What the download check needs (set when located through a feed): its SCA policy, the record's bytes.
    policy: FeedPolicy | None = None
    record: bytes | None = None


@dataclass(frozen=True)
class UpstreamPackage:
    """A file listed by a connector but not cached yet: it has to come from the upstream."""

    feed_id: int
    connector: ConnectorConfig
    subdir: str
    filename: str
    record: dict[str, Any]
    policy: FeedPolicy | None = None


def locate_package(services: Services, feed_name: str, subdir: str, filename: str) -> PackageBlob | UpstreamPackage:
    found: PackageBlob | None = services.lookups.recent_file(feed_name, subdir, filename)
    if found is not None:
        stored = services.blobs.stat(found.sha256)
        if stored is not None:
            return replace(found, stored=stored)
    located = _locate_package(services, feed_name, subdir, filename)
    if isinstance(located, PackageBlob):
        services.lookups.remember_file(feed_name, subdir, filename, located)
    return located


def _locate_package(services: Services, feed_name: str, subdir: str, filename: str) -> PackageBlob | UpstreamPackage:
    recent: FeedSubdir | None = services.lookups.recent_subdir(feed_name, subdir)
    if recent is not None and recent.snapshot.record(filename) is not None:
        try:
            return _locate(services, recent, feed_name, subdir, filename)
        except PackageNotFound:
            pass  # gone since: ask the database
    require_known_subdir(subdir)
    mark = services.changes.value()  # before the read, as in feed_subdir
    with services.db.read() as session:
        feed = _feed_ref(session, feed_name)
        local = package_store.find_file(session=session, feed_id=feed.id, subdir=subdir, filename=filename)
        local_sha256 = local.sha256 if local is not None else None
        local_record = local.record.encode() if local is not None else None
        broken_reason = local.broken_reason if local is not None else None
    if broken_reason is not None:
        raise PackageBroken(
            f"{subdir}/{filename} in feed {feed_name!r} is broken ({broken_reason}) and not served: "
            "an administrator can run 'condagate check' on the server's host, then upload the file again"
        )
    if local_sha256 is not None:  # the feed's own file: its row is the truth, whatever is being rebuilt
        blob = _blob(services, feed.id, subdir, filename, local_sha256, feed_name)
        # What the fast lane needs to serve the next downloads of this file without this read.
        services.lookups.remember_ready_file(feed_name, subdir, filename, feed, local_sha256, mark)
        return replace(blob, policy=feed.policy, record=local_record)
    # An upstream file: a download need not wait for a rebuild of its subdir unless the file is new to it.
    located = feed_subdir(services, feed_name, subdir, wait=False)
    if located.snapshot.record(filename) is None or located.snapshot.is_local(filename):
        located = feed_subdir(services, feed_name, subdir)
    return _locate(services, located, feed_name, subdir, filename)


def _locate(
    services: Services, located: FeedSubdir, feed_name: str, subdir: str, filename: str
) -> PackageBlob | UpstreamPackage:
    feed, snapshot = located.feed, located.snapshot
    raw = snapshot.records.get(filename)
    record = snapshot.record(filename)
    if record is None:
        raise PackageNotFound(f"{subdir}/{filename} is not in feed {feed_name!r}")
    if snapshot.is_local(filename):
        blob = _blob(services, feed.id, subdir, filename, str(record["sha256"]), feed_name)
        return replace(blob, policy=feed.policy, record=raw)
    kept = snapshot.sticky.get(filename)
    if kept is not None:  # removed upstream, kept here: only the cached copy can serve it
        found = cached_blob(services, kept[0], feed.id, subdir, filename, record.get("sha256"))
        if found is None:
            raise PackageNotFound(f"{subdir}/{filename} was removed upstream and its cached copy is gone")
        return replace(found, policy=feed.policy, record=raw)
    connector = _connector_listing(services, feed, subdir, filename)
    cached = cached_blob(services, connector.id, feed.id, subdir, filename, record.get("sha256"))
    if cached is not None:
        return replace(cached, policy=feed.policy, record=raw)
    return UpstreamPackage(feed.id, connector, subdir, filename, record, feed.policy)


def cached_blob(
    services: Services, connector_id: int, feed_id: int, subdir: str, filename: str, expected_sha256: object = None
) -> PackageBlob | None:
    """The cached copy of an upstream file, unless the upstream's record now names other bytes."""
    sha256 = services.lookups.cached_file(connector_id, subdir, filename)
    if sha256 is None:
        with services.db.read() as session:
            row = connector_store.cached_package(
                session=session, connector_id=connector_id, subdir=subdir, filename=filename
            )
        if row is None:
            return None
        sha256 = row.sha256
    if isinstance(expected_sha256, str) and expected_sha256 and expected_sha256.lower() != sha256:
        return None
    stored = services.blobs.stat(sha256)
    if stored is None:
        return None
    services.lookups.remember_cached_file(connector_id, subdir, filename, sha256)
    return PackageBlob(feed_id, subdir, filename, sha256, stored)


def _connector_listing(services: Services, feed: FeedRef, subdir: str, filename: str) -> ConnectorConfig:
    """The first of the feed's connectors whose repodata lists the file (the one the merge took)."""
    for connector in feed.connectors:
        upstream = services.upstream.peek(connector.id, subdir)
        if upstream is not None and filename in upstream.records:
            return connector
    raise PackageNotFound(f"{subdir}/{filename} is no longer listed by the upstreams of feed {feed.name!r}")


def _blob(services: Services, feed_id: int, subdir: str, filename: str, sha256: str, feed_name: str) -> PackageBlob:
    stored = services.blobs.stat(sha256)
    if stored is None:
        raise PackageNotFound(f"{subdir}/{filename} is listed in feed {feed_name!r} but its file is missing")
    return PackageBlob(feed_id, subdir, filename, sha256, stored, replaceable=True)
