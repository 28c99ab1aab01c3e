"""A subdir's records by file name, read from the blocks of its ``RepodataParts`` instead of a dict of
their bytes: a large subdir's blocks hold their records compressed (``_Block.release``), so a worker
keeps ~0.3x the JSON for them (the .zst's pieces, which it serves anyway) where a dict kept ~1.1x.

A lookup finds the block by bisection and cuts the records out of its decompressed JSON (~0.5 ms per
1 MiB block); the last few blocks cut in the process are kept, so a walk in file name order (shards,
merges, SCA views) decompresses each block once.
"""

from __future__ import annotations

import bisect
import heapq
import operator
from collections.abc import ItemsView, Iterator, Mapping

from condagate.conda.repodata import RepodataParts, _Block, kind_of

_LOOKED_UP_KEPT = 4096


class PartsRecords(Mapping[str, bytes]):
    """file name -> record bytes of ``parts`` (which must not change: ``RepodataParts.copy`` first)."""

    __slots__ = ("_blocks", "_lasts", "_looked_up", "_parts")

    def __init__(self, parts: RepodataParts) -> None:
        self._parts = parts
        # Per kind (file name suffix), its blocks and their last names, for a bisection in C.
        self._blocks = parts.blocks_of_kinds()
        self._lasts = tuple([block.names[-1] if block.names else "" for block in kind] for kind in self._blocks)
        # Records looked up one by one lately (downloads of the same files, over and over): a miss cuts a
        # whole block (~1 ms); a bound, emptied when full.
        self._looked_up: dict[str, bytes] = {}

    @property
    def parts(self) -> RepodataParts:
        return self._parts

    def _find(self, filename: str) -> tuple[_Block, int] | None:
        if not isinstance(filename, str):
            return None
        kind = kind_of(filename)
        if kind < 0:
            return None
        lasts = self._lasts[kind]
        at = bisect.bisect_left(lasts, filename)
        if at == len(lasts):
            return None
        block = self._blocks[kind][at]
        names = block.names
        position = bisect.bisect_left(names, filename)
        if position == len(names) or names[position] != filename:
            return None
        return block, position

    def __getitem__(self, filename: str) -> bytes:
        record = self._looked_up.get(filename)
        if record is not None:
            return record
        found = self._find(filename)
        if found is None:
            raise KeyError(filename)
        block, position = found
        record = block.records[position]  # a released block's: the last few cut are kept (``_RecentlyCut``)
        if len(self._looked_up) >= _LOOKED_UP_KEPT:
            self._looked_up = {}
        self._looked_up[filename] = record
        return record

    def __contains__(self, filename: object) -> bool:
        return self._find(filename) is not None  # type: ignore[arg-type]  # anything not a str is not in it

    def __iter__(self) -> Iterator[str]:
        for block in self._parts.blocks():
            yield from block.names

    def __len__(self) -> int:
        return len(self._parts)

    def items(self) -> ItemsView[str, bytes]:
        return _Items(self)

    def pairs(self) -> Iterator[tuple[str, bytes]]:
        """(file name, record) in file name order, each block's records cut once."""
        for block in self._parts.blocks():
            yield from zip(block.names, block.records, strict=True)

    def merged_pairs(self) -> Iterator[tuple[str, bytes]]:
        """``pairs`` of both kinds merged into one file name order: a package name's .tar.bz2 and
        .conda files are then seldom far apart (in ``pairs`` the whole ``packages`` object is between)."""
        kinds = [_pairs_of(blocks) for blocks in self._blocks]
        return heapq.merge(*kinds, key=operator.itemgetter(0))


def _pairs_of(blocks: list[_Block]) -> Iterator[tuple[str, bytes]]:
    for block in blocks:
        yield from zip(block.names, block.records, strict=True)


class _Items(ItemsView[str, bytes]):
    """``items()`` that walks the blocks in order (``Mapping``'s would look every name up)."""

    _mapping: PartsRecords

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return self._mapping.pairs()
