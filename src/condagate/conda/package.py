"""Read and validate a conda package file: its ``info/index.json`` and ``info/about.json``."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from condagate.conda.archive import walk_conda, walk_tar_bz2
from condagate.conda.limits import ArchiveLimits
from condagate.conda.subdirs import KNOWN_SUBDIRS, PackageFilename, parse_package_filename
from condagate.errors import InvalidPackage

_METADATA_MEMBERS = ("info/index.json", "info/about.json")


@dataclass(frozen=True)
class PackageMetadata:
    filename: PackageFilename
    index: dict[str, Any]
    about: dict[str, Any] = field(default_factory=dict)

    @property
    def subdir(self) -> str:
        return str(self.index["subdir"])


def _read_json_member(reader: IO[bytes], member: tarfile.TarInfo, limits: ArchiveLimits) -> dict[str, Any]:
    if member.size > limits.max_metadata_member:
        raise InvalidPackage(f"{member.name} is {member.size} bytes; at most {limits.max_metadata_member} allowed")
    data = reader.read(limits.max_metadata_member + 1)
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPackage(f"{member.name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidPackage(f"{member.name} must hold a JSON object")
    return value


def _require_str_list(index: dict[str, Any], key: str) -> None:
    value = index.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidPackage(f"info/index.json: {key!r} must be a list of strings")


def validate_index(index: dict[str, Any], filename: PackageFilename, expected_subdir: str | None) -> None:
    for key in ("name", "version", "build", "subdir"):
        if not isinstance(index.get(key), str) or not index[key]:
            raise InvalidPackage(f"info/index.json has no {key!r} string")
    build_number = index.get("build_number")
    if not isinstance(build_number, int) or isinstance(build_number, bool) or build_number < 0:
        raise InvalidPackage("info/index.json: 'build_number' must be a non-negative integer")
    _require_str_list(index, "depends")
    _require_str_list(index, "constrains")
    declared = f"{index['name']}-{index['version']}-{index['build']}"
    if declared != filename.stem:
        raise InvalidPackage(
            f"file name {str(filename)!r} does not match its info/index.json "
            f"({declared}{filename.extension})"
        )
    if index["subdir"] not in KNOWN_SUBDIRS:
        raise InvalidPackage(f"info/index.json names the unknown subdir {index['subdir']!r}")
    if expected_subdir is not None and index["subdir"] != expected_subdir:
        raise InvalidPackage(
            f"package is built for subdir {index['subdir']!r} but was uploaded to {expected_subdir!r}"
        )
    timestamp = index.get("timestamp")
    if timestamp is not None and (not isinstance(timestamp, int | float) or isinstance(timestamp, bool)):
        raise InvalidPackage("info/index.json: 'timestamp' must be a number")


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
        if member.name in _METADATA_MEMBERS and reader is not None:
            found[member.name] = _read_json_member(reader, member, limits)

    size = path.stat().st_size
    with path.open("rb") as fileobj:
        if parsed.extension == ".conda":
            walk_conda(fileobj, parsed.stem, visit, limits)
        else:
            walk_tar_bz2(fileobj, size, visit, limits)
    index = found.get("info/index.json")
    if index is None:
        raise InvalidPackage("the package has no info/index.json")
    validate_index(index, parsed, expected_subdir)
    return PackageMetadata(filename=parsed, index=index, about=found.get("info/about.json", {}))
