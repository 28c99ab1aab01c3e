"""Reading an upstream document piece by piece, so that a large subdir is never whole in memory: not its
decompressed JSON (~250 MB at conda-forge scale), nor its records uncompressed.

The document arrives as chunks (a .zst decompressed as it is read). Each ``packages`` object is cut
into runs of members at a record's closing brace followed by ``,`` or ``}``, each run decoded on its own
as ``{RUN}``: that decodes only where the brace closes a record (a brace inside a string or a nested
object leaves ``{RUN}`` unbalanced), so the runs together are the object, member for member. The
records are checked as ``upstream_repodata`` checks them, run by run, and cut into compressed blocks as
they come (``PartsBuilder``), which needs them in file name order, as channels write them (conda-index,
conda-build and rattler-index sort the keys).

Anything else — records out of order (where a file name given twice could not be told), a run too deep
for msgspec, broken JSON, a document too odd to cut — is left to the whole-document parse:
``NotStreamable``, and ``parse_document`` reads the document whole, as before. The outcome is the same
either way, only the memory differs.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Iterable, Iterator
from typing import NoReturn, Protocol

import msgspec

from condagate.conda.filters import NameFilter
from condagate.conda.parts_builder import NotInOrder, PartsBuilder
from condagate.conda.record_checks import MAX_DEPTH, nests_at_most
from condagate.conda.upstream_repodata import (
    Collected,
    KnownRecords,
    Scanner,
    UpstreamRecords,
    UpstreamRepodataInvalid,
    parse_upstream_repodata,
    reload_checked_repodata,
    subdir_of_info,
)

WINDOW = 1024 * 1024  # decompressed bytes looked at for a run of records (~2,000 conda-forge records)
_MAX_WINDOW = 64 * 1024 * 1024  # a value or run that needs more is left to the whole parse
_TRIES = 16  # closing braces tried per window (then it grows, or the document is left to the whole parse)
_MAX_MEMBERS = 64  # top-level members (repodata has five): more is left to the whole parse
_GROUPS = ("packages", "packages.conda")
_BRACE_BEFORE_BRACE = re.compile(rb"\}(?=[ \t\r\n]*+\})")  # pairs overlap: "}}}" holds two
_CLOSING = re.compile(rb"[ \t\r\n]*+\}")
_COMMA = re.compile(rb"[ \t\r\n]*+,")
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


class RepodataDocument(Protocol):
    """An upstream's repodata.json: read in chunks (as often as asked), or whole."""

    def chunks(self) -> Iterator[bytes]: ...

    def whole(self) -> bytes: ...


class PlainDocument:
    """A document already whole in memory (plain repodata.json as received)."""

    _CHUNK = 1024 * 1024

    def __init__(self, body: bytes) -> None:
        self._body = body

    def chunks(self) -> Iterator[bytes]:
        view = memoryview(self._body)
        for start in range(0, len(view), self._CHUNK):
            yield bytes(view[start : start + self._CHUNK])

    def whole(self) -> bytes:
        return self._body


class NotStreamable(Exception):
    """The document is not one this reader takes piece by piece: it is parsed whole."""


def parse_document(
    document: RepodataDocument, name_filter: NameFilter | None = None, *, checked: KnownRecords | None = None
) -> UpstreamRecords:
    """``parse_upstream_repodata`` of the document, read piece by piece where it can be."""
    try:
        return _read(document.chunks(), _InOrder(name_filter), checked=checked, not_as_written=None)
    except NotStreamable:
        pass  # what the reader held goes with the exception, before the document is read whole
    return parse_upstream_repodata(document.whole(), name_filter, checked=checked)


def reload_checked_document(
    document: RepodataDocument, not_as_written: frozenset[str], name_filter: NameFilter | None = None
) -> UpstreamRecords | None:
    """``reload_checked_repodata`` of the document, read piece by piece where it can be."""
    try:
        return _read(document.chunks(), _InOrder(name_filter), checked=None, not_as_written=not_as_written)
    except NotStreamable:
        pass
    return reload_checked_repodata(document.whole(), not_as_written, name_filter)


class _InOrder(Collected):
    """What a parse keeps, its records cut into blocks as they come."""

    def __init__(self, name_filter: NameFilter | None) -> None:
        super().__init__(name_filter)
        self.builder = PartsBuilder()

    def store(self, filenames: list[str], names: list[str], records: list[bytes]) -> None:
        try:
            self.builder.add(filenames, records)
        except NotInOrder as exc:  # e.g. a .conda under "packages" and another under "packages.conda"
            raise NotStreamable(str(exc)) from None
        self.names.update(zip(filenames, names, strict=True))

    def finished(self, subdir: str | None, not_as_written: frozenset[str]) -> UpstreamRecords:
        parts = self.builder.finish()
        if not parts.is_released():  # a small subdir: its records stay a dict
            self.records = dict(self.builder.pairs())
            return self.result(subdir, not_as_written)
        return dataclasses.replace(self.result(subdir, not_as_written), parts=parts)


class _Window(Scanner):
    """A scanner over the part of the document read so far and not yet taken."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__(b"")
        self._chunks = iter(chunks)
        self.ended = False

    def top_up(self) -> None:
        """A window from the cursor on, read again only once less than half of one is left (a member at a
        time, tiny chunks would otherwise copy the window for each)."""
        if len(self.body) - self.pos < WINDOW // 2:
            self.fill(WINDOW)

    def fill(self, size: int) -> None:
        """At least ``size`` bytes from the cursor on, unless the document ends first."""
        have = len(self.body) - self.pos
        if have >= size or self.ended:
            return
        parts = [self.body[self.pos :]]
        while have < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.ended = True
                break
            parts.append(chunk)
            have += len(chunk)
        self.body, self.pos = b"".join(parts), 0

    def fail(self, what: str) -> NoReturn:
        raise NotStreamable(what)


def _read(
    chunks: Iterable[bytes],
    collected: _InOrder,
    *,
    checked: KnownRecords | None,
    not_as_written: frozenset[str] | None,
) -> UpstreamRecords:
    window = _Window(chunks)
    window.fill(WINDOW)
    subdir: str | None = None
    seen: set[str] = set()
    try:
        for token in window.members():
            key = msgspec.json.decode(token, type=str)
            if key in seen or len(seen) == _MAX_MEMBERS:
                raise NotStreamable(f"{key!r} twice, or too many members")
            seen.add(key)
            if key in _GROUPS:
                last: str | None = None
                for group in _runs(window):
                    # Keys in order across runs: none is given twice (a run's own repeats, msgspec takes
                    # as the whole parse does: the last value, where the key first stood).
                    keys = list(group)
                    if (last is not None and keys[0] <= last) or not all(map(operator.lt, keys, keys[1:])):
                        raise NotStreamable(f"{key} is not in file name order")
                    last = keys[-1]
                    if not_as_written is not None:
                        collected.keep_as_written(group, not_as_written)
                    else:
                        collected.check_group(group, checked)
            else:
                value = _value(window)
                if key == "info":
                    subdir = subdir_of_info(value)
            window.top_up()
        window.skip_whitespace()
        window.fill(1)
        if window.pos != len(window.body):
            raise NotStreamable("data after the document")
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError, UpstreamRepodataInvalid):
        raise NotStreamable("not read piece by piece") from None
    # A reload says what it was told (``reload_checked_repodata``); a parse, what it found.
    return collected.finished(subdir, frozenset(collected.not_as_written) if not_as_written is None else not_as_written)


def _value(window: _Window) -> bytes:
    """A value other than a group of records, whole (growing the window up to ``_MAX_WINDOW``)."""
    size = WINDOW
    while True:
        start = window.pos
        try:
            window.value()
        except NotStreamable:
            if window.ended or size >= _MAX_WINDOW:
                raise
            window.pos = start
            size *= 2
            window.fill(size)
            continue
        text = window.body[start : window.pos]
        if not nests_at_most(b"{" + text + b"}", 3 + MAX_DEPTH):  # as the whole parse bounds the document
            raise NotStreamable("a value nests too deeply")
        msgspec.json.decode(text)  # JSON, or not streamable (the whole parse says what is wrong)
        return text


def _runs(window: _Window) -> Iterator[dict[str, msgspec.Raw]]:
    """The members of the object at the cursor, a run at a time; the cursor ends after the object."""
    window.expect(b"{")
    window.skip_whitespace()
    if window.body[window.pos : window.pos + 1] == b"}":
        window.pos += 1
        return
    size = WINDOW
    while True:
        window.fill(size)
        found = _run(window.body, window.pos)
        if found is None:
            if window.ended or size >= _MAX_WINDOW:
                raise NotStreamable("no run of records found")
            size *= 2
            continue
        members, after, more = found
        window.pos = after
        size = WINDOW
        yield members
        if not more:
            return


def _run(body: bytes, start: int) -> tuple[dict[str, msgspec.Raw], int, bool] | None:
    """The members from ``start`` up to the object's end, if one of the first ``_TRIES`` braces
    followed by a brace ends it, else up to one of the last ``_TRIES`` record braces followed by a
    comma in ``body``; the position after that ``}`` or ``,``, and whether more members follow. None
    if no such brace is found (the caller grows the window)."""
    # A record's brace, then the object's: in flat records, the first such pair ends the object.
    for tried, pair in enumerate(_BRACE_BEFORE_BRACE.finditer(body, start)):
        members = _members(body, start, pair.start())
        closing = _CLOSING.match(body, pair.start() + 1)  # the lookahead saw it
        if members is not None and closing is not None:
            return members, closing.end(), False
        if tried == _TRIES:
            raise NotStreamable("records nest objects too often")
    end = len(body)
    for _ in range(_TRIES):
        brace = body.rfind(b"}", start, end)
        if brace < 0:
            return None
        end = brace
        after = _COMMA.match(body, brace + 1)
        if after is not None and (members := _members(body, start, brace)) is not None:
            return members, after.end(), True
    return None


def _members(body: bytes, start: int, brace: int) -> dict[str, msgspec.Raw] | None:
    """The members from ``start`` to the record closed at ``brace``; None if ``brace`` closes none (it
    is in a string or a nested object: then the text is not an object)."""
    text = b"{" + body[start : brace + 1] + b"}"
    # Bounded as the whole parse bounds the document (doc, packages, record: the same passes over the
    # same brackets); also False for text that does not balance.
    if not nests_at_most(b"{" + text + b"}", 3 + MAX_DEPTH):
        return None
    try:
        return _decode_members(text)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
