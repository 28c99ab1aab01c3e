"""Reading an upstream channel's repodata without building a tree of Python objects per record.

conda-forge's linux-64 repodata has hundreds of thousands of records; each is kept as its raw JSON
bytes (msgspec ``Raw``), keyed by file name. Only the package name is looked at, for filters and shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from condagate.conda.filters import NameFilter
from condagate.errors import BadRequest


class UpstreamRepodataInvalid(BadRequest):
    code = "upstream_repodata_invalid"


class _Info(msgspec.Struct):
    subdir: str | None = None
    base_url: str | None = None


class _Repodata(msgspec.Struct):
    info: _Info | None = None
    packages: dict[str, msgspec.Raw] = {}
    packages_conda: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict, name="packages.conda")


class _RecordIdentity(msgspec.Struct):
    """What every record must have to be listed and solved; other fields pass through untouched."""

    name: str
    version: str
    build: str = ""
    build_number: int = 0


_decode_repodata = msgspec.json.Decoder(_Repodata).decode
_decode_identity = msgspec.json.Decoder(_RecordIdentity).decode


@dataclass(frozen=True)
class UpstreamRecords:
    """File name -> (package name, raw record JSON bytes)."""

    subdir: str | None
    records: dict[str, tuple[str, bytes]]

    def __len__(self) -> int:
        return len(self.records)


def parse_upstream_repodata(body: bytes, name_filter: NameFilter | None = None) -> UpstreamRecords:
    """Parse repodata.json bytes; drop records the filter refuses. ``base_url`` is never passed on:
    package URLs must point at condagate, so records stay relative to the served subdir."""
    try:
        document = _decode_repodata(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamRepodataInvalid(f"the upstream repodata is not valid: {exc}") from exc
    records: dict[str, tuple[str, bytes]] = {}
    for group in (document.packages, document.packages_conda):
        for filename, raw in group.items():
            for name, record in _records_passing(filename, raw, name_filter):
                records[filename] = (name, record)
    return UpstreamRecords(document.info.subdir if document.info else None, records)


def _records_passing(filename: str, raw: msgspec.Raw, name_filter: NameFilter | None) -> Iterator[tuple[str, bytes]]:
    if "/" in filename or "\\" in filename or not filename.endswith((".conda", ".tar.bz2")):
        return  # a file name that would not be a safe URL segment below the subdir
    record = bytes(raw)
    try:
        name = _decode_identity(record).name
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    if name_filter is None or name_filter.allows(name):
        yield name, record
