"""Creating, listing and deleting connectors to upstream channels; their health."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from condagate.conda.subdirs import KNOWN_SUBDIRS, require_known_subdir
from condagate.errors import BadRequest, CondagateError
from condagate.security import secretbox
from condagate.services.blob_cleanup import delete_if_unused
from condagate.services.context import Services
from condagate.services.feeds import validate_feed_name
from condagate.store import connectors as connector_store
from condagate.store.models import Connector
from condagate.upstream.connector import BUILT_IN_CONNECTORS, REDIRECT_POLICIES, SAME_ORIGIN, ConnectorConfig


@dataclass(frozen=True)
class ConnectorSpec:
    name: str
    url: str
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    subdirs: list[str] = field(default_factory=list)
    cache_minutes: int = 30
    timeout_seconds: int = 30
    username: str = ""
    password: str = ""
    token: str = ""
    allow_redirects: str = SAME_ORIGIN


@dataclass(frozen=True)
class SubdirHealth:
    subdir: str
    records: int
    last_success_at: datetime | None
    last_checked_at: datetime | None
    last_error_at: datetime | None
    last_error: str
    response_ms: int
    failing_since: datetime | None = None
    next_try_at: datetime | None = None
    dropped_records: int = 0
    dropped_examples: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)


@dataclass(frozen=True)
class ConnectorInfo:
    name: str
    url: str
    include: list[str]
    exclude: list[str]
    subdirs: list[str]
    cache_minutes: int
    timeout_seconds: int
    authentication: str  # "none", "basic" or "token": the credentials themselves are never shown
    feeds: list[str] = field(default_factory=list)
    health: list[SubdirHealth] = field(default_factory=list)
    cached_files: int = 0
    cached_bytes: int = 0


def _lines(value: str) -> list[str]:
    return [line for line in value.split("\n") if line]


def _seal(value: str) -> str:
    box = secretbox.installed()
    return box.seal(value) if box is not None and value else value


def _open(value: str) -> str:
    box = secretbox.installed()
    return box.open(value) if box is not None and value else value


def config_of(row: Connector) -> ConnectorConfig:
    return ConnectorConfig(
        id=row.id,
        name=row.name,
        url=row.url,
        subdirs=tuple(_lines(row.subdirs)),
        include=tuple(_lines(row.include)),
        exclude=tuple(_lines(row.exclude)),
        cache_minutes=row.cache_minutes,
        timeout_seconds=row.timeout_seconds,
        username=_open(row.username),
        password=_open(row.password),
        token=_open(row.token),
        allow_redirects=row.allow_redirects,
    )


def _validate(spec: ConnectorSpec) -> None:
    validate_feed_name(spec.name)  # the same URL-safe rule
    parts = urlsplit(spec.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(f"connector URL {spec.url!r} must be an http(s) channel URL")
    if parts.username or parts.password:
        raise BadRequest("put credentials in username/password or token, not in the URL")
    last_segment = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if last_segment in KNOWN_SUBDIRS:
        raise BadRequest(
            f"connector URL {spec.url!r} ends in the subdir {last_segment!r}: give the channel's URL, without it"
        )
    if re.search(r"(?i)/t/[^/]+", parts.path) or parts.query or parts.fragment:
        # anaconda.org's /t/TOKEN/ form or a ?token=: it would be stored and shown in clear
        raise BadRequest("put the token in the token field, not in the URL (no /t/TOKEN/, no query string)")
    for subdir in spec.subdirs:
        require_known_subdir(subdir)
    for pattern in [*spec.include, *spec.exclude]:
        if not pattern or "\n" in pattern or len(pattern) > 200:
            raise BadRequest(f"invalid filter pattern {pattern!r}")
    if spec.cache_minutes < 0 or not 1 <= spec.timeout_seconds <= 3600:
        raise BadRequest("cache minutes must be >= 0 and the timeout between 1 and 3600 seconds")
    if spec.token and (spec.username or spec.password):
        raise BadRequest("give either a username and password or a token, not both")
    for label, value in (("username", spec.username), ("password", spec.password), ("token", spec.token)):
        # A token read from a file keeps its newline; httpx would refuse the header (and echo it).
        if value and (not value.isprintable() or value != value.strip()):
            raise BadRequest(f"the {label} has spaces at its ends or control characters (a newline?): remove them")
        if len(value) > 4096:
            raise BadRequest(f"the {label} is longer than 4096 characters")
    if spec.allow_redirects not in REDIRECT_POLICIES:
        raise BadRequest(f"allow_redirects must be one of {', '.join(REDIRECT_POLICIES)}")
    if spec.username and ":" in spec.username:
        raise BadRequest("a username may not contain ':'")


def _examples(stored: str) -> list[tuple[str, str]]:
    try:
        return [(str(name), str(reason)) for name, reason in json.loads(stored or "[]")][:20]
    except (ValueError, TypeError):
        return []


def _info(services: Services, row: Connector, with_health: bool = False) -> ConnectorInfo:
    authentication = "token" if row.token else "basic" if row.username else "none"
    info = ConnectorInfo(
        name=row.name,
        url=row.url,
        include=_lines(row.include),
        exclude=_lines(row.exclude),
        subdirs=_lines(row.subdirs),
        cache_minutes=row.cache_minutes,
        timeout_seconds=row.timeout_seconds,
        authentication=authentication,
    )
    if not with_health:
        return info
    with services.db.read() as session:
        health = [
            SubdirHealth(
                s.subdir,
                s.records,
                s.last_success_at,
                s.last_checked_at,
                s.last_error_at,
                s.last_error,
                s.response_ms,
                s.failing_since,
                s.next_try_at,
                s.dropped_records,
                _examples(s.dropped_examples),
            )
            for s in connector_store.health_of(session=session, connector_id=row.id)
        ]
        files, size = connector_store.count_cached(session=session, connector_id=row.id)
        feeds = connector_store.feeds_using(session=session, connector_id=row.id)
    return ConnectorInfo(
        **{**info.__dict__, "health": health, "cached_files": files, "cached_bytes": size, "feeds": feeds}
    )


def create_connector(services: Services, spec: ConnectorSpec) -> ConnectorInfo:
    _validate(spec)
    with services.db.write() as session:
        row = connector_store.add_connector(
            session=session,
            connector=Connector(
                name=spec.name,
                url=spec.url.rstrip("/"),
                include="\n".join(spec.include),
                exclude="\n".join(spec.exclude),
                subdirs="\n".join(spec.subdirs),
                cache_minutes=spec.cache_minutes,
                timeout_seconds=spec.timeout_seconds,
                username=_seal(spec.username),
                password=_seal(spec.password),
                token=_seal(spec.token),
                allow_redirects=spec.allow_redirects,
            ),
        )
        return _info(services, row)


def ensure_built_in_connectors(services: Services) -> None:
    """``anaconda`` and ``conda-forge`` exist from the first start, as the mission's wizard offers them."""
    with services.db.write() as session:
        for name, url in BUILT_IN_CONNECTORS.items():
            if connector_store.find_connector(session=session, name=name) is None:
                connector_store.add_connector(session=session, connector=Connector(name=name, url=url))


def list_connectors(services: Services) -> list[ConnectorInfo]:
    with services.db.read() as session:
        rows = connector_store.list_connectors(session=session)
    # the same numbers as one connector's page: feeds, health, cached files
    return [_info(services, row, with_health=True) for row in rows]


def get_connector(services: Services, name: str) -> ConnectorInfo:
    with services.db.read() as session:
        row = connector_store.get_connector(session=session, name=name)
    return _info(services, row, with_health=True)


def delete_connector(services: Services, name: str) -> None:
    with services.db.write() as session:
        connector_id = connector_store.get_connector(session=session, name=name).id
        digests = connector_store.delete_connector(session=session, name=name)
    services.upstream.forget(connector_id, remove_files=True)
    for digest in set(digests):
        delete_if_unused(services, digest)


def refresh_connector(services: Services, name: str, subdirs: list[str]) -> ConnectorInfo:
    """Check the upstream now: the given subdirs, else those fetched before, else the configured ones,
    else noarch and linux-64. A failing subdir does not stop the others; its error shows in the health."""
    with services.db.read() as session:
        config = config_of(connector_store.get_connector(session=session, name=name))
    chosen = subdirs or services.upstream.cached_subdirs(config.id) or list(config.subdirs) or ["noarch", "linux-64"]
    for subdir in chosen:
        require_known_subdir(subdir)
    for subdir in chosen:
        with contextlib.suppress(CondagateError):  # recorded in the connector's health
            services.upstream.refresh(config, subdir)
    return get_connector(services, name)


def seal_stored_credentials(services: Services) -> int:
    """Encrypt credentials stored in clear text by earlier versions; returns how many rows changed."""
    box = secretbox.installed()
    if box is None:
        return 0
    changed = 0
    with services.db.write() as session:
        for row in connector_store.list_connectors(session=session):
            for column in ("username", "password", "token"):
                value = getattr(row, column)
                if value and not box.is_sealed(value):
                    setattr(row, column, box.seal(value))
                    changed += 1
    return changed
