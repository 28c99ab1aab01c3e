"""Advisory rows (OSV advisories and their affected packages), name overrides and assessments.

Callers bump the SCA revision (``store.sca_state``) in the transaction of every change made here.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.orm import Session

from condagate.conda import osv
from condagate.store.models import Advisory, AdvisoryAssessment, AdvisoryPackage, Feed, PackageNameOverride

# (advisory id, ecosystem, name, ranges JSON, versions JSON)
PackageRow = tuple[str, str, str, str, str]


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they are UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Advisories ---------------------------------------------------------------------------------------


def states(*, session: Session) -> dict[str, tuple[datetime, datetime | None]]:
    """Every advisory's (modified, withdrawn): what an importer or a cache compares against."""
    rows = session.execute(select(Advisory.id, Advisory.modified, Advisory.withdrawn))
    return {advisory_id: (aware(modified) or modified, aware(withdrawn)) for advisory_id, modified, withdrawn in rows}


def find(*, session: Session, advisory_id: str) -> Advisory | None:
    return session.get(Advisory, advisory_id)


def find_many(*, session: Session, advisory_ids: Collection[str]) -> list[Advisory]:
    if not advisory_ids:
        return []
    return list(session.scalars(select(Advisory).where(Advisory.id.in_(list(advisory_ids)))))


def all_advisories(*, session: Session) -> list[Advisory]:
    return list(session.scalars(select(Advisory)))


def save(
    *, session: Session, advisory: osv.Advisory, source: str, now: datetime, existing: Advisory | None
) -> Advisory:
    """Insert the advisory, or replace ``existing`` and all its affected packages."""
    row = existing if existing is not None else Advisory(id=advisory.id)
    row.modified = advisory.modified
    row.published = advisory.published
    row.withdrawn = advisory.withdrawn
    row.summary = advisory.summary
    row.details = advisory.details
    row.aliases = json.dumps(list(advisory.aliases))
    row.severity = advisory.severity
    row.severity_score = advisory.score
    row.severity_vector = advisory.vector
    row.links = json.dumps(list(advisory.links))
    row.source = source[-400:]
    row.imported_at = now
    if existing is None:
        session.add(row)
        session.flush([row])
    else:
        session.execute(delete(AdvisoryPackage).where(AdvisoryPackage.advisory_id == advisory.id))
    packages = [
        {
            "advisory_id": advisory.id,
            "ecosystem": affected.ecosystem,
            "name": affected.name,
            "ranges": json.dumps([r.as_json() for r in affected.ranges], separators=(",", ":")),
            "versions": json.dumps(list(affected.versions), separators=(",", ":")),
        }
        for affected in advisory.affected
    ]
    if packages:
        session.execute(insert(AdvisoryPackage), packages)
    return row


# (id, summary, aliases JSON, severity, score, vector, links JSON, withdrawn): what a finding shows
CardRow = tuple[str, str, str, str, float | None, str, str, datetime | None]


def cards(*, session: Session, advisory_ids: Collection[str] | None = None) -> list[CardRow]:
    """What the matcher keeps of each advisory (no details: they can be long)."""
    query = select(
        Advisory.id,
        Advisory.summary,
        Advisory.aliases,
        Advisory.severity,
        Advisory.severity_score,
        Advisory.severity_vector,
        Advisory.links,
        Advisory.withdrawn,
    )
    if advisory_ids is not None:
        if not advisory_ids:
            return []
        query = query.where(Advisory.id.in_(list(advisory_ids)))
    return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]


def package_rows(*, session: Session, advisory_ids: Collection[str] | None = None) -> list[PackageRow]:
    """Affected-package rows, of the given advisories or all; withdrawn advisories' too."""
    query = select(
        AdvisoryPackage.advisory_id,
        AdvisoryPackage.ecosystem,
        AdvisoryPackage.name,
        AdvisoryPackage.ranges,
        AdvisoryPackage.versions,
    )
    if advisory_ids is not None:
        if not advisory_ids:
            return []
        query = query.where(AdvisoryPackage.advisory_id.in_(list(advisory_ids)))
    return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]


def packages_of(*, session: Session, advisory_id: str) -> list[AdvisoryPackage]:
    query = select(AdvisoryPackage).where(AdvisoryPackage.advisory_id == advisory_id).order_by(AdvisoryPackage.id)
    return list(session.scalars(query))


def list_advisories(
    *,
    session: Session,
    ecosystem: str | None = None,
    names: Collection[str] | None = None,
    severities: Collection[str] | None = None,
    withdrawn: bool | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[Advisory], int]:
    """A page of advisories, newest modified first, and how many match in all."""
    query = select(Advisory)
    if names is not None:
        matching = select(AdvisoryPackage.advisory_id).where(AdvisoryPackage.name.in_(list(names)))
        if ecosystem is not None:
            matching = matching.where(AdvisoryPackage.ecosystem == ecosystem)
        query = query.where(Advisory.id.in_(matching))
    if severities:
        query = query.where(Advisory.severity.in_(list(severities)))
    if withdrawn is not None:
        query = query.where(Advisory.withdrawn.is_not(None) if withdrawn else Advisory.withdrawn.is_(None))
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(query.order_by(Advisory.modified.desc(), Advisory.id).offset(offset).limit(limit))
    return list(rows), total


def affected_names(*, session: Session, advisory_ids: Collection[str]) -> dict[str, list[tuple[str, str]]]:
    """advisory id -> its (ecosystem, name) pairs."""
    found: dict[str, list[tuple[str, str]]] = {}
    if not advisory_ids:
        return found
    query = select(AdvisoryPackage.advisory_id, AdvisoryPackage.ecosystem, AdvisoryPackage.name).where(
        AdvisoryPackage.advisory_id.in_(list(advisory_ids))
    )
    for advisory_id, ecosystem, name in session.execute(query.order_by(AdvisoryPackage.id)):
        found.setdefault(advisory_id, []).append((ecosystem, name))
    return found


def count_advisories(*, session: Session) -> int:
    return int(session.scalar(select(func.count(Advisory.id))) or 0)


# Name overrides -----------------------------------------------------------------------------------


def overrides(*, session: Session, ecosystem: str) -> dict[str, str | None]:
    query = select(PackageNameOverride.conda_name, PackageNameOverride.ecosystem_name).where(
        PackageNameOverride.ecosystem == ecosystem
    )
    return {conda_name: ecosystem_name for conda_name, ecosystem_name in session.execute(query)}


def override_rows(*, session: Session) -> list[PackageNameOverride]:
    query = select(PackageNameOverride).order_by(PackageNameOverride.conda_name, PackageNameOverride.ecosystem)
    return list(session.scalars(query))


def set_override(
    *, session: Session, conda_name: str, ecosystem: str, ecosystem_name: str | None, actor: str, now: datetime
) -> PackageNameOverride:
    row = session.get(PackageNameOverride, (conda_name, ecosystem))
    if row is None:
        row = PackageNameOverride(conda_name=conda_name, ecosystem=ecosystem)
        session.add(row)
    row.ecosystem_name = ecosystem_name
    row.created_by = actor
    row.created_at = now
    session.flush([row])
    return row


def clear_override(*, session: Session, conda_name: str, ecosystem: str) -> bool:
    row = session.get(PackageNameOverride, (conda_name, ecosystem))
    if row is None:
        return False
    session.delete(row)
    return True


# Assessments --------------------------------------------------------------------------------------


def add_assessment(
    *,
    session: Session,
    advisory_id: str,
    feed_id: int | None,
    verdict: str,
    comment: str,
    actor: str,
    now: datetime,
) -> AdvisoryAssessment:
    row = AdvisoryAssessment(
        advisory_id=advisory_id, feed_id=feed_id, verdict=verdict, comment=comment, actor=actor, at=now
    )
    session.add(row)
    session.flush([row])
    return row


def assessment_history(
    *, session: Session, advisory_id: str | None = None, feed_ids: Collection[int | None] | None = None
) -> list[tuple[AdvisoryAssessment, str | None]]:
    """Assessment rows with their feed's name, newest first."""
    query = select(AdvisoryAssessment, Feed.name).outerjoin(Feed, Feed.id == AdvisoryAssessment.feed_id)
    if advisory_id is not None:
        query = query.where(AdvisoryAssessment.advisory_id == advisory_id)
    if feed_ids is not None:
        ids = [f for f in feed_ids if f is not None]
        if None in feed_ids:
            query = query.where(or_(AdvisoryAssessment.feed_id.in_(ids), AdvisoryAssessment.feed_id.is_(None)))
        else:
            query = query.where(AdvisoryAssessment.feed_id.in_(ids))
    rows = session.execute(query.order_by(AdvisoryAssessment.id.desc()))
    return [(row, feed_name) for row, feed_name in rows]


def assessments_in_force(*, session: Session) -> dict[tuple[str, int | None], AdvisoryAssessment]:
    """(advisory id, feed id or None) -> the newest row (its verdict may be "clear")."""
    newest = select(func.max(AdvisoryAssessment.id)).group_by(
        AdvisoryAssessment.advisory_id, AdvisoryAssessment.feed_id
    )
    rows = session.scalars(select(AdvisoryAssessment).where(AdvisoryAssessment.id.in_(newest)))
    return {(row.advisory_id, row.feed_id): row for row in rows}
