"""Reading an upstream channel's repodata without building a tree of Python objects per record.

conda-forge's linux-64 repodata has hundreds of thousands of records; each is kept as its raw JSON
bytes (msgspec ``Raw``), keyed by file name, once ``record_checks`` has passed it. Upstreams are not
trusted: a record that would break the subdir for clients is dropped and counted; only a document
that is not repodata at all is refused. A cheap scan bounds the document's nesting before msgspec
(which recurses) sees it; a document msgspec cannot take whole is cut into records by ``Scanner``.
A document condagate checked before (its kept copy, after a restart) is read again by
``reload_checked_repodata`` without the per-record checks, bar the records they did not pass as they were.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

import msgspec

from condagate.conda import record_checks, subdirs
from condagate.conda.filters import NameFilter
from condagate.conda.record_checks import (
    MAX_DEPTH,
    RecordRejected,
    accepted_as_written,
    check_bounded_record,
    nests_at_most,
    shown,
)
from condagate.conda.repodata import RepodataParts
from condagate.errors import BadRequest

MAX_REASONS = 10  # the first dropped records, with why, for the connector's page and the log


class UpstreamRepodataInvalid(BadRequest):
    code = "upstream_repodata_invalid"


class _Info(msgspec.Struct):
    subdir: str | None = None


class _Repodata(msgspec.Struct):
    info: _Info | None = None
    packages: dict[str, msgspec.Raw] = {}
    packages_conda: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict, name="packages.conda")


_decode_repodata = msgspec.json.Decoder(_Repodata).decode
_decode_info = msgspec.json.Decoder(_Info | None).decode


def subdir_of_info(text: bytes) -> str | None:
    """The subdir an ``info`` value names, read as the whole parse reads it (msgspec errors raised)."""
    info = _decode_info(text)
    return info.subdir if info is not None else None
_decode_text = msgspec.json.Decoder(str).decode


@dataclass(frozen=True)
class UpstreamRecords:
    """File name -> raw record JSON bytes, file name -> package name (two dicts: a merge copies them
    in C, not record by record); and the records dropped as unservable."""

    subdir: str | None
    records: dict[str, bytes]
    names: dict[str, str]
    dropped: int = 0
    drop_reasons: tuple[tuple[str, str], ...] = ()  # (file name made safe to show, reason), the first few
    # The file names whose records were dropped or rewritten (every other record is served as it was
    # written); None for a document read by the scanner, which ``reload_checked_repodata`` cannot take.
    not_as_written: frozenset[str] | None = None
    # A large subdir read in file name order (``upstream_stream``): its records cut into compressed
    # blocks as they were read, ``records`` then empty.
    parts: RepodataParts | None = None

    def __len__(self) -> int:
        return len(self.parts) if self.parts is not None else len(self.records)


class KnownRecords(Protocol):
    """Records a parse returned before (``UpstreamRecords``, or a snapshot made of them)."""

    @property
    def records(self) -> Mapping[str, bytes]: ...

    @property
    def names(self) -> Mapping[str, str]: ...


class Collected:
    """The records a parse keeps, the ones it drops and why, and which are not served as written."""

    def __init__(self, name_filter: NameFilter | None) -> None:
        self.allows = None if name_filter is None or name_filter.is_open else name_filter.allows
        self.records: dict[str, bytes] = {}
        self.names: dict[str, str] = {}
        self.dropped: list[tuple[str, str]] = []
        self.not_as_written: set[str] = set()

    def keep(self, filenames: list[str], names: list[str], records: list[bytes]) -> None:
        allows = self.allows
        # One string per package name, not one per record: ~28 MB less per 500,000 records, ~15 ms.
        names = list(map(sys.intern, names))
        if allows is not None:
            kept = [i for i, name in enumerate(names) if allows(name)]
            if len(kept) < len(names):
                filenames, names = [filenames[i] for i in kept], [names[i] for i in kept]
                records = [records[i] for i in kept]
        self.store(filenames, names, records)

    def store(self, filenames: list[str], names: list[str], records: list[bytes]) -> None:
        self.records.update(zip(filenames, records, strict=True))
        self.names.update(zip(filenames, names, strict=True))

    def keep_as_written(self, group: dict[str, msgspec.Raw], not_as_written: frozenset[str]) -> None:
        """Records that passed the checks as written before (``reload_checked_repodata``), bar the ones
        ``not_as_written`` names: those are checked again."""
        filenames = list(group)
        records = list(map(bytes, group.values()))
        names = [filename.rsplit("-", 2)[0] for filename in filenames]
        named = [i for i, filename in enumerate(filenames) if filename in not_as_written] if not_as_written else []
        start = 0  # kept in the document's order: the named records are checked where they stand
        for index in named:
            self.keep(filenames[start:index], names[start:index], records[start:index])
            self.check_each([(filenames[index], records[index], "")], None)
            start = index + 1
        self.keep(filenames[start:], names[start:], records[start:])

    def check_each(self, entries: Iterable[_Entry], checked: KnownRecords | None) -> None:
        """Check records one by one (those ``checked`` holds with the same bytes are taken as they were)."""
        known_records = checked.records if checked is not None else {}
        for filename, raw, problem in entries:
            record = bytes(raw)
            known = known_records.get(filename)
            if checked is not None and known is not None and known == record and not problem:
                name, served = checked.names[filename], known
            else:
                try:
                    if problem:
                        raise RecordRejected(problem)
                    name, served = check_bounded_record(filename, record)  # the document's nesting is bounded
                except RecordRejected as exc:
                    self.dropped.append((shown(filename), exc.reason))
                    self.not_as_written.add(filename)
                    continue
            if served is not record and served != record:
                self.not_as_written.add(filename)
            self.keep([filename], [name], [served])

    def check_group(self, group: dict[str, msgspec.Raw], checked: KnownRecords | None) -> None:
        """One ``packages`` object of a document msgspec read whole: the records ``checked`` holds with
        the same bytes as they were, the others in batches (``accepted_as_written``) when every one
        passes as written, else all one by one (to say which fail, and why)."""
        filenames = list(group)
        records = list(map(bytes, group.values()))
        names: list[str | None]
        if checked is not None and checked.records:
            known_records, known_names = checked.records, checked.names
            names = [None] * len(filenames)
            for index, (filename, record) in enumerate(zip(filenames, records, strict=True)):
                known = known_records.get(filename)
                if known is not None and known == record:
                    records[index], names[index] = known, known_names[filename]  # the very bytes kept before
            new = [index for index, name in enumerate(names) if name is None]
            accepted = accepted_as_written([filenames[i] for i in new], [records[i] for i in new])
            if accepted is not None:
                for index, name in zip(new, accepted, strict=True):
                    names[index] = name
                self.keep(filenames, names, records)  # type: ignore[arg-type]  # no None left
                return
        else:
            accepted = accepted_as_written(filenames, records)
            if accepted is not None:
                self.keep(filenames, accepted, records)
                return
        self.check_each([(filename, record, "") for filename, record in zip(filenames, records, strict=True)], checked)

    def result(self, subdir: str | None, not_as_written: frozenset[str] | None) -> UpstreamRecords:
        return UpstreamRecords(
            subdir,
            self.records,
            self.names,
            len(self.dropped),
            tuple(self.dropped[:MAX_REASONS]),
            not_as_written,
        )


def parse_upstream_repodata(
    body: bytes,
    name_filter: NameFilter | None = None,
    *,
    checked: KnownRecords | None = None,
) -> UpstreamRecords:
    """Parse repodata.json bytes; drop records that fail the checks or the filter. ``base_url``,
    and each record's ``url`` and ``channel``, are never passed on: package URLs must point at
    condagate, so records stay relative to the served subdir. Raises ``UpstreamRepodataInvalid``
    only for a document that is not repodata; never for a record.

    ``checked``: records this function returned before (the last snapshot's): one whose file name and
    bytes are unchanged is not checked again. A refresh of a big channel changes few records."""
    if checked is not None and not isinstance(checked.records, dict):
        # Records kept compressed in blocks (``conda.parts_records``) are read in the document's order
        # here, which need not be theirs: one walk of the blocks into a dict, for this parse only.
        checked = UpstreamRecords(None, dict(checked.records.items()), dict(checked.names))
    # doc, packages, record: a record's containers open at most MAX_DEPTH levels below that.
    document = _decode_whole(body) if nests_at_most(body, 3 + MAX_DEPTH) else None
    collected = Collected(name_filter)
    if document is None:
        subdir, entries = _scan(body)
        collected.check_each(entries, checked)
    else:
        subdir = document.info.subdir if document.info else None
        for group in (document.packages, document.packages_conda):
            collected.check_group(group, checked)
    return collected.result(subdir, None if document is None else frozenset(collected.not_as_written))


@functools.cache
def checks_fingerprint() -> str:
    """Names the rules records were checked with: the digest of the code of the checks (this module,
    ``record_checks`` and the subdirs it knows), so that what a changed rule would judge otherwise is
    never taken as checked. "" if unknown."""
    digest = hashlib.sha256()
    try:
        for module in (record_checks, subdirs, sys.modules[__name__]):
            digest.update(Path(module.__file__ or "").read_bytes())
    except OSError:
        return ""
    return digest.hexdigest()


def reload_checked_repodata(
    body: bytes, not_as_written: frozenset[str], name_filter: NameFilter | None = None
) -> UpstreamRecords | None:
    """``parse_upstream_repodata`` again, for a document it parsed whole before (``body`` must be the
    very bytes it was given, which the caller proves, e.g. with a digest kept by condagate): those
    bytes passed the nesting bound, and each record not named in ``not_as_written`` passed the checks
    as written, so it is taken as it is, its package name read from its file name (a checked file
    name is NAME-VERSION-BUILD.EXT, and neither version nor build holds a dash). The records named
    are checked again, with the same outcome. None when the document is not what it was."""
    try:
        document = _decode_repodata(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    collected = Collected(name_filter)
    for group in (document.packages, document.packages_conda):
        collected.keep_as_written(group, not_as_written)
    return collected.result(document.info.subdir if document.info else None, not_as_written)


_Entry = tuple[str, bytes | msgspec.Raw, str]  # file name, record, a problem found by _scan ("" if none)


def _decode_whole(body: bytes) -> _Repodata | None:
    """The document, or None when a record in it is not JSON msgspec takes (left to ``_scan``)."""
    try:
        return _decode_repodata(body)
    except msgspec.ValidationError as exc:  # valid JSON, but not shaped like repodata
        raise UpstreamRepodataInvalid(f"the upstream repodata is not valid: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


# -- cutting a document msgspec cannot take whole into records -----------------------------------------

_WS = rb"[ \t\r\n]*+"
_STR = rb'"(?:[^"\\]++|\\.)*+"'
_FLAT = rb'(?:[^"\[\]{}]++|' + _STR + rb")*+"  # text and strings, no brackets
_WHITESPACE = re.compile(_WS)
_STRING = re.compile(_STR, re.DOTALL)
_KEY = re.compile(_WS + b"(" + _STR + b")" + _WS + b":" + _WS, re.DOTALL)  # a member's key, up to its value
_AFTER_VALUE = re.compile(_WS + rb"([,}])")
_EMPTY_OBJECT_END = re.compile(_WS + rb"\}")
_SCALAR = re.compile(rb"[A-Za-z0-9+\-.]++")  # numbers, true, false, null; msgspec judges them later
_TO_BRACKET = re.compile(_FLAT, re.DOTALL)
_OPEN = frozenset(b"[{")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))


def _scan(body: bytes) -> tuple[str | None, Iterator[_Entry]]:
    """Read the top levels without recursion: a record too deep, or not JSON, is dropped on its own."""
    scanner = Scanner(body)
    subdir: str | None = None
    groups: list[list[_Entry]] = []
    for token in scanner.members():
        key = _text(token)
        if key is None:
            scanner.fail("a key is not valid JSON text")
        if key in ("packages", "packages.conda"):
            groups.append(list(scanner.records()))
        elif key == "info":
            start, depth = scanner.pos, scanner.value()
            if depth > MAX_DEPTH:
                scanner.fail("info nests too deeply")
            try:
                info = _decode_info(body[start : scanner.pos])
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise UpstreamRepodataInvalid(f"the upstream repodata's info is not valid: {exc}") from None
            subdir = info.subdir if info else None
        else:
            scanner.value()
    scanner.skip_whitespace()
    if scanner.pos != len(body):
        scanner.fail("data after the document")
    return subdir, (entry for group in groups for entry in group)


class Scanner:
    """A cursor over a JSON document that steps over values by their brackets, with a stack of its own."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def fail(self, what: str) -> NoReturn:
        raise UpstreamRepodataInvalid(f"the upstream repodata is not valid JSON: {what} at byte {self.pos}")

    def skip_whitespace(self) -> None:
        self.pos = _match(_WHITESPACE, self.body, self.pos).end()

    def expect(self, char: bytes) -> None:
        self.skip_whitespace()
        if self.body[self.pos : self.pos + 1] != char:
            self.fail(f"expected {char.decode()!r}")
        self.pos += 1

    def members(self) -> Iterator[bytes]:
        """Each key (its JSON token) of the object at the cursor; the caller reads the value."""
        self.expect(b"{")
        empty = _EMPTY_OBJECT_END.match(self.body, self.pos)
        if empty is not None:
            self.pos = empty.end()
            return
        while True:
            key = _KEY.match(self.body, self.pos)
            if key is None:
                self.fail("expected a key and ':'")
            self.pos = key.end()
            yield key.group(1)
            after = _AFTER_VALUE.match(self.body, self.pos)
            if after is None:
                self.fail("expected ',' or '}'")
            self.pos = after.end()
            if after.group(1) == b"}":
                return

    def records(self) -> Iterator[_Entry]:
        for key in self.members():
            start, depth = self.pos, self.value()
            raw = self.body[start : self.pos]
            filename = _text(key)
            if filename is None:
                yield key[1:-1].decode(errors="replace"), b"", "the file name is not valid JSON text"
                continue
            problem = f"the record nests deeper than {MAX_DEPTH} levels" if depth - 1 > MAX_DEPTH else ""
            yield filename, raw, problem

    def value(self) -> int:
        """Step over the value at the cursor; return how deep its containers nest (0 for a scalar)."""
        body, pos = self.body, self.pos
        first = body[pos : pos + 1]
        if first == b"{" and (end := body.find(b"}", pos) + 1) and _flat_object(body[pos:end]):
            self.pos = end  # most records: found without stepping from bracket to bracket
            return 2
        if first == b'"' or first not in (b"{", b"["):
            token = (_STRING if first == b'"' else _SCALAR).match(body, pos)
            if token is None:
                self.fail("expected a value")
            self.pos = token.end()
            return 0
        closing = bytearray()  # the bracket each open container expects
        deepest = 0
        while pos < len(body):
            char = body[pos]
            if char in _OPEN:
                closing.append(char + 2)  # '[' + 2 == ']', '{' + 2 == '}'
                deepest = max(deepest, len(closing))
            elif closing and char == closing[-1]:
                closing.pop()
                if not closing:
                    self.pos = pos + 1
                    return deepest
            else:
                self.pos = pos
                self.fail("an unterminated string" if char == ord('"') else "a mismatched bracket")
            pos = _match(_TO_BRACKET, body, pos + 1).end()
        self.pos = pos
        self.fail("unexpected end")


def _flat_object(span: bytes) -> bool:
    """Whether ``span`` is an object whose values are scalars or arrays of scalars, ending at its last
    byte: without escapes, quotes pair up as strings; with no bracket inside a string, every "" pair
    drops out of the skeleton, and one pass over what is left must leave just the braces."""
    return b"\\" not in span and span.translate(None, _NOT_STRUCTURE).replace(b'""', b"").replace(b"[]", b"") == b"{}"


def _text(token: bytes) -> str | None:
    try:
        return _decode_text(token)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):  # e.g. a lone surrogate
        return None


def _match(pattern: re.Pattern[bytes], body: bytes, pos: int) -> re.Match[bytes]:
    found = pattern.match(body, pos)
    assert found is not None  # the pattern matches the empty string
    return found
