"""What the UI and the REST API show of a feed's packages: pages of names, one package's files.

Listings read the same in-memory subdir snapshots the channel serves, so a proxy feed lists its
upstreams' packages and a hosted feed its own, through one path; the database adds what repodata
lacks (about.json text of local packages, cache state, download counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from condagate.conda.versions import sort_versions_descending
from condagate.errors import CondagateError, PackageNotFound
from condagate.services.channel import FeedRef, resolve_feed
from condagate.services.context import Services
from condagate.services.subdir_snapshot import SubdirSnapshot
from condagate.store import connectors as connector_store
from condagate.store import downloads as download_store
from condagate.store import packages as package_store
from condagate.upstream.repodata_cache import Pending

# What a proxy feed lists before any client asked for other subdirs.
DEFAULT_BROWSE_SUBDIRS = ("noarch", "linux-64")


@dataclass(frozen=True)
class PackageListItem:
    name: str
    latest_version: str
    summary: str
    license: str
    subdirs: list[str]
    files: int
    cached_files: int = 0
    local: bool = True


@dataclass(frozen=True)
class PackagePage:
    items: list[PackageListItem]
    total: int
    offset: int
    limit: int
    subdirs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileDetail:
    filename: str
    subdir: str
    version: str
    build: str
    build_number: int
    size: int
    sha256: str
    md5: str
    depends: list[str]
    constrains: list[str]
    license: str
    timestamp: int
    uploaded_at: str
    downloads: int
    origin: str = "local"  # "local", or the connector it comes through
    cached: bool = True
    removed_upstream_at: str = ""  # a cached file the upstream no longer lists (kept by the feed)


@dataclass(frozen=True)
class VersionDetail:
    version: str
    files: list[FileDetail] = field(default_factory=list)


@dataclass(frozen=True)
class PackageDetail:
    feed: str
    name: str
    latest_version: str
    about: dict[str, str]
    versions: list[VersionDetail]
    downloads: int
    downloads_per_day: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Browse:
    feed: FeedRef
    snapshots: list[SubdirSnapshot]
    warnings: list[str]


def _removed_at(snapshot: SubdirSnapshot, filename: str) -> str:
    kept = snapshot.sticky.get(filename)
    if kept is None:
        return ""
    return kept[1].isoformat() if kept[1] is not None else "unknown"


def _browse_subdirs(services: Services, feed: FeedRef) -> list[str]:
    with services.db.read() as session:
        subdirs = set(package_store.populated_subdirs(session=session, feed_id=feed.id))
    for connector in feed.connectors:
        subdirs.update(connector.subdirs or DEFAULT_BROWSE_SUBDIRS)
        subdirs.update(services.upstream.cached_subdirs(connector.id))
    return sorted(subdirs)


def upstream_fetches(services: Services, *, feed: str) -> list[Pending]:
    """The upstream fetches that browsing the feed would wait for (started here): the web layer
    waits for them without holding a thread, then lists what there is."""
    feed_ref = resolve_feed(services, feed)
    pending = []
    for subdir in _browse_subdirs(services, feed_ref):
        for _, view in services.repodata.upstream_views(feed_ref.connectors, subdir):
            if view.pending is not None:
                pending.append(view.pending)
    return pending


def _browse(services: Services, feed_name: str) -> _Browse:
    feed = resolve_feed(services, feed_name)
    subdirs = _browse_subdirs(services, feed)
    snapshots, warnings = [], []
    for subdir in sorted(subdirs):
        try:
            snapshots.append(
                services.repodata.snapshot(
                    feed_id=feed.id, subdir=subdir, connectors=feed.connectors, keep_cached=feed.keep_cached
                )
            )
        except CondagateError as exc:
            warnings.append(f"{subdir}: {exc.message}")
    return _Browse(feed, snapshots, warnings)


def _records_of(browse: _Browse, name: str) -> list[tuple[SubdirSnapshot, str, dict[str, Any]]]:
    found = []
    for snapshot in browse.snapshots:
        for filename in snapshot.by_name().get(name, []):
            record = snapshot.record(filename)
            if record is not None:
                found.append((snapshot, filename, record))
    return found


def list_packages(services: Services, *, feed: str, search: str = "", offset: int = 0, limit: int = 50) -> PackagePage:
    browse = _browse(services, feed)
    needle = search.strip().lower()
    names = sorted({name for snapshot in browse.snapshots for name in snapshot.by_name() if needle in name})
    page_names = names[offset : offset + limit]
    with services.db.read() as session:
        local_rows = package_store.files_of_names(session=session, feed_id=browse.feed.id, names=page_names)
        upstream_files = [
            filename
            for name in page_names
            for snapshot in browse.snapshots
            for filename in snapshot.by_name().get(name, [])
            if not snapshot.is_local(filename)
        ]
        cached = connector_store.cached_filenames(
            session=session, connector_ids=[c.id for c in browse.feed.connectors], filenames=upstream_files
        )
    about_by_name: dict[str, dict[str, str]] = {}
    for row in local_rows:
        about_by_name.setdefault(row.name, json.loads(row.about or "{}"))
    items = []
    for name in page_names:
        records = _records_of(browse, name)
        latest = sort_versions_descending(record["version"] for _, _, record in records)[0]
        newest = next(record for _, _, record in records if record["version"] == latest)
        upstream_count = sum(1 for snapshot, fn, _ in records if not snapshot.is_local(fn))
        items.append(
            PackageListItem(
                name=name,
                latest_version=latest,
                summary=about_by_name.get(name, {}).get("summary", ""),
                license=str(newest.get("license") or about_by_name.get(name, {}).get("license", "")),
                subdirs=sorted({snapshot.subdir for snapshot, _, _ in records}),
                files=len(records),
                cached_files=sum(1 for snapshot, fn, _ in records if (snapshot.subdir, fn) in cached)
                + (len(records) - upstream_count),
                local=upstream_count == 0,
            )
        )
    return PackagePage(items, len(names), offset, limit, [s.subdir for s in browse.snapshots], browse.warnings)


def package_detail(services: Services, *, feed: str, name: str) -> PackageDetail:
    browse = _browse(services, feed)
    records = _records_of(browse, name)
    if not records:
        raise PackageNotFound(f"package {name!r} is not in feed {feed!r}")
    with services.db.read() as session:
        local_rows = {
            row.filename: row
            for row in package_store.files_of_names(session=session, feed_id=browse.feed.id, names=[name])
        }
        counts = download_store.downloads_by_file(
            session=session, feed_id=browse.feed.id, filenames=[filename for _, filename, _ in records]
        )
        cached = connector_store.cached_filenames(
            session=session,
            connector_ids=[c.id for c in browse.feed.connectors],
            filenames=[filename for _, filename, _ in records],
        )
        since = _first_day_of_last(30)
        per_day = download_store.per_day(session=session, feed_id=browse.feed.id, since=since, name=name)
    ordered = sort_versions_descending(record["version"] for _, _, record in records)
    versions = {version: VersionDetail(version) for version in ordered}
    for snapshot, filename, record in records:
        row = local_rows.get(filename) if snapshot.is_local(filename) else None
        origin = "local" if row is not None else _origin(services, browse.feed, snapshot, filename)
        versions[str(record["version"])].files.append(
            FileDetail(
                filename=filename,
                subdir=snapshot.subdir,
                version=str(record["version"]),
                build=str(record.get("build", "")),
                build_number=int(record.get("build_number", 0)),
                size=int(record.get("size", 0)),
                sha256=str(record.get("sha256", "")),
                md5=str(record.get("md5", "")),
                depends=list(record.get("depends", [])),
                constrains=list(record.get("constrains", [])),
                license=str(record.get("license", "")),
                timestamp=int(record.get("timestamp", 0)),
                uploaded_at=row.uploaded_at.isoformat() if row is not None else "",
                downloads=counts.get((snapshot.subdir, filename), 0),
                origin=origin,
                cached=row is not None or (snapshot.subdir, filename) in cached,
                removed_upstream_at=_removed_at(snapshot, filename),
            )
        )
    for detail in versions.values():
        detail.files.sort(key=lambda f: (f.subdir, -f.build_number, f.filename))
    newest_local = next((row for row in local_rows.values()), None)
    return PackageDetail(
        feed=feed,
        name=name,
        latest_version=ordered[0],
        about=json.loads(newest_local.about) if newest_local is not None else {},
        versions=list(versions.values()),
        downloads=sum(counts.values()),
        downloads_per_day=[(day.isoformat(), count) for day, count in per_day],
    )


def _origin(services: Services, feed: FeedRef, snapshot: SubdirSnapshot, filename: str) -> str:
    kept = snapshot.sticky.get(filename)
    if kept is not None:
        return feed.connector_name(kept[0])
    for connector in feed.connectors:
        upstream = services.upstream.peek(connector.id, snapshot.subdir)
        if upstream is not None and filename in upstream.records:
            return connector.name
    return "upstream"


def _first_day_of_last(days: int) -> date:
    """The first day of the last ``days`` days, today included."""
    return (datetime.now(UTC) - timedelta(days=days - 1)).date()


def downloads_of_packages(services: Services, *, feed: str, names: list[str]) -> dict[str, int]:
    """Total downloads of each named package, over all its files (the feed page's column)."""
    feed_ref = resolve_feed(services, feed)
    with services.db.read() as session:
        counts = download_store.downloads_by_name(session=session, feed_id=feed_ref.id, names=names)
    return {name: counts.get(name, 0) for name in names}


@dataclass(frozen=True)
class DownloadStatistics:
    days: int
    total: int
    top_packages: list[tuple[str, int]]
    per_day: list[tuple[str, int]]
    top_downloaders: list[tuple[str, int]] = field(default_factory=list)  # user, key or anonymous


def download_statistics(services: Services, *, feed: str, days: int = 30, top: int = 20) -> DownloadStatistics:
    feed_ref = resolve_feed(services, feed)
    since = _first_day_of_last(days)
    with services.db.read() as session:
        top_packages = download_store.top_packages(session=session, feed_id=feed_ref.id, since=since, limit=top)
        per_day = download_store.per_day(session=session, feed_id=feed_ref.id, since=since)
        downloaders = download_store.top_downloaders(session=session, feed_id=feed_ref.id, since=since, limit=top)
    return DownloadStatistics(
        days,
        sum(c for _, c in per_day),
        top_packages,
        [(day.isoformat(), count) for day, count in per_day],
        downloaders,
    )


@dataclass(frozen=True)
class UpstreamState:
    """How one of a feed's connectors stands for one subdir, as this process last saw it."""

    connector: str
    subdir: str
    last_success_at: datetime | None
    error: str = ""
    error_at: datetime | None = None

    @property
    def stale(self) -> bool:
        return bool(self.error)


def upstream_states(services: Services, *, feed: str, subdirs: list[str]) -> list[UpstreamState]:
    """The state of each of the feed's connectors in the given subdirs, from memory: no upstream request.

    A state with an ``error`` is what ``FeedSubdir.stale_notice`` reports: the last check failed and
    the last good repodata is being served. Subdirs never fetched in this process are left out.
    """
    feed_ref = resolve_feed(services, feed)

    def moment(seconds: float | None) -> datetime | None:
        return datetime.fromtimestamp(seconds, UTC) if seconds else None

    states = []
    for subdir in subdirs:
        for connector in feed_ref.connectors:
            if not connector.serves_subdir(subdir):
                continue
            snapshot = services.upstream.peek(connector.id, subdir)
            if snapshot is not None:
                states.append(
                    UpstreamState(
                        connector.name, subdir, moment(snapshot.checked_at), snapshot.error, moment(snapshot.error_at)
                    )
                )
                continue
            breaker = services.upstream.breaker(connector.id, subdir)
            if breaker is not None:  # never fetched successfully: the feed lists it without this connector
                states.append(UpstreamState(connector.name, subdir, None, breaker.error, moment(breaker.failing_since)))
    return states
