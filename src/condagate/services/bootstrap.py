"""First start: the administrator user and its first API key; at every start, housekeeping."""

from __future__ import annotations

from dataclasses import dataclass

from condagate.security.apikeys import check_typed_key, generate_key, hash_key
from condagate.security.permissions import Permission
from condagate.services.connectors import seal_stored_credentials
from condagate.services.context import Services
from condagate.store import security as security_store

ADMIN_USER = "admin"


@dataclass(frozen=True)
class Bootstrap:
    new_key: str | None  # the generated key, to print once
    from_environment: bool  # the first key is CONDAGATE_ADMIN_API_KEY
    environment_key_ignored: bool  # CONDAGATE_ADMIN_API_KEY is set but no longer applies


def ensure_admin_key(services: Services) -> Bootstrap:
    """Create the administrator (user ``admin`` with the ``admin`` grant) and its key when no key
    exists yet; later starts leave keys alone and say so when the variable names another key."""
    configured = services.settings.admin_api_key
    with services.db.write() as session:
        if security_store.count_keys(session=session) > 0:
            known = bool(configured) and security_store.find_key(session=session, key_hash=hash_key(configured))
            ignored = bool(configured) and not known
            return Bootstrap(None, False, ignored)
        if configured:
            check_typed_key(configured)
        key = configured or generate_key()
        admin = security_store.find_user(session=session, name=ADMIN_USER) or security_store.add_user(
            session=session, name=ADMIN_USER, password_hash=None
        )
        security_store.add_grant(
            session=session,
            kind="user",
            user_id=admin.id,
            group_id=None,
            permission=Permission.ADMIN.value,
            feed_id=None,
            created_by="condagate",
        )
        security_store.add_key(
            session=session,
            key_hash=hash_key(key),
            description="initial administrator key",
            permissions=[],
            user_id=admin.id,
            created_by="condagate",
            hint=key[:7],
        )
    services.access.reload()
    return Bootstrap(None if configured else key, bool(configured), False)


def create_admin_key(services: Services, description: str = "administrator key (condagate admin create-key)") -> str:
    """``condagate admin create-key``: a new key for the ``admin`` user, for a lost first key."""
    key = generate_key()
    with services.db.write() as session:
        admin = security_store.find_user(session=session, name=ADMIN_USER) or security_store.add_user(
            session=session, name=ADMIN_USER, password_hash=None
        )
        grants = security_store.list_grants(session=session)
        if not any(
            g.principal_kind == "user" and g.principal_name == admin.name and g.permission == "admin" and g.feed is None
            for g in grants
        ):
            security_store.add_grant(
                session=session,
                kind="user",
                user_id=admin.id,
                group_id=None,
                permission=Permission.ADMIN.value,
                feed_id=None,
                created_by="condagate admin create-key",
            )
        security_store.add_key(
            session=session,
            key_hash=hash_key(key),
            description=description,
            permissions=[],
            user_id=admin.id,
            created_by="condagate admin create-key",
            hint=key[:7],
        )
    return key


def housekeeping(services: Services) -> None:
    seal_stored_credentials(services)
