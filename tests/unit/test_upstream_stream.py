"""An upstream document read piece by piece (``conda.upstream_stream``) gives exactly what the whole
parse gives — records, names, drops and their reasons, what is not served as written, refusals — for
channel documents in every style and for hostile ones; a large one in file name order is never whole in
memory, nor are its records uncompressed."""

from __future__ import annotations

import json
import random
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard
from test_upstream_records import _Fuzz, deep, document, fn, record

from condagate.conda import parts_builder, repodata, upstream_stream
from condagate.conda.filters import NameFilter
from condagate.conda.parts_records import PartsRecords
from condagate.conda.repodata import FRAME_BYTES_ENV
from condagate.conda.upstream_repodata import (
    UpstreamRecords,
    UpstreamRepodataInvalid,
    parse_upstream_repodata,
    reload_checked_repodata,
)
from condagate.conda.upstream_stream import PlainDocument, parse_document, reload_checked_document
from condagate.errors import UpstreamUnavailable
from condagate.upstream.repodata_fetch import ZstdDocument


class _Counted(PlainDocument):
    """A document that says whether it was asked for whole (the fallback) and the largest chunk it gave."""

    def __init__(self, body: bytes, chunk: int = 997) -> None:
        super().__init__(body)
        self.wholes = 0
        self._chunk = chunk

    def chunks(self) -> Iterator[bytes]:
        body = self.whole()
        self.wholes -= 1  # not a fallback: the chunks are cut from it here
        for start in range(0, len(body), self._chunk):
            yield body[start : start + self._chunk]

    def whole(self) -> bytes:
        self.wholes += 1
        return super().whole()


@pytest.fixture(autouse=True)
def _small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs of a few records, windows that grow for larger values: every edge is crossed often.
    monkeypatch.setattr(upstream_stream, "WINDOW", 600)
    monkeypatch.delenv(FRAME_BYTES_ENV, raising=False)


def _records(parsed: UpstreamRecords) -> dict[str, bytes]:
    return dict(PartsRecords(parsed.parts).items()) if parsed.parts is not None else parsed.records


def _assert_same(streamed: UpstreamRecords, whole: UpstreamRecords) -> None:
    assert _records(streamed) == whole.records
    assert streamed.names == whole.names
    assert (streamed.subdir, streamed.dropped) == (whole.subdir, whole.dropped)
    assert streamed.drop_reasons == whole.drop_reasons
    assert streamed.not_as_written == whole.not_as_written


def _channel(count: int, seed: int = 3) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    entries = []
    for index in range(count):
        rec = record(f"pkg{rng.randrange(count // 3 + 1)}", f"1.{index}", f"h{index:x}_0")
        rec["depends"] = [f"dep{rng.randrange(99)} >={rng.randrange(9)}" for _ in range(rng.randrange(4))]
        entries.append((fn(rec, ".conda" if index % 3 else ".tar.bz2"), rec))
    return entries


def _odd_entries() -> list[tuple[str, dict[str, Any]]]:
    """Records whose strings hold what a careless cut would take for a record's end."""
    odd = [
        record("braces", license='}},"x-1-0.conda":{"name":"x"}}'),
        record("nested", extra={"a": {"b": {"c": "}"}}, "d": []}),
        record("quotes", license='a "quoted" \\ }, { text'),
        record("caf\u00e9", license="\u00e9}\u2603"),
        record("spaces", summary="  }  ,  \n  }"),
        record("long", summary="a long summary, {x} " * 250),  # longer than a window: it grows
    ]
    return [(fn(rec), rec) for rec in odd]


def _document(entries: list[tuple[str, dict[str, Any]]], style: str) -> bytes:
    """repodata.json as channels write it: ``indexed`` as conda-index (indent 2, keys sorted), ``compact``
    sorted, ``shuffled`` in no order, ``conda_first`` with "packages.conda" before "packages"."""
    if style == "shuffled":
        entries = random.Random(5).sample(entries, len(entries))
    packages = {name: rec for name, rec in entries if name.endswith(".tar.bz2")}
    conda = {name: rec for name, rec in entries if name.endswith(".conda")}
    removed = [f"gone-{i}-0.conda" for i in range(300)]
    if style == "conda_first":
        text = json.dumps({"packages.conda": dict(sorted(conda.items())), "removed": removed,
                           "packages": dict(sorted(packages.items())), "info": {"subdir": "linux-64"}})
        return text.encode()
    doc = {"info": {"subdir": "linux-64"}, "packages": packages, "packages.conda": conda, "removed": removed,
           "repodata_version": 1}
    if style == "indexed":
        return json.dumps(doc, indent=2, sort_keys=True).encode()
    return json.dumps(doc, sort_keys=style != "shuffled", separators=(",", ":")).encode()


@pytest.mark.parametrize("frame_bytes", ["", "3000"])  # a small subdir (a dict), a large one (blocks)
@pytest.mark.parametrize("style", ["indexed", "compact", "shuffled", "conda_first"])
def test_a_channel_document_read_piece_by_piece_is_the_whole_parse(
    monkeypatch: pytest.MonkeyPatch, style: str, frame_bytes: str
) -> None:
    monkeypatch.setenv(FRAME_BYTES_ENV, frame_bytes)
    body = _document(_channel(400) + _odd_entries(), style)
    whole = parse_upstream_repodata(body)
    assert len(whole.records) == 405 and whole.dropped == 1  # a name that is not ASCII
    source = _Counted(body)
    streamed = parse_document(source)
    _assert_same(streamed, whole)
    # Read piece by piece, never whole; but for records out of order (a file name given twice could
    # not be told): as before.
    assert source.wholes == (style == "shuffled")
    # Blocks as they were read when large and in file name order; a dict otherwise.
    assert (streamed.parts is not None) == (frame_bytes != "" and style != "shuffled")
    assert streamed.records == {} if streamed.parts is not None else streamed.records == whole.records
    # The same from the .zst, as a worker reads a kept copy.
    _assert_same(parse_document(ZstdDocument(zstandard.ZstdCompressor().compress(body))), whole)
    # Checked against the last parse's records (a refresh), and reloaded as checked.
    _assert_same(parse_document(_Counted(body), checked=streamed), parse_upstream_repodata(body, checked=whole))
    for noted in (whole.not_as_written or frozenset(), frozenset({"gone-1-0.conda", fn(_odd_entries()[1][1])})):
        again = reload_checked_document(_Counted(body), noted)
        reloaded = reload_checked_repodata(body, noted)
        assert again is not None and reloaded is not None
        _assert_same(again, reloaded)


def test_drops_filters_and_rewrites_are_the_whole_parses() -> None:
    bad = [
        ("bad-1.0-0.conda", record("bad", "1.0", "0", md5="short")),
        ("mismatch-1.0-0.conda", record("other", "1.0", "0")),
        (fn(record("urls")), record("urls", url="https://elsewhere.example/x.conda", channel="c")),
    ]
    entries = sorted(_channel(200) + bad + _odd_entries())
    body = _document(entries, "indexed")
    name_filter = NameFilter.from_patterns(["pkg1*", "urls", "braces", "bad"])
    for filtered in (None, name_filter):
        whole = parse_upstream_repodata(body, filtered)
        assert whole.dropped == 3 and whole.not_as_written
        source = _Counted(body)
        _assert_same(parse_document(source, filtered), whole)
        assert source.wholes == 0


_GOOD = [(fn(rec), rec) for rec in [record("a"), record("b")]]


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("body", "whole"),
    [
        # Cut piece by piece: bad records are dropped as the whole parse drops them.
        (document(*_GOOD, (fn(record("c")), b'{"name": "c", "license": "\xff"}')), False),
        (document(*_GOOD, (fn(record("c")), b"5")), True),  # the last record not an object: no brace ends it
        (document(*_GOOD, (b'"\\ud800-1-0.conda"', record("b"))), True),  # msgspec refuses the key
        # The last record ends in an object: "}}" then the group's "}" (pairs of braces overlap).
        (document(*_GOOD, (fn(record("z")), json.dumps(record("z")).encode()[:-1] + b', "zz": {}}')), False),
        # Nesting at the bound the whole parse puts on the document: the same verdict either way.
        (document(*_GOOD, (fn(record("z")), json.dumps(record("z", extra=_nested(14))).encode())), False),
        (document(*_GOOD, (fn(record("z")), json.dumps(record("z", extra=_nested(15))).encode())), True),
        (b'{"info": {"subdir": 5, "subdir": "linux-64"}, "packages": {}}', True),  # info as msgspec reads it
        (document(*_GOOD, (fn(record("z")), record("z", summary="} " * 2_000))), True),  # "} }" in a string, often
        # Left to the whole parse.
        (document(("a-deep-1-0.conda", deep(60)), *_GOOD), True),  # too deep for msgspec
        (document(*_GOOD, ("a-1.0-h0_0.conda", record("a", license="again"))), True),  # a key given twice
        (document(_GOOD[1], _GOOD[0]), True),  # not in file name order
        (b'{"packages": {"a-1-0.conda": {}}, "packages.conda": {"a-1-0.conda": {}}, "packages": {}}', True),
        (b'{"info": {"subdir": 5}, "packages": {}}', True),
        (b'{"packages": {"a-1-0.conda": {"name": "a"}}}}', True),
        (b'{"packages": {"a-1-0.conda": {}}', True),
        (b'{"packages": {"a-1-0.conda": {},}}', True),
        (b"[]", True),
        (b"", True),
    ],
)
def test_hostile_documents_have_the_whole_parses_outcome(body: bytes, whole: bool) -> None:
    try:
        expected: UpstreamRecords | str = parse_upstream_repodata(body)
    except UpstreamRepodataInvalid as exc:
        expected = exc.message
    source = _Counted(body)
    try:
        streamed: UpstreamRecords | str = parse_document(source)
    except UpstreamRepodataInvalid as exc:
        streamed = exc.message
    if isinstance(expected, str) or isinstance(streamed, str):
        assert streamed == expected
    else:
        _assert_same(streamed, expected)
    assert source.wholes == int(whole)  # the fallback read it whole, once


def test_fuzz_hostile_documents_read_piece_by_piece_as_whole() -> None:
    fuzz = _Fuzz(seed=20_261_130)
    streamed = msgspec_takes = 0
    for index in range(1_500):
        if index % 2:
            body = fuzz.document()
        else:  # records in file name order, as channels write them: read piece by piece, mostly
            entries = sorted(fuzz.record() for _ in range(fuzz.rng.randint(1, 12)))
            body = document(*entries)
        try:
            whole: UpstreamRecords | str = parse_upstream_repodata(body)
        except UpstreamRepodataInvalid as exc:
            whole = exc.message
        source = _Counted(body, chunk=random.Random(len(body)).randint(1, 300))
        try:
            outcome: UpstreamRecords | str = parse_document(source)
        except UpstreamRepodataInvalid as exc:
            outcome = exc.message
        if isinstance(whole, str) or isinstance(outcome, str):
            assert outcome == whole, body
        else:
            _assert_same(outcome, whole)
        streamed += source.wholes == 0
        msgspec_takes += not isinstance(whole, str) and whole.not_as_written is not None
    # Most documents msgspec takes whole (the others are the scanner's) were read piece by piece.
    assert streamed > msgspec_takes / 2 > 100, (streamed, msgspec_takes)


def test_a_large_document_is_never_whole_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sizes scaled down with the document: 64 kB windows and steps, 16 kB blocks (the last 8 kept cut).
    monkeypatch.setattr(upstream_stream, "WINDOW", 64 * 1024)
    monkeypatch.setattr(ZstdDocument, "_FEED", 8 * 1024)
    monkeypatch.setenv(FRAME_BYTES_ENV, str(16 * 1024))
    body = _document(_channel(20_000), "indexed")
    compressed = zstandard.ZstdCompressor().compress(body)
    tracemalloc.start()
    try:
        parsed = parse_document(ZstdDocument(compressed))
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = parse_upstream_repodata(ZstdDocument(compressed).whole())
        _current, peak_whole = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.parts is not None and parsed.records == {}
    _assert_same(parsed, whole)
    # Its names (~3 MB here) and compressed blocks, a window and one run's records: under the JSON alone,
    # where the whole parse holds the JSON, a copy of its records and more (~3x).
    assert peak < 0.75 * len(body) and peak < peak_whole / 3, (peak, len(body), peak_whole)


def test_a_kept_copy_that_expands_too_far_is_refused() -> None:
    bomb = zstandard.ZstdCompressor().compress(b" " * (4 * 1024 * 1024))
    with pytest.raises(UpstreamUnavailable, match="larger than"):
        list(ZstdDocument(bomb, limit=1024 * 1024).chunks())
    damaged = bytearray(zstandard.ZstdCompressor().compress(_document(_channel(50), "compact")))
    damaged[len(damaged) // 2 :] = b"\xff" * (len(damaged) - len(damaged) // 2)
    with pytest.raises(UpstreamUnavailable, match="not valid zstd"):
        parse_document(ZstdDocument(bytes(damaged)))


def test_a_zst_of_tiny_frames_is_read_in_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile upstream's .zst of one frame per few bytes: each step's output is one chunk, and the
    window is not copied again for every member (a document of 60,000 top-level members is refused by
    the checks it would meet whole)."""
    monkeypatch.setattr(upstream_stream, "WINDOW", 4 * 1024 * 1024)
    compressor = zstandard.ZstdCompressor()
    members = [b'"k%07d":0,' % index for index in range(60_000)]
    frames = [compressor.compress(b"{")] + [compressor.compress(member) for member in members]
    frames.append(compressor.compress(b'"z":0}'))
    document = ZstdDocument(b"".join(frames))
    chunks = list(document.chunks())
    assert len(chunks) < len(frames) / 100  # one per 256 kB read, not one per frame
    copied = 0
    original_fill = upstream_stream._Window.fill

    def counted_fill(window: upstream_stream._Window, size: int) -> None:
        nonlocal copied
        before = window.body
        original_fill(window, size)
        copied += len(window.body) if window.body is not before else 0

    monkeypatch.setattr(upstream_stream._Window, "fill", counted_fill)
    parsed = parse_document(document)
    assert len(parsed) == 0 and parsed.subdir is None
    assert copied < 4 * len(document.whole())  # the window copied a few times over, not once per member


def test_names_that_end_no_block_are_not_cut_again_and_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks end after names whose checksum the block size divides; names chosen to avoid that must
    not make every added record re-cut all that is pending."""
    monkeypatch.setenv(FRAME_BYTES_ENV, str(512 * 64))  # a block ends after ~1 name in 64
    calls: list[int] = []
    original = repodata.cut_blocks

    def counted(names: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(names))
        return original(names, *args, **kwargs)

    monkeypatch.setattr(parts_builder, "cut_blocks", counted)
    builder = parts_builder.PartsBuilder()
    names: list[str] = []
    index = 0
    while len(names) < 20_000:  # names no block ends after
        name = f"pkg-1.{index}-0.conda"
        index += 1
        if zlib.crc32(b'"' + name.encode()) % 64:
            names.append(name)
    for name in sorted(names):
        builder.add([name], [b"{}"])
    parts = builder.finish()
    assert len(parts) == 20_000 and len(list(parts.blocks())) == 1
    assert sum(calls) < 10 * len(names)  # doubling thresholds: each name cut a few times, not 300
