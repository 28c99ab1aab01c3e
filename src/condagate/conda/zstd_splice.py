"""One zstd frame assembled from pieces compressed separately, so that a change re-compresses one piece.

Why one frame and not a stream of frames (which RFC 8878 allows): py-rattler (and so pixi) reads only
the first frame of a .zst. Inside a frame, blocks may use the previous block's entropy tables and
repeat offsets. A piece compressed on its own starts from a fresh state: its first block uses no
previous tables, and its matches stay inside the piece; what it does assume is the initial repeat
offsets (1, 4, 8). So every piece but the last ends with ``PAD`` (spaces), and three tiny hand-made
blocks follow it, each one sequence with an explicit offset (8, then 4, then 1) that copies three
spaces: afterwards the repeat offsets are (1, 4, 8) again, as at the start of a frame. The document
gains ``SEPARATOR`` (spaces, which JSON allows between tokens) after every piece but the last."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import zstandard

_MAGIC = b"\x28\xb5\x2f\xfd"
PAD = b" " * 8
_RESET_OFFSETS = (8, 4, 1)  # pushed in this order, the repeat offsets end as (1, 4, 8)
SEPARATOR = PAD + b" " * (4 * len(_RESET_OFFSETS))  # each reset block writes 1 literal + a 3-byte match
_COMPRESSED_BLOCK = 2
_LAST_BLOCK = 1
_END = _LAST_BLOCK.to_bytes(3, "little")  # an empty raw block, marked last


def _reset_block(offset: int) -> bytes:
    """A compressed block of one sequence: literal " ", then a 3-byte match at ``offset`` (explicit)."""
    value = offset + 3  # offset values 1-3 mean repeat offsets; real offsets are stored plus 3
    code = value.bit_length() - 1
    literals = bytes([1 << 3]) + b" "  # raw literals, 1 byte (5-bit size in a 1-byte header)
    modes = 0b01_01_01_00  # RLE for literal lengths, offsets, match lengths
    # LL code 1 = literal length 1; ML code 0 = match length 3; the bitstream holds the offset's extra
    # bits under its end marker (RLE states take no bits).
    sequences = bytes([1, modes, 1, code, 0, (1 << code) | (value - (1 << code))])
    content = literals + sequences
    header = (len(content) << 3) | (_COMPRESSED_BLOCK << 1)
    return header.to_bytes(3, "little") + content


_RESET = b"".join(_reset_block(offset) for offset in _RESET_OFFSETS)


@dataclass(frozen=True)
class Piece:
    blocks: bytes  # the piece's zstd blocks, none marked last
    window: int  # the window its matches need
    size: int  # decompressed bytes, ``PAD`` included
    digest: bytes  # sha256 of ``blocks``


def compress_piece(compressor: zstandard.ZstdCompressor, content: Sequence[bytes], padded: bool) -> Piece:
    """``content`` (joined) compressed on its own, plus ``PAD`` when another piece follows it."""
    data = b"".join([*content, PAD] if padded else content)
    frame = compressor.compress(data)
    window = zstandard.get_frame_parameters(frame).window_size
    blocks = bytearray(frame[_header_size(frame) :])
    position = 0
    while True:
        header = int.from_bytes(blocks[position : position + 3], "little")
        kind, size = (header >> 1) & 3, header >> 3
        if header & _LAST_BLOCK:
            blocks[position] &= ~_LAST_BLOCK & 0xFF
            end = position + 3 + (1 if kind == 1 else size)
            break
        position += 3 + (1 if kind == 1 else size)  # an RLE block holds one byte
    body = bytes(blocks[:end])  # no checksum: the compressor writes none
    return Piece(body, window, len(data), hashlib.sha256(body).digest())


def _header_size(frame: bytes) -> int:
    if frame[:4] != _MAGIC:
        raise ValueError("not a zstd frame")
    descriptor = frame[4]
    single_segment = bool(descriptor & 0x20)
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    dictionary_bytes = (0, 1, 2, 4)[descriptor & 3]
    return 5 + (0 if single_segment else 1) + dictionary_bytes + content_size_bytes


def frame_of(pieces: Sequence[Piece]) -> list[bytes]:
    """The chunks of one frame holding ``pieces`` in order (each but the last made with ``padded``)."""
    size = sum(piece.size for piece in pieces) + (len(SEPARATOR) - len(PAD)) * max(0, len(pieces) - 1)
    window_log = max(10, max((piece.window - 1).bit_length() for piece in pieces) if pieces else 10)
    # Window descriptor (exponent only: a power of two), then the 8-byte content size.
    header = _MAGIC + bytes([0b11 << 6, (window_log - 10) << 3]) + size.to_bytes(8, "little")
    chunks = [header]
    for index, piece in enumerate(pieces):
        if index:
            chunks.append(_RESET)
        chunks.append(piece.blocks)
    chunks.append(_END)
    return chunks


def piece_content(piece: Piece) -> bytes:
    """The bytes ``piece`` was compressed from (its ``PAD`` included, if it has one)."""
    return zstandard.ZstdDecompressor().decompress(b"".join(frame_of([piece])))


def decompressed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A zstd frame's content, chunk by chunk as the compressed ``chunks`` are read (one in memory at
    a time)."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    for chunk in chunks:
        out = decompressor.decompress(chunk)
        if out:
            yield out
