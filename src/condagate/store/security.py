"""Rows of the security model: users, groups, grants, API keys, web sessions, the access log."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from condagate.errors import Conflict, NotFound
from condagate.store.models import (
    AccessLogEntry,
    ApiKey,
    ApiKeyFeed,
    Feed,
    Grant,
    Group,
    GroupMember,
    SecurityState,
    UiSession,
    User,
)


def bump_revision(*, session: Session) -> None:
    """Every change to what decides access calls this in its own transaction."""
    session.execute(update(SecurityState).where(SecurityState.id == 1).values(revision=SecurityState.revision + 1))


def revision(*, session: Session) -> int:
    return int(session.scalar(select(SecurityState.revision).where(SecurityState.id == 1)) or 0)


# Users ------------------------------------------------------------------------------------------


def find_user(*, session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name_key == name.lower()))


def get_user(*, session: Session, name: str) -> User:
    user = find_user(session=session, name=name)
    if user is None:
        raise NotFound(f"user {name!r} does not exist")
    return user


def add_user(*, session: Session, name: str, password_hash: str | None) -> User:
    if find_user(session=session, name=name) is not None:
        raise Conflict(f"a user named {name!r} already exists")
    user = User(name=name, name_key=name.lower(), password_hash=password_hash, created_at=datetime.now(UTC))
    session.add(user)
    session.flush()
    bump_revision(session=session)
    return user


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name_key)))


def delete_user(*, session: Session, name: str) -> None:
    session.delete(get_user(session=session, name=name))
    session.flush()
    bump_revision(session=session)


def set_password(*, session: Session, name: str, password_hash: str | None) -> None:
    get_user(session=session, name=name).password_hash = password_hash
    session.execute(delete(UiSession).where(UiSession.user_id == get_user(session=session, name=name).id))
    bump_revision(session=session)


# Groups -----------------------------------------------------------------------------------------


def find_group(*, session: Session, name: str) -> Group | None:
    return session.scalar(select(Group).where(Group.name_key == name.lower()))


def get_group(*, session: Session, name: str) -> Group:
    group = find_group(session=session, name=name)
    if group is None:
        raise NotFound(f"group {name!r} does not exist")
    return group


def add_group(*, session: Session, name: str) -> Group:
    if find_group(session=session, name=name) is not None:
        raise Conflict(f"a group named {name!r} already exists")
    group = Group(name=name, name_key=name.lower(), created_at=datetime.now(UTC))
    session.add(group)
    session.flush()
    bump_revision(session=session)
    return group


def delete_group(*, session: Session, name: str) -> None:
    session.delete(get_group(session=session, name=name))
    session.flush()
    bump_revision(session=session)


def list_groups(*, session: Session) -> list[tuple[Group, list[str]]]:
    groups = list(session.scalars(select(Group).order_by(Group.name_key)))
    members: dict[int, list[str]] = {}
    for group_id, user_name in session.execute(
        select(GroupMember.group_id, User.name).join(User, User.id == GroupMember.user_id).order_by(User.name_key)
    ):
        members.setdefault(group_id, []).append(user_name)
    return [(group, members.get(group.id, [])) for group in groups]


def set_membership(*, session: Session, group: str, user: str, member: bool) -> bool:
    """Add or remove; returns whether anything changed."""
    group_id = get_group(session=session, name=group).id
    user_id = get_user(session=session, name=user).id
    existing = session.get(GroupMember, (group_id, user_id))
    if member == (existing is not None):
        return False
    if member:
        session.add(GroupMember(group_id=group_id, user_id=user_id))
    else:
        session.delete(existing)
    session.flush()
    bump_revision(session=session)
    return True


# Grants -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantRow:
    id: int
    principal_kind: str
    principal_name: str  # "" for anonymous
    permission: str
    feed: str | None
    created_at: datetime
    created_by: str


def list_grants(*, session: Session) -> list[GrantRow]:
    rows = session.execute(
        select(Grant, User.name, Group.name, Feed.name)
        .outerjoin(User, User.id == Grant.user_id)
        .outerjoin(Group, Group.id == Grant.group_id)
        .outerjoin(Feed, Feed.id == Grant.feed_id)
        .order_by(Grant.id)
    )
    return [
        GrantRow(
            grant.id,
            grant.principal_kind,
            user_name or group_name or "",
            grant.permission,
            feed_name,
            grant.created_at,
            grant.created_by,
        )
        for grant, user_name, group_name, feed_name in rows
    ]


def _grant_filter(kind: str, user_id: int | None, group_id: int | None, permission: str, feed_id: int | None):  # type: ignore[no-untyped-def]
    return (
        Grant.principal_kind == kind,
        Grant.user_id.is_(None) if user_id is None else Grant.user_id == user_id,
        Grant.group_id.is_(None) if group_id is None else Grant.group_id == group_id,
        Grant.permission == permission,
        Grant.feed_id.is_(None) if feed_id is None else Grant.feed_id == feed_id,
    )


def add_grant(
    *,
    session: Session,
    kind: str,
    user_id: int | None,
    group_id: int | None,
    permission: str,
    feed_id: int | None,
    created_by: str,
) -> tuple[Grant, bool]:
    """The grant, and whether it is new (granting twice changes nothing)."""
    existing = session.scalar(select(Grant).where(*_grant_filter(kind, user_id, group_id, permission, feed_id)))
    if existing is not None:
        return existing, False
    grant = Grant(
        principal_kind=kind,
        user_id=user_id,
        group_id=group_id,
        permission=permission,
        feed_id=feed_id,
        created_at=datetime.now(UTC),
        created_by=created_by,
    )
    session.add(grant)
    session.flush()
    bump_revision(session=session)
    return grant, True


def remove_grant(
    *, session: Session, kind: str, user_id: int | None, group_id: int | None, permission: str, feed_id: int | None
) -> bool:
    removed = session.execute(delete(Grant).where(*_grant_filter(kind, user_id, group_id, permission, feed_id)))
    if removed.rowcount:  # type: ignore[attr-defined]
        bump_revision(session=session)
    return bool(removed.rowcount)  # type: ignore[attr-defined]


def remove_grant_by_id(*, session: Session, grant_id: int) -> bool:
    removed = session.execute(delete(Grant).where(Grant.id == grant_id))
    if removed.rowcount:  # type: ignore[attr-defined]
        bump_revision(session=session)
    return bool(removed.rowcount)  # type: ignore[attr-defined]


# API keys ---------------------------------------------------------------------------------------


def count_keys(*, session: Session) -> int:
    return int(session.scalar(select(func.count(ApiKey.id))) or 0)


def add_key(
    *,
    session: Session,
    key_hash: str,
    description: str,
    permissions: Sequence[str],
    user_id: int | None = None,
    scope: str = "system",
    feed_ids: Iterable[int] = (),
    expires_at: datetime | None = None,
    created_by: str = "",
    hint: str = "",
) -> ApiKey:
    if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash)) is not None:
        raise Conflict("this key is already in use: choose another")
    key = ApiKey(
        key_hash=key_hash,
        description=description,
        permissions=",".join(permissions),
        created_at=datetime.now(UTC),
        user_id=user_id,
        scope=scope,
        expires_at=expires_at,
        created_by=created_by,
        hint=hint,
    )
    session.add(key)
    session.flush()
    for feed_id in feed_ids:
        session.add(ApiKeyFeed(api_key_id=key.id, feed_id=feed_id))
    session.flush()
    bump_revision(session=session)
    return key


def find_key(*, session: Session, key_hash: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    user: str | None
    feeds: list[str]


def list_keys(*, session: Session, user_id: int | None = None, include_revoked: bool = True) -> list[KeyRow]:
    query = select(ApiKey, User.name).outerjoin(User, User.id == ApiKey.user_id).order_by(ApiKey.id)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    feeds: dict[int, list[str]] = {}
    for key_id, feed_name in session.execute(
        select(ApiKeyFeed.api_key_id, Feed.name).join(Feed, Feed.id == ApiKeyFeed.feed_id).order_by(Feed.name)
    ):
        feeds.setdefault(key_id, []).append(feed_name)
    return [KeyRow(key, user_name, feeds.get(key.id, [])) for key, user_name in session.execute(query)]


def get_key(*, session: Session, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {key_id} does not exist")
    return key


def revoke_key(*, session: Session, key_id: int) -> bool:
    key = get_key(session=session, key_id=key_id)
    if key.revoked_at is not None:
        return False
    key.revoked_at = datetime.now(UTC)
    session.execute(delete(UiSession).where(UiSession.api_key_id == key_id))
    session.flush()
    bump_revision(session=session)
    return True


def touch_keys(*, session: Session, last_used: dict[int, datetime]) -> None:
    for key_id, moment in last_used.items():
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=moment))


# Web sessions -----------------------------------------------------------------------------------


def add_session(
    *, session: Session, id_hash: str, user_id: int | None, api_key_id: int | None, csrf_token: str,
    expires_at: datetime,
) -> None:
    now = datetime.now(UTC)
    session.execute(delete(UiSession).where(UiSession.expires_at < now))
    session.add(
        UiSession(
            id_hash=id_hash, user_id=user_id, api_key_id=api_key_id, csrf_token=csrf_token, created_at=now,
            expires_at=expires_at,
        )
    )


def find_session(*, session: Session, id_hash: str) -> UiSession | None:
    return session.get(UiSession, id_hash)


def delete_session(*, session: Session, id_hash: str) -> None:
    session.execute(delete(UiSession).where(UiSession.id_hash == id_hash))


# Access log -------------------------------------------------------------------------------------


def add_access_entries(*, session: Session, entries: list[dict[str, object]]) -> None:
    if entries:
        session.execute(insert(AccessLogEntry), entries)


def access_entries(*, session: Session, api_key_id: int | None = None, limit: int = 200) -> list[AccessLogEntry]:
    query = select(AccessLogEntry).order_by(AccessLogEntry.at.desc(), AccessLogEntry.id.desc()).limit(limit)
    if api_key_id is not None:
        query = query.where(AccessLogEntry.api_key_id == api_key_id)
    return list(session.scalars(query))


def prune_access_log(*, session: Session, before: datetime) -> None:
    session.execute(delete(AccessLogEntry).where(AccessLogEntry.at < before))


def has_administrator(*, session: Session) -> bool:
    """Whether anyone still holds ``admin`` system-wide: a user, a group with a member, or a key."""
    user_grant = select(Grant.id).where(
        Grant.permission == "admin", Grant.feed_id.is_(None), Grant.principal_kind == "user"
    )
    group_grant = (
        select(Grant.id)
        .join(GroupMember, GroupMember.group_id == Grant.group_id)
        .where(Grant.permission == "admin", Grant.feed_id.is_(None), Grant.principal_kind == "group")
    )
    system_key = select(ApiKey.id).where(
        ApiKey.user_id.is_(None), ApiKey.scope == "system", ApiKey.revoked_at.is_(None),
        ApiKey.permissions.contains("admin"),
    )
    return any(session.execute(query.limit(1)).first() is not None for query in (user_grant, group_grant, system_key))


# What the per-process snapshot is built from -----------------------------------------------------


@dataclass(frozen=True)
class SecurityRows:
    revision: int
    feeds: dict[int, str]
    users: dict[int, tuple[str, str | None]]  # id -> (name, password hash)
    memberships: list[tuple[int, int]]  # (group id, user id)
    grants: list[tuple[str, int | None, int | None, str, int | None]]  # kind, user, group, permission, feed
    keys: list[tuple[ApiKey, list[int]]]


def load_security_rows(*, session: Session) -> SecurityRows:
    key_feeds: dict[int, list[int]] = {}
    for key_id, feed_id in session.execute(select(ApiKeyFeed.api_key_id, ApiKeyFeed.feed_id)):
        key_feeds.setdefault(key_id, []).append(feed_id)
    return SecurityRows(
        revision=revision(session=session),
        feeds={feed_id: name for feed_id, name in session.execute(select(Feed.id, Feed.name))},
        users={uid: (name, pw) for uid, name, pw in session.execute(select(User.id, User.name, User.password_hash))},
        memberships=[(g, u) for g, u in session.execute(select(GroupMember.group_id, GroupMember.user_id))],
        grants=[
            (kind, user_id, group_id, permission, feed_id)
            for kind, user_id, group_id, permission, feed_id in session.execute(
                select(Grant.principal_kind, Grant.user_id, Grant.group_id, Grant.permission, Grant.feed_id)
            )
        ],
        keys=[
            (key, key_feeds.get(key.id, []))
            for key in session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))
        ],
    )
