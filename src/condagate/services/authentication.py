"""Turning a presented API key into a principal."""

from __future__ import annotations

from condagate.errors import AuthenticationRequired
from condagate.security.apikeys import hash_key, key_matches
from condagate.security.permissions import ANONYMOUS, Permission, Principal
from condagate.services.context import Services
from condagate.store import apikeys as key_store


def principal_for_key(services: Services, key: str | None) -> Principal:
    if not key:
        return ANONYMOUS
    with services.db.read() as session:
        row = key_store.find_key(session=session, key_hash=hash_key(key))
    if row is None or not key_matches(key, row.key_hash):
        raise AuthenticationRequired("the API key is not valid")
    permissions = frozenset(Permission(p) for p in row.permissions.split(",") if p)
    return Principal(name=f"api key {row.id}", permissions=permissions | ANONYMOUS.permissions, authenticated=True)
