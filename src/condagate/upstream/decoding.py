"""Decompressing what an upstream sends with bounded memory: output comes in chunks of at most
``CHUNK`` bytes into a capped buffer, and a decompressor that expands its input more than a real
document would (a decompression bomb) is stopped early. Nothing ever joins a list of chunks."""

from __future__ import annotations

import io
import zlib
from typing import Protocol

import zstandard

CHUNK = 1024 * 1024


class LimitExceeded(ValueError):
    """Too large, or expanding too far; the text says which."""


class Corrupt(ValueError):
    """Not valid data in the format it claims."""


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


def human(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"


class CappedCount:
    """Only counts, refusing more than ``limit`` bytes: the size of a document that is read again later
    (``ZstdDocument``), checked as it arrives."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise LimitExceeded(f"{self.what} is larger than {human(self.limit)}")
        return len(data)


class CappedBuffer(CappedCount):
    """Bytes in memory, refused past ``limit``; ``getvalue`` hands the buffer over without a copy."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(limit, what)
        self._buffer = io.BytesIO()

    def write(self, data: bytes, /) -> int:
        super().write(data)
        return self._buffer.write(data)

    def getvalue(self) -> bytes:
        return self._buffer.getvalue()


class CappedChunks(CappedCount):
    """Bytes held until taken (``take``), refused past ``limit`` in all: a document read piece by piece."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(limit, what)
        self._chunks: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        super().write(data)
        self._chunks.append(data)
        return len(data)

    def take(self) -> list[bytes]:
        chunks, self._chunks = self._chunks, []
        return chunks


class Tee:
    """One input to several writers (the compressed bytes kept, and decompressed at the same time)."""

    def __init__(self, *writers: Writer) -> None:
        self.writers = writers

    def write(self, data: bytes, /) -> int:
        for writer in self.writers:
            writer.write(data)
        return len(data)


class _Expanding:
    """Counts input and output of a decompressor; refuses output beyond ``max_ratio`` times the input
    so far, once past ``ratio_floor`` bytes (so small documents may compress as well as they like)."""

    def __init__(self, out: Writer, what: str, max_ratio: int | None, ratio_floor: int) -> None:
        self.out = out
        self.what = what
        self.max_ratio = max_ratio
        self.ratio_floor = ratio_floor
        self.consumed = 0
        self.produced = 0

    def emit(self, data: bytes) -> None:
        self.produced += len(data)
        if self.max_ratio is not None and self.produced > max(self.ratio_floor, self.max_ratio * self.consumed):
            raise LimitExceeded(f"{self.what} expands more than {self.max_ratio}-fold (a decompression bomb?): refused")
        self.out.write(data)

    # zstandard's stream_writer writes its output here, at most CHUNK bytes at a time
    def write(self, data: bytes, /) -> int:
        self.emit(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None


class ZstdDecoder:
    """Zstandard frames (one or several) in, at most ``CHUNK`` decompressed bytes at a time out."""

    def __init__(self, out: Writer, what: str, max_ratio: int | None = None, ratio_floor: int = 0) -> None:
        self._counter = _Expanding(out, what, max_ratio, ratio_floor)
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            self._counter,  # type: ignore[arg-type]  # it needs write() only
            write_size=CHUNK,
            write_return_read=True,
            closefd=False,
        )

    def write(self, data: bytes, /) -> int:
        self._counter.consumed += len(data)
        try:
            self._writer.write(data)
        except zstandard.ZstdError as exc:
            raise Corrupt(f"{self._counter.what} is not valid zstd data ({exc})") from None
        return len(data)

    def finish(self) -> None:
        return None


class ZlibDecoder:
    """gzip or zlib-wrapped deflate in, at most ``CHUNK`` bytes at a time out."""

    def __init__(self, out: Writer, what: str, gzip: bool, max_ratio: int | None = None, ratio_floor: int = 0) -> None:
        self._counter = _Expanding(out, what, max_ratio, ratio_floor)
        self._decompressor = zlib.decompressobj(31 if gzip else 15)

    def write(self, data: bytes, /) -> int:
        self._counter.consumed += len(data)
        self._drain(data)
        return len(data)

    def _drain(self, data: bytes) -> None:
        try:
            while True:
                output = self._decompressor.decompress(data, CHUNK)
                if output:
                    self._counter.emit(output)
                data = self._decompressor.unconsumed_tail
                if not data and len(output) < CHUNK:
                    return
        except zlib.error as exc:
            raise Corrupt(f"{self._counter.what} is not valid compressed data ({exc})") from None

    def finish(self) -> None:
        self._drain(b"")
        if not self._decompressor.eof:
            raise Corrupt(f"{self._counter.what} ends before its compressed stream does")


class Identity:
    def __init__(self, out: Writer) -> None:
        self.out = out

    def write(self, data: bytes, /) -> int:
        return self.out.write(data)

    def finish(self) -> None:
        return None


Decoder = ZstdDecoder | ZlibDecoder | Identity


def content_decoder(
    encoding: str, out: Writer, what: str, max_ratio: int | None = None, ratio_floor: int = 0
) -> Decoder:
    """The decoder for an HTTP ``Content-Encoding``; ``Corrupt`` for one condagate does not decode."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return Identity(out)
    if encoding in ("gzip", "x-gzip", "deflate"):
        return ZlibDecoder(out, what, encoding != "deflate", max_ratio, ratio_floor)
    if encoding == "zstd":
        return ZstdDecoder(out, what, max_ratio, ratio_floor)
    raise Corrupt(f"{what} came with Content-Encoding {encoding[:40]!r}, which condagate does not decode")
