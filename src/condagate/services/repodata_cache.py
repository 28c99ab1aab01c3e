"""Encoded repodata per feed and subdir: local records merged over the feed's connectors' records.

Every request asks the database for the subdir's local (revision, generation) — one primary-key
read — and the feed's connectors. When the local revision moved, only rows with a newer revision are
loaded; when an upstream's records changed, the merge is redone once. The subdir's JSON is assembled
from cached record bytes (no record is re-parsed) and compressed once per change. Shards are built
when first asked for, re-encoding only the package names whose records changed. bz2 is slow and
rarely asked for: it is built on first request and kept until the next change.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from condagate.conda.channeldata import PackageFileSummary, encode_channeldata
from condagate.conda.records import decode_record
from condagate.conda.repodata import compress_bz2, compress_zstd, encode_repodata
from condagate.conda.shards import encode_shard, encode_shard_index
from condagate.store import connectors as connector_store
from condagate.store import packages as package_store
from condagate.store.db import Database
from condagate.store.packages import SubdirVersion
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_cache import Pending, UpstreamRepodataCache, UpstreamSnapshot, UpstreamView

# Superseded shards stay fetchable for a while: a client may hold an older index.
_RETIRED_SHARDS_KEPT = 4096

ShardEntry = tuple[tuple[tuple[str, bytes], ...], bytes, bytes]  # (records key, digest, body)
UpstreamVersion = tuple[tuple[int, int], ...]  # (connector id, generation) per connector, in feed order


@dataclass(frozen=True)
class Encoded:
    body: bytes
    etag: str
    last_modified: datetime


def _etag(data: bytes, variant: str) -> str:
    return f'"{hashlib.sha256(data).hexdigest()[:40]}-{variant}"'


@dataclass
class SubdirSnapshot:
    """One feed subdir: its records and their encodings; replaced as a whole, read without locks."""

    subdir: str
    version: SubdirVersion
    upstream_version: UpstreamVersion
    local_records: dict[str, bytes]
    local_names: dict[str, str]
    records: dict[str, bytes]
    names: dict[str, str]
    built_at: datetime
    json: Encoded
    zst: Encoded
    stale: list[tuple[int, str]] = field(default_factory=list)  # (connector id, last error)
    keep_cached: bool = True  # the feed's upstream_removals when built: a change of it rebuilds
    missing: list[int] = field(default_factory=list)  # connectors with no data at all (left out)
    # Cached files the upstream no longer lists, kept in the feed: file name -> (connector id, since when)
    sticky: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)
    _previous_shards: dict[str, ShardEntry] | None = None
    _shards: dict[str, ShardEntry] | None = None
    _shard_index: Encoded | None = None
    _shards_by_digest: dict[str, bytes] | None = None
    _bz2: Encoded | None = None
    _by_name: dict[str, list[str]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # bz2 of a big subdir takes many seconds: it must not hold up shard or listing requests.
    _bz2_lock: threading.Lock = field(default_factory=threading.Lock)

    def by_name(self) -> dict[str, list[str]]:
        """Package name -> its file names (for listings), built on first use."""
        with self._lock:
            if self._by_name is None:
                grouped: dict[str, list[str]] = {}
                for filename, name in self.names.items():
                    grouped.setdefault(name, []).append(filename)
                self._by_name = grouped
            return self._by_name

    def bz2(self) -> Encoded:
        with self._bz2_lock:
            if self._bz2 is None:
                body = compress_bz2(self.json.body)
                self._bz2 = Encoded(body, self.json.etag.replace("-json", "-bz2"), self.built_at)
            return self._bz2

    def record(self, filename: str) -> dict[str, Any] | None:
        raw = self.records.get(filename)
        return None if raw is None else decode_record(raw)

    def is_local(self, filename: str) -> bool:
        return filename in self.local_records

    def shards(self) -> dict[str, ShardEntry]:
        with self._lock:
            if self._shards is None:
                self._shards = self._build_shards()
                self._shards_by_digest = {entry[1].hex(): entry[2] for entry in self._shards.values()}
                self._shard_index = None
            return self._shards

    def shard_by_digest(self, digest_hex: str) -> bytes | None:
        self.shards()
        assert self._shards_by_digest is not None
        return self._shards_by_digest.get(digest_hex)

    def shard_index(self) -> Encoded:
        shards = self.shards()
        with self._lock:
            if self._shard_index is None:
                index = encode_shard_index(
                    self.subdir, {name: entry[1] for name, entry in shards.items()}, self.built_at
                )
                self._shard_index = Encoded(index, _etag(index, "shards"), self.built_at)
            return self._shard_index

    def _build_shards(self) -> dict[str, ShardEntry]:
        previous = self._previous_shards or {}
        self._previous_shards = None
        by_name: dict[str, list[str]] = {}
        for filename, name in self.names.items():
            by_name.setdefault(name, []).append(filename)
        shards: dict[str, ShardEntry] = {}
        for name, filenames in by_name.items():
            # The key holds references to the record bytes, not copies; equal keys mean an equal shard.
            key = tuple((fn, self.records[fn]) for fn in sorted(filenames))
            old = previous.get(name)
            if old is not None and old[0] == key:
                shards[name] = old
            else:
                digest, body = encode_shard((fn, decode_record(raw)) for fn, raw in key)
                shards[name] = (key, digest, body)
        return shards


class RepodataCache:
    def __init__(self, db: Database, upstream: UpstreamRepodataCache | None = None) -> None:
        self._db = db
        self._upstream = upstream
        self._snapshots: dict[tuple[int, str], SubdirSnapshot] = {}
        self._locks: dict[tuple[int, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._retired_shards: OrderedDict[tuple[int, str, str], bytes] = OrderedDict()
        self._channeldata: dict[int, tuple[tuple[tuple[str, int, int], ...], Encoded]] = {}

    def _lock(self, key: tuple[int, str]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def upstream_views(
        self, connectors: list[ConnectorConfig], subdir: str, refresh: bool = True
    ) -> list[tuple[ConnectorConfig, UpstreamView]]:
        """What each of the connectors serving ``subdir`` has now; never waits on an upstream."""
        if self._upstream is None:
            return []
        return [
            (connector, self._upstream.view(connector, subdir, refresh=refresh))
            for connector in connectors
            if connector.serves_subdir(subdir)
        ]

    def snapshot(self, **options: Any) -> SubdirSnapshot:
        """``snapshot_and_pending`` without the fetches (for callers that do not wait for any)."""
        return self.snapshot_and_pending(**options)[0]

    def snapshot_and_pending(
        self,
        *,
        feed_id: int,
        subdir: str,
        connectors: list[ConnectorConfig] | None = None,
        version: SubdirVersion | None = None,
        wait: bool = True,
        refresh: bool = True,
        keep_cached: bool = True,
    ) -> tuple[SubdirSnapshot, list[Pending]]:
        """The subdir's current snapshot, brought up to date with the database and with what the
        upstreams have *now* (a connector without data is left out and named in ``stale``), and the
        upstream fetches a request may wait for before asking again with ``refresh=False``.
        ``version`` is the subdir's local revision when the caller has just read it. With ``wait=False``
        a previous snapshot is returned as it is, without rebuilding (package downloads: the caller
        asks again with waiting when the file is not in it)."""
        key = (feed_id, subdir)
        if version is None:
            with self._db.read() as session:
                version = package_store.subdir_version(session=session, feed_id=feed_id, subdir=subdir)
        views = self.upstream_views(connectors or [], subdir, refresh)
        pending = [view.pending for _, view in views if view.pending is not None]
        upstreams = [view.snapshot for _, view in views if view.snapshot is not None]
        upstream_version = tuple((u.connector_id, u.generation) for u in upstreams)
        stale = [
            (connector.id, view.error or ("still fetching" if view.pending else "no data"))
            for connector, view in views
            if view.snapshot is None or view.snapshot.stale
        ]
        missing = [connector.id for connector, view in views if view.snapshot is None]
        snapshot = self._current(key, feed_id, subdir, version, upstreams, upstream_version, stale, wait, keep_cached)
        snapshot.missing = missing
        return snapshot, pending

    def _current(
        self,
        key: tuple[int, str],
        feed_id: int,
        subdir: str,
        version: SubdirVersion,
        upstreams: list[UpstreamSnapshot],
        upstream_version: UpstreamVersion,
        stale: list[tuple[int, str]],
        wait: bool,
        keep_cached: bool = True,
    ) -> SubdirSnapshot:
        current = self._snapshots.get(key)
        # The feed's connectors (ids in order) and settings come from the database on every request:
        # a change made by any worker process shows here as a different key.
        if current is not None and (current.version, current.upstream_version, current.keep_cached) == (
            version,
            upstream_version,
            keep_cached,
        ):
            current.stale = stale
            return current
        if current is not None and not wait:
            return current  # a download: the previous snapshot serves every file it lists
        lock = self._lock(key)
        if current is not None and current.version == version and current.keep_cached == keep_cached:
            if not lock.acquire(blocking=False):
                return current  # an upstream merge is being built: the previous one is still correct to serve
        else:
            lock.acquire()
        try:
            current = self._snapshots.get(key)
            if current is not None and (current.version, current.upstream_version, current.keep_cached) == (
                version,
                upstream_version,
                keep_cached,
            ):
                return current
            updated = self._rebuild(feed_id, subdir, current, upstreams, keep_cached)
            updated.stale = stale
            self._snapshots[key] = updated
            return updated
        finally:
            lock.release()

    def _rebuild(
        self,
        feed_id: int,
        subdir: str,
        current: SubdirSnapshot | None,
        upstreams: list[UpstreamSnapshot],
        keep_cached: bool = True,
    ) -> SubdirSnapshot:
        with self._db.read() as session:
            version = package_store.subdir_version(session=session, feed_id=feed_id, subdir=subdir)
            incremental = current is not None and current.version.generation == version.generation
            since = current.version.revision if incremental and current is not None else -1
            rows = package_store.records_since(session=session, feed_id=feed_id, subdir=subdir, revision=since)
        if incremental and current is not None:
            local_records, local_names = dict(current.local_records), dict(current.local_names)
        else:
            local_records, local_names = {}, {}
        newest = version.revision
        for filename, name, record, revision in rows:
            local_records[filename] = record.encode()
            local_names[filename] = name
            newest = max(newest, revision)
        upstream_version = tuple((u.connector_id, u.generation) for u in upstreams)
        sticky: dict[str, tuple[int, datetime | None]] = {}
        if (
            upstreams
            and incremental
            and current is not None
            and current.upstream_version == upstream_version
            and current.keep_cached == keep_cached
        ):
            # Only local records were added: lay them over the previous merge instead of redoing it.
            records, names = dict(current.records), dict(current.names)
            sticky = current.sticky
            for filename, name, _record, _revision in rows:
                records[filename] = local_records[filename]
                names[filename] = name
        elif upstreams:
            records = {}
            names = {}
            for upstream in reversed(upstreams):  # the first connector wins a file name over later ones
                for filename, (name, raw) in upstream.records.items():
                    records[filename] = raw
                    names[filename] = name
            if keep_cached:
                sticky = self._sticky(subdir, upstreams, records, names)
            records.update(local_records)  # and the feed's own packages win over every connector
            names.update(local_names)
        else:
            records, names = local_records, local_names
        previous_shards = None
        if current is not None:
            previous_shards = current._shards if current._shards is not None else current._previous_shards
            if current._shards is not None:
                self._retire(feed_id, subdir, current._shards)
        built_at = (version.updated_at or datetime.now(UTC)).replace(microsecond=0)
        # SQLite hands back naive datetimes (written in UTC); PostgreSQL aware ones in its own zone.
        built_at = built_at.replace(tzinfo=UTC) if built_at.tzinfo is None else built_at.astimezone(UTC)
        if upstreams:
            built_at = max(built_at, datetime.now(UTC).replace(microsecond=0))
        if current is not None and built_at <= current.built_at:
            # Last-Modified has whole seconds: two changes in one second must still give a newer date,
            # or a client sending only If-Modified-Since would be told the old repodata is current.
            built_at = current.built_at + timedelta(seconds=1)
        body = encode_repodata(subdir, records)
        json_etag = _etag(body, "json")
        return SubdirSnapshot(
            subdir=subdir,
            version=SubdirVersion(newest, version.generation, version.updated_at),
            upstream_version=upstream_version,
            local_records=local_records,
            local_names=local_names,
            records=records,
            names=names,
            built_at=built_at,
            json=Encoded(body, json_etag, built_at),
            zst=Encoded(compress_zstd(body), json_etag.replace("-json", "-zst"), built_at),
            sticky=sticky,
            keep_cached=keep_cached,
            _previous_shards=previous_shards,
        )

    def _sticky(
        self, subdir: str, upstreams: list[UpstreamSnapshot], records: dict[str, bytes], names: dict[str, str]
    ) -> dict[str, tuple[int, datetime | None]]:
        """Files this server cached and the upstream no longer lists stay installable: their records
        (as listed when cached) join the merge, after every file the upstreams still list."""
        order = {u.connector_id: position for position, u in enumerate(upstreams)}
        with self._db.read() as session:
            rows = connector_store.sticky_records(session=session, connector_ids=list(order), subdir=subdir)
        sticky: dict[str, tuple[int, datetime | None]] = {}
        for row in sorted(rows, key=lambda r: order[r.connector_id]):
            if row.filename in records:
                continue
            records[row.filename] = row.record
            names[row.filename] = row.name
            sticky[row.filename] = (row.connector_id, row.removed_upstream_at)
        return sticky

    def _retire(self, feed_id: int, subdir: str, shards: dict[str, ShardEntry]) -> None:
        for entry in shards.values():
            self._retired_shards[(feed_id, subdir, entry[1].hex())] = entry[2]
        while len(self._retired_shards) > _RETIRED_SHARDS_KEPT:
            self._retired_shards.popitem(last=False)

    def shard(self, feed_id: int, snapshot: SubdirSnapshot, digest_hex: str) -> bytes | None:
        return snapshot.shard_by_digest(digest_hex) or self._retired_shards.get((feed_id, snapshot.subdir, digest_hex))

    def channeldata(self, *, feed_id: int) -> Encoded:
        with self._db.read() as session:
            state = package_store.feed_versions(session=session, feed_id=feed_id)
            cached = self._channeldata.get(feed_id)
            if cached is not None and cached[0] == state:
                return cached[1]
            files = package_store.all_files(session=session, feed_id=feed_id)
            summaries = [
                PackageFileSummary(
                    name=row.name,
                    version=row.version,
                    subdir=row.subdir,
                    timestamp=int(decode_record(row.record.encode()).get("timestamp", 0)),
                    about=decode_record(row.about.encode()),
                )
                for row in files
            ]
        body = encode_channeldata(summaries, {row.subdir for row in files})
        encoded = Encoded(body, _etag(body, "channeldata"), datetime.now(UTC).replace(microsecond=0))
        self._channeldata[feed_id] = (state, encoded)
        return encoded

    def forget_feed(self, feed_id: int) -> None:
        for key in [key for key in self._snapshots if key[0] == feed_id]:
            del self._snapshots[key]
        for shard_key in [key for key in self._retired_shards if key[0] == feed_id]:
            del self._retired_shards[shard_key]
        self._channeldata.pop(feed_id, None)
