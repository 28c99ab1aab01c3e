"""Encoded repodata per feed and subdir, rebuilt incrementally when the subdir's revision moves.

Every request asks the database for the subdir's (revision, generation): one primary-key read. When it
moved, only rows with a newer revision are loaded; only their package names are re-sharded; the
subdir's JSON is re-assembled from cached record bytes (no record is re-parsed) and compressed once.
bz2 is slow and rarely asked for, so it is built on first request and kept until the next change.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from condagate.conda.channeldata import PackageFileSummary, encode_channeldata
from condagate.conda.records import decode_record
from condagate.conda.repodata import compress_bz2, compress_zstd, encode_repodata
from condagate.conda.shards import encode_shard, encode_shard_index
from condagate.store import packages as package_store
from condagate.store.db import Database
from condagate.store.packages import SubdirVersion

# Superseded shards stay fetchable for a while: a client may hold an older index.
_RETIRED_SHARDS_KEPT = 4096


@dataclass(frozen=True)
class Encoded:
    body: bytes
    etag: str
    last_modified: datetime


def _etag(data: bytes, variant: str) -> str:
    return f'"{hashlib.sha256(data).hexdigest()[:40]}-{variant}"'


@dataclass
class SubdirSnapshot:
    """One subdir's records and their encodings; replaced as a whole, read without locks."""

    subdir: str
    version: SubdirVersion
    records: dict[str, bytes]
    names: dict[str, str]
    shards: dict[str, tuple[bytes, bytes]]
    built_at: datetime
    json: Encoded
    zst: Encoded
    shard_index: Encoded
    _bz2: Encoded | None = None
    _bz2_lock: threading.Lock = field(default_factory=threading.Lock)

    def bz2(self) -> Encoded:
        with self._bz2_lock:
            if self._bz2 is None:
                body = compress_bz2(self.json.body)
                self._bz2 = Encoded(body, self.json.etag.replace("-json", "-bz2"), self.built_at)
            return self._bz2

    def record(self, filename: str) -> dict[str, Any] | None:
        raw = self.records.get(filename)
        return None if raw is None else decode_record(raw)


def _encode(subdir: str, records: dict[str, bytes], shards: dict[str, tuple[bytes, bytes]],
            version: SubdirVersion, names: dict[str, str]) -> SubdirSnapshot:
    now = (version.updated_at or datetime.now(UTC)).replace(microsecond=0)
    # SQLite hands back naive datetimes (written in UTC); PostgreSQL aware ones in its own zone.
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    body = encode_repodata(subdir, records)
    json_etag = _etag(body, "json")
    index = encode_shard_index(subdir, {name: digest for name, (digest, _) in shards.items()}, now)
    return SubdirSnapshot(
        subdir=subdir,
        version=version,
        records=records,
        names=names,
        shards=shards,
        built_at=now,
        json=Encoded(body, json_etag, now),
        zst=Encoded(compress_zstd(body), json_etag.replace("-json", "-zst"), now),
        shard_index=Encoded(index, _etag(index, "shards"), now),
    )


class RepodataCache:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._snapshots: dict[tuple[int, str], SubdirSnapshot] = {}
        self._locks: dict[tuple[int, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._retired_shards: OrderedDict[str, bytes] = OrderedDict()
        self._channeldata: dict[int, tuple[tuple[tuple[str, int, int], ...], Encoded]] = {}

    def _lock(self, key: tuple[int, str]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def snapshot(self, *, feed_id: int, subdir: str) -> SubdirSnapshot:
        """The subdir's current snapshot, brought up to date with the database first."""
        key = (feed_id, subdir)
        with self._db.read() as session:
            version = package_store.subdir_version(session=session, feed_id=feed_id, subdir=subdir)
        current = self._snapshots.get(key)
        if current is not None and current.version == version:
            return current
        with self._lock(key):
            current = self._snapshots.get(key)
            if current is not None and current.version == version:
                return current
            updated = self._rebuild(feed_id, subdir, current)
            self._snapshots[key] = updated
            return updated

    def _rebuild(self, feed_id: int, subdir: str, current: SubdirSnapshot | None) -> SubdirSnapshot:
        with self._db.read() as session:
            version = package_store.subdir_version(session=session, feed_id=feed_id, subdir=subdir)
            incremental = current is not None and current.version.generation == version.generation
            since = current.version.revision if incremental and current is not None else -1
            rows = package_store.records_since(session=session, feed_id=feed_id, subdir=subdir, revision=since)
        if incremental and current is not None:
            records, names, shards = dict(current.records), dict(current.names), dict(current.shards)
        else:
            records, names, shards = {}, {}, {}
        changed_names: set[str] = set()
        newest = version.revision
        for filename, name, record, revision in rows:
            previous = names.get(filename)
            if previous is not None:
                changed_names.add(previous)
            records[filename] = record.encode()
            names[filename] = name
            changed_names.add(name)
            newest = max(newest, revision)
        if not incremental:
            changed_names = set(names.values())
        by_name: dict[str, list[str]] = {}
        for filename, name in names.items():
            if name in changed_names:
                by_name.setdefault(name, []).append(filename)
        for name in changed_names:
            old = shards.pop(name, None)
            if old is not None:
                self._retire(old)
            filenames = by_name.get(name)
            if filenames:
                shards[name] = encode_shard((fn, decode_record(records[fn])) for fn in filenames)
        return _encode(subdir, records, shards, SubdirVersion(newest, version.generation, version.updated_at), names)

    def _retire(self, shard: tuple[bytes, bytes]) -> None:
        self._retired_shards[shard[0].hex()] = shard[1]
        while len(self._retired_shards) > _RETIRED_SHARDS_KEPT:
            self._retired_shards.popitem(last=False)

    def shard(self, *, feed_id: int, subdir: str, digest_hex: str) -> bytes | None:
        snapshot = self.snapshot(feed_id=feed_id, subdir=subdir)
        for digest, body in snapshot.shards.values():
            if digest.hex() == digest_hex:
                return body
        return self._retired_shards.get(digest_hex)

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
        self._channeldata.pop(feed_id, None)
