"""Encoding one subdir's repodata from canonical record bytes, without re-parsing any record."""

from __future__ import annotations

import bisect
import bz2
import json
import re
import threading
from collections.abc import Collection, Iterable, Mapping

import zstandard

ZSTD_LEVEL = 3
# repodata.json from this size on is compressed at ZSTD_LARGE_LEVEL: about twice as fast as level 3
# (a 19 MB subdir: ~20 ms against ~45 ms) for a few percent more bytes. The level depends on the size
# alone, so every worker encodes the same JSON to the same .zst bytes.
ZSTD_LARGE_BYTES = 4 * 1024 * 1024
ZSTD_LARGE_LEVEL = 1


# File names made only of these need no JSON escaping (all conda file names in practice).
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.+!=-]*$")


def _quoted(filename: str) -> bytes:
    if _PLAIN_NAME.match(filename):
        return b'"' + filename.encode() + b'":'
    return json.dumps(filename).encode() + b":"


def _packages_object(records: Mapping[str, bytes], filenames: list[str]) -> bytes:
    """``{"NAME": RECORD, ...}`` in one join: at conda-forge scale (500,000 records) every
    per-record allocation counts."""
    parts: list[bytes] = []
    for filename in filenames:
        parts.append(_quoted(filename))
        parts.append(records[filename])
        parts.append(b",")
    if parts:
        parts[-1] = b"}"
        return b"{" + b"".join(parts)
    return b"{}"


_KINDS = (".tar.bz2", ".conda")  # "packages", "packages.conda"
_COMMA = b","


class RepodataParts:
    """A subdir's ``packages`` and ``packages.conda`` objects kept as sorted lists of references to
    pre-encoded pieces (quoted file name, record bytes, separator): encoding is one join, and adding
    or replacing a record is a bisect and a list insert, not a re-serialisation. The record bytes are
    referenced, not copied. ``encode`` gives exactly ``encode_repodata``'s bytes for the same records.

    A value is built (``from_records``, ``put``) by one thread and then only read: ``copy`` before
    changing one that readers may hold."""

    __slots__ = ("_names", "_parts")

    def __init__(self, names: tuple[list[str], list[str]], parts: tuple[list[bytes], list[bytes]]) -> None:
        self._names = names  # sorted file names per kind
        self._parts = parts  # per kind: quoted name, record, "," per file name, in the same order

    @classmethod
    def from_records(cls, records: Mapping[str, bytes]) -> RepodataParts:
        names: tuple[list[str], list[str]] = ([], [])
        parts: tuple[list[bytes], list[bytes]] = ([], [])
        for filename in sorted(records):
            kind = _kind(filename)
            if kind < 0:
                continue
            names[kind].append(filename)
            parts[kind].extend((_quoted(filename), records[filename], _COMMA))
        return cls(names, parts)

    def copy(self) -> RepodataParts:
        return RepodataParts(
            (self._names[0].copy(), self._names[1].copy()), (self._parts[0].copy(), self._parts[1].copy())
        )

    def put(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Add or replace records (file name, record bytes) in place."""
        for filename, record in items:
            kind = _kind(filename)
            if kind < 0:
                continue
            names, parts = self._names[kind], self._parts[kind]
            at = bisect.bisect_left(names, filename)
            if at < len(names) and names[at] == filename:
                parts[3 * at + 1] = record
            else:
                names.insert(at, filename)
                parts[3 * at : 3 * at] = [_quoted(filename), record, _COMMA]

    def __len__(self) -> int:
        return len(self._names[0]) + len(self._names[1])

    def encode(self, subdir: str) -> bytes:
        """repodata.json bytes, as ``encode_repodata(subdir, records)``: one join over references."""
        info = json.dumps({"subdir": subdir}, sort_keys=True, separators=(",", ":")).encode()
        pieces: list[bytes] = [b'{"info":', info, b',"packages":']
        _extend_object(pieces, self._parts[0])
        pieces.append(b',"packages.conda":')
        _extend_object(pieces, self._parts[1])
        pieces.append(b',"removed":[],"repodata_version":1}')
        return b"".join(pieces)


def _kind(filename: str) -> int:
    if filename.endswith(".tar.bz2"):
        return 0
    return 1 if filename.endswith(".conda") else -1


def _extend_object(pieces: list[bytes], parts: list[bytes]) -> None:
    if not parts:
        pieces.append(b"{}")
        return
    pieces.append(b"{")
    pieces.extend(parts)
    pieces[-1] = b"}"  # the last separator closes the object


def encode_repodata(
    subdir: str, records: Mapping[str, bytes], *, base_url: str | None = None, exclude: Collection[str] = ()
) -> bytes:
    """repodata.json bytes; ``records`` maps file names to canonical record JSON bytes. ``exclude``:
    file names left out (what a feed's policy hides), without copying ``records``."""
    ordered = sorted(records.keys() - exclude) if exclude else sorted(records)
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
            _packages_object(records, [name for name in ordered if name.endswith(".tar.bz2")]),
            b',"packages.conda":',
            _packages_object(records, [name for name in ordered if name.endswith(".conda")]),
            b',"removed":[],"repodata_version":',
            str(version).encode(),
            b"}",
        ]
    )


_compressors = threading.local()


def compress_zstd(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """zstd with a compressor reused per thread (creating one costs more than a small shard)."""
    cache: dict[int, zstandard.ZstdCompressor] = _compressors.__dict__.setdefault("by_level", {})
    compressor = cache.get(level)
    if compressor is None:
        compressor = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressor.compress(data)


def compress_repodata_zstd(body: bytes) -> bytes:
    """repodata.json's .zst: level 3, or ZSTD_LARGE_LEVEL from ZSTD_LARGE_BYTES on."""
    return compress_zstd(body, ZSTD_LARGE_LEVEL if len(body) >= ZSTD_LARGE_BYTES else ZSTD_LEVEL)


def compress_bz2(data: bytes) -> bytes:
    return bz2.compress(data, compresslevel=9)
