"""Who a request is, decided from a per-process snapshot of the security rows.

The snapshot (grants, users, groups, API keys by hash) is rebuilt when the database's security
revision moves: at once in the process that made the change, and within ``security_refresh_seconds``
(1 s by default) in every other process, by a background check. Resolving a key or a cached
password costs no database round trip, so the authorization decision stays off the hot path's I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from condagate.errors import CondagateError
from condagate.security.apikeys import hash_key
from condagate.security.passwords import verify_password
from condagate.security.permissions import ANONYMOUS, Permission, Principal, expand
from condagate.store import security as security_store
from condagate.store.db import Database
from condagate.store.models import ApiKey

log = logging.getLogger(__name__)

Grants = tuple[frozenset[Permission], dict[str, frozenset[Permission]]]  # system-wide, per feed name
PASSWORD_CACHE_SECONDS = 300.0
# argon2 takes 64 MiB and tens of milliseconds per check: at most this many run at once per process.
CONCURRENT_PASSWORD_CHECKS = 2
_PASSWORD_CHECK_WAIT_SECONDS = 10.0


class PasswordChecksBusy(CondagateError):
    status_code = 503
    code = "busy"


_PASSWORD_CACHE_LIMIT = 10_000


def _merge(*parts: Grants) -> Grants:
    system: set[Permission] = set()
    feeds: dict[str, set[Permission]] = {}
    for part_system, part_feeds in parts:
        system |= part_system
        for feed, permissions in part_feeds.items():
            feeds.setdefault(feed, set()).update(permissions)
    expanded_system = expand(system)
    return expanded_system, {feed: expand(permissions) | expanded_system for feed, permissions in feeds.items()}


def _narrow(grants: Grants, permissions: frozenset[Permission] | None, feeds: list[str] | None) -> Grants:
    """A key's limits applied to what its holder may do (``None``: no limit of that kind)."""
    system, per_feed = grants
    allowed = expand(permissions) if permissions is not None else None

    def cut(values: frozenset[Permission]) -> frozenset[Permission]:
        return values if allowed is None else values & allowed

    if feeds is None:
        return cut(system), {feed: cut(p) for feed, p in per_feed.items()}
    return frozenset(), {feed: cut(system | per_feed.get(feed, frozenset())) for feed in feeds}


@dataclass(frozen=True)
class KeyEntry:
    id: int
    principal: Principal
    expires_at: datetime | None


@dataclass
class Snapshot:
    revision: int = -1
    anonymous: Principal = ANONYMOUS
    keys: dict[str, KeyEntry] = field(default_factory=dict)  # sha256 of the key -> entry
    keys_by_id: dict[int, KeyEntry] = field(default_factory=dict)
    users: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # lower-case name -> (id, hash)
    user_principals: dict[int, Principal] = field(default_factory=dict)
    feed_names: frozenset[str] = frozenset()


def _build(rows: security_store.SecurityRows) -> Snapshot:
    anonymous_system: set[Permission] = set()
    anonymous_feeds: dict[str, set[Permission]] = {}
    by_user: dict[int, tuple[set[Permission], dict[str, set[Permission]]]] = {}
    by_group: dict[int, tuple[set[Permission], dict[str, set[Permission]]]] = {}
    for kind, user_id, group_id, permission_name, feed_id in rows.grants:
        try:
            permission = Permission(permission_name)
        except ValueError:
            continue
        if feed_id is not None and feed_id not in rows.feeds:
            continue
        if kind == "anonymous":
            system, feeds = anonymous_system, anonymous_feeds
        elif kind == "user" and user_id is not None:
            system, feeds = by_user.setdefault(user_id, (set(), {}))
        elif kind == "group" and group_id is not None:
            system, feeds = by_group.setdefault(group_id, (set(), {}))
        else:
            continue
        if feed_id is None:
            system.add(permission)
        else:
            feeds.setdefault(rows.feeds[feed_id], set()).add(permission)

    def frozen(part: tuple[set[Permission], dict[str, set[Permission]]]) -> Grants:
        return frozenset(part[0]), {feed: frozenset(p) for feed, p in part[1].items()}

    anonymous_grants = frozen((anonymous_system, anonymous_feeds))
    anonymous_merged = _merge(anonymous_grants)
    anonymous = Principal(name="anonymous", system=anonymous_merged[0], feeds=anonymous_merged[1])
    groups_of: dict[int, list[int]] = {}
    for group_id, user_id in rows.memberships:
        groups_of.setdefault(user_id, []).append(group_id)
    user_grants: dict[int, Grants] = {}
    user_principals: dict[int, Principal] = {}
    users: dict[str, tuple[int, str | None]] = {}
    for user_id, (name, password_hash) in rows.users.items():
        parts = [anonymous_grants, frozen(by_user.get(user_id, (set(), {})))]
        parts += [frozen(by_group[g]) for g in groups_of.get(user_id, []) if g in by_group]
        user_grants[user_id] = _merge(*parts)
        user_principals[user_id] = Principal(
            name=name, authenticated=True, system=user_grants[user_id][0], feeds=user_grants[user_id][1], user=name
        )
        users[name.lower()] = (user_id, password_hash)
    keys: dict[str, KeyEntry] = {}
    for key, feed_ids in rows.keys:
        keys[key.key_hash] = KeyEntry(
            key.id, _key_principal(key, feed_ids, rows, user_grants, anonymous_grants), key.expires_at
        )
    return Snapshot(
        rows.revision,
        anonymous,
        keys,
        {entry.id: entry for entry in keys.values()},
        users,
        user_principals,
        frozenset(rows.feeds.values()),
    )


def _key_principal(
    key: ApiKey,
    feed_ids: list[int],
    rows: security_store.SecurityRows,
    user_grants: dict[int, Grants],
    anonymous_grants: Grants,
) -> Principal:
    listed = frozenset(Permission(p) for p in key.permissions.split(",") if p in Permission._value2member_map_)
    feeds = [rows.feeds[f] for f in feed_ids if f in rows.feeds] if key.scope == "feeds" else None
    if key.user_id is not None:
        owner = rows.users.get(key.user_id, ("?", None))[0]
        grants = _narrow(user_grants.get(key.user_id, _merge(anonymous_grants)), listed or None, feeds)
        name, user = f"{owner} (key {key.id})", owner
    else:
        own: Grants = (listed, {}) if feeds is None else (frozenset(), {feed: listed for feed in feeds})
        grants, name, user = own, f"key {key.id}", None
    system, per_feed = _merge(anonymous_grants, grants)
    return Principal(name=name, authenticated=True, system=system, feeds=per_feed, user=user, key_id=key.id)


class AccessControl:
    def __init__(self, db: Database, refresh_seconds: float = 1.0) -> None:
        self._db = db
        self._refresh_seconds = refresh_seconds
        self._snapshot = Snapshot()
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._pepper = secrets.token_bytes(32)  # keys the password cache: nothing outside this process can use it
        self._verified: dict[tuple[int, bytes], float] = {}
        self._password_checks = threading.BoundedSemaphore(CONCURRENT_PASSWORD_CHECKS)
        self._last_used: dict[int, float] = {}  # key id -> time.time() of its latest use
        self.on_change: list[Callable[[], None]] = []

    # Keeping the snapshot current -----------------------------------------------------------------

    def reload(self) -> None:
        with self._lock, self._db.read() as session:
            rows = security_store.load_security_rows(session=session)
            self._snapshot = _build(rows)
            self._verified.clear()
            self._checked_at = time.monotonic()

    def refresh_if_changed(self) -> bool:
        """The cross-process check (a background task calls it every ``refresh_seconds``)."""
        with self._db.read() as session:
            current = security_store.revision(session=session)
        if current != self._snapshot.revision:
            self.reload()
            return True
        self._checked_at = time.monotonic()
        return False

    @property
    def refresh_seconds(self) -> float:
        return self._refresh_seconds

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # Resolving credentials ----------------------------------------------------------------------

    @property
    def anonymous(self) -> Principal:
        return self._snapshot.anonymous

    def principal_for_key(self, key: str) -> Principal | None:
        entry = self._snapshot.keys.get(hash_key(key))
        if entry is None:
            return None
        now = time.time()
        if entry.expires_at is not None and _aware(entry.expires_at).timestamp() <= now:
            return None
        self._last_used[entry.id] = now  # a float here; a datetime only when the batch is written
        return entry.principal

    def cached_password_principal(self, user: str, password: str) -> Principal | None:
        """The user when this password was verified in the last few minutes (no argon2 run)."""
        found = self._snapshot.users.get(user.lower())
        if found is None:
            return None
        expiry = self._verified.get((found[0], self._fingerprint(password)))
        if expiry is None or expiry < time.monotonic():
            return None
        return self._snapshot.user_principals.get(found[0])

    def principal_for_password(self, user: str, password: str) -> Principal | None:
        """Runs argon2 (tens of milliseconds): call it off the event loop."""
        cached = self.cached_password_principal(user, password)
        if cached is not None:
            return cached
        user_id, stored = self._snapshot.users.get(user.lower(), (None, None))
        if not self._password_checks.acquire(timeout=_PASSWORD_CHECK_WAIT_SECONDS):
            raise PasswordChecksBusy("too many password checks at once: try again in a few seconds")
        try:
            verified = verify_password(password, stored)
        finally:
            self._password_checks.release()
        if not verified or user_id is None:
            return None
        if len(self._verified) >= _PASSWORD_CACHE_LIMIT:
            self._verified.clear()
        self._verified[(user_id, self._fingerprint(password))] = time.monotonic() + PASSWORD_CACHE_SECONDS
        return self._snapshot.user_principals.get(user_id)

    def principal_for_user_id(self, user_id: int) -> Principal | None:
        return self._snapshot.user_principals.get(user_id)

    def principal_for_key_id(self, key_id: int) -> Principal | None:
        entry = self._snapshot.keys_by_id.get(key_id)
        if entry is None or (entry.expires_at is not None and _aware(entry.expires_at) <= datetime.now(UTC)):
            return None
        return entry.principal

    def _fingerprint(self, password: str) -> bytes:
        return hmac.new(self._pepper, password.encode(), hashlib.sha256).digest()

    def take_last_used(self) -> dict[int, datetime]:
        taken, self._last_used = self._last_used, {}
        return {key_id: datetime.fromtimestamp(when, UTC) for key_id, when in taken.items()}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
