"""Hostile upstream repodata: a bad record is dropped with a reason, the records beside it survive,
and only a document that is not repodata at all is refused."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from typing import Any

import msgpack
import msgspec
import pytest

from condagate.conda.filters import NameFilter
from condagate.conda.record_checks import (
    FILENAME_RE,
    RecordRejected,
    accepted_as_written,
    check_record,
    nests_at_most,
)
from condagate.conda.repodata import encode_repodata
from condagate.conda.shards import encode_shard
from condagate.conda.upstream_repodata import (
    MAX_REASONS,
    UpstreamRecords,
    UpstreamRepodataInvalid,
    _decode_whole,
    _scan,
    parse_upstream_repodata,
)

SHA256 = "a" * 64
MD5 = "b" * 32


def record(name: str = "good", version: str = "1.0", build: str = "h0_0", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": ["python >=3.10"],
        "constrains": [],
        "license": "MIT",
        "md5": MD5,
        "sha256": SHA256,
        "size": 1234,
        "subdir": "linux-64",
        "timestamp": 1_700_000_000_000,
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not _ABSENT}


_ABSENT: Any = object()


def fn(rec: dict[str, Any], extension: str = ".conda") -> str:
    return f"{rec['name']}-{rec['version']}-{rec['build']}{extension}"


def document(*entries: tuple[str | bytes, dict[str, Any] | bytes], info: bytes = b'{"subdir":"linux-64"}') -> bytes:
    """repodata.json with each record (a dict, or raw JSON text) under "packages.conda"; a key given
    as bytes is written as it is, to inject what json.dumps would escape."""
    members = []
    for key, value in entries:
        key_token = key if isinstance(key, bytes) else json.dumps(key).encode()
        value_text = value if isinstance(value, bytes) else json.dumps(value).encode()
        members.append(key_token + b":" + value_text)
    return b'{"info":' + info + b',"packages":{},"packages.conda":{' + b",".join(members) + b'},"removed":[]}'


GOOD = [record("alpha"), record("beta", "2.1", "py_1"), record("zeta", "0.1", "0")]


def with_good(*hostile: tuple[str | bytes, dict[str, Any] | bytes]) -> bytes:
    """The hostile entries between good records, so a sloppy cut would take a neighbour with it."""
    good = [(fn(rec), rec) for rec in GOOD]
    return document(good[0], *hostile, good[1], good[2])


def assert_dropped(parsed: UpstreamRecords, count: int, reason: str) -> None:
    assert sorted(parsed.records) == sorted(fn(rec) for rec in GOOD), parsed.drop_reasons
    assert parsed.dropped == count, parsed.drop_reasons
    assert parsed.drop_reasons and all(reason in why for _, why in parsed.drop_reasons), parsed.drop_reasons
    for filename, raw in parsed.records.items():
        assert json.loads(raw)["name"] == parsed.names[filename]
        msgpack.packb(msgspec.json.decode(raw))


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("levels", [33, 40, 990, 3_000, 200_000])
def test_a_record_nested_too_deep_is_dropped_alone(levels: int) -> None:
    bad = record("deep")
    raw = json.dumps(bad).encode()[:-1] + b',"extra":' + deep(levels) + b"}"
    assert_dropped(parse_upstream_repodata(with_good((fn(bad), raw))), 1, "nests deeper than 32 levels")


def test_nesting_up_to_the_upload_bound_is_kept() -> None:
    rec = record("nested")
    raw = json.dumps(rec).encode()[:-1] + b',"extra":' + deep(32) + b"}"
    parsed = parse_upstream_repodata(document((fn(rec), raw)))
    assert parsed.dropped == 0 and list(parsed.records) == [fn(rec)]
    assert parsed.records[fn(rec)] == raw


def test_deep_nesting_never_reaches_msgspec_even_with_a_raised_recursion_limit() -> None:
    # msgspec guards its recursion with the interpreter's limit only: raised, it overflows the C stack.
    script = (
        "import sys; sys.setrecursionlimit(10**7)\n"
        "from condagate.conda.upstream_repodata import parse_upstream_repodata\n"
        "body = b'{\"packages.conda\":{\"a-1-0.conda\":' + b'[' * 10**6 + b']' * 10**6 + b'}}'\n"
        "parsed = parse_upstream_repodata(body)\n"
        "print(parsed.dropped, parsed.drop_reasons[0][1])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 the record nests deeper than 32 levels"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"size": 2**64}, "out of range"),
        ({"build_number": 2**64}, "out of range"),
        ({"timestamp": 10**30}, "out of range"),
        ({"extra": 2**64}, "integer outside the 64-bit range"),
        ({"extra": {"deeper": [1, -(2**63) - 1]}}, "integer outside the 64-bit range"),
        ({"build_number": -5}, "out of range"),
        ({"build_number": "5"}, "wrong type"),
        ({"build_number": 1.5}, "wrong type"),
        ({"depends": "notalist"}, "wrong type"),
        ({"depends": ["ok", 5]}, "wrong type"),
        ({"depends": ["x" * 5000]}, "out of range"),
        ({"depends": ["a"] * 5000}, "out of range"),
        ({"constrains": {"a": 1}}, "wrong type"),
        ({"size": -1}, "out of range"),
        ({"size": 2**53}, "out of range"),
        ({"sha256": "z" * 64}, "hex digest"),
        ({"sha256": "a" * 63}, "out of range"),
        ({"md5": "0x" + "a" * 30}, "hex digest"),
        ({"md5": 5}, "wrong type"),
        ({"timestamp": -1}, "out of range"),
        ({"timestamp": "yesterday"}, "wrong type"),
        ({"subdir": "linux-99"}, "unknown subdir"),
        ({"subdir": 64}, "wrong type"),
        ({"noarch": "maybe"}, "wrong type"),
        ({"license": ["MIT"]}, "wrong type"),
        ({"version": None}, "wrong type"),
        ({"build": _ABSENT}, "wrong type"),
    ],
)
def test_a_record_with_a_bad_field_is_dropped_alone(fields: dict[str, Any], reason: str) -> None:
    bad = record("bad", **fields)
    filename = "bad-1.0-h0_0.conda"
    assert_dropped(parse_upstream_repodata(with_good((filename, bad))), 1, reason)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b'"bad\\u0001-1.0-h0_0.conda"', "file name"),
        (b'"bad-1.0-h0_0.conda\\n"', "file name"),
        (b'"../bad-1.0-h0_0.conda"', "file name"),
        (b'"bad/x-1.0-h0_0.conda"', "file name"),
        (b'"bad\\\\x-1.0-h0_0.conda"', "file name"),
        (b'"Bad-1.0-h0_0.conda"', "file name"),
        (b'"b\xc3\xa4d-1.0-h0_0.conda"', "file name"),
        (b'"bad-1.0-h0_0.zip"', "file name"),
        (b'"' + b"b" * 250 + b'-1.0-h0_0.conda"', "file name"),
        (b'"other-1.0-h0_0.conda"', "does not match"),
        (b'"bad-1.1-h0_0.conda"', "does not match"),
        (b'"\\udcff-1.0-h0_0.conda"', "not valid JSON text"),
    ],
)
def test_a_hostile_file_name_is_dropped_and_shown_escaped(key: bytes, reason: str) -> None:
    parsed = parse_upstream_repodata(with_good((key, record("bad"))))
    assert_dropped(parsed, 1, reason)
    for shown, _ in parsed.drop_reasons:
        assert shown.isprintable() and shown.isascii() and len(shown) <= 80


def test_name_version_and_build_must_agree_part_by_part() -> None:
    # "a-b" "1-0" "h0" spells the same file name as "a-b-1" "0" "h0"; clients could not split it back.
    bad = record("a-b", "1-0", "h0")
    assert_dropped(parse_upstream_repodata(with_good(("a-b-1-0-h0.conda", bad))), 1, "does not match")
    spaced = record("bad", "1.0 x", "h0_0")
    assert_dropped(parse_upstream_repodata(with_good(("bad-1.0 x-h0_0.conda", spaced))), 1, "file name")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"name":"bad","version":"1.0","build":"h0_0","extra":1e400}', "not portable JSON"),
        (b'{"name":"bad","version":"1.0","build":"h0_0","extra":"\\ud800"}', "not valid JSON"),
        (b'{"name":"bad","version":"1.0","build":"h0_0","license":"\\udc00x"}', "not valid JSON"),
        (b'{"name":"bad","version":"1.0","build":"h0_0","extra":"\xff"}', "not portable JSON"),
        (b'{"name":"b\xffd","version":"1.0","build":"h0_0"}', "not valid JSON"),
        (b'{"name":"bad","version":"1.0","build":"h0_0",}', "not valid JSON"),
        (b'{"name":"bad","version":"1.0","build":"h0_0","extra":NaN}', "not valid JSON"),
        (b'{"name":"bad","version":"1.0","build":"h0_0","extra":"a\x01b"}', "not valid JSON"),
        (b"[1, 2]", "wrong type"),
        (b'"a string"', "wrong type"),
        (b"null", "wrong type"),
    ],
)
def test_a_record_that_is_not_portable_json_is_dropped_alone(raw: bytes, reason: str) -> None:
    assert_dropped(parse_upstream_repodata(with_good(("bad-1.0-h0_0.conda", raw))), 1, reason)


def test_url_and_channel_are_removed_and_the_rest_kept() -> None:
    rec = record("moved", url="https://elsewhere.example/moved-1.0-h0_0.conda", channel="https://elsewhere.example")
    rec["track_features"] = "x"
    rec["unknown_future_field"] = {"kept": [1, "two"]}
    parsed = parse_upstream_repodata(document((fn(rec), rec)), None)
    name, raw = parsed.names[fn(rec)], parsed.records[fn(rec)]
    served = json.loads(raw)
    assert name == "moved" and "url" not in served and "channel" not in served
    assert served == {key: value for key, value in rec.items() if key not in ("url", "channel")}
    check_record(fn(rec), raw)  # what is served passes again, unchanged
    assert check_record(fn(rec), raw) == ("moved", raw)


def test_untouched_records_keep_their_bytes() -> None:
    raw = b'{ "name" : "same", "version":"1", "build":"0",\n "depends": [ ] }'
    parsed = parse_upstream_repodata(document(("same-1-0.conda", raw)))
    assert (parsed.names["same-1-0.conda"], parsed.records["same-1-0.conda"]) == ("same", raw)


def test_base_url_is_not_passed_on_and_the_filter_still_applies() -> None:
    body = document(*[(fn(rec), rec) for rec in GOOD], info=b'{"subdir":"linux-64","base_url":"https://x.example/"}')
    parsed = parse_upstream_repodata(body, NameFilter.from_patterns(["alpha", "zeta"]))
    assert parsed.subdir == "linux-64" and sorted(parsed.names.values()) == ["alpha", "zeta"]
    assert parsed.dropped == 0 and parsed.drop_reasons == ()


def test_only_the_first_reasons_are_kept_but_all_drops_are_counted() -> None:
    hostile = [(f"bad-1.{i}-h0_0.conda", record("bad", f"1.{i}", build_number=-i - 1)) for i in range(25)]
    parsed = parse_upstream_repodata(document(*hostile, (fn(GOOD[0]), GOOD[0])))
    assert parsed.dropped == 25 and len(parsed.drop_reasons) == MAX_REASONS and len(parsed) == 1
    assert parsed.drop_reasons[0][0] == "bad-1.0-h0_0.conda"


def test_records_still_serve_as_repodata_and_shards() -> None:
    rec = record("shard", extra=2**64 - 1, url="https://x.example/a")
    parsed = parse_upstream_repodata(with_good((fn(rec), rec)))
    assert fn(rec) in parsed.records
    records = parsed.records
    served = json.loads(encode_repodata("linux-64", records))
    assert set(served["packages.conda"]) == set(records)
    encode_shard((filename, msgspec.json.decode(raw)) for filename, raw in records.items())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"packages": []}',
        b'{"packages": {"a-1-0.conda": {}}',  # truncated
        b'{"packages": {"a-1-0.conda": {"name": "a"}}}}',
        b'{"packages": {"a-1-0.conda": {"name": "a"]}}',
        b'{"packages": {"a-1-0.conda" {"name": "a"}}}',
        b'{"info": {"subdir": 5}, "packages": {}}',
        b'{"info": ' + deep(100) + b', "packages": {}}',
        b'{"packages": {"a-1-0.conda": "unterminated}}',
        b"{" * 100_000,
    ],
)
def test_a_broken_document_is_refused_clearly(body: bytes) -> None:
    with pytest.raises(UpstreamRepodataInvalid, match="upstream repodata") as caught:
        parse_upstream_repodata(body)
    assert caught.value.status_code == 400 and caught.value.code == "upstream_repodata_invalid"


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b'{"a": "]]]]"}', 1),
        (b'{"a": "[[[[", "b": "\\"[[[["}', 1),
        (b'{"a": ["\\\\", "]"]}', 2),
        (b'{"a": "\\n", "b": [["x"]]}', 3),
    ],
)
def test_brackets_and_escapes_inside_strings_do_not_count_as_nesting(body: bytes, depth: int) -> None:
    assert _reference_depth(body) == depth
    assert nests_at_most(body, 2 * depth)  # each pass peels one or two levels
    deeper = body.replace(b'"a"', b'"z":' + deep(5) + b',"a"', 1)
    assert not nests_at_most(deeper, 5)


# -- fuzz: random hostile documents --------------------------------------------------------------------

_ODD_TEXT = ["", "\x00", "\x01", "\x7f", "\u2028", "é", "日本", "\U0001f600", "/", "\\", '"', "-", " ", "\n", "a" * 300]
_ODD_NUMBERS = [
    b"0",
    b"-1",
    b"1.5",
    b"1e400",
    b"-1e400",
    b"1e-400",
    str(2**63).encode(),
    str(2**64).encode(),
    str(-(2**63) - 1).encode(),
    b"9" * 40,
    b"-0",
    b"NaN",
    b"Infinity",
    b"01",
    b"1.",
    b"true",
    b"null",
]


class _Fuzz:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self) -> bytes:
        """A JSON string token, sometimes with what msgspec refuses: lone surrogates, bad UTF-8, raw controls."""
        r = self.rng
        pieces = [json.dumps(r.choice(_ODD_TEXT) + r.choice(["x", "1.0", "h0_0", "py"]))[1:-1].encode()]
        roll = r.random()
        if roll < 0.05:
            pieces.append(r.choice([b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\u0000"]))
        elif roll < 0.08:
            pieces.append(r.choice([b"\xff", b"\xc3", b"\x01", b"\\q"]))
        return b'"' + b"".join(pieces) + b'"'

    def value(self, depth: int = 0) -> bytes:
        r = self.rng
        roll = r.random()
        if roll < 0.3:
            return self.text()
        if roll < 0.55:
            return r.choice(_ODD_NUMBERS) if r.random() < 0.5 else str(r.randint(-(2**70), 2**70)).encode()
        if roll < 0.6:
            return deep(r.choice([1, 30, 33, 60, 1_500]))
        if depth > 4 or roll < 0.75:
            return r.choice([b"true", b"false", b"null", b"[]", b"{}"])
        if roll < 0.88:
            return b"[" + b",".join(self.value(depth + 1) for _ in range(r.randint(0, 3))) + b"]"
        return b"{" + b",".join(self.text() + b":" + self.value(depth + 1) for _ in range(r.randint(0, 3))) + b"}"

    def record(self) -> tuple[bytes, bytes]:
        r = self.rng
        rec = record(
            r.choice(["good", "good-name", "Good", "go od", "_x"]),
            r.choice(["1.0", "1.0-1", "2!1.0+local", "1.0\x01"]),
            r.choice(["h0_0", "py_1", "0", "h-0"]),
        )
        fields: dict[str, bytes] = {key: json.dumps(value).encode() for key, value in rec.items()}
        for _ in range(r.randint(0, 4)):
            field = r.choice([*fields, "url", "channel", "noarch", "track_features", "extra", "purls", "depends"])
            if r.random() < 0.2:
                fields.pop(field, None)
            else:
                fields[field] = self.value()
        filename = f"{rec['name']}-{rec['version']}-{rec['build']}{r.choice(['.conda', '.tar.bz2', '.zip'])}"
        key = json.dumps(filename).encode() if r.random() < 0.9 else self.text()
        members = [json.dumps(name).encode() + b":" + value for name, value in fields.items()]
        if r.random() < 0.1 and members:
            members.append(members[0])  # a duplicate key
        raw = b"{" + b",".join(members) + b"}"
        if r.random() < 0.03:
            raw = self.value()
        elif r.random() < 0.02:
            raw = raw[: r.randint(1, len(raw) - 1)] + b"," + raw[-1:]  # a syntax error inside the record
        return key, raw

    def document(self) -> bytes:
        r = self.rng
        entries = [self.record() for _ in range(r.randint(0, 12))]
        info = self.value() if r.random() < 0.05 else r.choice([b'{"subdir":"linux-64"}', b"null", b"{}"])
        body = document(*entries, info=info)
        roll = r.random()
        if roll < 0.05:
            return body[: r.randint(0, len(body))]
        if roll < 0.08:
            position = r.randint(0, len(body))
            return body[:position] + r.choice([b"]", b"}", b'"', b"[", b",", b"\\"]) + body[position:]
        return body


def test_fuzz_random_hostile_documents_never_break_parsing() -> None:
    fuzz = _Fuzz(seed=20_240_601)
    started = time.monotonic()
    kept = dropped = refused = 0
    for _ in range(3_000):
        body = fuzz.document()
        try:
            parsed = parse_upstream_repodata(body)
        except UpstreamRepodataInvalid:
            refused += 1
            continue
        dropped += parsed.dropped
        assert len(parsed.drop_reasons) == min(parsed.dropped, MAX_REASONS)
        for filename, raw in parsed.records.items():
            name = parsed.names[filename]
            kept += 1
            assert FILENAME_RE.fullmatch(filename) and len(filename) <= 255
            assert check_record(filename, raw) == (name, raw)  # re-checking passes and changes nothing
            value = json.loads(raw)
            assert value["name"] == name and "url" not in value and "channel" not in value
            msgpack.packb(msgspec.json.decode(raw))
        records = parsed.records
        json.loads(encode_repodata("linux-64", records))
        encode_shard((filename, msgspec.json.decode(raw)) for filename, raw in records.items())
    assert kept > 300 and dropped > 2_000 and refused > 100, (kept, dropped, refused)
    assert time.monotonic() - started < 10


def _one_by_one(filename: str, raw: bytes) -> str | None:
    """The package name when ``check_record`` passes the record as written, else None."""
    try:
        name, served = check_record(filename, raw)
    except RecordRejected:
        return None
    return name if served == raw else None


def test_fuzz_the_batch_check_agrees_with_the_one_by_one_check() -> None:
    """``accepted_as_written`` (the fast path for large upstreams) accepts a batch only when each record
    passes ``check_record`` unchanged, with the same names; what it leaves, the one-by-one check judges."""
    fuzz = _Fuzz(seed=7)
    agreed = accepted = 0
    for _ in range(4_000):
        key, raw = fuzz.record()
        try:
            filename = json.loads(key)
        except ValueError:
            continue
        if not isinstance(filename, str) or nests_at_most(raw, 66) is False:
            continue
        expected = _one_by_one(filename, raw)
        good = [(fn(rec), json.dumps(rec).encode()) for rec in GOOD]
        batch = [*good[:2], (filename, raw), good[2]]
        names = accepted_as_written([f for f, _ in batch], [r for _, r in batch])
        if expected is None:
            assert names is None, (filename, raw)  # never accepts what the one-by-one check refuses
        elif names is not None:
            assert names == ["alpha", "beta", expected, "zeta"], (filename, raw)
            accepted += 1
        # else: a record the batch leaves to the one-by-one check (fields outside the known set)
        agreed += 1
    assert agreed > 3_000 and 100 < accepted < agreed - 1_000, (agreed, accepted)


@pytest.mark.parametrize(
    "fields",
    [
        {"version": "1.0 zeta 0 \nalpha"},  # a field holding a newline cannot pass as two records' lines
        {"build": "h0_0 \nbeta 2.1 py_1"},  # without the count: two lines that each match
        {"sha256": "a" * 63 + "\n"},
        {"subdir": "linux-64\n"},
    ],
)
def test_a_newline_in_a_field_fails_the_batch_as_it_fails_the_record(fields: dict[str, Any]) -> None:
    rec = record("alpha", **fields)
    raw = json.dumps(rec).encode()
    filename = fn(rec)
    assert _one_by_one(filename, raw) is None
    assert accepted_as_written([filename, fn(GOOD[1])], [raw, json.dumps(GOOD[1]).encode()]) is None


def test_the_batch_check_spans_many_batches_and_keeps_the_order() -> None:
    recs = [record(f"pkg{k:05d}") for k in range(5_000)]
    filenames, raws = [fn(rec) for rec in recs], [json.dumps(rec).encode() for rec in recs]
    assert accepted_as_written(filenames, raws) == [rec["name"] for rec in recs]
    raws[4_500] = json.dumps(dict(recs[4_500], build_number=-1)).encode()  # in the third batch
    assert accepted_as_written(filenames, raws) is None


def test_records_checked_before_are_reused_only_while_their_bytes_are_unchanged() -> None:
    before = parse_upstream_repodata(document(*[(fn(rec), rec) for rec in GOOD]))
    changed = dict(GOOD[1], build_number=-1)  # now hostile
    after = parse_upstream_repodata(
        document((fn(GOOD[0]), GOOD[0]), (fn(changed), changed), (fn(GOOD[2]), GOOD[2])),
        NameFilter.from_patterns(["!zeta"]),
        checked=before,
    )
    assert list(after.records) == [fn(GOOD[0])]
    assert after.records[fn(GOOD[0])] is before.records[fn(GOOD[0])]  # not decoded again
    assert after.dropped == 1 and "out of range" in after.drop_reasons[0][1]


def test_fuzz_the_scanner_cuts_records_as_msgspec_does() -> None:
    rng = random.Random(11)
    strings = ["", "}", "{", "]", "[", '"', "\\", "\\}", "é", "\x00", "a]b}c", "\U0001f600", "x" * 50]

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.4:
            return rng.choice([*strings, 1, -2.5, 2**64 - 1, True, None])
        if roll < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(strings): value(depth + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(300):
        records = {
            f"n{i}-1-0.conda": {
                "name": f"n{i}",
                "version": "1",
                "build": "0",
                "x": value(0),
                "y": [rng.choice(strings)],
            }
            for i in range(rng.randint(0, 6))
        }
        body = json.dumps(
            {"info": {"subdir": "noarch"}, "removed": [value(0)], "packages.conda": records, "packages": {}},
            indent=rng.choice([None, 1, "\t"]),
            ensure_ascii=rng.random() < 0.5,
        ).encode()
        whole = _decode_whole(body)
        assert whole is not None and whole.info is not None
        subdir, entries = _scan(body)
        assert subdir == whole.info.subdir == "noarch"
        assert [(filename, raw) for filename, raw, _ in entries] == [
            (filename, bytes(raw)) for filename, raw in whole.packages_conda.items()
        ]


def test_fuzz_the_nesting_bound_is_never_too_generous() -> None:
    rng = random.Random(7)
    tricky = [b'"]"', b'"["', b'"\\""', b'"\\\\"', b'"\\\\\\"]"', b'"{\\n}"', b'"\\u005d"', b"1", b'"x"']

    def value(depth: int) -> bytes:
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(tricky)
        items = [value(depth - 1) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            return b"[" + b",".join(items) + b"]"
        return b"{" + b",".join(rng.choice(tricky[:-2]) + b":" + item for item in items) + b"}"

    for _ in range(2_000):
        body = value(rng.randint(0, 10))
        if rng.random() < 0.3:  # and sometimes not JSON any more
            position = rng.randint(0, len(body))
            body = body[:position] + rng.choice([b"[", b"]", b"{", b"}", b'"', b"\\"]) + body[position:]
        depth = _reference_depth(body)
        for limit in range(12):
            if nests_at_most(body, limit):
                assert depth <= limit, (body, limit)
            elif depth * 2 <= limit:  # each pass peels at least one level: only a broken document is turned away
                with pytest.raises(ValueError):
                    json.loads(body)


def _reference_depth(body: bytes) -> int:
    """Deepest container a reader reaches: brackets outside strings, up to where the text stops being JSON-like."""
    depth = deepest = 0
    in_string = escaped = False
    for char in body.decode("latin-1"):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "\\":  # outside a string: where a reader stops
            return deepest
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
            if depth < 0:
                return deepest
    return deepest


def test_record_rejected_names_its_reason() -> None:
    with pytest.raises(RecordRejected, match="file name") as caught:
        check_record("x", b'{"name":"a","version":"1","build":"0"}')
    assert "file name" in caught.value.reason
