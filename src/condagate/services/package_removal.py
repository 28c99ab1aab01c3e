"""Removing package files from a feed: one file, one version, or every version of a package.

A feed's own (uploaded) files lose their rows. In a proxy feed the cached copies of upstream files
are removed too; a cached copy belongs to its connector, so every feed proxying that connector loses
it, and fetches it again from the upstream on the next download while the upstream still lists it.
Each touched subdir takes a new revision *and generation* (as a forced re-upload does), so every
process rebuilds that subdir's repodata (json, zst, bz2, shards) and the channeldata from the rows on
its next request. Afterwards the blobs that no row uses any more are deleted, each under its lock.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace

from condagate.conda.subdirs import PACKAGE_EXTENSIONS, parse_package_filename, require_known_subdir
from condagate.errors import InvalidName, PackageNotFound
from condagate.services.blob_cleanup import blob_lock_name, delete_unused_locked
from condagate.services.channel import FeedRef, resolve_feed
from condagate.services.context import Services
from condagate.store import packages as package_store

log = logging.getLogger(__name__)

# The alphabets of conda/subdirs.py's file name check: what can be part of a stored file's name.
_NAME_RE = re.compile(r"[a-z0-9_][a-z0-9_.\-]{0,199}")
_VERSION_RE = re.compile(r"[A-Za-z0-9_.+!*]{1,100}")
LOCAL = "local"


@dataclass(frozen=True)
class RemovedFile:
    subdir: str
    filename: str
    name: str
    version: str
    build: str
    sha256: str
    size: int
    origin: str  # "local" (uploaded to the feed), or the connector whose cached copy was removed
    # The feed still lists the file, from an upstream: the next download fetches it again.
    still_listed_from_upstream: bool = False


@dataclass(frozen=True)
class Removal:
    feed: str
    removed_by: str
    files: list[RemovedFile] = field(default_factory=list)
    blobs_freed: list[str] = field(default_factory=list)  # sha256 of the blobs deleted from storage
    bytes_freed: int = 0

    @property
    def still_listed_from_upstream(self) -> bool:
        return any(f.still_listed_from_upstream for f in self.files)


@dataclass(frozen=True)
class _Selection:
    """What to remove: a file (subdir and file name), or a package's files (name, maybe version and subdir)."""

    name: str | None = None
    version: str | None = None
    subdir: str | None = None
    filename: str | None = None

    def takes(self, subdir: str, filename: str) -> bool:
        """Whether a cached file (known by subdir and file name only) is selected."""
        if self.subdir is not None and subdir != self.subdir:
            return False
        if self.filename is not None:
            return filename == self.filename
        name, version, _ = split_filename(filename)
        return name == self.name and (self.version is None or version == self.version)

    def nothing_found(self, feed: str) -> str:
        where = f" in subdir {self.subdir}" if self.subdir is not None else ""
        if self.filename is not None:
            what = f"{self.subdir}/{self.filename} is"
        elif self.version is not None:
            what = f"version {self.version} of package {self.name!r}{where} is"
        else:
            what = f"package {self.name!r}{where} is"
        return f"{what} not stored in feed {feed!r} (neither uploaded nor cached from an upstream): nothing to delete"


def split_filename(filename: str) -> tuple[str, str, str]:
    """(name, version, build) of NAME-VERSION-BUILD.EXT; empty strings when it is not such a name."""
    stem = next((filename.removesuffix(ext) for ext in PACKAGE_EXTENSIONS if filename.endswith(ext)), "")
    parts = stem.rsplit("-", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else ("", "", "")


def validate_package_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid package name {name!r}: conda names are lower-case letters, digits, '_', '.' and '-'"
        )
    return name


def validate_version(version: str) -> str:
    if not _VERSION_RE.fullmatch(version):
        raise InvalidName(f"invalid version {version!r}: letters, digits and '_', '.', '+', '!', '*' only, no '-'")
    return version


def remove_file(services: Services, *, feed: str, subdir: str, filename: str, removed_by: str) -> Removal:
    """One file of a subdir: the feed's own, and the cached copies of it."""
    require_known_subdir(subdir)
    parse_package_filename(filename)
    return _remove(services, feed, _Selection(subdir=subdir, filename=filename), removed_by)


def remove_version(
    services: Services, *, feed: str, name: str, version: str, subdir: str | None = None, removed_by: str
) -> Removal:
    """Every file of one version (every build), in every subdir or in ``subdir``."""
    validate_package_name(name)
    validate_version(version)
    if subdir is not None:
        require_known_subdir(subdir)
    return _remove(services, feed, _Selection(name=name, version=version, subdir=subdir), removed_by)


def remove_package(services: Services, *, feed: str, name: str, subdir: str | None = None, removed_by: str) -> Removal:
    """Every version of a package, in every subdir or in ``subdir``."""
    validate_package_name(name)
    if subdir is not None:
        require_known_subdir(subdir)
    return _remove(services, feed, _Selection(name=name, subdir=subdir), removed_by)


def _remove(services: Services, feed_name: str, selection: _Selection, removed_by: str) -> Removal:
    feed = resolve_feed(services, feed_name)
    connector_names = {c.id: c.name for c in feed.connectors}
    with services.db.write() as session:
        rows = package_store.files_matching(
            session=session,
            feed_id=feed.id,
            name=selection.name,
            version=selection.version,
            subdir=selection.subdir,
            filename=selection.filename,
        )
        cached = [
            row
            for row in package_store.cached_copies(
                session=session,
                connector_ids=list(connector_names),
                name=selection.name,
                subdir=selection.subdir,
                filename=selection.filename,
            )
            if selection.takes(row.subdir, row.filename)
        ]
        if not rows and not cached:
            raise PackageNotFound(selection.nothing_found(feed.name))
        removed = [
            RemovedFile(row.subdir, row.filename, row.name, row.version, row.build, row.sha256, row.size, LOCAL)
            for row in rows
        ]
        for copy in cached:
            name, version, build = split_filename(copy.filename)
            removed.append(
                RemovedFile(
                    copy.subdir,
                    copy.filename,
                    copy.name or name,
                    version,
                    build,
                    copy.sha256,
                    copy.size,
                    connector_names[copy.connector_id],
                )
            )
        package_store.delete_files(session=session, ids=[row.id for row in rows])
        for copy in cached:
            package_store.delete_cached_copy(
                session=session, connector_id=copy.connector_id, subdir=copy.subdir, filename=copy.filename
            )
        # Every feed proxying a connector listed the copy (kept after an upstream removal): all rebuild.
        touched = {(feed.id, feed.name, row.subdir) for row in rows}
        sharing = package_store.feeds_using_connectors(
            session=session, connector_ids=sorted({copy.connector_id for copy in cached})
        )
        for copy in cached:
            touched.update((fid, fname, copy.subdir) for fid, fname, cid in sharing if cid == copy.connector_id)
        for feed_id, _, subdir in sorted(touched):
            package_store.bump_revision(session=session, feed_id=feed_id, subdir=subdir, removal=True)
    for feed_to_forget in sorted({fname for _, fname, _ in touched}):
        services.lookups.forget_feed(feed_to_forget)
    removed = _with_upstream_listing(services, feed, removed)
    sizes = {f.sha256: f.size for f in removed}
    freed = [sha256 for sha256 in sorted(sizes) if _delete_blob_if_unused(services, sha256)]
    removal = Removal(feed.name, removed_by, removed, freed, sum(sizes[sha256] for sha256 in freed))
    _log(removal)
    return removal


def _with_upstream_listing(services: Services, feed: FeedRef, removed: list[RemovedFile]) -> list[RemovedFile]:
    """Mark the files an upstream of the feed still lists (as far as this process knows, no request)."""
    if not feed.connectors:
        return removed
    listed: dict[str, set[str]] = {}
    for subdir in sorted({f.subdir for f in removed}):
        views = services.repodata.upstream_views(feed.connectors, subdir, refresh=False)
        listed[subdir] = {
            f.filename
            for f in removed
            if f.subdir == subdir
            and any(view.snapshot is not None and f.filename in view.snapshot.records for _, view in views)
        }
    return [replace(f, still_listed_from_upstream=f.filename in listed[f.subdir]) for f in removed]


def _delete_blob_if_unused(services: Services, sha256: str) -> bool:
    """Delete the blob unless a row (any feed's file, any connector's cached copy) still uses it."""
    with services.locks.held(blob_lock_name(sha256)):
        if not services.blobs.exists(sha256):
            return False
        delete_unused_locked(services, sha256)
        return not services.blobs.exists(sha256)


def _log(removal: Removal) -> None:
    for f in removal.files:
        log.info(
            "%s removed %s/%s (%s) from feed %s",
            removal.removed_by,
            f.subdir,
            f.filename,
            "uploaded file" if f.origin == LOCAL else f"cached copy from connector {f.origin}",
            removal.feed,
            extra={
                "fields": {
                    "event": "package_file_removed",
                    "feed": removal.feed,
                    "removed_by": removal.removed_by,
                    "subdir": f.subdir,
                    "filename": f.filename,
                    "sha256": f.sha256,
                    "origin": f.origin,
                }
            },
        )
    log.info(
        "%s removed %d file(s) from feed %s; %d blob(s) freed (%d bytes)",
        removal.removed_by,
        len(removal.files),
        removal.feed,
        len(removal.blobs_freed),
        removal.bytes_freed,
    )
