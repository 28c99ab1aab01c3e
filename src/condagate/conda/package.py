"""Read and validate a conda package file: its ``info/index.json`` and ``info/about.json``."""

from __future__ import annotations

import json
import math
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from condagate.conda.archive import walk_conda, walk_tar_bz2
from condagate.conda.limits import ArchiveLimits
from condagate.conda.subdirs import KNOWN_SUBDIRS, PackageFilename, parse_package_filename
from condagate.errors import InvalidPackage

_METADATA_MEMBERS = ("info/index.json", "info/about.json")
# Clients read build numbers as unsigned 64-bit integers and timestamps as milliseconds up to
# the year 9999; a record outside those ranges would make the whole repodata unreadable to them.
_MAX_BUILD_NUMBER = 2**63 - 1
_MAX_TIMESTAMP = 253_402_300_799_999
# index.json becomes a repodata record served as JSON and as msgpack shards, about.json feeds the
# API and UI. msgpack integers are 64-bit, UTF-8 has no lone surrogates, and clients parse with a
# recursion limit (serde_json: 128): one value outside those bounds would make a whole subdir or
# feed listing unservable (a 500 for everyone) or unreadable to clients.
_MAX_DEPTH = 32
_INT_RANGE = range(-(2**63), 2**64)


@dataclass(frozen=True)
class PackageMetadata:
    filename: PackageFilename
    index: dict[str, Any]
    about: dict[str, Any] = field(default_factory=dict)

    @property
    def subdir(self) -> str:
        return str(self.index["subdir"])


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; repodata.json re-encodes them and is then not JSON.
    raise ValueError(f"{name} is not a JSON value")


def _read_json_member(reader: IO[bytes], member: tarfile.TarInfo, limits: ArchiveLimits) -> dict[str, Any]:
    if member.size > limits.max_metadata_member:
        raise InvalidPackage(f"{member.name} is {member.size} bytes; at most {limits.max_metadata_member} allowed")
    data = reader.read(limits.max_metadata_member + 1)
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidPackage(f"{member.name} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidPackage(f"{member.name} nests too deeply") from exc
    if not isinstance(value, dict):
        raise InvalidPackage(f"{member.name} must hold a JSON object, not {type(value).__name__}")
    _require_portable(value, member.name)
    return value


def _require_str_list(index: dict[str, Any], key: str) -> None:
    value = index.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidPackage(f"info/index.json: {key!r} must be a list of strings")


def _require_portable(value: Any, member: str, where: str = "", depth: int = 0) -> None:
    """Every value must survive re-encoding into each format clients read (repodata, shards, the API)."""
    if depth > _MAX_DEPTH:
        raise InvalidPackage(f"{member} nests deeper than {_MAX_DEPTH} levels (at {where[:60]}...)")
    if isinstance(value, str):
        _require_utf8(value, member, where)
    elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        raise InvalidPackage(f"{member}: {where} is an integer outside the 64-bit range")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            _require_portable(item, member, f"{where}[{position}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _require_utf8(key, member, where or "a key")
            _require_portable(item, member, f"{where}.{key}" if where else key, depth + 1)


def _require_utf8(text: str, member: str, where: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate, written in the JSON as an escape like \udcff
        raise InvalidPackage(f"{member}: {where} holds text that is not valid Unicode") from exc


def _require_fields(index: dict[str, Any]) -> None:
    for key in ("name", "version", "build", "subdir"):
        if not isinstance(index.get(key), str) or not index[key]:
            raise InvalidPackage(f"info/index.json has no {key!r} string")
    build_number = index.get("build_number")
    if (
        not isinstance(build_number, int)
        or isinstance(build_number, bool)
        or not 0 <= build_number <= _MAX_BUILD_NUMBER
    ):
        raise InvalidPackage(f"info/index.json: 'build_number' must be an integer from 0 to {_MAX_BUILD_NUMBER}")
    _require_str_list(index, "depends")
    _require_str_list(index, "constrains")
    timestamp = index.get("timestamp")
    if timestamp is not None and (
        not isinstance(timestamp, int | float)
        or isinstance(timestamp, bool)
        or not math.isfinite(timestamp)
        or not 0 <= timestamp <= _MAX_TIMESTAMP
    ):
        raise InvalidPackage("info/index.json: 'timestamp' must be a number of seconds or milliseconds since 1970")


def _require_matching_filename(index: dict[str, Any], filename: PackageFilename) -> None:
    # Each part on its own: comparing the joined stem would accept a version or build holding a
    # dash ("1.0-0"), which the file name cannot express and clients cannot parse.
    declared = (index["name"], index["version"], index["build"])
    if declared != (filename.name, filename.version, filename.build):
        raise InvalidPackage(
            f"file name {str(filename)!r} does not match its info/index.json "
            f"(name {index['name']!r}, version {index['version']!r}, build {index['build']!r})"
        )


def validate_index(index: dict[str, Any], filename: PackageFilename, expected_subdir: str | None) -> None:
    _require_fields(index)
    _require_matching_filename(index, filename)
    if index["subdir"] not in KNOWN_SUBDIRS:
        raise InvalidPackage(f"info/index.json names the unknown subdir {index['subdir']!r}")
    if expected_subdir is not None and index["subdir"] != expected_subdir:
        raise InvalidPackage(f"package is built for subdir {index['subdir']!r} but was uploaded to {expected_subdir!r}")


def read_package(
    path: Path,
    filename: str,
    *,
    expected_subdir: str | None = None,
    limits: ArchiveLimits | None = None,
) -> PackageMetadata:
    """Validate the archive at ``path`` (named ``filename``) and return its metadata."""
    limits = limits or ArchiveLimits()
    parsed = parse_package_filename(filename)
    found: dict[str, dict[str, Any]] = {}

    def visit(member: tarfile.TarInfo, reader: IO[bytes] | None) -> None:
        name = posixpath.normpath(member.name)  # "./info/index.json" is installed as info/index.json
        if name in _METADATA_MEMBERS and reader is not None:
            found[name] = _read_json_member(reader, member, limits)

    size = path.stat().st_size
    with path.open("rb") as fileobj:
        if parsed.extension == ".conda":
            walk_conda(fileobj, parsed.stem, visit, limits, size)
        else:
            walk_tar_bz2(fileobj, size, visit, limits)
    index = found.get("info/index.json")
    if index is None:
        raise InvalidPackage("the package has no info/index.json")
    validate_index(index, parsed, expected_subdir)
    return PackageMetadata(filename=parsed, index=index, about=found.get("info/about.json", {}))
