"""First start: create the initial administrator API key."""

from __future__ import annotations

from condagate.security.apikeys import generate_key, hash_key
from condagate.security.permissions import Permission
from condagate.services.context import Services
from condagate.store import apikeys as key_store


def ensure_admin_key(services: Services) -> str | None:
    """Create the administrator key when none exists; return it (to print once), else None."""
    with services.db.write() as session:
        if key_store.count_keys(session=session) > 0:
            return None
        key = services.settings.admin_api_key or generate_key()
        key_store.add_key(
            session=session,
            key_hash=hash_key(key),
            description="initial administrator key",
            permissions=[Permission.ADMIN.value],
        )
    return key
