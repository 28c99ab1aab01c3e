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
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion
from packaging.version import Version as Pep440Version
from rattler import Version as CondaVersion

from condagate.conda.package_names import PYPI

AFFECTED, CLEAN, UNKNOWN = "affected", "clean", "unknown"
_PLAIN = re.compile(r"\d+(?:\.\d+)*")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
# A plain release spelled the usual way (no leading zeros): found in a versions list by its string.
_CANONICAL_PLAIN = re.compile(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*")
# How PEP 440 may spell a plain release (1.0 == v1.0 == 0!1.0), and where any version's release starts.
_RELEASE_SPELLING = re.compile(r"\s*[vV]?(?:0+!)?\d+(?:\.\d+)*\s*")
_LEADING_RELEASE = re.compile(r"\s*[vV]?(?:0+!)?(\d+(?:\.\d+)*)")
_KIND_ORDER = {"introduced": 0, "fixed": 1, "last_affected": 1, "limit": 2}


@dataclass(frozen=True)
class Verdict:
    status: str  # affected | clean | unknown
    fixed_in: tuple[str, ...] = ()  # fixed versions above the one asked about, lowest first
    note: str = ""


_CLEAN = Verdict(CLEAN)


# Orders -------------------------------------------------------------------------------------------


def _pep440(text: str) -> Pep440Version:
    return Pep440Version(text)


def _conda(text: str) -> CondaVersion:
    try:
        return CondaVersion(text)
    except Exception as exc:  # rattler raises its own exception types
        raise ValueError(str(exc)) from None


@dataclass(frozen=True, order=True)
class SemVer:
    """SemVer 2.0 precedence (build metadata ignored); plain releases "1" / "1.2" are padded."""

    release: tuple[int, int, int]
    final: bool
    prerelease: tuple[tuple[int, int, str], ...]

    @classmethod
    def parse(cls, text: str) -> SemVer:
        candidate = text.removeprefix("v")
        if _PLAIN.fullmatch(candidate) and candidate.count(".") < 2:
            candidate += ".0" * (2 - candidate.count("."))
        match = _SEMVER.fullmatch(candidate)
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version")
        major, minor, patch, pre = match.groups()
        parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
        return cls((int(major), int(minor), int(patch)), pre is None, parts)


Parse = Callable[[str], Any]


# The version asked about, parsed once for all the entries it is checked against ----------------------


@dataclass
class QueriedVersion:
    text: str
    plain: bool  # digits and dots only: PEP 440 and conda order it alike
    pep440: Pep440Version | None  # None: not a PEP 440 version
    release: tuple[int, ...] | None  # the leading release numbers, trailing zeros cut (1.0rc1 -> (1,))
    _conda: Any = None
    _semver: Any = None
    _spellings: tuple[str, ...] | None = None

    @property
    def release_only(self) -> bool:
        """A release and nothing else (no pre, post, dev or local part, epoch 0): 1.0, v1.0."""
        if self.plain:
            return True
        v = self.pep440
        return v is not None and not (v.pre or v.post is not None or v.dev is not None or v.local or v.epoch)

    def spellings(self) -> tuple[str, ...]:
        """The plain spellings of this release PEP 440 and conda hold equal: 2 == 2.0 == 2.0.0 == 2.0.0.0."""
        if self._spellings is None:
            parts = [str(p) for p in self.release or ()]
            self._spellings = tuple(".".join(parts + ["0"] * extra) for extra in range(max(1, 5 - len(parts))))
        return self._spellings

    @classmethod
    def of(cls, text: str) -> QueriedVersion:
        try:
            parsed: Pep440Version | None = Pep440Version(text)
        except InvalidVersion:
            parsed = None
        return cls(text, bool(_PLAIN.fullmatch(text)), parsed, _leading_release(text))

    def key(self, order: str) -> Any:
        """This version in ``order`` (pep440, conda, semver), or None when it has no place there."""
        if order == "pep440":
            return self.pep440
        if order == "conda":
            if self._conda is None:
                self._conda = _try(_conda, self.text) or False
            return self._conda or None
        if self._semver is None:
            self._semver = _try(SemVer.parse, self.text) or False
        return self._semver or None


def _try(parse: Parse, text: str) -> Any:
    try:
        return parse(text)
    except (ValueError, InvalidVersion):
        return None


def _release_key(text: str) -> str:
    """A plain release spelling's key, equal for equal releases (2 == 2.0 == 2.0.0 == v2.0 == 02)."""
    if _CANONICAL_PLAIN.fullmatch(text):
        while text.endswith(".0"):
            text = text[:-2]
        return text
    release = _leading_release(text)
    return ".".join(map(str, release)) if release is not None else ""


def _leading_release(text: str) -> tuple[int, ...] | None:
    """The release numbers a version starts with, as both orders compare them (1.0.0 == 1.0 == 1):
    two spellings of one version always share them."""
    match = _LEADING_RELEASE.match(text)
    if match is None:
        return None
    parts = [int(part) for part in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


# Compiled entries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Walk:
    events: list[tuple[Any, str]]  # (bound, kind) in version order; bound None: introduced "0"
    limits: list[Any]  # finite limits
    unlimited: bool  # no limit event, or a "*" one


@dataclass
class AffectedVersions:
    """One ``affected`` entry, compiled lazily per order (PEP 440, conda, SemVer) on first use."""

    ecosystem: str
    ranges: Sequence[tuple[str, Sequence[tuple[str, str]]]]  # (type, [(kind, version), ...])
    versions: Sequence[str]
    _walks: dict[tuple[str, str], list[_Walk | None]] = field(default_factory=dict, repr=False)
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
            self._plain = all(_PLAIN.fullmatch(v) or v == "*" for _, events in self.ranges for _, v in events)
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
                if not _CANONICAL_PLAIN.fullmatch(text):
                    odd.setdefault(_leading_release(text), []).append(text)
            self._odd = odd
        group = self._odd.get(version.release, ())
        if version.release_only:
            strings = self.listed()
            if any(spelling in strings for spelling in version.spellings()):
                return True
            return any(_RELEASE_SPELLING.fullmatch(text) for text in group)
        if not group:
            return False
        key = version.key(order)
        parse = _ORDERS[order]
        return key is not None and any(_try(parse, text) == key for text in group)

    def walks(self, order: str, parse: Parse, range_type: str) -> list[_Walk | None]:
        """The ranges of one type in ``order``; None for a range with a bound that order cannot place."""
        key = (order, range_type)
        found = self._walks.get(key)
        if found is None:
            found = self._walks[key] = _compile(self, parse, range_type)
        return found

    def fixed_versions(self) -> tuple[list[Pep440Version], list[str]]:
        """The ``fixed`` events that are PEP 440 versions, lowest first: (versions, their spellings)."""
        if self._fixed is None:
            texts = dict.fromkeys(v for _, events in self.version_ranges for kind, v in events if kind == "fixed")
            ordered = sorted((parsed, text) for text in texts if (parsed := _try(_pep440, text)) is not None)
            self._fixed = ([parsed for parsed, _ in ordered], [text for _, text in ordered])
        return self._fixed


def _compile(entry: AffectedVersions, parse: Parse, range_type: str) -> list[_Walk | None]:
    walks: list[_Walk | None] = []
    for kind, events in entry.version_ranges:
        if kind != range_type:
            continue
        try:
            keyed = [
                (None if (k == "introduced" and v == "0") or (k == "limit" and "*" in v) else parse(v), k)
                for k, v in events
            ]
        except (ValueError, InvalidVersion):
            walks.append(None)
            continue
        ordered = sorted(
            ((bound, k) for bound, k in keyed if k != "limit"),
            key=lambda item: (item[0] is not None, item[0] if item[0] is not None else 0, _KIND_ORDER[item[1]]),
        )
        limits = [bound for bound, k in keyed if k == "limit"]
        finite = [b for b in limits if b is not None]
        walks.append(_Walk(ordered, finite, len(finite) < len(limits) or not limits))
    return walks


def _in_range(version: Any, walk: _Walk) -> bool:
    if not walk.unlimited and not any(version < limit for limit in walk.limits):
        return False
    vulnerable = False
    for bound, kind in walk.events:
        if kind == "introduced" and (bound is None or version >= bound):
            vulnerable = True
        elif (kind == "fixed" and version >= bound) or (kind == "last_affected" and version > bound):
            vulnerable = False
    return vulnerable


_ORDERS: dict[str, Parse] = {"pep440": _pep440, "conda": _conda}


def _evaluate(entry: AffectedVersions, version: QueriedVersion, order: str) -> str:
    """affected | clean | unknown in one order (unknown: the version or a bound does not parse)."""
    parsed = version.key(order)
    if parsed is None:
        return UNKNOWN
    parse = _ORDERS[order]
    if entry.is_listed(version, order):
        return AFFECTED
    walks = entry.walks(order, parse, "ECOSYSTEM")
    if any(walk is not None and _in_range(parsed, walk) for walk in walks):
        return AFFECTED
    undecided = any(walk is None for walk in walks)
    if entry.has_semver:
        as_semver = version.key("semver")
        if as_semver is None:
            return UNKNOWN
        semver = entry.walks("semver", SemVer.parse, "SEMVER")
        if any(walk is not None and _in_range(as_semver, walk) for walk in semver):
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
            listed = self._listed.get(_release_key(version.text))
        else:
            parsed = self._parsed.setdefault(order, {})
            listed = set()
            for text in self._odd.get(version.release, ()):
                if text not in parsed:
                    parsed[text] = _try(_ORDERS[order], text)
                if parsed[text] == key:
                    listed |= self._exact[text]
        return hits | listed if listed else hits

    def _build(self) -> None:
        walks: dict[int, list[_Walk]] = {}
        for index, (_, entry) in enumerate(self.entries):
            compiled = entry.walks("pep440", _pep440, "ECOSYSTEM") if entry.version_ranges else []
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
                if _CANONICAL_PLAIN.fullmatch(text):  # the usual spelling: no second look
                    while text.endswith(".0"):
                        text = text[:-2]
                    self._listed.setdefault(text, set()).add(index)
                    continue
                if _RELEASE_SPELLING.fullmatch(text):
                    self._listed.setdefault(_release_key(text), set()).add(index)
                if text not in self._exact:
                    self._exact[text] = set()
                    self._odd.setdefault(_leading_release(text), []).append(text)
                self._exact[text].add(index)
        # Plain bounds: one text per distinct release, in the same order for PEP 440 and conda.
        distinct: dict[Pep440Version, str] = {}
        for index in walks:
            for _, events in self.entries[index][1].version_ranges:
                for event_kind, text in events:
                    if not (event_kind == "introduced" and text == "0") and "*" not in text:
                        distinct.setdefault(_pep440(text), text)
        ordered = sorted(distinct.items())
        self._bounds = {"pep440": [key for key, _ in ordered], "conda": [_conda(text) for _, text in ordered]}
        position = {bound: i for i, bound in enumerate(self._bounds["pep440"])}
        regions = 2 * len(ordered) + 1
        starts: dict[int, list[int]] = {}
        ends: dict[int, list[int]] = {}
        for index, entry_walks in walks.items():
            for walk in entry_walks:
                for first, last in _covered(walk, position, regions):
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


def _covered(walk: _Walk, position: dict[Any, int], regions: int) -> list[tuple[int, int]]:
    """The runs of global regions (first, last) a range covers. Regions among the sorted bounds
    b0 < b1 < ...: 2i is the open interval below bi (above b(i-1)), 2i + 1 the point bi. The
    range's own bounds split the line more coarsely; its state is decided once per own region."""
    own = sorted({bound for bound, _ in walk.events if bound is not None} | set(walk.limits))
    at = [position[bound] for bound in own]
    runs: list[tuple[int, int]] = []
    for region in range(2 * len(own) + 1):
        k, point = divmod(region, 2)
        if point:
            inside = _holds_at(walk, own[k], point=True) and (walk.unlimited or any(own[k] < x for x in walk.limits))
            span = (2 * at[k] + 1, 2 * at[k] + 1)
        else:
            below = own[k - 1] if k > 0 else None
            above = own[k] if k < len(own) else None
            inside = _holds_at(walk, below, point=False) and (
                walk.unlimited or (above is not None and any(above <= x for x in walk.limits))
            )
            span = (2 * at[k - 1] + 2 if k > 0 else 0, 2 * at[k] if k < len(own) else regions - 1)
        if inside:
            if runs and runs[-1][1] + 1 == span[0]:
                runs[-1] = (runs[-1][0], span[1])
            else:
                runs.append(span)
    return runs


def _holds_at(walk: _Walk, bound: Any, *, point: bool) -> bool:
    """The walk's state at the point ``bound`` (point=True), or just above it (the open interval
    after it; ``bound`` None: below every bound)."""
    vulnerable = False
    for event_bound, kind in walk.events:
        if event_bound is None:
            holds = True
        elif bound is None:
            holds = False
        elif point:
            holds = event_bound < bound or (event_bound == bound and kind != "last_affected")
        else:
            holds = event_bound <= bound
        if holds:
            vulnerable = kind == "introduced"
    return vulnerable
