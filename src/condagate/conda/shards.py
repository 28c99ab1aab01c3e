"""CEP 16 sharded repodata: one zstd msgpack shard per package name, and the index naming them."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgpack

from condagate.conda.repodata import ZSTD_LARGE_LEVEL, ZSTD_LEVEL, compress_zstd


def _shard_record(record: Mapping[str, Any]) -> dict[str, Any]:
    shard_record = dict(record)
    for key in ("md5", "sha256"):
        if isinstance(shard_record.get(key), str):
            shard_record[key] = bytes.fromhex(shard_record[key])
    return shard_record


def encode_shard(records: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[bytes, bytes]:
    """Return (sha256 digest of the shard file, shard file bytes) for one package name's records."""
    tar_bz2: dict[str, Any] = {}
    conda: dict[str, Any] = {}
    for filename, record in sorted(records, key=lambda item: item[0]):
        (conda if filename.endswith(".conda") else tar_bz2)[filename] = _shard_record(record)
    payload = msgpack.packb({"packages": tar_bz2, "packages.conda": conda, "removed": []}, use_bin_type=True)
    compressed = compress_zstd(payload)
    return hashlib.sha256(compressed).digest(), compressed


# An index this large (packed; ~16,000 names) is compressed at level 1: ~3 ms against ~7 ms at level 3
# for a few percent more bytes (the 32-byte digests do not compress). Depends on the size only.
_LARGE_INDEX_BYTES = 256 * 1024


class ShardIndexEntries:
    """The index's ``shards`` map as sorted, pre-packed entries (name, digest): a change of a few
    package names re-packs those, not all of them. Built by one thread, then only read: ``copy``
    before changing one that readers may hold."""

    __slots__ = ("_names", "_packed")

    def __init__(self, names: list[str], packed: list[bytes]) -> None:
        self._names = names
        self._packed = packed

    @classmethod
    def of(cls, shard_digests: Mapping[str, bytes]) -> ShardIndexEntries:
        names = sorted(shard_digests)
        return cls(names, [_packed_entry(name, shard_digests[name]) for name in names])

    def copy(self) -> ShardIndexEntries:
        return ShardIndexEntries(self._names.copy(), self._packed.copy())

    def update(self, changes: Mapping[str, bytes | None]) -> None:
        """Set each name's digest, or remove the name (None)."""
        names, packed = self._names, self._packed
        for name, digest in changes.items():
            at = bisect.bisect_left(names, name)
            present = at < len(names) and names[at] == name
            if digest is None:
                if present:
                    del names[at], packed[at]
            elif present:
                packed[at] = _packed_entry(name, digest)
            else:
                names.insert(at, name)
                packed.insert(at, _packed_entry(name, digest))

    def encode(self, subdir: str, created_at: datetime | None = None) -> bytes:
        """The index file: exactly ``msgpack.packb`` of the index document, zstd-compressed."""
        created = (created_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        info = {"base_url": "./", "shards_base_url": "./shards/", "subdir": subdir, "created_at": created}
        count = len(self._packed)
        header = bytes([0x80 | count]) if count < 16 else (b"\xde" if count < 1 << 16 else b"\xdf")
        if count >= 16:
            header += count.to_bytes(2 if count < 1 << 16 else 4, "big")
        head = msgpack.packb({"version": 1, "info": info, "shards": {}}, use_bin_type=True)[:-1]  # less {}
        payload = b"".join([head, header, *self._packed])
        return compress_zstd(payload, ZSTD_LARGE_LEVEL if len(payload) >= _LARGE_INDEX_BYTES else ZSTD_LEVEL)


def _packed_entry(name: str, digest: bytes) -> bytes:
    entry: bytes = msgpack.packb(name, use_bin_type=True) + msgpack.packb(digest, use_bin_type=True)
    return entry


def encode_shard_index(subdir: str, shard_digests: Mapping[str, bytes], created_at: datetime | None = None) -> bytes:
    return ShardIndexEntries.of(shard_digests).encode(subdir, created_at)
