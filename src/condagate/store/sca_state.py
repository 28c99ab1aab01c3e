"""The SCA revision: grows with every change to advisories, name overrides, assessments, license
rules or a feed's SCA policy, in the changing transaction."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from condagate.store.models import ScaState


def bump_revision(*, session: Session) -> None:
    session.execute(update(ScaState).where(ScaState.id == 1).values(revision=ScaState.revision + 1))


def revision(*, session: Session) -> int:
    return int(session.scalar(select(ScaState.revision).where(ScaState.id == 1)) or 0)
