"""What a promotion would do (the preview, and the first step of promoting).

A request names files, versions (all their files, across subdirs) or specs, optionally with their
dependency closure (``services.closure``) or as an environment file. ``plan`` resolves it against the
source feed as its channel serves it, and says what would be added to the target, what the target
already has, what conflicts, and what the source cannot provide.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import rattler
from rattler.exceptions import InvalidMatchSpecError
from sqlalchemy.orm import Session

from condagate.conda import environment_files
from condagate.conda.subdirs import parse_package_filename, require_known_subdir
from condagate.conda.versions import latest_version
from condagate.errors import (
    BadRequest,
    CondagateError,
    NotAPromotionTarget,
    NotInSource,
    PromotionConflict,
    SubdirNotFound,
    UpstreamError,
    UpstreamTimeout,
)
from condagate.services import channel, closure
from condagate.services.catalog import DEFAULT_BROWSE_SUBDIRS
from condagate.services.channel import FeedRef, PackageBlob, UpstreamPackage
from condagate.services.context import Services
from condagate.services.subdir_snapshot import SubdirSnapshot
from condagate.store import feeds as feed_store
from condagate.store import packages as package_store
from condagate.store import promotions as promotion_store

log = logging.getLogger(__name__)
MAX_FILES = 5000  # files in one request: a promotion is one transaction
ENVIRONMENT_MAX_BYTES = environment_files.MAX_CONTENT_BYTES
UPSTREAM_WAIT_SECONDS = 120.0  # at most this long for a proxy source's first fetch of a subdir


@dataclass(frozen=True)
class PromotionRequest:
    """What to promote. ``specs`` without dependencies name a version each (``NAME``, ``NAME==1.2``,
    ``NAME>=1.2``: the newest matching version, all its builds); with dependencies they are solved
    against the source together with the named files and versions. ``subdirs`` narrow versions and
    specs (default: the subdirs the source serves). ``environment`` is (file name, content) of an
    environment.yml, an explicit list, a conda-lock file or a pixi.lock."""

    files: list[tuple[str, str]] = field(default_factory=list)  # (subdir, filename)
    versions: list[tuple[str, str]] = field(default_factory=list)  # (name, version)
    specs: list[str] = field(default_factory=list)
    subdirs: list[str] = field(default_factory=list)
    with_dependencies: bool = False
    environment: tuple[str, bytes] | None = None


@dataclass(frozen=True)
class PlannedFile:
    subdir: str
    filename: str
    name: str
    version: str
    build: str
    sha256: str
    size: int
    origin: str = "local"  # "local" (the source's own file), or the connector it comes through
    cached: bool = True  # False: only the upstream has it; promoting fetches and verifies it first
    target_sha256: str = ""  # a conflict: what the target holds under this name

    @property
    def key(self) -> tuple[str, str]:
        return (self.subdir, self.filename)


@dataclass(frozen=True)
class MissingItem:
    """Something the request asked for that the source cannot provide."""

    what: str
    subdir: str = ""
    reason: str = ""


@dataclass(frozen=True)
class LocatedFile:
    """Where the source has a file's bytes, and the record it serves for it."""

    record: dict[str, Any]
    origin: str  # "local", or the connector it comes through
    local: dict[str, Any] | None = None  # the source's own row: sha256, md5, size, record, about
    blob: PackageBlob | None = None
    upstream: UpstreamPackage | None = None


@dataclass
class PromotionPlan:
    source: str
    target: str
    add: list[PlannedFile] = field(default_factory=list)
    present: list[PlannedFile] = field(default_factory=list)  # same file name, same sha256: nothing to do
    conflicts: list[PlannedFile] = field(default_factory=list)  # same file name, other bytes
    missing: list[MissingItem] = field(default_factory=list)
    located: dict[tuple[str, str], LocatedFile] = field(default_factory=dict, repr=False)

    @property
    def to_fetch(self) -> list[PlannedFile]:
        return [f for f in self.add if not f.cached]

    def require_complete(self) -> None:
        """All or nothing: refuse the whole request when anything is missing or conflicts."""
        if self.missing:
            listed = "; ".join(_describe(m) for m in self.missing[:10])
            more = f" (and {len(self.missing) - 10} more)" if len(self.missing) > 10 else ""
            raise NotInSource(f"nothing was promoted: feed {self.source!r} cannot provide {listed}{more}")
        if self.conflicts:
            listed = ", ".join(f"{f.subdir}/{f.filename}" for f in self.conflicts[:10])
            raise PromotionConflict(
                f"nothing was promoted: feed {self.target!r} already has {listed} with other bytes "
                "(delete it there first to promote this file)"
            )


def _describe(item: MissingItem) -> str:
    where = f" for {item.subdir}" if item.subdir and item.subdir not in item.what else ""
    return f"{item.what}{where}" + (f" ({item.reason})" if item.reason else "")


class _SourceView:
    """The source feed's subdirs as its channel serves them, each read once per request; a proxy
    source's first upstream fetch is waited for (bounded), a failing upstream noted, not raised."""

    def __init__(self, services: Services, feed: FeedRef) -> None:
        self.services = services
        self.feed = feed
        self.errors: dict[str, str] = {}
        self._snapshots: dict[str, SubdirSnapshot | None] = {}

    def snapshot(self, subdir: str) -> SubdirSnapshot | None:
        if subdir not in self._snapshots:
            self._snapshots[subdir] = self._read(subdir)
        return self._snapshots[subdir]

    def _read(self, subdir: str) -> SubdirSnapshot | None:
        try:
            found = channel.feed_subdir(self.services, self.feed.name, subdir)
            if found.pending:
                wait = min(max(item.wait for item in found.pending), UPSTREAM_WAIT_SECONDS)
                concurrent.futures.wait([item.future for item in found.pending], timeout=wait)
                found = channel.feed_subdir(self.services, self.feed.name, subdir, refresh=False)
            found.require_data()
        except (UpstreamError, UpstreamTimeout) as exc:
            self.errors[subdir] = exc.public or "its upstream is unreachable"
            return None
        return found.snapshot

    def reason(self, subdirs: Iterable[str]) -> str:
        failing = [f"{s}: {self.errors[s]}" for s in subdirs if s in self.errors]
        return "; ".join(failing) if failing else "not in the feed"


def plan(services: Services, *, source: str, target: str, request: PromotionRequest) -> PromotionPlan:
    """The preview (dry run): what promoting ``request`` would add to ``target``, what it already has,
    what conflicts and what ``source`` cannot provide. Blocking: may wait for upstream repodata and
    run the solver (a worker thread's job)."""
    source_ref = channel.resolve_feed(services, source)
    with services.db.read() as session:
        target_id = _require_target(session, source_ref, target)
    view = _SourceView(services, source_ref)
    subdirs = _chosen_subdirs(services, source_ref, request.subdirs)
    result = PromotionPlan(source, target)
    wanted: dict[tuple[str, str], dict[str, Any]] = {}
    solve_specs = list(request.specs) if request.with_dependencies else []

    for subdir, filename in request.files:
        _check_file(subdir, filename)
        record = _record(view, subdir, filename)
        if record is None:
            result.missing.append(MissingItem(f"{subdir}/{filename}", subdir, view.reason([subdir])))
            continue
        wanted[(subdir, filename)] = record
        if request.with_dependencies:
            solve_specs.append(f"{record['name']} =={record['version']} {record['build']}")
    for name, version in request.versions:
        found = _files_of_version(view, subdirs, name, version)
        if not found:
            result.missing.append(MissingItem(f"{name}=={version}", "", view.reason(subdirs)))
        wanted.update(found)
        if request.with_dependencies:
            solve_specs.append(f"{name} =={version}")
    if not request.with_dependencies:
        for spec in request.specs:
            found = _files_of_spec(view, subdirs, spec)
            if not found:
                result.missing.append(MissingItem(spec, "", view.reason(subdirs)))
            wanted.update(found)
    solve_subdirs = [s for s in subdirs if s != "noarch"] or ["noarch"]
    if request.environment is not None:
        environment = closure.read_environment_file(*request.environment)
        for subdir, filename in environment.files:
            record = _record(view, subdir, filename)
            if record is None:
                result.missing.append(MissingItem(f"{subdir}/{filename}", subdir, view.reason([subdir])))
            else:
                wanted[(subdir, filename)] = record
        if environment.specs:
            chosen = request.subdirs or environment.subdirs or solve_subdirs
            _solve(services, view, source, environment.specs, _valid_subdirs(chosen), wanted, result)
    if solve_specs:
        _solve(services, view, source, solve_specs, solve_subdirs, wanted, result)
    if not wanted and not result.missing:
        raise BadRequest("nothing to promote: name files, versions, specs or an environment file")
    if len(wanted) > MAX_FILES:
        raise BadRequest(f"{len(wanted)} files in one promotion; at most {MAX_FILES} at once")
    _locate(services, source_ref, view, wanted, result)
    _compare_with_target(services, target_id, result)
    return result


def _require_target(session: Session, source: FeedRef, target: str) -> int:
    targets = promotion_store.target_names(session=session, source_feed_id=source.id)
    if target not in targets:
        known = ", ".join(repr(t) for t in targets) if targets else "none yet (link one first)"
        raise NotAPromotionTarget(
            f"feed {target!r} is not a promotion target of feed {source.name!r}; its targets: {known}"
        )
    return feed_store.get_feed(session=session, name=target).id


def _valid_subdirs(subdirs: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(subdirs))
    for subdir in chosen:
        try:
            require_known_subdir(subdir)
        except SubdirNotFound as exc:
            raise BadRequest(exc.message) from None
    return chosen


def _chosen_subdirs(services: Services, feed: FeedRef, requested: list[str]) -> list[str]:
    """The requested subdirs, or those the source serves: its own files' and its connectors'."""
    if requested:
        return _valid_subdirs(requested)
    with services.db.read() as session:
        subdirs = set(package_store.populated_subdirs(session=session, feed_id=feed.id))
    for connector in feed.connectors:
        subdirs.update(connector.subdirs or DEFAULT_BROWSE_SUBDIRS)
        subdirs.update(services.upstream.cached_subdirs(connector.id))
    return sorted(subdirs) or ["noarch"]


def _check_file(subdir: str, filename: str) -> None:
    try:
        require_known_subdir(subdir)
    except SubdirNotFound as exc:
        raise BadRequest(exc.message) from None
    parse_package_filename(filename)


def _record(view: _SourceView, subdir: str, filename: str) -> dict[str, Any] | None:
    snapshot = view.snapshot(subdir)
    return snapshot.record(filename) if snapshot is not None else None


def _files_of_version(
    view: _SourceView, subdirs: list[str], name: str, version: str
) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for subdir in subdirs:
        snapshot = view.snapshot(subdir)
        if snapshot is None:
            continue
        for filename in snapshot.by_name().get(name, []):
            record = snapshot.record(filename)
            if record is not None and str(record.get("version")) == version:
                found[(subdir, filename)] = record
    return found


def _files_of_spec(view: _SourceView, subdirs: list[str], spec: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every file (all builds, all ``subdirs``) of the newest version that ``spec`` matches."""
    try:
        match = rattler.MatchSpec(spec.strip())
    except InvalidMatchSpecError as exc:
        raise BadRequest(f"invalid match spec {spec!r}: {exc}") from None
    name = match.name.normalized
    version_spec = rattler.VersionSpec(match.version) if match.version else None
    matching: dict[tuple[str, str], dict[str, Any]] = {}
    for subdir in subdirs:
        snapshot = view.snapshot(subdir)
        if snapshot is None:
            continue
        for filename in snapshot.by_name().get(name, []):
            record = snapshot.record(filename)
            if record is not None and _matches(version_spec, match.build, record):
                matching[(subdir, filename)] = record
    newest = latest_version(str(r["version"]) for r in matching.values())
    return {key: record for key, record in matching.items() if str(record["version"]) == newest}


def _matches(version_spec: rattler.VersionSpec | None, build: str | None, record: dict[str, Any]) -> bool:
    try:
        if version_spec is not None and not version_spec.matches(rattler.Version(str(record["version"]))):
            return False
    except Exception:  # an unparsable version matches nothing
        return False
    return build is None or fnmatch.fnmatchcase(str(record.get("build", "")), build)


def _solve(
    services: Services,
    view: _SourceView,
    source: str,
    specs: list[str],
    subdirs: list[str],
    wanted: dict[tuple[str, str], dict[str, Any]],
    result: PromotionPlan,
) -> None:
    """Add the dependency closure of ``specs`` (solved against the source, per subdir) to ``wanted``."""
    solved = closure.solve_closure(services, source, specs, subdirs)
    for subdir, message in sorted(solved.unresolved.items()):
        result.missing.append(MissingItem(" ".join(specs), subdir, f"cannot be solved: {message}"))
    for item in solved.wanted:
        record = _record(view, item.subdir, item.filename)
        if record is None:
            result.missing.append(MissingItem(f"{item.subdir}/{item.filename}", item.subdir, "not in the feed"))
        else:
            wanted[(item.subdir, item.filename)] = record


def _locate(
    services: Services,
    source: FeedRef,
    view: _SourceView,
    wanted: dict[tuple[str, str], dict[str, Any]],
    result: PromotionPlan,
) -> None:
    """Where the source has each file: its own row, a cached upstream copy, or only the upstream."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    broken: dict[tuple[str, str], str] = {}
    with services.db.read() as session:
        for subdir, filename in sorted(wanted):
            row = package_store.find_file(session=session, feed_id=source.id, subdir=subdir, filename=filename)
            if row is None:
                continue
            if row.broken_reason is not None:
                broken[(subdir, filename)] = f"its file is marked broken: {row.broken_reason}"
                continue
            rows[(subdir, filename)] = {
                "sha256": row.sha256,
                "md5": row.md5,
                "size": row.size,
                "record": row.record,
                "about": row.about,
                "name": row.name,
                "version": row.version,
                "build": row.build,
            }
    for (subdir, filename), record in sorted(wanted.items()):
        key = (subdir, filename)
        if key in broken:
            result.missing.append(MissingItem(f"{subdir}/{filename}", subdir, broken[key]))
            continue
        own = rows.get(key)
        if own is not None:
            result.located[key] = LocatedFile(record, "local", local=own)
            continue
        try:
            found = channel.locate_package(services, source.name, subdir, filename)
        except CondagateError as exc:
            result.missing.append(MissingItem(f"{subdir}/{filename}", subdir, exc.message))
            continue
        if isinstance(found, PackageBlob):
            origin = _listing_connector(services, source, subdir, filename)
            result.located[key] = LocatedFile(record, origin, blob=found)
        else:
            result.located[key] = LocatedFile(record, found.connector.name, upstream=found)


def _listing_connector(services: Services, source: FeedRef, subdir: str, filename: str) -> str:
    for connector in source.connectors:
        upstream = services.upstream.peek(connector.id, subdir)
        if upstream is not None and filename in upstream.records:
            return connector.name
    return "upstream"


def _planned(key: tuple[str, str], located: LocatedFile) -> PlannedFile:
    record = located.record
    if located.local is not None:
        sha256, size = str(located.local["sha256"]), int(located.local["size"])
    elif located.blob is not None:
        sha256, size = located.blob.sha256, int(record.get("size") or 0)
    else:  # only upstream: the record's checksum, verified when it is fetched
        sha256, size = str(record.get("sha256") or ""), int(record.get("size") or 0)
    return PlannedFile(
        subdir=key[0],
        filename=key[1],
        name=str(record.get("name", "")),
        version=str(record.get("version", "")),
        build=str(record.get("build", "")),
        sha256=sha256,
        size=size,
        origin=located.origin,
        cached=located.upstream is None,
    )


def _compare_with_target(services: Services, target_id: int, result: PromotionPlan) -> None:
    with services.db.read() as session:
        for key, located in sorted(result.located.items()):
            planned = _planned(key, located)
            there = package_store.find_file(session=session, feed_id=target_id, subdir=key[0], filename=key[1])
            if there is None:
                result.add.append(planned)
            elif there.sha256 == planned.sha256:
                result.present.append(planned)
            else:
                result.conflicts.append(replace(planned, target_sha256=there.sha256))
