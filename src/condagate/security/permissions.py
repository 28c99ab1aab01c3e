"""Permissions, principals and the one place that decides 401 vs 403."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from condagate.errors import AuthenticationRequired, PermissionDenied


class Permission(StrEnum):
    VIEW = "view"
    ADD = "add"
    PROMOTE = "promote"
    DELETE = "delete"
    MANAGE_FEED = "manage-feed"
    ADMIN = "admin"
    # Declares a route open to everyone (health, static assets): still an explicit declaration.
    PUBLIC = "public"


ANONYMOUS_PERMISSIONS = frozenset({Permission.VIEW})


@dataclass(frozen=True)
class Principal:
    name: str
    permissions: frozenset[Permission] = field(default_factory=frozenset)
    authenticated: bool = False

    def may(self, permission: Permission) -> bool:
        return permission == Permission.PUBLIC or Permission.ADMIN in self.permissions or permission in self.permissions


ANONYMOUS = Principal(name="anonymous", permissions=ANONYMOUS_PERMISSIONS, authenticated=False)


def authorize(principal: Principal, permission: Permission, feed: str | None = None) -> None:
    """Raise 401 for an anonymous caller lacking the permission, 403 for an authenticated one."""
    if principal.may(permission):
        return
    where = f" on feed {feed!r}" if feed else ""
    if not principal.authenticated:
        raise AuthenticationRequired(f"this needs the {permission.value!r} permission{where}: send an API key")
    raise PermissionDenied(f"{principal.name} lacks the {permission.value!r} permission{where}")
