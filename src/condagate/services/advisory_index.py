"""The advisory index and the answers it gives: what a finding shows, the feed-independent verdict of a
package version against the advisories of its PyPI names, and that verdict with the assessments in force
for a feed. Plain data and functions; ``services.vulnerabilities`` keeps the index current per process."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from condagate.conda.affected_versions import (
    AFFECTED,
    UNKNOWN,
    AffectedVersions,
    PackageAdvisories,
    Verdict,
)
from condagate.conda.package_names import FALLBACK, GRAYSKULL, OVERRIDE, PYPI, NameMapping
from condagate.conda.version_order import QueriedVersion
from condagate.store import advisories as advisory_store

_MAX_FINDINGS = 200_000  # findings shared between versions; beyond, the memo starts over
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


@dataclass(frozen=True)
class AdvisoryCard:
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
class AffectedEntry:
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
class BaseAnswer:
    """A feed-independent answer: status, mapping, (advisory id, verdict) findings, note."""

    status: str
    mapping: NameMapping
    findings: tuple[tuple[str, Verdict], ...]
    note: str


@dataclass
class NameMemo:
    mapping: NameMapping | None  # None: the mapping depends on the version (pyqt 4 / 5)
    fixed: VulnerabilityState | None = None  # the answer for every version (no candidate advisories)
    base: dict[str, BaseAnswer] = field(default_factory=dict)
    results: dict[tuple[int | None, str], VulnerabilityState] = field(default_factory=dict)


@dataclass
class AdvisoryIndex:
    revision: int
    states: dict[str, tuple[datetime, datetime | None]]
    cards: dict[str, AdvisoryCard]
    by_name: dict[str, list[AffectedEntry]]  # normalised PyPI name -> entries of live advisories
    names_of: dict[str, tuple[str, ...]]  # advisory id -> its PyPI names
    overrides: dict[str, str | None]
    assessments: dict[tuple[str, int | None], tuple[str, str]]  # in force, "clear" left out
    memo: dict[str, NameMemo] = field(default_factory=dict)
    packages: dict[str, PackageAdvisories] = field(default_factory=dict)  # PyPI name -> compiled, on first use
    # (advisory id, fixed in, assessment) -> the finding: shared by every version that has it
    findings: dict[tuple[str, tuple[str, ...], tuple[str, str] | None], AdvisoryFinding] = field(default_factory=dict)


def advisory_card(row: advisory_store.CardRow) -> AdvisoryCard:
    advisory_id, summary, aliases, severity, score, vector, links, withdrawn = row
    return AdvisoryCard(
        advisory_id,
        summary,
        tuple(json.loads(aliases or "[]")),
        severity,
        score,
        vector,
        tuple(json.loads(links or "[]")),
        withdrawn is not None,
    )


def no_candidates(name: str, mapping: NameMapping) -> VulnerabilityState:
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


def evaluate(index: AdvisoryIndex, name: str, version: str, mapping: NameMapping) -> BaseAnswer:
    verdicts: dict[str, list[Verdict]] = {}
    tested = QueriedVersion.of(version)
    for pypi_name in mapping.names:
        for advisory_id, verdict in package_advisories(index, pypi_name).check(tested, include_clean=False):
            verdicts.setdefault(advisory_id, []).append(verdict)
    if not verdicts:
        if not any(index.by_name.get(n) for n in mapping.names):
            state = no_candidates(name, mapping)
            return BaseAnswer(state.status, mapping, (), state.note)
        return BaseAnswer("clean", mapping, (), "")
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
        return BaseAnswer("affected", mapping, tuple(affected), note)
    if undecided:
        return BaseAnswer("unknown-version", mapping, tuple(undecided), undecided_note)
    return BaseAnswer("clean", mapping, (), "")


def package_advisories(index: AdvisoryIndex, pypi_name: str) -> PackageAdvisories:
    found = index.packages.get(pypi_name)
    if found is None:
        entries = index.by_name.get(pypi_name, [])
        found = index.packages[pypi_name] = PackageAdvisories([(e.advisory_id, e.versions()) for e in entries])
    return found


def with_assessments(index: AdvisoryIndex, base: BaseAnswer, feed_id: int | None) -> VulnerabilityState:
    findings = []
    for advisory_id, verdict in base.findings:
        assessed = (index.assessments.get((advisory_id, feed_id)) if feed_id is not None else None) or (
            index.assessments.get((advisory_id, None))
        )
        key = (advisory_id, verdict.fixed_in, assessed)
        finding = index.findings.get(key)
        if finding is None:
            card = index.cards.get(advisory_id) or AdvisoryCard(advisory_id, "", (), "unknown", None, "", (), False)
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
            if len(index.findings) >= _MAX_FINDINGS:
                index.findings.clear()
            index.findings[key] = finding
        findings.append(finding)
    return VulnerabilityState(base.status, base.mapping.ecosystem_name, base.mapping.source, tuple(findings), base.note)
