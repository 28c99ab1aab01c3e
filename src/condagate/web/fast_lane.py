"""The channel's fast lane: the common channel GETs and HEADs of a feed answered right after the guard,
without routing, dependency injection, thread-pool hops or a database round trip.

It serves what the channel routes (``web.channel``) last resolved for a feed subdir
(``services.lookups.ready_subdir``), or for one package file a download through the route last
located (``services.lookups.ready_file``), while the host's change signal (``store.change_signal``)
has not moved since (with PostgreSQL, where other hosts write too, the signal also counts their
commits as its listener hears them, and bounds how long an entry is trusted while it cannot vouch).
The decision is the route's own: ``authorize(principal, VIEW, FEED, feed)``, the same answers header
for header (``web.responses``: ``send_encoded``, ``send_shard``, ``send_whole_blob``, sent as raw ASGI
messages; a whole package file with the server's ``pathsend`` extension, or Starlette's
``FileResponse`` on a server without it), the same download counting.
A proxy feed's repodata, shard index and shards are served too, while the subdir's ``UpstreamTerms``
(``services.channel``) hold: every upstream snapshot merged into it is still the one the upstream cache
holds and none is due for revalidation — then the route too would answer these bytes, with no stale
header, without starting a fetch.
Anything else falls through to the routes unchanged, which then refresh what this lane serves: other
methods, query strings (``mirror=1``), Range, ``/t/TOKEN/`` paths, a proxy feed's package files and any
subdir of it whose upstreams are due, pending, stale or revalidated on every request (cache lifetime 0),
feeds with an SCA policy (filtering, warnings, blocked downloads), a refused caller (401/404 come from
the route), and anything not built yet (bz2, shards) or not in the snapshot.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from condagate.conda.records import decode_record
from condagate.errors import CondagateError
from condagate.security.permissions import Permission, Principal, authorize
from condagate.security.permissions import Scope as PermissionScope
from condagate.services.context import Services
from condagate.store.blobs import StoredBlob
from condagate.web.responses import (
    REPODATA_CACHE_CONTROL,
    blob_response,
    send_encoded,
    send_shard,
    send_whole_blob,
    sendable,
)

_REPODATA = {
    "repodata.json": ("json", "application/json"),
    "repodata.json.zst": ("zst", "application/zstd"),
    "repodata.json.bz2": ("bz2", "application/x-bzip2"),
    "current_repodata.json": ("json", "application/json"),
    "current_repodata.json.zst": ("zst", "application/zstd"),
    "current_repodata.json.bz2": ("bz2", "application/x-bzip2"),
}
_SHARD_INDEX = "repodata_shards.msgpack.zst"
_SHARD_SUFFIX = ".msgpack.zst"
_PACKAGE_SUFFIXES = (".conda", ".tar.bz2")
_METHODS = frozenset({"GET", "HEAD"})
_BLOB_PATHS_KEPT = 10_000


class FastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._services: Services | None = None
        self._blob_paths: dict[str, Path | None] = {}  # sha256 -> its blob's path (files found by ready_file)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _METHODS
            or scope["query_string"]
            or not scope["path"].startswith("/conda/")
        ):
            await self.app(scope, receive, send)
            return
        services = self._services
        if services is None:
            services = self._services = scope["app"].state.services
        if services.settings.fast_lane == "off" or not await self._answer(services, scope, receive, send):
            await self.app(scope, receive, send)

    async def _answer(self, services: Services, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer and return True, or return False having sent nothing."""
        parts = scope["path"].split("/")  # "", "conda", feed, subdir, file[, shard]
        if len(parts) not in (5, 6) or not parts[2] or not parts[3] or not parts[-1]:
            return False
        if len(parts) == 6 and parts[4] != "shards":
            return False
        feed, subdir, name = parts[2], parts[3], parts[-1]
        for header, _ in scope["headers"]:
            if header == b"range":
                return False
        principal: Principal | None = scope.get("state", {}).get("principal")
        if principal is None:
            return False
        try:
            authorize(principal, Permission.VIEW, PermissionScope.FEED, feed)  # as the route's Requires
        except CondagateError:
            return False  # the route answers the refusal (401, or 404 like a missing feed)
        mark = services.changes.value()
        ready = services.lookups.ready_subdir(feed, subdir, mark)
        package = len(parts) == 5 and name.endswith(_PACKAGE_SUFFIXES)
        if ready is None:
            if not package:
                return False
            # Not resolved by a repodata request since the last change: a download through the route
            # may have located this very file (services.channel._locate_package).
            found = services.lookups.ready_file(feed, subdir, name, mark)
            if found is None or not _plain(services, found[0], subdir):
                return False
            feed_ref, sha256 = found
            path = self._blob_paths.get(sha256)
            if path is None:  # a Path costs more to make than the rest of the answer
                if len(self._blob_paths) >= _BLOB_PATHS_KEPT:
                    self._blob_paths.clear()
                path = self._blob_paths[sha256] = services.blobs.file_for_sending(sha256)
            if path is None:
                return False  # not a local store: the route streams or redirects
            try:
                stat = os.stat(path)
            except OSError:
                return False  # the route says what is missing
            return await _download(
                services, scope, receive, send, feed_ref.id, subdir, name, principal, path, sha256, stat
            )
        located, files = ready
        if located.feed.connectors:
            # A proxy feed: its repodata, shard index and shards while the route would answer the same
            # without starting a fetch; its package files always through the route (an upstream file
            # needs its verification and caching).
            terms = located.upstream_terms
            if package or terms is None or not terms.hold(services, subdir):
                return False
        if not _policy_free(services, located.feed, subdir):
            return False
        snapshot = located.snapshot
        if package:
            blob = _local_blob(services, snapshot, files, name)
            if blob is None:
                return False
            path, sha256, stat = blob
            return await _download(
                services, scope, receive, send, located.feed.id, subdir, name, principal, path, sha256, stat
            )
        if len(parts) == 6:
            if not name.endswith(_SHARD_SUFFIX):
                return False
            digest_hex = name.removesuffix(_SHARD_SUFFIX)
            body = snapshot.built_shard(digest_hex)
            if body is None:
                return False
            await send_shard(scope, send, digest_hex, body)
        elif name == _SHARD_INDEX:
            index = snapshot.built_shard_index()
            if index is None:
                return False
            await send_encoded(scope, send, index, "application/zstd", REPODATA_CACHE_CONTROL)
        elif name in _REPODATA:
            kind, media_type = _REPODATA[name]
            encoded = snapshot.built(kind)
            if encoded is None or not sendable(encoded):  # a small body not joined yet: the route joins it
                return False
            await send_encoded(scope, send, encoded, media_type, REPODATA_CACHE_CONTROL)
        else:
            return False
        return True


def _plain(services: Services, feed: Any, subdir: str) -> bool:
    """A hosted feed whose answers depend on nothing but its snapshot: no connectors, no SCA policy."""
    return not feed.connectors and _policy_free(services, feed, subdir)


def _policy_free(services: Services, feed: Any, subdir: str) -> bool:
    """No SCA policy that filters, warns or blocks, and no filtered view served of the subdir."""
    policy = feed.policy
    if policy is not None and (policy.active or policy.filters_repodata):
        return False
    return not services.repodata.was_filtered(feed.id, subdir)


async def _download(
    services: Services,
    scope: Scope,
    receive: Receive,
    send: Send,
    feed_id: int,
    subdir: str,
    filename: str,
    principal: Principal,
    path: Path,
    sha256: str,
    stat: os.stat_result,
) -> bool:
    """One of the feed's own files, as the route answers it (a feed's own file is replaceable)."""
    status = await send_whole_blob(scope, send, path, sha256, True, stat, services.settings)
    if status is None:  # a server without pathsend: Starlette's FileResponse reads the file
        stored = StoredBlob(sha256, stat.st_size, stat.st_mtime)
        response = blob_response(Request(scope, receive), sha256, True, stored)
        status = response.status_code
        await response(scope, receive, send)
    if status == 200 and scope["method"] == "GET":
        services.downloads.record(feed_id=feed_id, subdir=subdir, filename=filename, principal=principal.name)
    return True


def _local_blob(services: Services, snapshot: Any, files: dict[str, Any], filename: str) -> Any | None:
    """(path, sha256, stat) of one of the feed's own files listed in the snapshot, or None."""
    found = files.get(filename)
    if found is None:
        raw = snapshot.local_records.get(filename)
        if raw is None:
            return None
        sha256 = decode_record(raw).get("sha256")
        if not isinstance(sha256, str):
            return None
        found = files[filename] = (services.blobs.file_for_sending(sha256), sha256)
    path, sha256 = found
    if path is None:
        return None  # not a local store: the route streams or redirects
    try:
        stat = os.stat(path)
    except OSError:
        return None  # the route says what is missing
    return path, sha256, stat
