"""Encoded repodata per feed and subdir: local records merged over the feed's connectors' records.

Every request asks the database for the subdir's local (revision, generation) — one primary-key
read — and the feed's connectors. When the local revision moved, only rows with a newer revision are
loaded; when an upstream's records changed, the merge is redone once. The subdir's JSON is assembled
from cached record bytes (no record is re-parsed) and compressed once per change (``SubdirSnapshot``).
A feed whose SCA policy hides blocked records serves a ``FilteredSubdir`` of the snapshot instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from condagate.conda.channeldata import PackageFileSummary, encode_channeldata
from condagate.conda.parts_records import PartsRecords
from condagate.conda.records import decode_record
from condagate.conda.repodata import RepodataParts
from condagate.conda.shards import ShardIndexEntries
from condagate.process_memory import return_freed_memory
from condagate.services.filtered_repodata import FilteredSubdir, PreviousFilter, Served
from condagate.services.layered_mapping import overlaid
from condagate.services.shard_files import ShardFiles
from condagate.services.subdir_merge import merge_upstreams
from condagate.services.subdir_snapshot import (
    IN_FILE,
    Encoded,
    ShardEntry,
    SubdirSnapshot,
    UpstreamVersion,
    encode_subdir,
    etag_of,
)
from condagate.store import packages as package_store
from condagate.store.db import Database
from condagate.store.models import PackageFile
from condagate.store.packages import SubdirVersion
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_cache import Pending, UpstreamRepodataCache, UpstreamSnapshot, UpstreamView

# Superseded shards stay fetchable for a while: a client may hold an older index.
_RETIRED_SHARDS_KEPT = 4096


def _regrouped(
    by_name: dict[str, list[str]], names: Mapping[str, str], changes: list[tuple[str, str]]
) -> dict[str, list[str]]:
    """``by_name`` with the (file name, package name) ``changes`` applied; lists it holds are not changed."""
    grouped = dict(by_name)
    for filename, name in changes:
        old = names.get(filename)
        if old == name:
            continue
        if old is not None:
            grouped[old] = [fn for fn in grouped[old] if fn != filename]
            if not grouped[old]:
                del grouped[old]
        grouped[name] = [*grouped.get(name, ()), filename]
    return grouped


class RevisionMemo:
    """Values worth computing once per SCA revision (verdicts, advisory states): all forgotten when the
    revision moves. Lives with the repodata cache, whose filtered views are its main reader."""

    def __init__(self, limit: int = 2_000_000) -> None:
        self._revision: int | None = None
        self._values: dict[Hashable, Any] = {}
        self._limit = limit
        self._newest_seen = -1

    def first_sight(self, revision: int) -> bool:
        """Whether ``revision`` is newer than any this process has seen (it is then seen)."""
        if revision <= self._newest_seen:
            return False
        self._newest_seen = revision
        return True

    def get(self, revision: int, key: Hashable) -> Any | None:
        if revision != self._revision:
            return None
        return self._values.get(key)

    def put(self, revision: int, key: Hashable, value: Any) -> None:
        if revision != self._revision or len(self._values) >= self._limit:
            self._values = {}  # replaced, not cleared: a reader in another thread keeps a whole dict
            self._revision = revision
        self._values[key] = value


class RepodataCache:
    def __init__(
        self, db: Database, upstream: UpstreamRepodataCache | None = None, shard_files: ShardFiles | None = None
    ) -> None:
        self._db = db
        self._upstream = upstream
        self._shard_files = shard_files  # where large subdirs' shard bodies go (None: kept in memory)
        self._snapshots: dict[tuple[int, str], SubdirSnapshot] = {}
        self._locks: dict[tuple[int, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # (feed id, subdir, hex digest) -> bytes, or IN_FILE: the body is in the feed's shard files.
        self._retired_shards: OrderedDict[tuple[int, str, str], bytes] = OrderedDict()
        self._channeldata: dict[int, tuple[Hashable, Encoded]] = {}
        # What each feed subdir serves under a hiding SCA policy.
        self._served: dict[tuple[int, str], PreviousFilter] = {}
        self.verdicts = RevisionMemo()

    def _lock(self, key: tuple[int, str]) -> threading.Lock:  # (feed id, subdir or "served:" + subdir)
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
        snapshot = self._current(key, feed_id, subdir, version, upstreams, upstream_version, stale, wait, keep_cached)
        # What the snapshot served lacks (not what the views have now: a previous snapshot may be served
        # while a newer merge is built), so that no request serves a connector's absence as its listing.
        merged = {connector_id for connector_id, _generation in snapshot.upstream_version}
        snapshot.missing = [connector.id for connector, _view in views if connector.id not in merged]
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
        if (
            current is not None
            and current.version == version
            and current.keep_cached == keep_cached
            and {u.connector_id for u in upstreams} <= {connector_id for connector_id, _ in current.upstream_version}
        ):
            if not lock.acquire(blocking=False):
                return current  # an upstream merge is being built: the previous one is still correct to serve
        else:
            lock.acquire()  # also when a connector's first data is being merged: never serve its absence
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
        new_records: dict[str, bytes] = {}
        new_names: dict[str, str] = {}
        parts: RepodataParts | None = None  # the merge's blocks, when they are a connector's as they are
        newest = version.revision
        for filename, name, record, revision in rows:
            new_records[filename] = record.encode()
            new_names[filename] = name
            newest = max(newest, revision)
        local_records: Mapping[str, bytes]
        local_names: Mapping[str, str]
        if incremental and current is not None:
            # Laid over the previous snapshot's, not copied: it keeps serving what it served.
            local_records = overlaid(current.local_records, new_records)
            local_names = overlaid(current.local_names, new_names)
        else:
            local_records, local_names = new_records, new_names
        upstream_version = tuple((u.connector_id, u.generation) for u in upstreams)
        sticky: dict[str, tuple[int, datetime | None]] = {}
        only_added = False  # the records are ``current``'s plus ``rows``
        if (
            upstreams
            and incremental
            and current is not None
            and current.upstream_version == upstream_version
            and current.keep_cached == keep_cached
        ):
            # Only local records were added: lay them over the previous merge instead of redoing (or
            # copying) it.
            records, names = overlaid(current.records, new_records), overlaid(current.names, new_names)
            sticky = current.sticky
            only_added = True
        elif upstreams:
            records, names, sticky, parts = merge_upstreams(
                self._db, subdir, upstreams, local_records, local_names, keep_cached
            )
        else:
            records, names = local_records, local_names
            only_added = incremental and current is not None and not current.upstream_version
        previous_shards = None
        previous_by_digest: dict[str, bytes] | None = None
        previous_index: ShardIndexEntries | None = None
        changed_names: frozenset[str] | None = None
        by_name: dict[str, list[str]] | None = None
        if current is not None:
            with current._lock:  # the shards may be being built: read their state as one
                built_shards, pending, current_by_name = current._shards, current._changed_names, current._by_name
                previous_shards = built_shards if built_shards is not None else current._previous_shards
                previous_by_digest = (
                    current._shards_by_digest if built_shards is not None else current._previous_by_digest
                )
                previous_index = current._index_entries if built_shards is not None else current._previous_index
            if only_added:
                # The same records as ``current`` plus ``rows``: re-encode only what they touch.
                touched = {name for _filename, name, _record, _revision in rows}
                touched.update(current.names[fn] for fn, _n, _r, _v in rows if fn in current.names)
                if built_shards is not None:
                    changed_names = frozenset(touched)
                elif pending is not None:
                    changed_names = pending | touched
                if current._parts is not None:
                    parts = current._parts.copy()
                    parts.put((filename, records[filename]) for filename, _n, _r, _v in rows)
                if current_by_name is not None:
                    by_name = _regrouped(current_by_name, current.names, [(fn, name) for fn, name, _r, _v in rows])
                if previous_shards is not None:
                    # The shards these names had stay fetchable: a client may hold the older index.
                    self._retire(feed_id, subdir, {n: previous_shards[n] for n in touched if n in previous_shards})
            elif built_shards is not None:
                self._retire(feed_id, subdir, built_shards)
        if parts is None:
            parts = RepodataParts.from_records(records, compress=True)
        built_at = (version.updated_at or datetime.now(UTC)).replace(microsecond=0)
        # SQLite hands back naive datetimes (written in UTC); PostgreSQL aware ones in its own zone.
        built_at = built_at.replace(tzinfo=UTC) if built_at.tzinfo is None else built_at.astimezone(UTC)
        if upstreams:
            built_at = max(built_at, datetime.now(UTC).replace(microsecond=0))
        if current is not None and built_at <= current.built_at:
            # Last-Modified has whole seconds: two changes in one second must still give a newer date,
            # or a client sending only If-Modified-Since would be told the old repodata is current.
            built_at = current.built_at + timedelta(seconds=1)
        json_encoded, zst_encoded = encode_subdir(parts, subdir, built_at)
        large = json_encoded.is_deferred()  # its shards' bodies go to files, as its JSON does
        if large and parts.is_released() and not (isinstance(records, PartsRecords) and records.parts is parts):
            # Read from the compressed blocks: the dicts (and the record bytes only they hold) go.
            dropped = len(records) if isinstance(records, dict) else 0
            records = PartsRecords(parts)
            return_freed_memory(dropped * 512)  # ~0.5 kB of bytes per record
        return SubdirSnapshot(
            subdir=subdir,
            version=SubdirVersion(newest, version.generation, version.updated_at),
            upstream_version=upstream_version,
            local_records=local_records,
            local_names=local_names,
            records=records,
            names=names,
            built_at=built_at,
            json=json_encoded,
            zst=zst_encoded,
            sticky=sticky,
            keep_cached=keep_cached,
            _previous_shards=previous_shards,
            _previous_by_digest=previous_by_digest if changed_names is not None else None,
            _previous_index=previous_index if changed_names is not None else None,
            _changed_names=changed_names,
            _parts=parts,
            _by_name=by_name,
            shard_files=self._shard_files.of_feed(feed_id) if self._shard_files is not None else None,
            spill_shards=large,
        )

    def _retire(self, feed_id: int, subdir: str, shards: dict[str, ShardEntry]) -> None:
        for entry in shards.values():
            self._retired_shards[(feed_id, subdir, entry[1].hex())] = entry[2]
        while len(self._retired_shards) > _RETIRED_SHARDS_KEPT:
            self._retired_shards.popitem(last=False)

    def served(
        self,
        feed_id: int,
        snapshot: SubdirSnapshot,
        stamp: Hashable,
        hidden_of: Callable[[SubdirSnapshot, PreviousFilter | None], tuple[frozenset[str], Any]],
    ) -> Served:
        """What a feed with a hiding SCA policy serves of ``snapshot``: built once per snapshot and
        ``stamp`` (the SCA revision and the feed's policy); the snapshot itself when nothing is hidden.
        ``hidden_of`` decides what to hide, given what the previous build found (to redo only what
        changed) and returns its own memo for the next. While a new view of the same snapshot is being
        built, the previous one is served."""
        key = (feed_id, snapshot.subdir)
        cached = self._served.get(key)
        if cached is not None and cached.snapshot is snapshot and cached.stamp == stamp:
            return cached.view
        lock = self._lock((feed_id, "served:" + snapshot.subdir))
        if cached is not None and cached.snapshot is snapshot:
            if not lock.acquire(blocking=False):
                return cached.view  # being rebuilt for a new SCA revision: the previous one meanwhile
        else:
            lock.acquire()
        try:
            cached = self._served.get(key)
            if cached is not None and cached.snapshot is snapshot and cached.stamp == stamp:
                return cached.view
            hidden, memo = hidden_of(snapshot, cached)
            previous = cached.view if cached is not None else None
            # Once filtered, a view stays one: its Last-Modified must not go back to the snapshot's.
            filtered = hidden or isinstance(previous, FilteredSubdir)
            view: Served = FilteredSubdir.build(snapshot, hidden, previous) if filtered else snapshot
            if isinstance(previous, FilteredSubdir) and previous._shards is not None and previous is not view:
                self._retire(feed_id, snapshot.subdir, previous._shards)
            self._served[key] = PreviousFilter(snapshot, stamp, view, hidden, memo)
            return view
        finally:
            lock.release()

    def was_filtered(self, feed_id: int, subdir: str) -> bool:
        """Whether this process has served a filtered view of the subdir (it then keeps to views)."""
        return (feed_id, subdir) in self._served

    def shard(self, feed_id: int, served: Served, subdir: str, digest_hex: str) -> bytes | None:
        """A shard the served view lists, or one it listed before (a client may hold an older index)."""
        body = served.shard_by_digest(digest_hex)
        if body:
            return body
        retired = self._retired_shards.get((feed_id, subdir, digest_hex))
        if retired == IN_FILE and self._shard_files is not None:
            return self._shard_files.of_feed(feed_id).get(digest_hex)
        return retired or None

    def channeldata(
        self,
        *,
        feed_id: int,
        stamp: Hashable = None,
        keep: Callable[[Sequence[PackageFile]], Sequence[PackageFile]] | None = None,
    ) -> Encoded:
        """channeldata.json of the feed's own files; ``keep`` (with its ``stamp``, part of the cache
        key) leaves out what an SCA policy hides."""
        with self._db.read() as session:
            state = (package_store.feed_versions(session=session, feed_id=feed_id), stamp)
            cached = self._channeldata.get(feed_id)
            if cached is not None and cached[0] == state:
                return cached[1]
            files = list(package_store.all_files(session=session, feed_id=feed_id))
        if keep is not None:  # outside the session: deciding may read the database too
            files = list(keep(files))
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
        encoded = Encoded(body, etag_of(body, "channeldata"), datetime.now(UTC).replace(microsecond=0))
        self._channeldata[feed_id] = (state, encoded)
        return encoded

    def close(self) -> None:
        if self._shard_files is not None:
            self._shard_files.close()

    def forget_feed(self, feed_id: int) -> None:
        for key in [key for key in self._snapshots if key[0] == feed_id]:
            del self._snapshots[key]
        for shard_key in [key for key in self._retired_shards if key[0] == feed_id]:
            del self._retired_shards[shard_key]
        for served_key in [key for key in self._served if key[0] == feed_id]:
            del self._served[served_key]
        self._channeldata.pop(feed_id, None)
        if self._shard_files is not None:
            self._shard_files.forget_feed(feed_id)
