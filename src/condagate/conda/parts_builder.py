"""``RepodataParts`` built from records that arrive in file name order (an upstream document read piece
by piece), cut into blocks and compressed as they come: the records of a large subdir are never all in
memory at once, uncompressed. The blocks are the ones ``RepodataParts.from_records`` cuts from the same
records (block ends depend on the names alone)."""

from __future__ import annotations

import operator
from collections.abc import Iterator

from condagate.conda.repodata import Compressing, RepodataParts, _Block, cut_blocks, cut_every

_SUFFIXES = (".tar.bz2", ".conda")  # the kinds of ``repodata.kind_of``, in its order


class NotInOrder(ValueError):
    """A file name came after one that sorts after it (or after itself)."""


class PartsBuilder:
    def __init__(self) -> None:
        self._every = cut_every()
        self._blocks: tuple[list[_Block], list[_Block]] = ([], [])
        self._pending: tuple[tuple[list[str], list[bytes]], ...] = (([], []), ([], []))  # not in a block yet
        self._last: list[str | None] = [None, None]  # per kind, the last file name added
        # Per kind, how many pending records make the next cut worth trying: past what the last cut left
        # (names no block may end after, e.g. a hostile upstream's, would be cut again and again).
        self._cut_at = [2 * self._every, 2 * self._every]
        self._compressing = Compressing()

    def add(self, filenames: list[str], records: list[bytes]) -> None:
        """Records in file name order, per kind (a name of neither kind is not served, as in
        ``from_records``); raises ``NotInOrder`` otherwise, a name given twice included."""
        for kind, suffix in enumerate(_SUFFIXES):
            pairs = [(name, record) for name, record in zip(filenames, records, strict=True) if name.endswith(suffix)]
            if not pairs:
                continue
            names = [name for name, _record in pairs]
            last = self._last[kind]
            if (last is not None and names[0] <= last) or not all(map(operator.lt, names, names[1:])):
                raise NotInOrder(f"{names[0]!r} is not in file name order")
            self._last[kind] = names[-1]
            pending_names, pending_records = self._pending[kind]
            pending_names.extend(names)
            pending_records.extend(record for _name, record in pairs)
            if len(pending_names) >= self._cut_at[kind]:
                self._cut(kind, final=False)
                self._cut_at[kind] = max(2 * self._every, 2 * len(pending_names))

    def pairs(self) -> Iterator[tuple[str, bytes]]:
        """(file name, record) of every record, once ``finish`` cut the last ones (a subdir that turned out
        small keeps a dict of them)."""
        for block in (*self._blocks[0], *self._blocks[1]):
            yield from zip(block.names, block.records, strict=True)

    def finish(self) -> RepodataParts:
        for kind in (0, 1):
            self._cut(kind, final=True)
        released = self._compressing.finish()
        return RepodataParts(self._blocks, self._every, released)

    def _cut(self, kind: int, final: bool) -> None:
        names, records = self._pending[kind]
        blocks = self._blocks[kind]
        taken = 0
        for block in cut_blocks(names, records, self._every, first=not blocks, final=final):
            blocks.append(block)
            self._compressing.add(block)
            taken += len(block.names)
        del names[:taken], records[:taken]
