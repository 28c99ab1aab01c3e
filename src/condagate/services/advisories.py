"""Advisories: importing OSV documents (a file, a folder, a zip, a request body), showing them,
administrators' assessments and package-name overrides.

An import reads each document whole (a zip's members in memory, never extracted to disk, within
bounds that refuse zip bombs), checks it (``conda.osv``), and stores it whole or not at all: a bad
document is reported with its file and reason and the rest goes on. A document already stored is
replaced only when its ``modified`` is newer. Every change bumps the SCA revision in its transaction.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from condagate.conda import osv
from condagate.conda.osv import Document, documents_from_body, documents_from_path
from condagate.conda.package_names import PYPI, is_pypi_name, map_to_pypi, normalize_pypi
from condagate.errors import AdvisoryNotFound, BadRequest, NotFound
from condagate.services import catalog, vulnerabilities
from condagate.services.advisory_index import VulnerabilityState
from condagate.services.context import Services
from condagate.store import advisories as advisory_store
from condagate.store import feeds as feed_store
from condagate.store import sca_state
from condagate.store.models import Advisory

log = logging.getLogger(__name__)

MAX_REPORTED_FAILURES = 1_000
BATCH = 200  # documents per transaction (each document still whole or not at all)
VERDICTS = ("ignore", "caution", "block")
CLEAR = "clear"
MAX_COMMENT = 2000
SEVERITIES = ("critical", "high", "medium", "low", "none", "unknown")
_CONDA_NAME = re.compile(r"[a-z0-9_][a-z0-9_.+-]*")


# Importing ----------------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    """Each document counts once: new, updated (a newer ``modified``), withdrawn (newly withdrawn),
    unchanged (not newer than what is stored), or failed (with its reason)."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    withdrawn: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}, the first 1,000
    revision: int = 0

    @property
    def documents(self) -> int:
        return self.new + self.updated + self.unchanged + self.withdrawn + self.failed

    def fail(self, source: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append({"file": source, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "documents": self.documents}


def import_path(services: Services, path: Path, *, progress: Callable[[int], None] | None = None) -> ImportSummary:
    """A .json file, a .zip of them, or a folder (searched recursively)."""
    return import_documents(services, documents_from_path(path), progress=progress)


def import_body(services: Services, body: IO[bytes], *, source: str) -> ImportSummary:
    """A request body: a zip of OSV documents, or one JSON document."""
    return import_documents(services, documents_from_body(body, source=source))


def import_documents(
    services: Services, documents: Iterable[Document], *, progress: Callable[[int], None] | None = None
) -> ImportSummary:
    """Import every document; ``progress`` hears how many more were handled after each batch."""
    summary = ImportSummary()
    batch: list[tuple[str, osv.Advisory]] = []
    try:
        for document in documents:
            if document.data is None:
                summary.fail(document.source, document.error)
                continue
            parsed = osv.parse_advisory(document.data, source=document.source)
            if isinstance(parsed, osv.Rejected):
                summary.fail(parsed.source, parsed.reason)
            else:
                batch.append((document.source, parsed))
            if len(batch) >= BATCH:
                _store_batch(services, batch, summary)
                batch = []
                if progress is not None:
                    progress(summary.documents)
        if batch:
            _store_batch(services, batch, summary)
    finally:
        vulnerabilities.note_change(services)
    if progress is not None:
        progress(summary.documents)
    with services.db.read() as session:
        summary.revision = sca_state.revision(session=session)
    log.info(
        "advisory import: %d new, %d updated, %d withdrawn, %d unchanged, %d failed",
        summary.new,
        summary.updated,
        summary.withdrawn,
        summary.unchanged,
        summary.failed,
    )
    return summary


def _store_batch(services: Services, batch: list[tuple[str, osv.Advisory]], summary: ImportSummary) -> None:
    """One transaction for the batch; should the database refuse one document, each is retried alone."""
    counts = ImportSummary()
    try:
        with services.db.write() as session:
            _store(session, batch, counts)
    except Exception as exc:  # a row the database refuses: find which, keep the others
        log.warning("advisory batch refused (%s): storing its documents one by one", exc)
        counts = ImportSummary()
        for item in batch:
            try:
                with services.db.write() as session:
                    _store(session, [item], counts)
            except Exception as single:
                counts.fail(item[0], f"the database refused it: {str(single).splitlines()[0][:200]}")
    summary.new += counts.new
    summary.updated += counts.updated
    summary.unchanged += counts.unchanged
    summary.withdrawn += counts.withdrawn
    for failure in counts.failures:
        summary.fail(failure["file"], failure["reason"])


def _store(session: Session, batch: list[tuple[str, osv.Advisory]], counts: ImportSummary) -> None:
    now = datetime.now(UTC)
    current: dict[str, Advisory] = {
        row.id: row for row in advisory_store.find_many(session=session, advisory_ids={a.id for _, a in batch})
    }
    changed = False
    for source, advisory in batch:
        existing = current.get(advisory.id)
        if existing is None:
            outcome = "withdrawn" if advisory.withdrawn is not None else "new"
        elif advisory.modified > (advisory_store.aware(existing.modified) or existing.modified):
            newly_withdrawn = advisory.withdrawn is not None and existing.withdrawn is None
            outcome = "withdrawn" if newly_withdrawn else "updated"
        else:
            counts.unchanged += 1
            continue
        current[advisory.id] = advisory_store.save(
            session=session, advisory=advisory, source=source, now=now, existing=existing
        )
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        changed = True
    if changed:
        sca_state.bump_revision(session=session)


# Showing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvisoryInfo:
    id: str
    summary: str
    severity: str
    score: float | None
    vector: str
    aliases: list[str]
    links: list[str]
    modified: str
    published: str | None
    withdrawn: str | None
    packages: list[str]  # "PyPI:name"
    source: str
    imported_at: str


@dataclass(frozen=True)
class AdvisoryPage:
    items: list[AdvisoryInfo]
    total: int
    offset: int
    limit: int


def _info(row: Advisory, packages: list[tuple[str, str]]) -> AdvisoryInfo:
    def moment(value: datetime | None) -> str | None:
        aware = advisory_store.aware(value)
        return aware.isoformat() if aware is not None else None

    return AdvisoryInfo(
        id=row.id,
        summary=row.summary,
        severity=row.severity,
        score=row.severity_score,
        vector=row.severity_vector,
        aliases=list(json.loads(row.aliases or "[]")),
        links=list(json.loads(row.links or "[]")),
        modified=moment(row.modified) or "",
        published=moment(row.published),
        withdrawn=moment(row.withdrawn),
        packages=list(dict.fromkeys(f"{ecosystem}:{name}" for ecosystem, name in packages)),
        source=row.source,
        imported_at=moment(row.imported_at) or "",
    )


def list_advisories(
    services: Services,
    *,
    package: str = "",
    severity: str = "",
    withdrawn: bool | None = None,
    offset: int = 0,
    limit: int = 50,
) -> AdvisoryPage:
    """``package``: a conda name (looked up under the PyPI names it maps to) or a PyPI name;
    ``severity``: one level, or a comma-separated list of levels."""
    severities = [s.strip().lower() for s in severity.split(",") if s.strip()]
    unknown = [s for s in severities if s not in SEVERITIES]
    if unknown:
        raise BadRequest(f"unknown severity {unknown[0]!r}: choose from {', '.join(SEVERITIES)}")
    with services.db.read() as session:
        names: set[str] | None = None
        if package.strip():
            overrides = advisory_store.overrides(session=session, ecosystem=PYPI)
            names = set(map_to_pypi(package.strip(), None, overrides=overrides).names)
            names.add(normalize_pypi(package.strip()))
        rows, total = advisory_store.list_advisories(
            session=session,
            ecosystem=PYPI if names is not None else None,
            names=names,
            severities=severities or None,
            withdrawn=withdrawn,
            offset=offset,
            limit=limit,
        )
        packages = advisory_store.affected_names(session=session, advisory_ids=[row.id for row in rows])
    return AdvisoryPage([_info(row, packages.get(row.id, [])) for row in rows], total, offset, limit)


@dataclass(frozen=True)
class AssessmentInfo:
    id: int
    advisory_id: str
    feed: str | None  # None: system-wide
    verdict: str  # ignore | caution | block | clear
    comment: str
    actor: str
    at: str
    in_force: bool


@dataclass(frozen=True)
class AdvisoryDetail:
    advisory: AdvisoryInfo
    details: str
    affected: list[dict[str, Any]]  # ecosystem, name, ranges, versions
    assessments: list[AssessmentInfo]  # the history, newest first


def get_advisory(services: Services, advisory_id: str, *, visible_feeds: Callable[[str], bool]) -> AdvisoryDetail:
    """One advisory with its affected packages and the assessments of feeds the caller may see."""
    with services.db.read() as session:
        row = advisory_store.find(session=session, advisory_id=advisory_id)
        if row is None:
            raise AdvisoryNotFound(f"advisory {advisory_id!r} has not been imported")
        packages = advisory_store.packages_of(session=session, advisory_id=advisory_id)
        history = _history(session, advisory_id=advisory_id)
    info = _info(row, [(p.ecosystem, p.name) for p in packages])
    affected = [
        {"ecosystem": p.ecosystem, "name": p.name, "ranges": json.loads(p.ranges), "versions": json.loads(p.versions)}
        for p in packages
    ]
    shown = [a for a in history if a.feed is None or visible_feeds(a.feed)]
    return AdvisoryDetail(info, row.details, affected, shown)


# Assessments --------------------------------------------------------------------------------------


def _history(
    session: Session, *, advisory_id: str | None = None, feed_id: int | None = None, system_only: bool = False
) -> list[AssessmentInfo]:
    feed_ids: list[int | None] | None = None
    if feed_id is not None:
        feed_ids = [feed_id]
    elif system_only:
        feed_ids = [None]
    rows = advisory_store.assessment_history(session=session, advisory_id=advisory_id, feed_ids=feed_ids)
    seen: set[tuple[str, int | None]] = set()
    found = []
    for row, feed_name in rows:
        key = (row.advisory_id, row.feed_id)
        found.append(
            AssessmentInfo(
                id=row.id,
                advisory_id=row.advisory_id,
                feed=feed_name,
                verdict=row.verdict,
                comment=row.comment,
                actor=row.actor,
                at=(advisory_store.aware(row.at) or row.at).isoformat(),
                in_force=key not in seen and row.verdict != CLEAR,
            )
        )
        seen.add(key)
    return found


def assess(
    services: Services, *, advisory_id: str, verdict: str, feed: str | None, comment: str, actor: str
) -> AssessmentInfo:
    """Record a verdict (ignore, caution, block) or clear one, system-wide or for one feed."""
    if verdict not in (*VERDICTS, CLEAR):
        raise BadRequest(f"unknown verdict {verdict!r}: choose one of {', '.join((*VERDICTS, CLEAR))}")
    if len(comment) > MAX_COMMENT:
        raise BadRequest(f"the comment is longer than {MAX_COMMENT} characters")
    with services.db.write() as session:
        if advisory_store.find(session=session, advisory_id=advisory_id) is None:
            raise AdvisoryNotFound(f"advisory {advisory_id!r} has not been imported")
        feed_id = feed_store.get_feed(session=session, name=feed).id if feed else None
        row = advisory_store.add_assessment(
            session=session,
            advisory_id=advisory_id,
            feed_id=feed_id,
            verdict=verdict,
            comment=comment,
            actor=actor,
            now=datetime.now(UTC),
        )
        sca_state.bump_revision(session=session)
        info = AssessmentInfo(
            row.id, advisory_id, feed or None, verdict, comment, actor, row.at.isoformat(), verdict != CLEAR
        )
    vulnerabilities.note_change(services)
    return info


def assessment_history(
    services: Services, *, advisory_id: str | None = None, feed: str | None = None, system_only: bool = False
) -> list[AssessmentInfo]:
    """Assessments, newest first; ``in_force`` marks the row that counts for its advisory and feed."""
    with services.db.read() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id if feed else None
        return _history(session, advisory_id=advisory_id, feed_id=feed_id, system_only=system_only)


# Package-name overrides ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NameMappingInfo:
    conda_name: str
    ecosystem_name: str | None  # "PyPI:name", None: no counterpart
    source: str  # grayskull | override | fallback | none
    override: bool
    created_by: str = ""
    created_at: str = ""


def _check_conda_name(conda_name: str) -> str:
    if len(conda_name) > 200 or not _CONDA_NAME.fullmatch(conda_name):
        raise BadRequest(f"{conda_name[:200]!r} is not a conda package name (lower case letters, digits, _ . + -)")
    return conda_name


def name_mapping(services: Services, conda_name: str) -> NameMappingInfo:
    """How a conda name maps to PyPI now, and why."""
    _check_conda_name(conda_name)
    with services.db.read() as session:
        overrides = advisory_store.overrides(session=session, ecosystem=PYPI)
        rows = {row.conda_name: row for row in advisory_store.override_rows(session=session) if row.ecosystem == PYPI}
    mapping = map_to_pypi(conda_name, None, overrides=overrides)
    row = rows.get(conda_name)
    return NameMappingInfo(
        conda_name,
        mapping.ecosystem_name,
        mapping.source,
        row is not None,
        row.created_by if row else "",
        (advisory_store.aware(row.created_at) or row.created_at).isoformat() if row else "",
    )


def set_name_override(services: Services, *, conda_name: str, pypi_name: str | None, actor: str) -> NameMappingInfo:
    """Map a conda name to a PyPI name, or (``pypi_name`` None) to no PyPI package at all."""
    _check_conda_name(conda_name)
    if pypi_name is not None and (len(pypi_name) > 200 or not is_pypi_name(pypi_name)):
        raise BadRequest(f"{pypi_name[:200]!r} is not a valid PyPI project name")
    with services.db.write() as session:
        advisory_store.set_override(
            session=session,
            conda_name=conda_name,
            ecosystem=PYPI,
            ecosystem_name=normalize_pypi(pypi_name) if pypi_name is not None else None,
            actor=actor,
            now=datetime.now(UTC),
        )
        sca_state.bump_revision(session=session)
    vulnerabilities.note_change(services)
    return name_mapping(services, conda_name)


def clear_name_override(services: Services, *, conda_name: str) -> NameMappingInfo:
    _check_conda_name(conda_name)
    with services.db.write() as session:
        if not advisory_store.clear_override(session=session, conda_name=conda_name, ecosystem=PYPI):
            raise NotFound(f"there is no name override for {conda_name!r}")
        sca_state.bump_revision(session=session)
    vulnerabilities.note_change(services)
    return name_mapping(services, conda_name)


def list_name_overrides(services: Services) -> list[NameMappingInfo]:
    with services.db.read() as session:
        rows = advisory_store.override_rows(session=session)
    return [
        NameMappingInfo(
            row.conda_name,
            f"{row.ecosystem}:{row.ecosystem_name}" if row.ecosystem_name else None,
            "override",
            True,
            row.created_by,
            (advisory_store.aware(row.created_at) or row.created_at).isoformat(),
        )
        for row in rows
    ]


# A feed's vulnerable packages ---------------------------------------------------------------------


@dataclass(frozen=True)
class VulnerablePackage:
    name: str
    version: str
    subdirs: list[str]
    state: VulnerabilityState


@dataclass(frozen=True)
class FeedVulnerabilities:
    feed: str
    versions: int  # (name, version) pairs evaluated
    affected: int
    unknown: int
    no_data: int
    packages: list[VulnerablePackage]  # affected, and undecided when asked for
    warnings: list[str]


def feed_vulnerabilities(
    services: Services, *, feed: str, include_unknown: bool = True, package: str = ""
) -> FeedVulnerabilities:
    """Every version in the feed (hosted and proxied records alike) checked against the advisories."""
    browse = catalog._browse(services, feed)  # the feed's subdir snapshots, as its listings read them
    versions: dict[tuple[str, str], set[str]] = {}
    for snapshot in browse.snapshots:
        for filename, name in snapshot.names.items():
            if package and name != package:
                continue
            version = _version_of(filename, name)
            if version is not None:
                versions.setdefault((name, version), set()).add(snapshot.subdir)
    found, counts = [], {"affected": 0, "unknown-version": 0, "no-data": 0, "clean": 0}
    for (name, version), subdirs in sorted(versions.items()):
        state = vulnerabilities.vulnerability_state(services, feed_id=browse.feed.id, name=name, version=version)
        counts[state.status] = counts.get(state.status, 0) + 1
        if state.status == "affected" or (include_unknown and state.status == "unknown-version"):
            found.append(VulnerablePackage(name, version, sorted(subdirs), state))
    return FeedVulnerabilities(
        feed, len(versions), counts["affected"], counts["unknown-version"], counts["no-data"], found, browse.warnings
    )


def _version_of(filename: str, name: str) -> str | None:
    """name-version-build.conda / .tar.bz2: the version, without decoding the record."""
    stem = filename.removesuffix(".conda").removesuffix(".tar.bz2")
    if not stem.startswith(name + "-"):
        return None
    parts = stem[len(name) + 1 :].rsplit("-", 1)
    return parts[0] if len(parts) == 2 and parts[0] else None
