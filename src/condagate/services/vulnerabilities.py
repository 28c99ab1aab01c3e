"""Which advisories affect a package version in a feed: the question every SCA check asks.

Answered from a per-process index (conda name -> candidate advisories with their ranges, compiled
on first use), rebuilt when the SCA revision moves: the revision is re-read at most once a second
(at once in the process that made the change), and a change is applied incrementally, so that only
the names an import, an override or an assessment touched are evaluated again. Answers are
memoised per (feed, name, version) for the revision.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from condagate.conda.affected_versions import (
    AFFECTED,
    UNKNOWN,
    AffectedVersions,
    PackageAdvisories,
    Verdict,
)
from condagate.conda.package_names import (
    FALLBACK,
    GRAYSKULL,
    OVERRIDE,
    PYPI,
    NameMapping,
    grayskull_table,
    map_to_pypi,
)
from condagate.conda.version_order import QueriedVersion
from condagate.services.context import Services
from condagate.store import advisories as advisory_store
from condagate.store import sca_state
from condagate.store.db import Database

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
_MAX_MEMO_NAMES = 200_000  # conda names with a memo; beyond, the memo starts over
_MAX_MEMO_VERSIONS = 2_000  # answers kept per name
_MAX_INCREMENTAL = 2_000  # changed advisories beyond which the index is rebuilt whole
_CHANGE_LOG = 64  # revisions whose touched names are remembered (``names_changed_since``)
_SEVERITY_RANK = {"critical": 5, "high": 4, "medium": 3, "low": 2, "none": 1, "unknown": 0}


@dataclass(frozen=True)
class AdvisoryFinding:
    advisory_id: str
    aliases: tuple[str, ...]
    summary: str
    severity: str  # none | low | medium | high | critical | unknown
    score: float | None
    vector: str
    links: tuple[str, ...]
    fixed_in: tuple[str, ...]
    assessment: str | None  # ignore | caution | block in force for this feed (a feed's own beats the global one)
    assessment_comment: str


@dataclass(frozen=True)
class VulnerabilityState:
    """``findings``: the advisories affecting the version ("affected"), or those that could not be
    decided for it ("unknown-version"); empty for "clean" and "no-data"."""

    status: str  # "affected" | "clean" | "no-data" | "unknown-version"
    ecosystem_name: str | None  # e.g. "PyPI:pillow"
    mapping_source: str  # "grayskull" | "override" | "fallback" | "none"
    findings: tuple[AdvisoryFinding, ...]
    note: str


def vulnerability_state(services: Services, *, feed_id: int | None, name: str, version: str) -> VulnerabilityState:
    """The advisories of ``name`` ``version`` as seen from a feed (``None``: system-wide assessments only)."""
    return matcher(services).state(feed_id, name, version)


def sca_revision(services: Services) -> int:
    """The current SCA revision: cached per process, re-read at most every second."""
    return matcher(services).revision()


def names_changed_since(services: Services, *, revision: int, names: Iterable[str]) -> set[str] | None:
    """Those of ``names`` whose answers may differ from what they were at ``revision``; None when
    this process cannot tell (a rebuild, or too long ago): then every name must be evaluated again."""
    return matcher(services).changed_since(revision, names)


def note_change(services: Services) -> None:
    """This process just changed SCA data: the next question re-reads the revision at once."""
    matcher(services).expire()


_CREATE_LOCK = threading.Lock()


def matcher(services: Services) -> VulnerabilityMatcher:
    """The process's matcher, made on first use and kept on ``services``."""
    found: VulnerabilityMatcher | None = getattr(services, "_vulnerability_matcher", None)
    if found is None:
        with _CREATE_LOCK:
            found = getattr(services, "_vulnerability_matcher", None)
            if found is None:
                found = VulnerabilityMatcher(services.db)
                services._vulnerability_matcher = found  # type: ignore[attr-defined]
    return found


# The index ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Card:
    """What a finding shows of an advisory."""

    id: str
    summary: str
    aliases: tuple[str, ...]
    severity: str
    score: float | None
    vector: str
    links: tuple[str, ...]
    withdrawn: bool


@dataclass
class _Entry:
    """One affected-package row of a live advisory; its ranges are decoded on first use."""

    advisory_id: str
    ranges_json: str
    versions_json: str
    _compiled: AffectedVersions | None = None

    def versions(self) -> AffectedVersions:
        if self._compiled is None:
            self._compiled = AffectedVersions.from_json(PYPI, self.ranges_json, self.versions_json)
        return self._compiled


@dataclass(frozen=True)
class _Base:
    """A feed-independent answer: status, mapping, (advisory id, verdict) findings, note."""

    status: str
    mapping: NameMapping
    findings: tuple[tuple[str, Verdict], ...]
    note: str


@dataclass
class _NameMemo:
    mapping: NameMapping | None  # None: the mapping depends on the version (pyqt 4 / 5)
    fixed: VulnerabilityState | None = None  # the answer for every version (no candidate advisories)
    base: dict[str, _Base] = field(default_factory=dict)
    results: dict[tuple[int | None, str], VulnerabilityState] = field(default_factory=dict)


@dataclass
class _Index:
    revision: int
    states: dict[str, tuple[datetime, datetime | None]]
    cards: dict[str, _Card]
    by_name: dict[str, list[_Entry]]  # normalised PyPI name -> entries of live advisories
    names_of: dict[str, tuple[str, ...]]  # advisory id -> its PyPI names
    overrides: dict[str, str | None]
    assessments: dict[tuple[str, int | None], tuple[str, str]]  # in force, "clear" left out
    memo: dict[str, _NameMemo] = field(default_factory=dict)
    packages: dict[str, PackageAdvisories] = field(default_factory=dict)  # PyPI name -> compiled, on first use
    # (advisory id, fixed in, assessment) -> the finding: shared by every version that has it
    findings: dict[tuple[str, tuple[str, ...], tuple[str, str] | None], AdvisoryFinding] = field(default_factory=dict)


class VulnerabilityMatcher:
    def __init__(self, db: Database, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._db = db
        self._refresh_seconds = refresh_seconds
        self._index: _Index | None = None
        self._lock = threading.Lock()
        self._revision = -1
        self._checked_at = -1e18
        # (revision, touched PyPI names, touched conda names): what moved at each refresh
        self._changes: deque[tuple[int, int, frozenset[str], frozenset[str]]] = deque(maxlen=_CHANGE_LOG)

    # Revision and refresh ----------------------------------------------------------------------

    def revision(self) -> int:
        now = time.monotonic()
        if now - self._checked_at >= self._refresh_seconds:
            with self._db.read() as session:
                self._revision = sca_state.revision(session=session)
            self._checked_at = now
        return self._revision

    def expire(self) -> None:
        self._checked_at = -1e18

    def current(self) -> _Index:
        wanted = self.revision()
        index = self._index
        if index is not None and index.revision >= wanted:
            return index
        # The first build waits; later refreshes run in one thread while the others answer from
        # the index they have (at most one refresh interval behind).
        if not self._lock.acquire(blocking=index is None):
            assert index is not None
            return index
        try:
            index = self._index
            if index is None or index.revision < wanted:
                index = self._build() if index is None else self._refresh(index)
                self._index = index
                # The data read may be newer than the revision checked: no refresh until it moves again.
                self._revision = max(self._revision, index.revision)
            return index
        finally:
            self._lock.release()

    def _build(self) -> _Index:
        started = time.perf_counter()
        with self._db.read() as session:
            revision = sca_state.revision(session=session)  # first: data read after it is at least as new
            states = advisory_store.states(session=session)
            cards = {row[0]: _card(row) for row in advisory_store.cards(session=session)}
            rows = advisory_store.package_rows(session=session)
            overrides = advisory_store.overrides(session=session, ecosystem=PYPI)
            assessments = _assessments(session)
        by_name: dict[str, list[_Entry]] = {}
        names_of: dict[str, list[str]] = {}
        for advisory_id, ecosystem, name, ranges, versions in rows:
            if ecosystem != PYPI:
                continue
            names_of.setdefault(advisory_id, []).append(name)
            card = cards.get(advisory_id)
            if card is not None and not card.withdrawn:
                by_name.setdefault(name, []).append(_Entry(advisory_id, ranges, versions))
        log.info(
            "vulnerability index: %d advisories, %d PyPI names, built in %.0f ms",
            len(cards),
            len(by_name),
            (time.perf_counter() - started) * 1000,
        )
        self._changes.clear()
        return _Index(
            revision,
            states,
            cards,
            by_name,
            {k: tuple(dict.fromkeys(v)) for k, v in names_of.items()},
            overrides,
            assessments,
        )

    def _refresh(self, old: _Index) -> _Index:
        """Apply what changed since ``old``: changed advisories, overrides and assessments."""
        with self._db.read() as session:
            revision = sca_state.revision(session=session)
            states = advisory_store.states(session=session)
            changed = {i for i, state in states.items() if old.states.get(i) != state} | (
                old.states.keys() - states.keys()
            )
            if len(changed) > _MAX_INCREMENTAL:
                return self._build()
            cards = {row[0]: _card(row) for row in advisory_store.cards(session=session, advisory_ids=changed)}
            rows = advisory_store.package_rows(session=session, advisory_ids=changed)
            overrides = advisory_store.overrides(session=session, ecosystem=PYPI)
            assessments = _assessments(session)
        touched: set[str] = set()
        new_cards = dict(old.cards)
        new_names_of = dict(old.names_of)
        by_name = dict(old.by_name)
        for advisory_id in changed:
            touched.update(old.names_of.get(advisory_id, ()))
            new_cards.pop(advisory_id, None)
            new_names_of.pop(advisory_id, None)
        new_cards.update(cards)
        added: dict[str, list[_Entry]] = {}
        for advisory_id, ecosystem, name, ranges, versions in rows:
            if ecosystem != PYPI:
                continue
            new_names_of[advisory_id] = (*new_names_of.get(advisory_id, ()), name)
            touched.add(name)
            if not cards[advisory_id].withdrawn:
                added.setdefault(name, []).append(_Entry(advisory_id, ranges, versions))
        for name in touched:
            kept = [e for e in by_name.get(name, []) if e.advisory_id not in changed] + added.get(name, [])
            if kept:
                by_name[name] = kept
            else:
                by_name.pop(name, None)
        moved_assessments = {key[0] for key in old.assessments.keys() ^ assessments.keys()} | {
            key[0] for key, value in assessments.items() if old.assessments.get(key, value) != value
        }
        for advisory_id in moved_assessments:
            touched.update(new_names_of.get(advisory_id, ()))
        touched_conda = {
            n for n in old.overrides.keys() | overrides.keys() if old.overrides.get(n, 0) != overrides.get(n, 0)
        }
        memo = {
            name: entry
            for name, entry in old.memo.items()
            if name not in touched_conda and not _mapped_to(entry, name, touched)
        }
        self._changes.append((old.revision, revision, frozenset(touched), frozenset(touched_conda)))
        log.info(
            "vulnerability index: revision %d -> %d, %d advisories changed, %d PyPI names touched",
            old.revision,
            revision,
            len(changed),
            len(touched),
        )
        packages = {name: compiled for name, compiled in old.packages.items() if name not in touched}
        return _Index(revision, states, new_cards, by_name, new_names_of, overrides, assessments, memo, packages)

    def changed_since(self, revision: int, names: Iterable[str]) -> set[str] | None:
        index = self.current()
        if revision == index.revision:
            return set()
        steps = [change for change in self._changes if change[0] >= revision and change[1] <= index.revision]
        if not steps or steps[0][0] != revision or steps[-1][1] != index.revision:
            return None
        if any(earlier[1] != later[0] for earlier, later in zip(steps, steps[1:], strict=False)):
            return None
        pypi = frozenset().union(*(step[2] for step in steps))
        conda = frozenset().union(*(step[3] for step in steps))
        if not pypi and not conda:
            return set()  # e.g. a feed's policy changed: no answer of this index moved
        table = grayskull_table()
        changed = set()
        for name in names:
            if name in conda:
                changed.add(name)
                continue
            memo = index.memo.get(name)
            if memo is not None and memo.mapping is not None:
                mapped = memo.mapping.names
            else:
                mapped = map_to_pypi(name, None, overrides=index.overrides, table=table).names
            if any(n in pypi for n in mapped):
                changed.add(name)
        return changed

    # Answers -------------------------------------------------------------------------------------

    def state(self, feed_id: int | None, name: str, version: str) -> VulnerabilityState:
        index = self.current()
        memo = index.memo.get(name)
        if memo is None:
            memo = self._memo_for(index, name)
            if len(index.memo) >= _MAX_MEMO_NAMES:
                index.memo.clear()
            index.memo[name] = memo
        if memo.fixed is not None:
            return memo.fixed
        key = (feed_id, version)
        found = memo.results.get(key)
        if found is not None:
            return found
        base = memo.base.get(version)
        if base is None:
            mapping = memo.mapping or map_to_pypi(name, version, overrides=index.overrides)
            base = _evaluate(index, name, version, mapping)
            if len(memo.base) >= _MAX_MEMO_VERSIONS:
                memo.base.clear()
                memo.results.clear()
            memo.base[version] = base
        found = _with_assessments(index, base, feed_id)
        if len(memo.results) >= _MAX_MEMO_VERSIONS:
            memo.results.clear()
        memo.results[key] = found
        return found

    def _memo_for(self, index: _Index, name: str) -> _NameMemo:
        table = grayskull_table()
        if name not in index.overrides and name in table.by_version:
            return _NameMemo(None)  # depends on the version: decided per call
        mapping = map_to_pypi(name, None, overrides=index.overrides, table=table)
        if not any(index.by_name.get(n) for n in mapping.names):
            return _NameMemo(mapping, fixed=_no_candidates(name, mapping))
        return _NameMemo(mapping)


def _mapped_to(memo: _NameMemo, name: str, touched: set[str]) -> bool:
    if memo.mapping is None:
        return True
    return any(n in touched for n in memo.mapping.names)


def _card(row: advisory_store.CardRow) -> _Card:
    advisory_id, summary, aliases, severity, score, vector, links, withdrawn = row
    return _Card(
        advisory_id,
        summary,
        tuple(json.loads(aliases or "[]")),
        severity,
        score,
        vector,
        tuple(json.loads(links or "[]")),
        withdrawn is not None,
    )


def _assessments(session: Session) -> dict[tuple[str, int | None], tuple[str, str]]:
    rows = advisory_store.assessments_in_force(session=session)
    return {key: (row.verdict, row.comment) for key, row in rows.items() if row.verdict != "clear"}


def _no_candidates(name: str, mapping: NameMapping) -> VulnerabilityState:
    if mapping.source in (GRAYSKULL, OVERRIDE) and mapping.names:
        how = "the grayskull table" if mapping.source == GRAYSKULL else "an administrator's override"
        note = f"{name} is {mapping.ecosystem_name} ({how}): no advisory names it"
        return VulnerabilityState("clean", mapping.ecosystem_name, mapping.source, (), note)
    if mapping.source == FALLBACK:
        note = (
            f"{name} is not in the grayskull table; no advisory names {mapping.ecosystem_name} either, "
            "so whether it is a PyPI package at all is unknown"
        )
    elif mapping.source == OVERRIDE:
        note = f"an administrator marked {name} as having no PyPI counterpart"
    elif mapping.source == GRAYSKULL:
        note = f"the grayskull table names no PyPI package for this version of {name}"
    else:
        note = f"{name} maps to no PyPI name (not in the grayskull table, not a valid PyPI name)"
    return VulnerabilityState("no-data", mapping.ecosystem_name, mapping.source, (), note)


def _evaluate(index: _Index, name: str, version: str, mapping: NameMapping) -> _Base:
    verdicts: dict[str, list[Verdict]] = {}
    tested = QueriedVersion.of(version)
    for pypi_name in mapping.names:
        for advisory_id, verdict in _package(index, pypi_name).check(tested, include_clean=False):
            verdicts.setdefault(advisory_id, []).append(verdict)
    if not verdicts:
        if not any(index.by_name.get(n) for n in mapping.names):
            state = _no_candidates(name, mapping)
            return _Base(state.status, mapping, (), state.note)
        return _Base("clean", mapping, (), "")
    affected: list[tuple[str, Verdict]] = []
    undecided: list[tuple[str, Verdict]] = []
    for advisory_id, found in verdicts.items():
        if len(found) == 1:  # one affected entry per advisory and package, as usual
            (affected if found[0].status == AFFECTED else undecided).append((advisory_id, found[0]))
            continue
        fixed = tuple(dict.fromkeys(v for verdict in found for v in verdict.fixed_in))
        if any(v.status == AFFECTED for v in found):
            affected.append((advisory_id, Verdict(AFFECTED, fixed)))
        elif any(v.status == UNKNOWN for v in found):
            notes = "; ".join(dict.fromkeys(v.note for v in found if v.status == UNKNOWN and v.note))
            undecided.append((advisory_id, Verdict(UNKNOWN, fixed, notes)))

    def rank(item: tuple[str, Verdict]) -> tuple[int, str]:
        card = index.cards.get(item[0])
        return (-_SEVERITY_RANK.get(card.severity if card else "unknown", 0), item[0])

    affected.sort(key=rank)
    undecided.sort(key=rank)
    undecided_note = "; ".join(f"{advisory_id}: {verdict.note}" for advisory_id, verdict in undecided)
    if affected:
        note = f"also undecided for this version: {undecided_note}" if undecided else ""
        return _Base("affected", mapping, tuple(affected), note)
    if undecided:
        return _Base("unknown-version", mapping, tuple(undecided), undecided_note)
    return _Base("clean", mapping, (), "")


def _package(index: _Index, pypi_name: str) -> PackageAdvisories:
    found = index.packages.get(pypi_name)
    if found is None:
        entries = index.by_name.get(pypi_name, [])
        found = index.packages[pypi_name] = PackageAdvisories([(e.advisory_id, e.versions()) for e in entries])
    return found


def _with_assessments(index: _Index, base: _Base, feed_id: int | None) -> VulnerabilityState:
    findings = []
    for advisory_id, verdict in base.findings:
        assessed = (index.assessments.get((advisory_id, feed_id)) if feed_id is not None else None) or (
            index.assessments.get((advisory_id, None))
        )
        key = (advisory_id, verdict.fixed_in, assessed)
        finding = index.findings.get(key)
        if finding is None:
            card = index.cards.get(advisory_id) or _Card(advisory_id, "", (), "unknown", None, "", (), False)
            finding = AdvisoryFinding(
                advisory_id=advisory_id,
                aliases=card.aliases,
                summary=card.summary,
                severity=card.severity,
                score=card.score,
                vector=card.vector,
                links=card.links,
                fixed_in=verdict.fixed_in,
                assessment=assessed[0] if assessed else None,
                assessment_comment=assessed[1] if assessed else "",
            )
            if len(index.findings) >= _MAX_MEMO_NAMES:
                index.findings.clear()
            index.findings[key] = finding
        findings.append(finding)
    return VulnerabilityState(base.status, base.mapping.ecosystem_name, base.mapping.source, tuple(findings), base.note)
