"""Permissions, principals and the one place that decides 401, 403 or 404."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from condagate.errors import AuthenticationRequired, BadRequest, FeedNotFound, PermissionDenied


class Permission(StrEnum):
    VIEW = "view"
    ADD = "add"
    PROMOTE = "promote"
    DELETE = "delete"
    MANAGE_FEED = "manage-feed"
    ADMIN = "admin"
    # Declares a route open to everyone (health, static assets): still an explicit declaration.
    PUBLIC = "public"


GRANTABLE = tuple(p for p in Permission if p != Permission.PUBLIC)

# What holding a permission also gives, on the same feed (or system-wide): a feed's uploaders,
# promoters and deleters see the feed; its managers add and delete; an administrator does everything.
_IMPLIED: dict[Permission, frozenset[Permission]] = {
    Permission.VIEW: frozenset({Permission.VIEW}),
    Permission.ADD: frozenset({Permission.ADD, Permission.VIEW}),
    Permission.PROMOTE: frozenset({Permission.PROMOTE, Permission.VIEW}),
    Permission.DELETE: frozenset({Permission.DELETE, Permission.VIEW}),
    Permission.MANAGE_FEED: frozenset({Permission.MANAGE_FEED, Permission.ADD, Permission.DELETE, Permission.VIEW}),
    Permission.ADMIN: frozenset(GRANTABLE),
}


def expand(permissions: frozenset[Permission] | set[Permission]) -> frozenset[Permission]:
    """Every permission that ``permissions`` give, implied ones included."""
    return frozenset(implied for p in permissions for implied in _IMPLIED.get(p, frozenset({p})))


def parse_permission(name: str) -> Permission:
    try:
        permission = Permission(name)
    except ValueError:
        permission = None
    if permission is None or permission == Permission.PUBLIC:
        choices = ", ".join(p.value for p in GRANTABLE)
        raise BadRequest(f"unknown permission {name!r}: choose one of {choices}")
    return permission


class Scope(StrEnum):
    """Where a route's permission must hold."""

    FEED = "feed"  # on the feed named in the path (routes with a {feed} parameter)
    SYSTEM = "system"  # system-wide (creating feeds, managing security)
    ANY = "any"  # on at least one feed (lists: they then show only what the caller may see)


_EMPTY: Mapping[str, frozenset[Permission]] = MappingProxyType({})


@dataclass(frozen=True)
class Principal:
    """Who is asking, with every permission already expanded and narrowed (key limits applied)."""

    name: str
    authenticated: bool = False
    system: frozenset[Permission] = frozenset()
    feeds: Mapping[str, frozenset[Permission]] = field(default_factory=lambda: _EMPTY)
    user: str | None = None
    key_id: int | None = None
    session_id: str | None = None  # hashed id of the web UI session, when the request came with one
    csrf_token: str | None = None

    def may(self, permission: Permission, feed: str | None = None) -> bool:
        """System-wide with ``feed=None``; on one feed (system-wide grants count) otherwise."""
        if permission == Permission.PUBLIC or permission in self.system:
            return True
        return feed is not None and permission in self.feeds.get(feed, frozenset())

    def may_somewhere(self, permission: Permission) -> bool:
        return self.may(permission) or any(permission in granted for granted in self.feeds.values())

    def visible_feeds(self, names: list[str]) -> list[str]:
        return [name for name in names if self.may(Permission.VIEW, name)]


ANONYMOUS = Principal(name="anonymous")


def authorize(principal: Principal, permission: Permission, scope: Scope, feed: str | None = None) -> None:
    """Raise 401 for a caller without credentials, 404 for a feed the caller may not see (exactly
    as for a feed that does not exist), 403 for a caller who sees the feed but lacks the permission."""
    if scope == Scope.FEED:
        if principal.may(permission, feed):
            return
    elif scope == Scope.ANY:
        if principal.may_somewhere(permission):
            return
    elif principal.may(permission):
        return
    if not principal.authenticated:
        raise AuthenticationRequired("this needs credentials: send an API key, or a user name and password")
    if scope == Scope.FEED and not principal.may(Permission.VIEW, feed):
        raise FeedNotFound(f"feed {feed!r} does not exist")
    where = f" on feed {feed!r}" if scope == Scope.FEED else " system-wide" if scope == Scope.SYSTEM else ""
    raise PermissionDenied(f"{principal.name} lacks the {permission.value!r} permission{where}")
