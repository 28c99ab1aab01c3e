"""CEP 16 sharded repodata: one zstd msgpack shard per package name, and the index naming them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgpack

from condagate.conda.repodata import compress_zstd


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


def encode_shard_index(subdir: str, shard_digests: Mapping[str, bytes], created_at: datetime | None = None) -> bytes:
    created = (created_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    index = {
        "version": 1,
        "info": {"base_url": "./", "shards_base_url": "./shards/", "subdir": subdir, "created_at": created},
        "shards": {name: shard_digests[name] for name in sorted(shard_digests)},
    }
    return compress_zstd(msgpack.packb(index, use_bin_type=True))
