"""One feed subdir's encoded repodata: its merged records, the JSON and .zst built with it, the
shards built when first asked for (re-encoding only the package names whose records changed). bz2 is
slow and rarely asked for: it is built on first request and kept until the next change.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from condagate.conda.parts_records import PartsRecords
from condagate.conda.records import decode_record
from condagate.conda.repodata import RepodataParts, compress_bz2_chunks, compress_repodata_zstd, spliced_zst
from condagate.conda.shards import ShardIndexEntries, encode_shard
from condagate.conda.zstd_splice import decompressed, frame_of
from condagate.process_memory import return_freed_memory
from condagate.services.shard_files import FeedShardFiles
from condagate.store.packages import SubdirVersion

# (records key, digest, body); the key: the name's file names (sorted) and a digest of their records'
# bytes (not the bytes: a large subdir's records are kept compressed, ``conda.parts_records``). Equal
# keys mean an equal shard.
ShardKey = tuple[tuple[str, ...], bytes]
ShardEntry = tuple[ShardKey, bytes, bytes]
UpstreamVersion = tuple[tuple[int, int], ...]  # (connector id, generation) per connector, in feed order


def _records_digest(records: list[bytes]) -> bytes:
    # Records are JSON objects, which delimit themselves: their join tells them apart.
    return hashlib.sha256(b"".join(records)).digest()[:16]


def shard_entry(filenames: Sequence[str], records: Sequence[bytes]) -> ShardEntry:
    """The shard of one package name's files (sorted by file name) and their records."""
    listed = list(records)
    digest, body = encode_shard((fn, decode_record(raw)) for fn, raw in zip(filenames, listed, strict=True))
    return (tuple(filenames), _records_digest(listed)), digest, body


def shard_key(records: Mapping[str, bytes], filenames: Iterable[str]) -> ShardKey:
    ordered = tuple(sorted(filenames))
    return ordered, _records_digest([records[fn] for fn in ordered])


def encode_keyed_shard(records: Mapping[str, bytes], key: ShardKey) -> ShardEntry:
    """The shard of ``key``'s files, their records read from ``records``."""
    return shard_entry(key[0], [records[fn] for fn in key[0]])


# A shard entry's body when it is in this host's file (``services.shard_files``): a shard is never empty.
IN_FILE = b""


def spill(shards: dict[str, ShardEntry], by_digest: dict[str, bytes], files: FeedShardFiles, names: list[str]) -> int:
    """Move the bodies of ``names``' shards (and ``by_digest``, their bytes by hex digest) into
    ``files``; a body that cannot be written stays. How many bytes moved. Readers may hold the dicts
    meanwhile: an entry is swapped (never added or removed) once its file is there."""
    moved = 0
    for name in names:
        key, digest, body = shards[name]
        if body and files.put(digest, body):
            # ``by_digest`` first: a next snapshot copies ``shards``, then ``by_digest``, so a body its
            # copy of ``by_digest`` still holds is one its copy of ``shards`` holds too, and spills.
            by_digest[digest.hex()] = IN_FILE
            shards[name] = (key, digest, IN_FILE)
            moved += len(body)
    return moved


def spill_later(shards: dict[str, ShardEntry], by_digest: dict[str, bytes], files: FeedShardFiles) -> Future[int]:
    """``spill`` on the shard files' writer thread, after which the freed memory goes back to the system:
    the bodies a +1 re-encoded, or ones a first build could not write (it writes them as it goes).
    Which shards hold their bodies is found here: the writer thread is left the files only, not a walk
    holding the GIL."""
    names = [name for name, entry in shards.items() if entry[2]]

    def work() -> int:
        moved = spill(shards, by_digest, files, names)
        return_freed_memory(moved)
        return moved

    return files.later(work)


def shard_body(
    digest_hex: str,
    by_digest: dict[str, bytes],
    shards: Mapping[str, ShardEntry],
    files: FeedShardFiles | None,
    records: Mapping[str, bytes],
) -> bytes | None:
    """The bytes of the listed shard ``digest_hex``: kept, or read from its file, or (the file went: unused
    for long, or damaged) encoded again from its records and written back."""
    body = by_digest.get(digest_hex)
    if body != IN_FILE:
        return body
    found = files.get(digest_hex) if files is not None else None
    if found is not None:
        return found
    for key, digest, _body in shards.values():
        if digest.hex() == digest_hex:  # a linear search, once per lost file
            _key, digest, body = encode_keyed_shard(records, key)
            if files is not None:
                files.put(digest, body, replace=True)
            return body
    return None


class Encoded:
    """Bytes served with their ETag and Last-Modified: whole, or as chunks (the frames of a large
    subdir's .zst) joined only when something needs them whole, or ``deferred``: produced from a
    source each time they are read (a large subdir's JSON, decompressed from its .zst: served from a
    file of this host's, ``services.encoded_files``). Never changed."""

    __slots__ = ("__weakref__", "_body", "_source", "chunks", "etag", "last_modified", "size")

    def __init__(self, body: bytes, etag: str, last_modified: datetime) -> None:
        self._body: bytes | None = body
        self._source: Callable[[], Iterable[bytes]] | None = None
        self.chunks: tuple[bytes, ...] = (body,)
        self.size = len(body)
        self.etag = etag
        self.last_modified = last_modified

    @classmethod
    def of_chunks(cls, chunks: Sequence[bytes], etag: str, last_modified: datetime) -> Encoded:
        encoded = cls(b"", etag, last_modified)
        encoded.chunks = tuple(chunks)
        encoded.size = sum(map(len, chunks))
        encoded._body = chunks[0] if len(chunks) == 1 else None
        return encoded

    @classmethod
    def deferred(
        cls, size: int, source: Callable[[], Iterable[bytes]], etag: str, last_modified: datetime
    ) -> Encoded:
        """``size`` bytes that ``source()`` yields anew on each call; nothing of them kept here."""
        encoded = cls(b"", etag, last_modified)
        encoded.chunks = ()
        encoded.size = size
        encoded._body = None
        encoded._source = source
        return encoded

    def is_deferred(self) -> bool:
        return self._source is not None

    def iter_chunks(self) -> Iterable[bytes]:
        """The bytes in order, one chunk at a time (a deferred body is produced anew)."""
        return self.chunks if self._source is None else self._source()

    @property
    def body(self) -> bytes:
        """The bytes whole: joined on first use (a large subdir's JSON is better sent as ``chunks``, or
        from its file); a deferred body is produced and joined on every use, never kept."""
        body = self._body
        if body is None:
            if self._source is not None:
                return b"".join(self._source())
            body = self._body = b"".join(self.chunks)
        return body

    def joined(self) -> bool:
        return self._body is not None


def etag_of(data: bytes, variant: str) -> str:
    return f'"{hashlib.sha256(data).hexdigest()[:40]}-{variant}"'


def json_and_zst(body: bytes, moment: datetime) -> tuple[Encoded, Encoded]:
    """repodata.json and its .zst as one frame. Their ETag hashes the .zst: it is a function of the JSON
    alone (the level depends on the size only) and about a fifth of its size, so hashing it is cheaper."""
    zst = compress_repodata_zstd(body)
    etag = etag_of(zst, "json")
    return Encoded(body, etag, moment), Encoded(zst, etag.replace("-json", "-zst"), moment)


def encode_subdir(parts: RepodataParts, subdir: str, moment: datetime) -> tuple[Encoded, Encoded]:
    """repodata.json and .zst of ``parts``. A small subdir: one join, one zstd frame (``json_and_zst``).
    A large one: the .zst is one frame spliced from blocks each compressed once (``zstd_splice``; blocks
    unchanged since an earlier encoding are reused), and the JSON is what it decompresses to
    (``Encoded.deferred``: the blocks let go of their JSON once compressed, so a worker holds the
    large subdir's records and its .zst, not its JSON a second time). The ETag hashes the pieces'
    digests, which depend on the JSON alone, so every worker gives the same JSON the same ETag."""
    if not spliced_zst(parts.json_size(subdir)):
        return json_and_zst(parts.encode(subdir), moment)
    pieces = parts.zst_pieces(subdir)
    return_freed_memory(parts.release_json())
    digest = hashlib.sha256(b"".join(piece.digest for piece in pieces)).hexdigest()[:40]
    zst = Encoded.of_chunks(frame_of(pieces), f'"{digest}-zst"', moment)
    json_size = parts.json_size(subdir, spliced=True)
    return Encoded.deferred(json_size, lambda: decompressed(zst.chunks), f'"{digest}-json"', moment), zst


@dataclass
class SubdirSnapshot:
    """One feed subdir: its records and their encodings; replaced as a whole, read without locks."""

    subdir: str
    version: SubdirVersion
    upstream_version: UpstreamVersion
    local_records: Mapping[str, bytes]
    local_names: Mapping[str, str]
    records: Mapping[str, bytes]  # dicts, or ``Layered`` ones: a change is laid over, never copied
    names: Mapping[str, str]
    built_at: datetime
    json: Encoded
    zst: Encoded
    stale: list[tuple[int, str]] = field(default_factory=list)  # (connector id, last error)
    keep_cached: bool = True  # the feed's upstream_removals when built: a change of it rebuilds
    missing: list[int] = field(default_factory=list)  # connectors with no data at all (left out)
    # Cached files the upstream no longer lists, kept in the feed: file name -> (connector id, since when)
    sticky: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)
    _previous_shards: dict[str, ShardEntry] | None = None
    _previous_by_digest: dict[str, bytes] | None = None  # ``_previous_shards``' bytes by hex digest
    # Package names whose records changed since ``_previous_shards`` (None: unknown, compare them all).
    _changed_names: frozenset[str] | None = None
    _parts: RepodataParts | None = None  # the JSON's pieces, for the next incremental update
    _previous_index: ShardIndexEntries | None = None  # ``_previous_shards``' index entries, if known
    _shards: dict[str, ShardEntry] | None = None
    _index_entries: ShardIndexEntries | None = None  # ``_shards``' index entries, once known
    _shard_index: Encoded | None = None
    _shards_by_digest: dict[str, bytes] | None = None
    _bz2: Encoded | None = None
    _by_name: dict[str, list[str]] | None = None
    # This host's shard files (``services.shard_files``): a large subdir's bodies go there (``spill_shards``);
    # any snapshot may list shards of an earlier large one, read from there. None: every body kept here.
    shard_files: FeedShardFiles | None = None
    spill_shards: bool = False
    _spilling: Future[int] | None = None  # the bodies on their way to ``shard_files``
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # bz2 of a big subdir takes many seconds: it must not hold up shard or listing requests.
    _bz2_lock: threading.Lock = field(default_factory=threading.Lock)

    def by_name(self) -> dict[str, list[str]]:
        """Package name -> its file names (for listings), built on first use."""
        with self._lock:
            return self._grouped_by_name()

    def _grouped_by_name(self) -> dict[str, list[str]]:  # with self._lock held
        if self._by_name is None:
            grouped: dict[str, list[str]] = {}
            for filename, name in self.names.items():
                grouped.setdefault(name, []).append(filename)
            self._by_name = grouped
        return self._by_name

    def bz2(self) -> Encoded:
        with self._bz2_lock:
            if self._bz2 is None:
                body = compress_bz2_chunks(self.json.iter_chunks())
                self._bz2 = Encoded(body, self.json.etag.replace("-json", "-bz2"), self.built_at)
            return self._bz2

    def record(self, filename: str) -> dict[str, Any] | None:
        raw = self.records.get(filename)
        return None if raw is None else decode_record(raw)

    def is_local(self, filename: str) -> bool:
        return filename in self.local_records

    def built(self, kind: str) -> Encoded | None:
        """The "json", "zst" or "bz2" encoding if it is built (whole or in chunks: the caller decides
        whether it may send chunks; the fast lane never builds or joins anything)."""
        return self.json if kind == "json" else self.zst if kind == "zst" else self.built_bz2()

    def built_bz2(self) -> Encoded | None:
        """bz2 if it is built already (the fast lane never builds anything)."""
        return self._bz2

    def built_shard_index(self) -> Encoded | None:
        return self._shard_index

    def built_shard(self, digest_hex: str) -> bytes | None:
        """A shard held in memory (one in a file is the route's to read)."""
        found = self._shards_by_digest
        return None if found is None else (found.get(digest_hex) or None)

    def shards(self) -> dict[str, ShardEntry]:
        with self._lock:
            if self._shards is None:
                shards, by_digest = self._build_shards()
                self._shards, self._shards_by_digest = shards, by_digest
                if self.shard_files is not None and self.spill_shards:
                    self._spilling = spill_later(shards, by_digest, self.shard_files)
                self._shard_index = None
            return self._shards

    def shard_by_digest(self, digest_hex: str) -> bytes | None:
        shards = self.shards()
        assert self._shards_by_digest is not None
        return shard_body(digest_hex, self._shards_by_digest, shards, self.shard_files, self.records)

    def shard_index(self) -> Encoded:
        shards = self.shards()
        with self._lock:
            if self._shard_index is None:
                if self._index_entries is None:
                    self._index_entries = ShardIndexEntries.of({name: entry[1] for name, entry in shards.items()})
                index = self._index_entries.encode(self.subdir, self.built_at)
                self._shard_index = Encoded(index, etag_of(index, "shards"), self.built_at)
            return self._shard_index

    def _build_shards(self) -> tuple[dict[str, ShardEntry], dict[str, bytes]]:
        """(shards by package name, shard bytes by hex digest); with self._lock held."""
        previous = self._previous_shards or {}
        previous_by_digest = self._previous_by_digest
        changed = self._changed_names
        previous_index = self._previous_index
        self._previous_shards = self._previous_by_digest = self._changed_names = self._previous_index = None
        by_name = self._grouped_by_name()
        if previous and previous_by_digest is not None and changed is not None:
            # Only these names' records changed: every other shard is the previous one.
            updated, by_digest = dict(previous), dict(previous_by_digest)
            if previous_index is not None:
                self._index_entries = previous_index.copy()
            for name in changed:
                old = updated.pop(name, None)
                if old is not None:
                    by_digest.pop(old[1].hex(), None)
                filenames = by_name.get(name)
                if not filenames:
                    continue
                key = shard_key(self.records, filenames)
                if old is None or old[0] != key:
                    old = encode_keyed_shard(self.records, key)
                updated[name] = old
                by_digest[old[1].hex()] = old[2]
            if self._index_entries is not None:
                self._index_entries.update({name: updated[name][1] if name in updated else None for name in changed})
            return updated, by_digest
        shards: dict[str, ShardEntry] = {}
        # A large subdir's bodies go to this host's files as they are built, from this thread: ~80 MB per
        # 500,000 records never in memory together (the writer thread, waiting for the GIL at each
        # system call, made the build twice as slow; written here, +0.7 s).
        files = self.shard_files if self.spill_shards else None
        written = 0
        # The records in file name order (a large subdir's: each block decompressed once, both kinds
        # merged), each name's encoded once all its files were seen: only names with files still to
        # come are held.
        open_names: dict[str, list[tuple[str, bytes]]] = {}
        names = self.names
        records = self.records
        pairs = records.merged_pairs() if isinstance(records, PartsRecords) else records.items()
        for filename, record in pairs:
            name = names[filename]
            seen = open_names.setdefault(name, [])
            seen.append((filename, record))
            if len(seen) == len(by_name[name]):
                del open_names[name]
                entry = shards[name] = self._shard_of(name, seen, previous)
                if files is not None and entry[2] and files.put(entry[1], entry[2]):
                    shards[name] = (entry[0], entry[1], IN_FILE)
                    written += len(entry[2])
        for name, seen in open_names.items():  # not seen whole (names without records): what it has
            shards[name] = self._shard_of(name, seen, previous)
        return_freed_memory(written)
        return shards, {entry[1].hex(): entry[2] for entry in shards.values()}

    @staticmethod
    def _shard_of(name: str, files: list[tuple[str, bytes]], previous: Mapping[str, ShardEntry]) -> ShardEntry:
        files.sort()
        filenames = tuple(filename for filename, _record in files)
        records = [record for _filename, record in files]
        old = previous.get(name)
        if old is not None and old[0] == (filenames, _records_digest(records)):
            return old
        return shard_entry(filenames, records)
