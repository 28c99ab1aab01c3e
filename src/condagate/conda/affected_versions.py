"""Does a conda package version fall in an OSV ``affected`` entry?

OSV's evaluation (https://ossf.github.io/osv-schema/#evaluation): a version is affected when it is
in the explicit ``versions`` list or inside any ``ECOSYSTEM`` / ``SEMVER`` range, whose events are
walked in version order (``introduced`` "0" first; ``fixed`` exclusive; ``last_affected``
inclusive; only below a ``limit`` when the range has any). ``GIT`` ranges name commits: no answer.

PyPI advisories are compared in PEP 440 order (``packaging.version``). A conda version is the same
string as the PyPI release it packages, but conda orders some spellings differently (``1.0.dev0``
against ``1.0a1``, local ``+`` parts, ...) and some are no PEP 440 at all (``1.0_1``). So: a version
that is not PEP 440 is "unknown"; a plain release (digits and dots) against plain bounds is decided
in PEP 440 order, where both agree; anything else is evaluated in both orders (conda's from
py-rattler) and is "unknown", with a note, when they disagree.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version as Pep440Version

from condagate.conda.osv_ranges import Walk, compile_walks, covered, in_range
from condagate.conda.package_names import PYPI
from condagate.conda.version_order import (
    CANONICAL_PLAIN,
    ORDERS,
    PLAIN,
    RELEASE_SPELLING,
    Parse,
    QueriedVersion,
    SemVer,
    leading_release,
    parse_conda,
    parse_pep440,
    release_key,
    try_parse,
)

AFFECTED, CLEAN, UNKNOWN = "affected", "clean", "unknown"


@dataclass(frozen=True)
class Verdict:
    status: str  # affected | clean | unknown
    fixed_in: tuple[str, ...] = ()  # fixed versions above the one asked about, lowest first
    note: str = ""


_CLEAN = Verdict(CLEAN)


@dataclass
class AffectedVersions:
    """One ``affected`` entry, compiled lazily per order (PEP 440, conda, SemVer) on first use."""

    ecosystem: str
    ranges: Sequence[tuple[str, Sequence[tuple[str, str]]]]  # (type, [(kind, version), ...])
    versions: Sequence[str]
    _walks: dict[tuple[str, str], list[Walk | None]] = field(default_factory=dict, repr=False)
    _plain: bool | None = field(default=None, repr=False)
    _listed_strings: frozenset[str] | None = field(default=None, repr=False)
    _odd: dict[tuple[int, ...] | None, list[str]] | None = field(default=None, repr=False)
    _version_ranges: list[tuple[str, Sequence[tuple[str, str]]]] | None = field(default=None, repr=False)
    _fixed: tuple[list[Pep440Version], list[str]] | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, ecosystem: str, ranges_json: str, versions_json: str) -> AffectedVersions:
        """From the stored form (``AdvisoryPackage.ranges`` / ``.versions``)."""
        ranges = [
            (str(item["type"]), [next(iter(event.items())) for event in item.get("events", [])])
            for item in json.loads(ranges_json)
        ]
        return cls(ecosystem, ranges, [str(v) for v in json.loads(versions_json)])

    @property
    def plain(self) -> bool:
        """Every range bound is a plain release (digits and dots): both orders agree on them."""
        if self._plain is None:
            self._plain = all(PLAIN.fullmatch(v) or v == "*" for _, events in self.ranges for _, v in events)
        return self._plain

    @property
    def version_ranges(self) -> list[tuple[str, Sequence[tuple[str, str]]]]:
        if self._version_ranges is None:
            self._version_ranges = [(kind, events) for kind, events in self.ranges if kind in ("ECOSYSTEM", "SEMVER")]
        return self._version_ranges

    @property
    def has_semver(self) -> bool:
        return any(kind == "SEMVER" for kind, _ in self.version_ranges)

    def listed(self) -> frozenset[str]:
        if self._listed_strings is None:
            self._listed_strings = frozenset(self.versions)
        return self._listed_strings

    def is_listed(self, version: QueriedVersion, order: str) -> bool:
        """Whether the versions list holds ``version`` (equal in ``order``). Plain releases are
        looked up by their spellings; the few other listed versions are grouped by their leading
        release numbers and only the group of ``version`` is parsed."""
        if self._odd is None:
            odd: dict[tuple[int, ...] | None, list[str]] = {}
            for text in self.versions:
                if not CANONICAL_PLAIN.fullmatch(text):
                    odd.setdefault(leading_release(text), []).append(text)
            self._odd = odd
        group = self._odd.get(version.release, ())
        if version.release_only:
            strings = self.listed()
            if any(spelling in strings for spelling in version.spellings()):
                return True
            return any(RELEASE_SPELLING.fullmatch(text) for text in group)
        if not group:
            return False
        key = version.key(order)
        parse = ORDERS[order]
        return key is not None and any(try_parse(parse, text) == key for text in group)

    def walks(self, order: str, parse: Parse, range_type: str) -> list[Walk | None]:
        """The ranges of one type in ``order``; None for a range with a bound that order cannot place."""
        key = (order, range_type)
        found = self._walks.get(key)
        if found is None:
            found = self._walks[key] = compile_walks(self.version_ranges, parse, range_type)
        return found

    def fixed_versions(self) -> tuple[list[Pep440Version], list[str]]:
        """The ``fixed`` events that are PEP 440 versions, lowest first: (versions, their spellings)."""
        if self._fixed is None:
            texts = dict.fromkeys(v for _, events in self.version_ranges for kind, v in events if kind == "fixed")
            ordered = sorted((parsed, text) for text in texts if (parsed := try_parse(parse_pep440, text)) is not None)
            self._fixed = ([parsed for parsed, _ in ordered], [text for _, text in ordered])
        return self._fixed


def _evaluate(entry: AffectedVersions, version: QueriedVersion, order: str) -> str:
    """affected | clean | unknown in one order (unknown: the version or a bound does not parse)."""
    parsed = version.key(order)
    if parsed is None:
        return UNKNOWN
    parse = ORDERS[order]
    if entry.is_listed(version, order):
        return AFFECTED
    walks = entry.walks(order, parse, "ECOSYSTEM")
    if any(walk is not None and in_range(parsed, walk) for walk in walks):
        return AFFECTED
    undecided = any(walk is None for walk in walks)
    if entry.has_semver:
        as_semver = version.key("semver")
        if as_semver is None:
            return UNKNOWN
        semver = entry.walks("semver", SemVer.parse, "SEMVER")
        if any(walk is not None and in_range(as_semver, walk) for walk in semver):
            return AFFECTED
        undecided = undecided or any(walk is None for walk in semver)
    return UNKNOWN if undecided else CLEAN


def check(entry: AffectedVersions, version: str | QueriedVersion) -> Verdict:
    """Whether ``version`` of the conda package is affected by this entry (PyPI entries only).
    Pass a ``QueriedVersion`` to check one version against many entries: it is parsed once."""
    tested = version if isinstance(version, QueriedVersion) else QueriedVersion.of(version)
    if entry.ecosystem != PYPI:
        return Verdict(UNKNOWN, note=f"versions of the {entry.ecosystem} ecosystem are not compared")
    if tested.text in entry.listed():
        return Verdict(AFFECTED, _fixed_above(entry, tested))
    if not entry.version_ranges and not entry.versions:
        return Verdict(UNKNOWN, note="the advisory gives only git commit ranges for this package, no versions")
    if tested.pep440 is None:
        return Verdict(
            UNKNOWN,
            note=f"conda version {tested.text!r} is not a PEP 440 version: it cannot be placed "
            "among the PyPI releases the advisory names",
        )
    pep440 = _evaluate(entry, tested, "pep440")
    if tested.plain and entry.plain:
        return _verdict(entry, tested, pep440)
    conda = _evaluate(entry, tested, "conda")
    if pep440 == conda:
        return _verdict(entry, tested, pep440)
    return Verdict(
        UNKNOWN,
        _fixed_above(entry, tested),
        f"conda and PEP 440 order {tested.text!r} differently against this advisory's versions "
        f"(PEP 440: {pep440}, conda: {conda})",
    )


def _verdict(entry: AffectedVersions, version: QueriedVersion, status: str) -> Verdict:
    if status == CLEAN:
        return _CLEAN
    note = "a version bound of the advisory is not a valid version in its ecosystem" if status == UNKNOWN else ""
    return Verdict(status, _fixed_above(entry, version), note)


def _fixed_above(entry: AffectedVersions, version: QueriedVersion) -> tuple[str, ...]:
    """The fixed versions above ``version`` (PEP 440 order), lowest first: where to upgrade to."""
    keys, texts = entry.fixed_versions()
    return tuple(texts[bisect_right(keys, version.pep440) :] if version.pep440 is not None else texts)


# All the entries naming one package, at once ------------------------------------------------------


class PackageAdvisories:
    """The affected entries of one package, compiled together. The entries whose bounds are plain
    releases (most) share one sorted list of bounds, the same in PEP 440 and conda order: a version
    is placed once among them (a binary search per order) and looked up once in their versions
    lists, whatever their number; the other entries are checked one by one. Built on first use;
    answers exactly as ``check`` per entry."""

    def __init__(self, entries: Sequence[tuple[str, AffectedVersions]]) -> None:
        self.entries = list(entries)
        self._built = False
        self._fast: list[int] = []
        self._slow: list[int] = []
        self._bounds: dict[str, list[Any]] = {}  # order -> the distinct bounds, sorted
        self._regions: list[frozenset[int]] = []
        self._listed: dict[str, set[int]] = {}  # release key -> entries listing that plain release
        self._exact: dict[str, set[int]] = {}  # other listed spellings -> entries
        self._odd: dict[tuple[int, ...] | None, list[str]] = {}  # other listed spellings by leading release
        self._parsed: dict[str, dict[str, Any]] = {}  # order -> other listed spelling -> its version there

    def check(self, version: QueriedVersion, *, include_clean: bool = True) -> list[tuple[str, Verdict]]:
        """(advisory id, verdict) for every entry; without the clean ones unless ``include_clean``."""
        if version.pep440 is None:
            found = [(advisory_id, check(entry, version)) for advisory_id, entry in self.entries]
            return found if include_clean else [item for item in found if item[1].status != CLEAN]
        if not self._built:
            self._build()
        pep440 = self._hits(version, "pep440")
        assert pep440 is not None  # a PEP 440 version always has a place in PEP 440 order
        # Plain releases against plain bounds: both orders agree, one search does.
        conda = pep440 if version.plain else self._hits(version, "conda")
        exact = self._exact.get(version.text, ())
        found = []
        for index in self._fast:
            advisory_id, entry = self.entries[index]
            in_pep440 = index in pep440
            if index in exact or (in_pep440 and conda is not None and index in conda):
                found.append((advisory_id, Verdict(AFFECTED, _fixed_above(entry, version))))
            elif conda is not None and not in_pep440 and index not in conda:
                if include_clean:
                    found.append((advisory_id, _CLEAN))
            else:
                said = (
                    AFFECTED if in_pep440 else CLEAN,
                    UNKNOWN if conda is None else AFFECTED if index in conda else CLEAN,
                )
                note = (
                    f"conda and PEP 440 order {version.text!r} differently against this advisory's versions "
                    f"(PEP 440: {said[0]}, conda: {said[1]})"
                )
                found.append((advisory_id, Verdict(UNKNOWN, _fixed_above(entry, version), note)))
        for index in self._slow:
            advisory_id, entry = self.entries[index]
            verdict = check(entry, version)
            if include_clean or verdict.status != CLEAN:
                found.append((advisory_id, verdict))
        return found

    def _hits(self, version: QueriedVersion, order: str) -> set[int] | frozenset[int] | None:
        """The fast entries affecting ``version`` in ``order``; None when the order cannot place it."""
        key = version.key(order)
        if key is None:
            return None
        bounds = self._bounds[order]
        where = bisect_left(bounds, key)
        on_bound = where < len(bounds) and bounds[where] == key
        hits = self._regions[2 * where + 1 if on_bound else 2 * where]
        if version.release_only:
            listed = self._listed.get(release_key(version.text))
        else:
            parsed = self._parsed.setdefault(order, {})
            listed = set()
            for text in self._odd.get(version.release, ()):
                if text not in parsed:
                    parsed[text] = try_parse(ORDERS[order], text)
                if parsed[text] == key:
                    listed |= self._exact[text]
        return hits | listed if listed else hits

    def _build(self) -> None:
        walks: dict[int, list[Walk]] = {}
        for index, (_, entry) in enumerate(self.entries):
            compiled = entry.walks("pep440", parse_pep440, "ECOSYSTEM") if entry.version_ranges else []
            fast = (
                entry.ecosystem == PYPI
                and entry.plain
                and not entry.has_semver
                and (bool(entry.version_ranges) or bool(entry.versions))
                and all(walk is not None for walk in compiled)
            )
            if not fast:
                self._slow.append(index)
                continue
            self._fast.append(index)
            walks[index] = [walk for walk in compiled if walk is not None]
            for text in entry.versions:
                if CANONICAL_PLAIN.fullmatch(text):  # the usual spelling: no second look
                    while text.endswith(".0"):
                        text = text[:-2]
                    self._listed.setdefault(text, set()).add(index)
                    continue
                if RELEASE_SPELLING.fullmatch(text):
                    self._listed.setdefault(release_key(text), set()).add(index)
                if text not in self._exact:
                    self._exact[text] = set()
                    self._odd.setdefault(leading_release(text), []).append(text)
                self._exact[text].add(index)
        # Plain bounds: one text per distinct release, in the same order for PEP 440 and conda.
        distinct: dict[Pep440Version, str] = {}
        for index in walks:
            for _, events in self.entries[index][1].version_ranges:
                for event_kind, text in events:
                    if not (event_kind == "introduced" and text == "0") and "*" not in text:
                        distinct.setdefault(parse_pep440(text), text)
        ordered = sorted(distinct.items())
        self._bounds = {"pep440": [key for key, _ in ordered], "conda": [parse_conda(text) for _, text in ordered]}
        position = {bound: i for i, bound in enumerate(self._bounds["pep440"])}
        regions = 2 * len(ordered) + 1
        starts: dict[int, list[int]] = {}
        ends: dict[int, list[int]] = {}
        for index, entry_walks in walks.items():
            for walk in entry_walks:
                for first, last in covered(walk, position, regions):
                    starts.setdefault(first, []).append(index)
                    ends.setdefault(last, []).append(index)
        active: dict[int, int] = {}
        current: frozenset[int] = frozenset()
        for region in range(regions):
            changed = False
            for index in starts.get(region, ()):
                active[index] = active.get(index, 0) + 1
                changed = True
            if changed:
                current = frozenset(active)
            self._regions.append(current)
            for index in ends.get(region, ()):
                active[index] -= 1
                if not active[index]:
                    del active[index]
                changed = True
            if changed:
                current = frozenset(active)
        self._built = True
