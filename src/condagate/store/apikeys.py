"""API key rows; only the sha256 of a key is stored."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from condagate.store.models import ApiKey


def count_keys(*, session: Session) -> int:
    return int(session.scalar(select(func.count(ApiKey.id))) or 0)


def add_key(*, session: Session, key_hash: str, description: str, permissions: list[str]) -> ApiKey:
    key = ApiKey(
        key_hash=key_hash, description=description, permissions=",".join(permissions), created_at=datetime.now(UTC)
    )
    session.add(key)
    session.flush()
    return key


def find_key(*, session: Session, key_hash: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))
