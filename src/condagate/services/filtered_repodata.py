"""What a feed whose SCA policy hides blocked records serves: the snapshot less those records,
encoded once per (snapshot, SCA revision, policy) and reusing the snapshot's shards of every package
name it leaves alone. A feed without such a policy serves the snapshot itself.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from condagate.conda.repodata import RepodataParts, compress_bz2_chunks
from condagate.conda.shards import encode_shard_index
from condagate.services.subdir_snapshot import (
    Encoded,
    ShardEntry,
    SubdirSnapshot,
    encode_keyed_shard,
    encode_subdir,
    etag_of,
    shard_body,
    shard_key,
    spill_later,
)


class Served(Protocol):
    """What the channel serves of one subdir: a ``SubdirSnapshot``, or a ``FilteredSubdir`` of it."""

    @property
    def json(self) -> Encoded: ...

    @property
    def zst(self) -> Encoded: ...

    def bz2(self) -> Encoded: ...

    def shard_index(self) -> Encoded: ...

    def shard_by_digest(self, digest_hex: str) -> bytes | None: ...


@dataclass
class FilteredSubdir:
    """A snapshot less ``hidden`` (records a feed's SCA policy blocks), encoded as the snapshot is."""

    snapshot: SubdirSnapshot
    hidden: frozenset[str]
    json: Encoded
    zst: Encoded
    _shards: dict[str, ShardEntry] | None = None
    _shard_index: Encoded | None = None
    _shards_by_digest: dict[str, bytes] | None = None
    _bz2: Encoded | None = None
    _parts: RepodataParts | None = None  # what the encodings were made of, to tell the next build alike
    _spilling: Future[int] | None = None  # shard bodies on their way to the snapshot's shard files
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _bz2_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, snapshot: SubdirSnapshot, hidden: frozenset[str], previous: Served | None) -> FilteredSubdir:
        parts = RepodataParts.from_records(snapshot.records, exclude=hidden)
        if isinstance(previous, FilteredSubdir) and previous._parts is not None and previous._parts.same_records(parts):
            return cls(snapshot, hidden, previous.json, previous.zst, _bz2=previous._bz2, _parts=previous._parts)
        # Last-Modified must move with the body: the filter may change while the snapshot does not.
        moment = max(snapshot.built_at, datetime.now(UTC).replace(microsecond=0))
        if previous is not None and moment <= previous.json.last_modified:
            moment = previous.json.last_modified + timedelta(seconds=1)
        return cls(snapshot, hidden, *encode_subdir(parts, snapshot.subdir, moment), _parts=parts)

    @property
    def subdir(self) -> str:
        return self.snapshot.subdir

    def bz2(self) -> Encoded:
        with self._bz2_lock:
            if self._bz2 is None:
                body = compress_bz2_chunks(self.json.iter_chunks())
                self._bz2 = Encoded(body, self.json.etag.replace("-json", "-bz2"), self.json.last_modified)
            return self._bz2

    def shards(self) -> dict[str, ShardEntry]:
        """The snapshot's shards, re-encoded only for the package names that lose records."""
        base = self.snapshot.shards()
        by_name = self.snapshot.by_name()
        with self._lock:
            if self._shards is None:
                touched = {self.snapshot.names[fn] for fn in self.hidden if fn in self.snapshot.names}
                shards = {name: entry for name, entry in base.items() if name not in touched}
                for name in sorted(touched):  # file-name order: each block of records cut once
                    kept = sorted(fn for fn in by_name.get(name, []) if fn not in self.hidden)
                    if kept:
                        shards[name] = encode_keyed_shard(self.snapshot.records, shard_key(self.snapshot.records, kept))
                by_digest = {entry[1].hex(): entry[2] for entry in shards.values()}
                self._shards, self._shards_by_digest = shards, by_digest
                if self.snapshot.shard_files is not None and self.snapshot.spill_shards:
                    self._spilling = spill_later(shards, by_digest, self.snapshot.shard_files)
            return self._shards

    def shard_by_digest(self, digest_hex: str) -> bytes | None:
        shards = self.shards()
        assert self._shards_by_digest is not None
        return shard_body(digest_hex, self._shards_by_digest, shards, self.snapshot.shard_files, self.snapshot.records)

    def shard_index(self) -> Encoded:
        shards = self.shards()
        with self._lock:
            if self._shard_index is None:
                index = encode_shard_index(
                    self.subdir, {name: entry[1] for name, entry in shards.items()}, self.json.last_modified
                )
                self._shard_index = Encoded(index, etag_of(index, "shards"), self.json.last_modified)
            return self._shard_index


@dataclass(frozen=True)
class PreviousFilter:
    """A subdir's last filtered build: what the next build starts from."""

    snapshot: SubdirSnapshot
    stamp: Hashable
    view: Served
    hidden: frozenset[str]
    memo: Any  # what the filter keeps between builds (services.sca_filter)
