"""Web UI sessions: a random id in an HttpOnly cookie, stored hashed, with its CSRF token and expiry."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

from condagate.security.apikeys import new_secret_token
from condagate.security.permissions import Principal
from condagate.services.context import Services
from condagate.store import security as security_store

SESSION_COOKIE = "condagate_session"


def _fingerprint(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_session(services: Services, principal: Principal) -> str:
    """A new session for a user (logged in with a password) or a key; returns the cookie value."""
    session_id = new_secret_token()
    user_id = None
    if principal.key_id is None and principal.user is not None:
        user_id = services.access.snapshot.users.get(principal.user.lower(), (None, None))[0]
    with services.db.write() as session:
        security_store.add_session(
            session=session,
            id_hash=_fingerprint(session_id),
            user_id=user_id,
            api_key_id=principal.key_id,
            csrf_token=new_secret_token(),
            expires_at=datetime.now(UTC) + timedelta(hours=services.settings.session_hours),
        )
    return session_id


def principal_for_session(services: Services, session_id: str) -> Principal | None:
    """The session's principal with its CSRF token, or None when unknown, expired or revoked."""
    with services.db.read() as session:
        row = security_store.find_session(session=session, id_hash=_fingerprint(session_id))
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires <= datetime.now(UTC):
        return None
    access = services.access
    if row.api_key_id is not None:
        principal = access.principal_for_key_id(row.api_key_id)
    elif row.user_id is not None:
        principal = access.principal_for_user_id(row.user_id)
    else:
        principal = None
    if principal is None:
        return None
    return dataclasses.replace(principal, session_id=row.id_hash, csrf_token=row.csrf_token)


def end_session(services: Services, principal: Principal) -> None:
    if principal.session_id:
        with services.db.write() as session:
            security_store.delete_session(session=session, id_hash=principal.session_id)
