"""Managing users, groups, grants and API keys. Every change bumps the security revision in its own
transaction and reloads this process's snapshot at once (other processes follow within a second)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from condagate.errors import BadRequest, Conflict, NotFound, PermissionDenied
from condagate.security.apikeys import MAX_KEY_LENGTH, check_typed_key, generate_key, hash_key
from condagate.security.passwords import hash_password
from condagate.security.permissions import Permission, Principal, parse_permission
from condagate.services.context import Services
from condagate.store import feeds as feed_store
from condagate.store import security as security_store
from condagate.store.models import AccessLogEntry

# E-mail addresses are user names too; no ':' (the Basic scheme splits on it), no spaces.
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}")
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")
MAX_DESCRIPTION = 500


def validate_user_name(name: str) -> str:
    if not _USER_RE.fullmatch(name):
        raise BadRequest(
            f"invalid user name {name!r}: use 1 to 200 letters, digits, '.', '_', '@', '+' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() in ("anonymous", "api", "token"):
        raise BadRequest(f"the user name {name!r} is reserved")
    return name


def validate_group_name(name: str) -> str:
    if not _GROUP_RE.fullmatch(name) or name != name.strip():
        raise BadRequest(
            f"invalid group name {name!r}: use 1 to 100 letters, digits, spaces, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _changed(services: Services) -> None:
    services.access.reload()


def _keep_an_administrator(session) -> None:  # type: ignore[no-untyped-def]
    """Called inside the changing transaction: refusing here rolls the change back."""
    if not security_store.has_administrator(session=session):
        raise Conflict(
            "this would leave nobody with the admin permission: grant it to someone else first "
            "(on the server's host, 'condagate admin create-key' can always make a new administrator key)"
        )


# Users and groups --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    name: str
    created_at: datetime
    has_password: bool
    groups: list[str]


def create_user(services: Services, *, name: str, password: str | None) -> UserInfo:
    validate_user_name(name)
    password_hash = hash_password(password) if password else None
    with services.db.write() as session:
        user = security_store.add_user(session=session, name=name, password_hash=password_hash)
        info = UserInfo(user.name, user.created_at, password_hash is not None, [])
    _changed(services)
    return info


def list_users(services: Services) -> list[UserInfo]:
    with services.db.read() as session:
        groups = security_store.list_groups(session=session)
        return [
            UserInfo(
                user.name,
                user.created_at,
                user.password_hash is not None,
                [group.name for group, members in groups if user.name in members],
            )
            for user in security_store.list_users(session=session)
        ]


def delete_user(services: Services, *, name: str) -> None:
    with services.db.write() as session:
        security_store.delete_user(session=session, name=name)
        _keep_an_administrator(session)
    _changed(services)


def set_password(services: Services, *, name: str, password: str) -> None:
    password_hash = hash_password(password)
    with services.db.write() as session:
        security_store.set_password(session=session, name=name, password_hash=password_hash)
    _changed(services)


@dataclass(frozen=True)
class GroupInfo:
    name: str
    members: list[str]


def create_group(services: Services, *, name: str) -> GroupInfo:
    validate_group_name(name)
    with services.db.write() as session:
        group = security_store.add_group(session=session, name=name)
        info = GroupInfo(group.name, [])
    _changed(services)
    return info


def list_groups(services: Services) -> list[GroupInfo]:
    with services.db.read() as session:
        return [GroupInfo(group.name, members) for group, members in security_store.list_groups(session=session)]


def delete_group(services: Services, *, name: str) -> None:
    with services.db.write() as session:
        security_store.delete_group(session=session, name=name)
        _keep_an_administrator(session)
    _changed(services)


def set_membership(services: Services, *, group: str, user: str, member: bool) -> bool:
    with services.db.write() as session:
        changed = security_store.set_membership(session=session, group=group, user=user, member=member)
        _keep_an_administrator(session)
    _changed(services)
    return changed


# Grants ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantInfo:
    id: int
    principal: str  # "user:NAME", "group:NAME" or "anonymous"
    permission: str
    feed: str | None
    created_at: datetime
    created_by: str


def parse_principal(spec: str) -> tuple[str, str]:
    """``user:NAME``, ``group:NAME`` or ``anonymous`` → (kind, name)."""
    if spec.strip().lower() == "anonymous":
        return "anonymous", ""
    kind, sep, name = spec.partition(":")
    if not sep or kind not in ("user", "group") or not name:
        raise BadRequest(f"invalid principal {spec!r}: write user:NAME, group:NAME or anonymous")
    return kind, name


def _grant_target(session, spec: str, feed: str | None):  # type: ignore[no-untyped-def]
    kind, name = parse_principal(spec)
    user_id = security_store.get_user(session=session, name=name).id if kind == "user" else None
    group_id = security_store.get_group(session=session, name=name).id if kind == "group" else None
    feed_id = feed_store.get_feed(session=session, name=feed).id if feed else None
    return kind, user_id, group_id, feed_id


def _grant_info(row: security_store.GrantRow) -> GrantInfo:
    principal = "anonymous" if row.principal_kind == "anonymous" else f"{row.principal_kind}:{row.principal_name}"
    return GrantInfo(row.id, principal, row.permission, row.feed, row.created_at, row.created_by)


def add_grant(
    services: Services, *, principal: str, permission: str, feed: str | None, by: str
) -> tuple[GrantInfo, bool]:
    parsed = parse_permission(permission)
    with services.db.write() as session:
        kind, user_id, group_id, feed_id = _grant_target(session, principal, feed)
        grant, created = security_store.add_grant(
            session=session,
            kind=kind,
            user_id=user_id,
            group_id=group_id,
            permission=parsed.value,
            feed_id=feed_id,
            created_by=by,
        )
        grant_id = grant.id
        info = next(_grant_info(row) for row in security_store.list_grants(session=session) if row.id == grant_id)
    _changed(services)
    return info, created


def remove_grant(services: Services, *, principal: str, permission: str, feed: str | None) -> None:
    parsed = parse_permission(permission)
    with services.db.write() as session:
        kind, user_id, group_id, feed_id = _grant_target(session, principal, feed)
        removed = security_store.remove_grant(
            session=session, kind=kind, user_id=user_id, group_id=group_id, permission=parsed.value, feed_id=feed_id
        )
        _keep_an_administrator(session)
    if not removed:
        where = f" on feed {feed!r}" if feed else " system-wide"
        raise NotFound(f"{principal} has no {parsed.value!r} grant{where}")
    _changed(services)


def remove_grant_by_id(services: Services, *, grant_id: int) -> None:
    with services.db.write() as session:
        if not security_store.remove_grant_by_id(session=session, grant_id=grant_id):
            raise NotFound(f"grant {grant_id} does not exist")
        _keep_an_administrator(session)
    _changed(services)


def list_grants(services: Services, *, feed: str | None = None) -> list[GrantInfo]:
    with services.db.read() as session:
        rows = security_store.list_grants(session=session)
    return [_grant_info(row) for row in rows if feed is None or row.feed == feed]


# API keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    id: int
    description: str
    kind: str  # "personal", "feed" or "system"
    user: str | None
    feeds: list[str]
    permissions: list[str]
    hint: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    key: str | None = None  # only in the answer that created it

    @property
    def expired(self) -> bool:
        if self.expires_at is None:
            return False
        expires = self.expires_at if self.expires_at.tzinfo else self.expires_at.replace(tzinfo=UTC)
        return expires <= datetime.now(UTC)

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at else "expired" if self.expired else "active"


def _key_info(row: security_store.KeyRow, key: str | None = None) -> KeyInfo:
    k = row.key
    kind = "personal" if k.user_id is not None else "feed" if k.scope == "feeds" else "system"
    return KeyInfo(
        k.id,
        k.description,
        kind,
        row.user,
        row.feeds,
        [p for p in k.permissions.split(",") if p],
        k.hint,
        k.created_at,
        k.created_by,
        k.expires_at,
        k.last_used_at,
        k.revoked_at,
        key,
    )


def create_key(
    services: Services,
    caller: Principal,
    *,
    user: str | None = None,
    feeds: list[str] | None = None,
    permissions: list[str] | None = None,
    key: str | None = None,
    expires_at: datetime | None = None,
    description: str = "",
) -> KeyInfo:
    """Administrators create any key. Others create keys for themselves only, logged in as a user
    (not with another key, which could otherwise widen its own limits)."""
    is_admin = caller.may(Permission.ADMIN)
    if not is_admin:
        if caller.user is None or caller.key_id is not None:
            raise PermissionDenied("log in with your user name and password to create your own API keys")
        if user not in (None, caller.user):
            raise PermissionDenied("only an administrator creates keys for other users")
        user = caller.user
    parsed = [parse_permission(p) for p in permissions or []]
    if len(set(parsed)) != len(parsed):
        raise BadRequest("a permission is listed twice")
    feeds = list(dict.fromkeys(feeds or []))
    if user is None and feeds and not parsed:
        parsed = [Permission.VIEW]  # the mission's feed key: View/Download on the listed feeds
    if user is None and not parsed:
        raise BadRequest("a key without a user needs permissions (and feeds, for a feed key)")
    if expires_at is not None:
        expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise BadRequest("the expiry date is in the past")
    if len(description) > MAX_DESCRIPTION:
        raise BadRequest(f"the description is longer than {MAX_DESCRIPTION} characters")
    value = check_typed_key(key) if key else generate_key()
    if len(value) > MAX_KEY_LENGTH:
        raise BadRequest("the key is too long")
    with services.db.write() as session:
        user_id = security_store.get_user(session=session, name=user).id if user else None
        feed_ids = [feed_store.get_feed(session=session, name=f).id for f in feeds]
        row = security_store.add_key(
            session=session,
            key_hash=hash_key(value),
            description=description,
            permissions=[p.value for p in parsed],
            user_id=user_id,
            scope="feeds" if feeds else "system",
            feed_ids=feed_ids,
            expires_at=expires_at,
            created_by=caller.name,
            hint=value[:7],
        )
        key_id = row.id
        info = next(_key_info(r, value) for r in security_store.list_keys(session=session) if r.key.id == key_id)
    _changed(services)
    return info


def list_keys(services: Services, caller: Principal) -> list[KeyInfo]:
    """All keys for an administrator; a user's own keys otherwise."""
    with services.db.read() as session:
        if caller.may(Permission.ADMIN):
            rows = security_store.list_keys(session=session)
        elif caller.user is not None:
            rows = security_store.list_keys(
                session=session, user_id=security_store.get_user(session=session, name=caller.user).id
            )
        else:
            rows = []
    return [_key_info(row) for row in rows]


def _visible_key(services: Services, caller: Principal, key_id: int) -> KeyInfo:
    found = next((k for k in list_keys(services, caller) if k.id == key_id), None)
    if found is None:
        raise NotFound(f"API key {key_id} does not exist")
    return found


def revoke_key(services: Services, caller: Principal, *, key_id: int) -> None:
    _visible_key(services, caller, key_id)
    with services.db.write() as session:
        if not security_store.revoke_key(session=session, key_id=key_id):
            raise Conflict(f"API key {key_id} is already revoked")
    _changed(services)


def key_access_log(services: Services, caller: Principal, *, key_id: int, limit: int = 200) -> list[AccessLogEntry]:
    _visible_key(services, caller, key_id)
    services.access_log.flush()
    with services.db.read() as session:
        return security_store.access_entries(session=session, api_key_id=key_id, limit=limit)


def access_log(services: Services, *, limit: int = 200) -> list[AccessLogEntry]:
    services.access_log.flush()
    with services.db.read() as session:
        return security_store.access_entries(session=session, limit=limit)
