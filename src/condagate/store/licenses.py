"""License rule rows: system-wide (``feed_id`` None) or per feed; every change bumps the SCA revision."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from condagate.store.models import LicenseRule
from condagate.store.sca_state import bump_revision


def _scope(feed_id: int | None) -> ColumnElement[bool]:
    return LicenseRule.feed_id.is_(None) if feed_id is None else LicenseRule.feed_id == feed_id


def rules_of(*, session: Session, feed_id: int | None) -> list[LicenseRule]:
    """One scope's rules, by subject."""
    return list(session.scalars(select(LicenseRule).where(_scope(feed_id)).order_by(LicenseRule.subject)))


def all_rules(*, session: Session) -> list[tuple[int | None, str, str]]:
    """Every rule as (feed id, subject, verdict): what the per-process rule cache holds."""
    rows = session.execute(select(LicenseRule.feed_id, LicenseRule.subject, LicenseRule.verdict))
    return [(feed_id, subject, verdict) for feed_id, subject, verdict in rows]


def set_rule(*, session: Session, feed_id: int | None, subject: str, verdict: str, actor: str) -> LicenseRule:
    """Set (or replace) the rule for ``subject`` in a scope."""
    existing = list(
        session.scalars(
            select(LicenseRule).where(_scope(feed_id), LicenseRule.subject == subject).order_by(LicenseRule.id)
        )
    )
    now = datetime.now(UTC)
    if existing:
        rule = existing[0]
        for duplicate in existing[1:]:  # two writers racing: keep one row
            session.delete(duplicate)
        rule.verdict, rule.actor, rule.at = verdict, actor, now
    else:
        rule = LicenseRule(feed_id=feed_id, subject=subject, verdict=verdict, actor=actor, at=now)
        session.add(rule)
    session.flush()
    bump_revision(session=session)
    return rule


def remove_rule(*, session: Session, feed_id: int | None, subject: str) -> bool:
    """False when the scope had no rule for ``subject``."""
    result = session.execute(delete(LicenseRule).where(_scope(feed_id), LicenseRule.subject == subject))
    removed = bool(getattr(result, "rowcount", 0))
    if removed:
        bump_revision(session=session)
    return removed
