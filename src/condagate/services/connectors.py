"""Creating, checking, updating, listing and deleting connectors to upstream channels; their health."""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from condagate.conda.subdirs import KNOWN_SUBDIRS, require_known_subdir
from condagate.conda.upstream_repodata import UpstreamRepodataInvalid
from condagate.conda.upstream_stream import parse_document
from condagate.errors import BadRequest, CondagateError, Conflict, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from condagate.security import secretbox
from condagate.services.blob_cleanup import delete_if_unused
from condagate.services.context import Services
from condagate.services.feeds import validate_feed_name
from condagate.store import connectors as connector_store
from condagate.store.models import Connector
from condagate.upstream.connector import BUILT_IN_CONNECTORS, REDIRECT_POLICIES, SAME_ORIGIN, ConnectorConfig
from condagate.upstream.repodata_fetch import fetch_repodata

# Bounds of the numbers a connector takes (the columns are 32-bit integers).
MAX_CACHE_MINUTES = 525_600  # a year
MIN_TIMEOUT_SECONDS = 1
MAX_TIMEOUT_SECONDS = 3600


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
    allow_redirects: str = SAME_ORIGIN
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
    if not 0 <= spec.cache_minutes <= MAX_CACHE_MINUTES:
        raise BadRequest(f"the cache lifetime (cache_minutes) must be between 0 and {MAX_CACHE_MINUTES} minutes")
    if not MIN_TIMEOUT_SECONDS <= spec.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise BadRequest(
            f"the timeout (timeout_seconds) must be between {MIN_TIMEOUT_SECONDS} and {MAX_TIMEOUT_SECONDS} seconds"
        )
    if spec.token and (spec.username or spec.password):
        raise BadRequest("give either a username and password or a token, not both")
    if spec.password and not spec.username:
        raise BadRequest("a password needs a username")
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
        allow_redirects=row.allow_redirects,
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


class NotACondaChannel(BadRequest):
    code = "not_a_conda_channel"


@dataclass(frozen=True)
class UpstreamCheck:
    """What the upstream listed when a connector was checked before it was saved."""

    subdir: str
    package_files: int
    packages: int
    response_ms: int
    filtered: bool = False  # the counts are of what passes the connector's include/exclude filters

    @property
    def message(self) -> str:
        plural = "" if self.packages == 1 else "s"
        files = "" if self.package_files == 1 else "s"
        which = " that pass the filters" if self.filtered else ""
        return f"found {self.packages} package{plural} ({self.package_files} file{files}){which} in {self.subdir}"


_SKIP_CHECK = 'nothing was saved; to save it anyway, skip the check ("check": false, or --no-check)'


def check_upstream(services: Services, config: ConnectorConfig) -> UpstreamCheck:
    """Fetch one subdir's repodata (noarch, else the first configured subdir) under the connector's
    address and redirect policy, within its timeout; refuse an upstream that is not a conda channel."""
    subdir = "noarch" if config.serves_subdir("noarch") else config.subdirs[0]
    where = f"{config.url.rstrip('/')}/{subdir}/"
    started = time.perf_counter()
    try:
        document = fetch_repodata(services.http, config, subdir).document()
        if document is None:
            raise NotACondaChannel(f"{where} has no repodata.json: is {config.url} a conda channel? {_SKIP_CHECK}")
        parsed = parse_document(document, config.name_filter)
    except UpstreamRepodataInvalid as exc:
        raise NotACondaChannel(f"{where}repodata.json is not conda repodata ({exc.message}); {_SKIP_CHECK}") from None
    except (UpstreamError, UpstreamTimeout) as exc:
        # One status for "could not check": the upstream is unreachable, failing or too slow.
        raise UpstreamUnavailable(
            f"the upstream check failed: {exc.message}; {_SKIP_CHECK}",
            public=f"the upstream of connector {config.name!r} could not be checked; {_SKIP_CHECK}",
        ) from None
    if parsed.subdir is None and not len(parsed) and not parsed.dropped:
        raise NotACondaChannel(f"{where}repodata.json does not look like conda repodata; {_SKIP_CHECK}")
    return UpstreamCheck(
        subdir=subdir,
        package_files=len(parsed),
        packages=len(set(parsed.names.values())),
        response_ms=int((time.perf_counter() - started) * 1000),
        filtered=bool(config.include or config.exclude),
    )


def _config(spec: ConnectorSpec, connector_id: int = 0) -> ConnectorConfig:
    return ConnectorConfig(
        id=connector_id,
        name=spec.name,
        url=spec.url.rstrip("/"),
        subdirs=tuple(spec.subdirs),
        include=tuple(spec.include),
        exclude=tuple(spec.exclude),
        cache_minutes=spec.cache_minutes,
        timeout_seconds=spec.timeout_seconds,
        username=spec.username,
        password=spec.password,
        token=spec.token,
        allow_redirects=spec.allow_redirects,
    )


def create_connector(
    services: Services, spec: ConnectorSpec, *, check: bool = False
) -> tuple[ConnectorInfo, UpstreamCheck | None]:
    """Save a connector; with ``check``, only once its upstream answered like a conda channel."""
    _validate(spec)
    checked = None
    if check:
        with services.db.read() as session:  # a taken name is refused before the upstream is asked
            if connector_store.find_connector(session=session, name=spec.name) is not None:
                raise Conflict(f"a connector named {spec.name!r} already exists")
        checked = check_upstream(services, _config(spec))
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
        return _info(services, row), checked


@dataclass(frozen=True)
class ConnectorChanges:
    """What to change on a connector; None (and an empty credential) keeps the current value. A token
    replaces a username and password and the reverse; ``clear_credentials`` removes them all."""

    url: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    subdirs: list[str] | None = None
    cache_minutes: int | None = None
    timeout_seconds: int | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    clear_credentials: bool = False
    allow_redirects: str | None = None


def _changed(current: ConnectorConfig, changes: ConnectorChanges) -> ConnectorSpec:
    username, password, token = (
        ("", "", "") if changes.clear_credentials else (current.username, current.password, current.token)
    )
    if changes.token and (changes.username or changes.password):
        raise BadRequest("give either a username and password or a token, not both")
    if changes.token:
        username, password, token = "", "", changes.token
    elif changes.username or changes.password:
        username, password, token = changes.username or username, changes.password or password, ""
    return ConnectorSpec(
        name=current.name,
        url=current.url if changes.url is None else changes.url,
        include=list(current.include) if changes.include is None else changes.include,
        exclude=list(current.exclude) if changes.exclude is None else changes.exclude,
        subdirs=list(current.subdirs) if changes.subdirs is None else changes.subdirs,
        cache_minutes=current.cache_minutes if changes.cache_minutes is None else changes.cache_minutes,
        timeout_seconds=current.timeout_seconds if changes.timeout_seconds is None else changes.timeout_seconds,
        username=username,
        password=password,
        token=token,
        allow_redirects=current.allow_redirects if changes.allow_redirects is None else changes.allow_redirects,
    )


def update_connector(
    services: Services, name: str, changes: ConnectorChanges, *, check: bool = False
) -> tuple[ConnectorInfo, UpstreamCheck | None]:
    """Change a connector. A new address, credentials or redirect policy is checked first (with
    ``check``) and drops what was fetched from the old one, so the next request asks the new place;
    new filters apply at once to the repodata already fetched (every worker process notices the
    changed settings, see ``upstream.repodata_cache``)."""
    with services.db.read() as session:
        current = config_of(connector_store.get_connector(session=session, name=name))
    spec = _changed(current, changes)
    _validate(spec)
    wanted = _config(spec, current.id)
    credentials = (wanted.username, wanted.password, wanted.token)
    moved = (wanted.url, wanted.allow_redirects, credentials) != (
        current.url,
        current.allow_redirects,
        (current.username, current.password, current.token),
    )
    checked = check_upstream(services, wanted) if check and moved else None
    with services.db.write() as session:
        row = connector_store.get_connector(session=session, name=name)
        row.url = wanted.url
        row.include, row.exclude = "\n".join(spec.include), "\n".join(spec.exclude)
        row.subdirs = "\n".join(spec.subdirs)
        row.cache_minutes, row.timeout_seconds = spec.cache_minutes, spec.timeout_seconds
        row.allow_redirects = spec.allow_redirects
        if credentials != (current.username, current.password, current.token):
            row.username, row.password, row.token = (_seal(value) for value in credentials)
        if moved:  # the health of the old address says nothing about the new one
            connector_store.forget_health(session=session, connector_id=row.id)
        feeds = connector_store.feeds_using(session=session, connector_id=row.id)
    if moved or (wanted.include, wanted.exclude) != (current.include, current.exclude):
        services.upstream.forget(current.id, remove_files=wanted.url != current.url)
    for feed in feeds:
        services.lookups.forget_feed(feed)
    return get_connector(services, name), checked


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


def delete_connector(services: Services, name: str, *, detach: bool = False) -> list[str]:
    """Delete a connector. One that feeds use is refused (409, naming them) unless ``detach``, which
    first removes it from those feeds; returns the feeds it was detached from."""
    with services.db.write() as session:
        connector_id = connector_store.get_connector(session=session, name=name).id
        detached = connector_store.detach_connector(session=session, connector_id=connector_id) if detach else []
        digests = connector_store.delete_connector(session=session, name=name)
    services.upstream.forget(connector_id, remove_files=True)
    for feed in detached:
        services.lookups.forget_feed(feed)
    for digest in set(digests):
        delete_if_unused(services, digest)
    return detached


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
