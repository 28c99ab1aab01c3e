"""Encoding one subdir's repodata from canonical record bytes, without re-parsing any record.

Large subdirs are kept as blocks of records, each compressed on its own and spliced into one zstd frame
(``zstd_splice``), so one more record re-encodes and re-compresses one block, not the subdir."""

from __future__ import annotations

import array
import bisect
import bz2
import collections
import json
import os
import re
import threading
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from condagate.conda.zstd_splice import SEPARATOR, Piece, compress_piece, piece_content

ZSTD_LEVEL = 3
# repodata.json from this size on is kept in blocks spliced into one .zst frame (``spliced_zst``), each
# compressed at ZSTD_LARGE_LEVEL: about twice as fast as level 3 (a 19 MB subdir: ~20 ms against ~45 ms)
# for a few percent more bytes. It depends on the size alone, so every worker gives the same JSON the
# same .zst bytes.
ZSTD_LARGE_BYTES = 4 * 1024 * 1024
ZSTD_LARGE_LEVEL = 1


# File names made only of these need no JSON escaping (all conda file names in practice).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.+!=-]*")
_PLAIN_NAMES = re.compile(r"[A-Za-z0-9_.+!=\x00-]*")  # names joined by NUL


def _quoted(filename: str) -> bytes:
    if _PLAIN_NAME.fullmatch(filename):
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
FRAME_BYTES_ENV = "CONDAGATE_REPODATA_FRAME_BYTES"
DEFAULT_FRAME_BYTES = 1024 * 1024
# A typical conda-forge record is ~500 bytes: turns the frame size into how often a block is cut.
_TYPICAL_RECORD_BYTES = 512


def frame_bytes_setting() -> int | None:
    """The block size asked for with CONDAGATE_REPODATA_FRAME_BYTES (it also makes small subdirs take
    the large subdirs' spliced .zst: for tests), or None."""
    value = os.environ.get(FRAME_BYTES_ENV, "").strip()
    return max(1, int(value)) if value.isdigit() else None


def spliced_zst(json_size: int) -> bool:
    """Whether repodata.json of this size is kept in blocks compressed one by one and spliced into one
    zstd frame (``zstd_splice``; else one join compressed whole at level 3: the bytes small subdirs
    always had). A function of the size (and the setting) alone."""
    return json_size >= ZSTD_LARGE_BYTES or frame_bytes_setting() is not None


def cut_every() -> int:
    return max(1, (frame_bytes_setting() or DEFAULT_FRAME_BYTES) // _TYPICAL_RECORD_BYTES)


class _Block:
    """A run of consecutive records of one kind: ``"NAME":RECORD`` joined by commas, with the comma that
    separates it from the block before (none for the first block of its object); compressed (a
    ``Piece``) once asked for. Never changed once built (``RepodataParts.copy`` shares blocks), except
    that a large subdir's blocks let go of their JSON and of their records once compressed (``release``):
    the piece holds the same bytes, and ``body`` and ``records`` get them back from it when asked."""

    __slots__ = ("_body", "_lengths", "_piece", "_records", "names", "size")

    def __init__(self, names: list[str], records: list[bytes], quoted: list[bytes]) -> None:
        self.names = names
        self._records: list[bytes] | None = records
        self._lengths: array.array[int] | None = None  # the records' lengths, once they are let go of
        pieces = quoted + records  # a list of the right length, then interleaved in place
        pieces[::2], pieces[1::2] = quoted, records
        self._body: bytes | None = b"".join(pieces)
        self.size = len(self._body)
        self._piece: Piece | None = None

    @property
    def body(self) -> bytes:
        body = self._body
        if body is None:  # released: decompressed from the piece, without the padding after it
            body = piece_content(self.piece())[: self.size]
        return body

    @property
    def records(self) -> list[bytes]:
        """The records' bytes, in ``names`` order (a released block's: cut from its JSON again, unless
        it is one of the last few blocks cut or released in this process)."""
        records = self._records
        if records is None:
            records = _recently_cut.get(self)
        if records is None:
            assert self._lengths is not None
            body = self.body
            quoted, _checksums = _quoted_names(self.names, first=not body.startswith(b","))
            records = []
            end = 0
            for prefix, length in zip(quoted, self._lengths, strict=True):
                start = end + len(prefix)
                end = start + length
                records.append(body[start:end])
            _recently_cut.put(self, records)
        return records

    def is_released(self) -> bool:
        return self._records is None

    def piece(self) -> Piece:
        """``body`` compressed on its own (``zstd_splice``); once, by whichever thread asks first."""
        found = self._piece
        if found is None:
            found = self._piece = compress_piece(zstd_compressor(ZSTD_LARGE_LEVEL), [self.body], padded=True)
        return found

    def release(self, remember: bool = True) -> int:
        """Let go of the JSON bytes and the records once compressed (only ``piece`` is needed to serve
        them; the records' lengths are kept to cut them out again); how many JSON bytes. ``remember``: a
        block just changed is likely read again soon (not one of a whole subdir being cut)."""
        records = self._records  # read once: two threads may release a block two versions share
        if self._piece is None or self._body is None:
            return 0
        if records is not None:
            self._lengths = array.array("I", map(len, records))
            if remember:
                _recently_cut.put(self, records)
            self._records = None
        self._body = None
        return self.size

    def same_as(self, other: _Block) -> bool:
        """Whether ``other`` holds the same records under the same names (compared by their compressed
        pieces' digests when both have one: the same JSON compresses to the same piece)."""
        if self is other:
            return True
        if self.names != other.names or self.size != other.size:
            return False
        if self._piece is not None and other._piece is not None:
            return self._piece.digest == other._piece.digest
        return self.records == other.records


class _RecentlyCut:
    """The records of the last few released blocks read (a walk in file name order, shards, the lookups
    of a burst of downloads), shared by every version of the parts: ~1 MB each."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._blocks: collections.OrderedDict[_Block, list[bytes]] = collections.OrderedDict()
        self._guard = threading.Lock()

    def get(self, block: _Block) -> list[bytes] | None:
        with self._guard:
            found = self._blocks.get(block)
            if found is not None:
                self._blocks.move_to_end(block)
            return found

    def put(self, block: _Block, records: list[bytes]) -> None:
        with self._guard:
            self._blocks[block] = records
            while len(self._blocks) > self._size:
                self._blocks.popitem(last=False)


_recently_cut = _RecentlyCut(8)


class RepodataParts:
    """A subdir's ``packages`` and ``packages.conda`` objects kept as sorted runs of records (blocks),
    each with its encoded bytes and, once asked for, compressed on its own: adding or replacing a record
    re-encodes (and re-compresses) one block, the other blocks are shared with the previous value.
    Record bytes are referenced, not copied. ``encode`` gives exactly ``encode_repodata``'s bytes.

    A value is built (``from_records``, ``put``) by one thread and then only read: ``copy`` before
    changing one that readers may hold (it copies two short lists of blocks, not the records)."""

    __slots__ = ("_blocks", "_every", "_released")

    def __init__(self, blocks: tuple[list[_Block], list[_Block]], every: int, released: int = 0) -> None:
        self._blocks = blocks  # per kind, in file name order
        self._every = every
        self._released = released  # JSON bytes let go of since ``release_json`` last said

    @classmethod
    def from_records(
        cls, records: Mapping[str, bytes], exclude: Collection[str] = (), compress: bool = False
    ) -> RepodataParts:
        """``compress``: once the JSON is known to be large (spliced), each block is compressed as soon
        as it is cut and lets go of its JSON, so that a large subdir's JSON is never all in memory
        besides its records."""
        every = cut_every()
        blocks: tuple[list[_Block], list[_Block]] = ([], [])
        compressing = Compressing() if compress else None
        for kind, suffix in enumerate(_KINDS):
            names = sorted(fn for fn in records if fn.endswith(suffix))
            if exclude:
                names = [fn for fn in names if fn not in exclude]
            for block in cut_blocks(names, list(map(records.__getitem__, names)), every, first=True):
                blocks[kind].append(block)
                if compressing is not None:
                    compressing.add(block)
        released = compressing.finish() if compressing is not None else 0
        return cls(blocks, every, released)

    def copy(self) -> RepodataParts:
        return RepodataParts((self._blocks[0].copy(), self._blocks[1].copy()), self._every)

    def put(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Add or replace records (file name, record bytes); only the blocks they fall in are rebuilt."""
        changed: tuple[dict[int, tuple[list[str], list[bytes]]], ...] = ({}, {})  # block index -> new content
        for filename, record in items:
            kind = kind_of(filename)
            if kind < 0:
                continue
            blocks, pending = self._blocks[kind], changed[kind]
            if not blocks:
                blocks.append(_Block([], [], []))
            # The first block whose last name sorts at or after it (the last block past every name).
            at = min(bisect.bisect_left(_Lasts(blocks), filename), len(blocks) - 1)
            if at not in pending:
                pending[at] = (blocks[at].names.copy(), blocks[at].records.copy())
            names, records = pending[at]
            position = bisect.bisect_left(names, filename)
            if position < len(names) and names[position] == filename:
                records[position] = record
            else:
                names.insert(position, filename)
                records.insert(position, record)
        for kind, pending in enumerate(changed):
            if pending:
                blocks = self._blocks[kind]
                for at in sorted(pending, reverse=True):  # splitting shifts only what follows
                    names, records = pending[at]
                    blocks[at : at + 1] = list(cut_blocks(names, records, self._every, first=at == 0))

    def __len__(self) -> int:
        return sum(len(block.names) for kind in self._blocks for block in kind)

    def blocks(self) -> Iterator[_Block]:
        """Every block, ``packages``' then ``packages.conda``'s, in file name order."""
        for kind in self._blocks:
            yield from kind

    def is_released(self) -> bool:
        """Whether its blocks let go of their records (a large subdir's, compressed: ``from_records``)."""
        return any(block.is_released() for block in self.blocks())

    def blocks_of_kinds(self) -> tuple[list[_Block], list[_Block]]:
        """The blocks of each kind (``kind_of``), in file name order: copies of the lists."""
        return self._blocks[0].copy(), self._blocks[1].copy()

    def json_chunks(self, subdir: str, spliced: bool = False) -> list[bytes]:
        """repodata.json as consecutive pieces: the head, each block, the middle, each block, the tail;
        ``spliced``: with ``zstd_splice.SEPARATOR`` (whitespace) after each but the last, as the .zst of
        ``zst_pieces`` decompresses."""
        head, middle, tail = _frame_texts(subdir)
        texts = [head, *(b.body for b in self._blocks[0]), middle, *(b.body for b in self._blocks[1]), tail]
        if not spliced:
            return texts
        chunks = [SEPARATOR] * (2 * len(texts) - 1)
        chunks[::2] = texts
        return chunks

    def release_json(self) -> int:
        """Compressed blocks let go of their JSON (a large subdir serves its JSON decompressed from the
        .zst: ``Encoded.deferred``); the bytes let go of since the last call (``from_records`` with
        ``compress`` lets go of them as it goes)."""
        released, self._released = self._released, 0
        return released + sum(block.release() for kind in self._blocks for block in kind)

    def json_size(self, subdir: str, spliced: bool = False) -> int:
        """The length of ``json_chunks(subdir, spliced)`` joined, without their bytes."""
        head, middle, tail = _frame_texts(subdir)
        texts = 3 + sum(map(len, self._blocks))
        separators = len(SEPARATOR) * (texts - 1) if spliced else 0
        blocks = sum(block.size for kind in self._blocks for block in kind)
        return len(head) + len(middle) + len(tail) + blocks + separators

    def same_records(self, other: RepodataParts) -> bool:
        """Whether ``other`` holds the same records (the very bytes objects, or equal ones) cut alike:
        then its encodings are this one's."""
        if self._every != other._every or list(map(len, self._blocks)) != list(map(len, other._blocks)):
            return False
        return all(
            mine.same_as(theirs)
            for kind in (0, 1)
            for mine, theirs in zip(self._blocks[kind], other._blocks[kind], strict=True)
        )

    def zst_pieces(self, subdir: str) -> list[Piece]:
        """Each piece of ``json_chunks`` compressed on its own, for ``zstd_splice.frame_of``. Blocks
        compressed before are reused; new ones are compressed on two threads (zstd and sha256 release
        the GIL)."""
        blocks = [*self._blocks[0], *self._blocks[1]]
        missing = [block for block in blocks if block._piece is None]
        if len(missing) > 4:
            list(_pool().map(_Block.piece, missing))
        compressor = zstd_compressor(ZSTD_LARGE_LEVEL)
        head_text, middle_text, tail_text = _frame_texts(subdir)
        head = compress_piece(compressor, [head_text], padded=True)
        middle = compress_piece(compressor, [middle_text], padded=True)
        tail = compress_piece(compressor, [tail_text], padded=False)
        count = len(self._blocks[0])
        return [head, *(b.piece() for b in blocks[:count]), middle, *(b.piece() for b in blocks[count:]), tail]

    def encode(self, subdir: str) -> bytes:
        """repodata.json bytes, as ``encode_repodata(subdir, records)``."""
        return b"".join(self.json_chunks(subdir))


class _Lasts(Sequence[str]):
    """The last file name of each block, for bisect, without building a list."""

    __slots__ = ("_blocks",)

    def __init__(self, blocks: list[_Block]) -> None:
        self._blocks = blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]  # bisect passes ints only
        names = self._blocks[index].names
        return names[-1] if names else ""


def cut_blocks(
    names: list[str], records: list[bytes], every: int, first: bool, final: bool = True
) -> Iterator[_Block]:
    """Blocks of consecutive records, each ending after a name whose checksum ``every`` divides
    (``_quoted_names``), or at the end; ``first``: these records open their object (no comma before);
    not ``final``: more records follow, so the ones after the last such name are left out."""
    quoted, checksums = _quoted_names(names, first)
    ends = [index + 1 for index, checksum in enumerate(checksums) if checksum % every == 0]
    if final and (not ends or ends[-1] != len(names)):
        ends.append(len(names))  # the last block ends with the object, wherever that falls
    start = 0
    for end in ends:
        if end > start:
            yield _Block(names[start:end], records[start:end], quoted[start:end])
            start = end


class Compressing:
    """Blocks compressed on the pool while more are cut, once the JSON is past the size from which it is
    spliced (``spliced_zst``: then it is whatever comes after); each lets go of its JSON when done. A
    few blocks in flight at a time."""

    _IN_FLIGHT = 4

    def __init__(self) -> None:
        self._waiting: list[_Block] = []  # cut before the JSON was known to be large
        self._size = 0
        self._pending: collections.deque[tuple[_Block, Future[Piece]]] = collections.deque()
        self._released = 0

    def add(self, block: _Block) -> None:
        if not self._pending and not spliced_zst(self._size + block.size):
            self._size += block.size
            self._waiting.append(block)
            return
        for waiting in [*self._waiting, block]:
            self._pending.append((waiting, _pool().submit(waiting.piece)))
        self._waiting.clear()
        while len(self._pending) > self._IN_FLIGHT:
            self._release_oldest()

    def finish(self) -> int:
        """Wait for the blocks in flight; the JSON bytes let go of."""
        while self._pending:
            self._release_oldest()
        return self._released

    def _release_oldest(self) -> None:
        block, future = self._pending.popleft()
        future.result()
        self._released += block.release(remember=False)


def _quoted_names(names: list[str], first: bool) -> tuple[list[bytes], list[int]]:
    """``,"NAME":`` per name (no comma before the first when ``first``), and the crc32 of each name's
    JSON text: blocks end after the names whose checksum ``every`` divides, so every process and every
    history of changes cuts the same records into the same blocks, and one more record changes one
    block. Plain names (all conda file names in practice) take a few joins and one split."""
    if not names:
        return [], []
    joined = "\x00".join(names)
    if _PLAIN_NAMES.fullmatch(joined) is not None:
        texts = ('"' + joined.replace("\x00", '\x00"')).encode().split(b"\x00")  # '"NAME' each
        quoted = (('"' if first else ',"') + joined.replace("\x00", '":\x00,"') + '":').encode().split(b"\x00")
    else:
        texts = [json.dumps(name).encode()[:-1] for name in names]
        quoted = [b"," + text + b'":' for text in texts]
        if first:
            quoted[0] = quoted[0][1:]
    return quoted, list(map(zlib.crc32, texts))


def _frame_texts(subdir: str) -> tuple[bytes, bytes, bytes]:
    info = json.dumps({"subdir": subdir}, sort_keys=True, separators=(",", ":")).encode()
    return b'{"info":' + info + b',"packages":{', b'},"packages.conda":{', b'},"removed":[],"repodata_version":1}'


_pool_guard = threading.Lock()
_pools: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    with _pool_guard:
        if not _pools:
            _pools.append(ThreadPoolExecutor(2, thread_name_prefix="zstd-frames"))
        return _pools[0]


def kind_of(filename: str) -> int:
    """0 for a .tar.bz2 (``packages``), 1 for a .conda (``packages.conda``), -1 for anything else."""
    if filename.endswith(".tar.bz2"):
        return 0
    return 1 if filename.endswith(".conda") else -1


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


def zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level`` (creating one costs more than a small shard)."""
    cache: dict[int, zstandard.ZstdCompressor] = _compressors.__dict__.setdefault("by_level", {})
    compressor = cache.get(level)
    if compressor is None:
        compressor = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressor


def compress_zstd(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    return zstd_compressor(level).compress(data)


def compress_repodata_zstd(body: bytes) -> bytes:
    """repodata.json's .zst: level 3, or ZSTD_LARGE_LEVEL from ZSTD_LARGE_BYTES on."""
    return compress_zstd(body, ZSTD_LARGE_LEVEL if len(body) >= ZSTD_LARGE_BYTES else ZSTD_LEVEL)


def compress_bz2(data: bytes) -> bytes:
    return bz2.compress(data, compresslevel=9)


def compress_bz2_chunks(chunks: Iterable[bytes]) -> bytes:
    """``compress_bz2`` of the chunks joined (the same bytes), without joining them."""
    compressor = bz2.BZ2Compressor(9)
    return b"".join([*(compressor.compress(chunk) for chunk in chunks), compressor.flush()])
