"""Checking one upstream repodata record with the bounds uploads get (see ``package.py``).

An upstream record is served as JSON, decoded for shards and msgpack-encoded: one value outside
what those formats and the clients accept would break the whole subdir for everyone, so a record
that fails a check is dropped, with a reason. Typed msgspec Structs do the checks in C; only records
with fields outside the known set are decoded into Python objects and walked.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NoReturn

import msgspec

from condagate.conda.subdirs import KNOWN_SUBDIRS

# The bounds of package.py and subdirs.py, for records that arrive without an archive.
MAX_DEPTH = 32  # container levels below the record object; clients parse with a recursion limit
MAX_BUILD_NUMBER = 2**63 - 1  # clients read it as an unsigned 64-bit integer
MAX_TIMESTAMP = 253_402_300_799_999  # milliseconds: the year 9999
INT_RANGE = range(-(2**63), 2**64)  # what msgpack (shards) can encode
MAX_SIZE = 2**53 - 1  # exact in every JSON reader, JavaScript's included
MAX_RECORD_BYTES = 1 << 20  # the largest conda-forge records (metapackages) are a few tens of kilobytes
MAX_SPECS = 4096  # entries of depends / constrains
MAX_SPEC_LENGTH = 2048
# NAME-VERSION-BUILD.EXT as uploads require it: a lower-case name, no '/', '\\', control or non-ASCII
# characters, at most 255 characters; version and build hold no dash, so the split is unambiguous.
_NAME, _VERSION, _BUILD = r"[a-z0-9_][a-z0-9_.\-]*", r"[A-Za-z0-9_.+!*]+", r"[A-Za-z0-9_.+]+"
_EXTENSION = r"(?:\.conda|\.tar\.bz2)"
FILENAME_RE = re.compile(f"{_NAME}-{_VERSION}-{_BUILD}{_EXTENSION}")
MAX_FILENAME = 255
REMOVED_FIELDS = ("url", "channel")  # they would send clients to another host, bypassing condagate
# One regex call per record, on "NAME VERSION BUILD DIGESTS": no piece it matches holds a space, so a
# field holding one cannot shift the others into place; version and build hold no dash.
_PARTS = re.compile(f"{_NAME} {_VERSION} {_BUILD} [0-9a-fA-F]*")
_HEX = re.compile(r"[0-9a-fA-F]*")
_SUBDIRS = frozenset((*KNOWN_SUBDIRS, None))  # absent is fine
_SAFE_DEPTH = 2 * (MAX_DEPTH + 1)  # nests_at_most(_SAFE_DEPTH) holds for every record within MAX_DEPTH

_Spec = Annotated[str, msgspec.Meta(max_length=MAX_SPEC_LENGTH)]
_Specs = Annotated[list[_Spec], msgspec.Meta(max_length=MAX_SPECS)]
_Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_SIZE)]
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # msgspec bounds stop at int64
# Lengths here; that they are hex is checked in Python (a msgspec pattern costs a regex call per field).
_Md5 = Annotated[str, msgspec.Meta(min_length=32, max_length=32)]
_Sha256 = Annotated[str, msgspec.Meta(min_length=64, max_length=64)]


class _Record(msgspec.Struct, gc=False):
    """The fields conda and rattler read with a fixed type; a wrong type there fails their whole parse."""

    name: str
    version: str
    build: str
    build_number: Annotated[int, msgspec.Meta(ge=0, le=MAX_BUILD_NUMBER)] = 0
    depends: _Specs = []
    constrains: _Specs = []
    subdir: str | None = None
    size: _Size | None = None
    md5: _Md5 | None = None
    sha256: _Sha256 | None = None
    timestamp: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMESTAMP)] | None = None
    indexed_timestamp: _Int64 | float | None = None  # rattler-index writes it; clients do not read it
    legacy_bz2_md5: _Md5 | None = None
    legacy_bz2_size: _Size | None = None
    license: str | None = None
    license_family: str | None = None
    noarch: Literal["generic", "python"] | bool | None = None
    features: str | None = None
    track_features: str | list[str] | None = None
    arch: str | None = None
    platform: str | None = None
    python_site_packages_path: str | None = None
    purls: list[str] | None = None
    url: msgspec.Raw = msgspec.Raw()
    channel: msgspec.Raw = msgspec.Raw()


class _KnownFieldsOnly(_Record, forbid_unknown_fields=True):
    """Most records: every value is typed and bounded above, nothing else to look at."""


_decode_known = msgspec.json.Decoder(_KnownFieldsOnly).decode
_decode_record = msgspec.json.Decoder(_Record).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class RecordRejected(ValueError):
    """A record that would break the subdir for clients; ``reason`` says why, for the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_filename(filename: str) -> None:
    if len(filename) > MAX_FILENAME:
        raise RecordRejected(f"the file name is {len(filename)} characters long; at most {MAX_FILENAME} allowed")
    if FILENAME_RE.fullmatch(filename) is None:
        raise RecordRejected(
            "the file name is not NAME-VERSION-BUILD.conda or .tar.bz2 with a lower-case name "
            "and printable ASCII characters"
        )


def check_record(filename: str, raw: bytes) -> tuple[str, bytes]:
    """The record's package name and the bytes to serve (``raw`` itself unless a field was removed).

    Raises ``RecordRejected`` saying what is wrong with the record or its file name."""
    # msgspec recurses: bound the nesting first (no record nests deeper than it has brackets). The
    # exact bound is the walk's, in check_bounded_record; this one keeps msgspec far from any stack limit.
    if raw.count(b"[") + raw.count(b"{") > _SAFE_DEPTH and not nests_at_most(raw, _SAFE_DEPTH):
        raise RecordRejected(f"the record nests deeper than {MAX_DEPTH} levels")
    return check_bounded_record(filename, raw)


def check_bounded_record(filename: str, raw: bytes) -> tuple[str, bytes]:
    """``check_record`` for a record already known to nest at most ``_SAFE_DEPTH`` levels (as every
    record of a document ``nests_at_most`` passed, or that the scanner measured)."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordRejected(f"the record is {len(raw)} bytes; at most {MAX_RECORD_BYTES} allowed")
    other_fields = False
    try:
        try:
            record: _Record = _decode_known(raw)
        except msgspec.ValidationError:  # a bad value, or fields outside the known set: find out which
            record = _decode_record(raw)
            other_fields = True
    except msgspec.ValidationError as exc:
        raise RecordRejected(f"a field has the wrong type or is out of range: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RecordRejected(f"the record is not valid JSON: {exc}") from None
    name, version, build = record.name, record.version, record.build
    stem = f"{name}-{version}-{build}"
    digests = f"{record.md5 or ''}{record.sha256 or ''}{record.legacy_bz2_md5 or ''}"
    # With the parts valid, the file name equal to NAME-VERSION-BUILD.EXT is as uploads require it.
    if (
        (filename != stem + ".conda" and filename != stem + ".tar.bz2")
        or len(filename) > MAX_FILENAME
        or record.subdir not in _SUBDIRS
        or _PARTS.fullmatch(f"{name} {version} {build} {digests}") is None
    ):
        _explain(filename, record)
    if other_fields or record.url or record.channel:
        return name, _portable_without_removed_fields(raw)
    return name, raw


# ``accepted_as_written`` checks this many records at a time: few decoded records alive at once keeps
# the memory small and the garbage collector out of the way (it walked every live list of a 500k batch).
_BATCH = 128
# ``_PARTS`` for a batch: one line per record. No piece it matches holds a newline, so with one newline
# per record counted, line k is record k's.
_PARTS_LINES = re.compile(f"(?:{_NAME} {_VERSION} {_BUILD} [0-9a-fA-F]*\n)*+")


def accepted_as_written(filenames: list[str], raws: list[bytes]) -> list[str] | None:
    """The package names of ``raws`` (records already known to nest at most ``_SAFE_DEPTH`` levels,
    ``filenames`` theirs) when every one passes ``check_bounded_record`` unchanged, else None (the
    caller checks them one by one, to learn which fail and why). The same checks, each done for a batch
    of records in one C-level pass where it can be: a large upstream's records cost about half."""
    if len(filenames) != len(raws):
        raise ValueError("one file name per record")
    names: list[str] = []
    for start in range(0, len(raws), _BATCH):
        batch = _accepted_batch(filenames[start : start + _BATCH], raws[start : start + _BATCH])
        if batch is None:
            return None
        names += batch
    return names


def _accepted_batch(filenames: list[str], raws: list[bytes]) -> list[str] | None:
    if max(map(len, raws), default=0) > MAX_RECORD_BYTES or max(map(len, filenames), default=0) > MAX_FILENAME:
        return None
    try:
        records = list(map(_decode_known, raws))
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None  # a bad value, fields outside the known set, not JSON: the one-by-one path says which
    if not {record.subdir for record in records} <= _SUBDIRS or any([r.url or r.channel for r in records]):
        return None
    stems = [f"{r.name}-{r.version}-{r.build}" for r in records]
    extensions = [".conda" if filename.endswith(".conda") else ".tar.bz2" for filename in filenames]
    if list(map(str.__add__, stems, extensions)) != filenames:
        return None
    parts = "".join(
        [f"{r.name} {r.version} {r.build} {r.md5 or ''}{r.sha256 or ''}{r.legacy_bz2_md5 or ''}\n" for r in records]
    )
    if parts.count("\n") != len(records) or _PARTS_LINES.fullmatch(parts) is None:
        return None
    return [record.name for record in records]


def _explain(filename: str, record: _Record) -> NoReturn:
    """Which of check_record's joint checks failed, in words."""
    check_filename(filename)
    extension = ".conda" if filename.endswith(".conda") else ".tar.bz2"
    # Part by part: a version or build holding a dash could spell the same file name.
    if filename != f"{record.name}-{record.version}-{record.build}{extension}" or (
        "-" in record.version or "-" in record.build
    ):
        raise RecordRejected(
            f"the file name does not match the record's name, version and build "
            f"({_shown(record.name)}, {_shown(record.version)}, {_shown(record.build)})"
        )
    if record.subdir not in _SUBDIRS:
        raise RecordRejected(f"the record names the unknown subdir {_shown(str(record.subdir))}")
    for key in ("md5", "sha256", "legacy_bz2_md5"):
        value = getattr(record, key)
        if value is not None and _HEX.fullmatch(value) is None:
            raise RecordRejected(f"{key!r} is not a hex digest")
    raise RecordRejected("the record failed a check")  # not reached: each joint check is named above


def _portable_without_removed_fields(raw: bytes) -> bytes:
    """Walk a record with fields outside the known set; drop ``url`` and ``channel``."""
    try:
        value = _decode_object(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:  # e.g. 1e400
        raise RecordRejected(f"the record is not portable JSON: {exc}") from None
    for key, item in value.items():
        _require_portable(item, key, 1)
    if not any(key in value for key in REMOVED_FIELDS):
        return raw
    for key in REMOVED_FIELDS:
        value.pop(key, None)
    return _encode(value)


def _require_portable(value: object, where: str, depth: int) -> None:
    """As uploads' ``_require_portable``: bounded nesting, integers msgpack can hold. msgspec has
    already refused what else could break (invalid UTF-8, lone surrogates, non-finite numbers)."""
    if isinstance(value, bool | str | float) or value is None:
        return
    if isinstance(value, int):
        if value not in INT_RANGE:
            raise RecordRejected(f"{_shown(where)} is an integer outside the 64-bit range")
    elif depth > MAX_DEPTH:
        raise RecordRejected(f"the record nests deeper than {MAX_DEPTH} levels")
    elif isinstance(value, list):
        for item in value:
            _require_portable(item, where, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _require_portable(item, f"{where}.{key}", depth + 1)


def shown(text: str, limit: int = 80) -> str:
    """A hostile string made safe to show in a log line or a page: escaped, ASCII, bounded."""
    escaped = ascii(text)[1:-1]
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def _shown(text: str) -> str:
    return repr(shown(text, 40))


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_STRING_IN_SKELETON = re.compile(rb'"[^"]*"')


def nests_at_most(body: bytes, depth: int) -> bool:
    """True proves that no container in ``body`` nests deeper than ``depth``; JSON nesting at most
    ``depth // 2`` always gets True. A few C-speed passes over the bytes, no recursion.

    Brackets outside strings are what nests: drop escapes, keep quotes and brackets, drop the
    strings, then peel innermost pairs; each pass peels one or two levels. Also sound on a broken
    document's readable prefix, which is all that msgspec would read."""
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    skeleton = body.translate(None, _NOT_STRUCTURE).replace(b'""', b"")  # "" pairs: strings without brackets
    if b'"' in skeleton:
        skeleton = _STRING_IN_SKELETON.sub(b"", skeleton)
    for _ in range(depth // 2):
        if not skeleton:
            return True
        skeleton = skeleton.replace(b"[]", b"").replace(b"{}", b"")
    return not skeleton
