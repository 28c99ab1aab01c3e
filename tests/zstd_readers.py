"""How clients read a .zst, for tests that check condagate's repodata is read alike by all of them."""

from __future__ import annotations

import io

import zstandard


def frames_in(data: bytes) -> int:
    """How many zstd frames ``data`` holds (py-rattler reads only the first)."""
    count = 0
    while data:
        reader = zstandard.ZstdDecompressor().decompressobj()
        reader.decompress(data)
        data = reader.unused_data
        count += 1
    return count


def conda_decodes(data: bytes) -> bytes:
    """As conda reads a .zst (conda/gateways/repodata/zstd.py): the response written through
    ``ZstdDecompressor().stream_writer``."""
    out = io.BytesIO()
    with zstandard.ZstdDecompressor().stream_writer(out, closefd=False) as writer:
        writer.write(data)
    return out.getvalue()
