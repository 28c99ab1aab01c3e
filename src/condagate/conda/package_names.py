"""conda package name -> the name of the same project in another ecosystem (PyPI for now).

Three sources, in this order: an administrator's override (which may say "no counterpart"), the
grayskull PyPI <-> conda-forge table (vendored from conda-pypi: ``data/pypi_names.json.zst``, see
``data/NOTICE.pypi_names``), and the conda-forge convention that a Python package keeps its PEP 503
name (the fall-back rule). PyPI names are compared PEP 503-normalised.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

import zstandard
from rattler import Version

PYPI = "PyPI"
GRAYSKULL, OVERRIDE, FALLBACK, NONE = "grayskull", "override", "fallback", "none"
_PYPI_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?", re.IGNORECASE)


def normalize_pypi(name: str) -> str:
    """PEP 503: runs of -, _ and . become one -, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def normalize_ecosystem_name(ecosystem: str, name: str) -> str:
    return normalize_pypi(name) if ecosystem == PYPI else name


def is_pypi_name(name: str) -> bool:
    return bool(_PYPI_NAME.fullmatch(name))


@dataclass(frozen=True)
class NameMapping:
    """Where a conda package's advisories are looked up: PyPI ``names`` (empty: nowhere) and why."""

    names: tuple[str, ...]
    source: str  # grayskull | override | fallback | none
    ecosystem_name: str | None = field(init=False, compare=False)  # "PyPI:name" (names joined by ", ")

    def __post_init__(self) -> None:
        object.__setattr__(self, "ecosystem_name", ", ".join(f"{PYPI}:{name}" for name in self.names) or None)


@dataclass(frozen=True)
class _VersionedName:
    name: str
    minimum: str | None  # inclusive
    maximum: str | None  # exclusive


@dataclass
class PypiNameTable:
    """The grayskull table, conda name -> normalised PyPI names."""

    source: str = ""
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    by_version: dict[str, tuple[_VersionedName, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PypiNameTable:
        names: dict[str, tuple[str, ...]] = {}
        same = data.get("same", [])
        assert isinstance(same, list)
        for conda in same:
            names[str(conda)] = (normalize_pypi(str(conda)),)
        other = data.get("names", {})
        assert isinstance(other, dict)
        for conda, pypi in other.items():
            names[str(conda)] = tuple(normalize_pypi(p) for p in ([pypi] if isinstance(pypi, str) else pypi))
        by_version: dict[str, tuple[_VersionedName, ...]] = {}
        versioned = data.get("by_version", {})
        assert isinstance(versioned, dict)
        for conda, entries in versioned.items():
            by_version[str(conda)] = tuple(_VersionedName(normalize_pypi(n), lo, hi) for n, lo, hi in entries)
        return cls(str(data.get("source", "")), names, by_version)

    def lookup(self, conda_name: str, version: str | None = None) -> tuple[str, ...] | None:
        """The table's PyPI names for this conda package (and version, where the table splits by
        version, as for pyqt 4 / 5), or None when the table does not know the package."""
        found = self.names.get(conda_name)
        if found is not None:
            return found
        versioned = self.by_version.get(conda_name)
        if versioned is None:
            return None
        parsed = _conda_version(version) if version else None
        if parsed is None:
            return tuple(dict.fromkeys(entry.name for entry in versioned))
        return tuple(
            entry.name
            for entry in versioned
            if (entry.minimum is None or parsed >= Version(entry.minimum))
            and (entry.maximum is None or parsed < Version(entry.maximum))
        )

    def conda_names_of(self, pypi_name: str) -> set[str]:
        """Every conda name the table maps to this PyPI name (a reverse lookup: slow, for admin views)."""
        wanted = normalize_pypi(pypi_name)
        found = {conda for conda, names in self.names.items() if wanted in names}
        found |= {conda for conda, entries in self.by_version.items() if any(e.name == wanted for e in entries)}
        return found


def _conda_version(version: str) -> Version | None:
    try:
        return Version(version)
    except Exception:  # rattler raises its own exception types
        return None


@functools.cache
def grayskull_table() -> PypiNameTable:
    """The vendored table, read once per process (about 12,000 names)."""
    raw = resources.files("condagate.conda").joinpath("data/pypi_names.json.zst").read_bytes()
    data = json.loads(zstandard.ZstdDecompressor().decompress(raw))
    return PypiNameTable.from_json(data)


def map_to_pypi(
    conda_name: str,
    version: str | None = None,
    *,
    overrides: Mapping[str, str | None],
    table: PypiNameTable | None = None,
) -> NameMapping:
    """The PyPI names to look advisories up under. ``overrides``: conda name -> PyPI name, or None
    for "this conda package has no PyPI counterpart"."""
    if conda_name in overrides:
        override = overrides[conda_name]
        return NameMapping((normalize_pypi(override),) if override else (), OVERRIDE)
    known = (table if table is not None else grayskull_table()).lookup(conda_name, version)
    if known is not None:
        return NameMapping(known, GRAYSKULL)
    if is_pypi_name(conda_name):
        return NameMapping((normalize_pypi(conda_name),), FALLBACK)
    return NameMapping((), NONE)
