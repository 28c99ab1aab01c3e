"""Repodata records: what conda-index writes for one package file."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from condagate.conda.package import PackageMetadata

# index.json keys that describe the build machine, not the package; conda-index drops them too.
_DROPPED_INDEX_KEYS = frozenset({"sha256", "md5", "size", "fn", "url", "channel", "schannel"})
_SECONDS_CUTOFF = 253_402_300_799  # 9999-12-31 in seconds: larger values are already milliseconds


def normalise_timestamp(value: float | int) -> int:
    return int(value * 1000) if value <= _SECONDS_CUTOFF else int(value)


def build_record(metadata: PackageMetadata, *, sha256: str, md5: str, size: int, uploaded_at_ms: int) -> dict[str, Any]:
    """Fields from ``info/index.json``; checksums and size of the archive itself, never from inside it."""
    record = {key: value for key, value in metadata.index.items() if key not in _DROPPED_INDEX_KEYS}
    record.setdefault("depends", [])
    record.setdefault("constrains", [])
    if "license" not in record and isinstance(metadata.about.get("license"), str):
        record["license"] = metadata.about["license"]
    timestamp = record.get("timestamp")
    record["timestamp"] = normalise_timestamp(timestamp) if isinstance(timestamp, int | float) else uploaded_at_ms
    record["sha256"] = sha256
    record["md5"] = md5
    record["size"] = size
    return record


def encode_record(record: dict[str, Any]) -> bytes:
    """Canonical bytes of a record: sorted keys, compact, UTF-8; the unit repodata is assembled from."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


def decode_record(raw: bytes) -> dict[str, Any]:
    """A record's bytes as a dict; msgspec, because shards decode every record of a subdir."""
    return _decode_object(raw)


ABOUT_KEYS = ("summary", "description", "home", "dev_url", "doc_url", "license", "license_family")


def about_summary(metadata: PackageMetadata) -> dict[str, str]:
    """The about.json fields that channeldata and the UI show."""
    return {key: str(metadata.about[key]) for key in ABOUT_KEYS if isinstance(metadata.about.get(key), str)}
