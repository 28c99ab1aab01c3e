"""Encoding one subdir's repodata from canonical record bytes, without re-parsing any record."""

from __future__ import annotations

import bz2
import json
from collections.abc import Mapping

import zstandard

ZSTD_LEVEL = 3


def _packages_object(records: Mapping[str, bytes], extension: str) -> bytes:
    parts = [
        json.dumps(filename).encode() + b":" + records[filename]
        for filename in sorted(records)
        if filename.endswith(extension)
    ]
    return b"{" + b",".join(parts) + b"}"


def encode_repodata(subdir: str, records: Mapping[str, bytes], *, base_url: str | None = None) -> bytes:
    """repodata.json bytes; ``records`` maps file names to canonical record JSON bytes."""
    info: dict[str, str] = {"subdir": subdir}
    version = 1
    if base_url is not None:
        info["base_url"] = base_url
        version = 2
    return b"".join(
        [
            b'{"info":',
            json.dumps(info, sort_keys=True, separators=(",", ":")).encode(),
            b',"packages":',
            _packages_object(records, ".tar.bz2"),
            b',"packages.conda":',
            _packages_object(records, ".conda"),
            b',"removed":[],"repodata_version":',
            str(version).encode(),
            b"}",
        ]
    )


def compress_zstd(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def compress_bz2(data: bytes) -> bytes:
    return bz2.compress(data, compresslevel=9)
