"""The channel's fast lane: the common channel GETs of a hosted feed answered right after the guard,
without routing, dependency injection, thread-pool hops or a database round trip.

It serves what the channel routes (``web.channel``) last resolved for a feed subdir
(``services.lookups.ready_subdir``) while the host's change signal (``store.change_signal``) has not
moved since; with PostgreSQL, where other hosts write too, at most ``POSTGRES_MAX_AGE`` seconds after
that resolution. The decision is the route's own: ``authorize(principal, VIEW, FEED, feed)``, the
same response builders (``web.responses``), the same download counting. Anything else falls through
to the routes unchanged, which then refresh what this lane serves: HEAD and other methods, query
strings (``mirror=1``), Range, ``/t/TOKEN/`` paths, feeds with connectors (proxy feeds: pending or
stale upstreams) or an SCA policy (filtering, warnings, blocked downloads), a refused caller (401/404
come from the route), and anything not built yet (bz2, shards) or not in the snapshot.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from condagate.conda.records import decode_record
from condagate.errors import CondagateError
from condagate.security.permissions import Permission, Principal, authorize
from condagate.security.permissions import Scope as PermissionScope
from condagate.services.context import Services
from condagate.web.responses import REPODATA_CACHE_CONTROL, blob_response, encoded_response, shard_response

# With PostgreSQL other hosts may write: what this process resolved is trusted this long at most.
POSTGRES_MAX_AGE = 0.1

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


class FastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._services: Services | None = None
        self._max_age: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["query_string"]
            or not scope["path"].startswith("/conda/")
        ):
            await self.app(scope, receive, send)
            return
        services = self._services
        if services is None:
            services = self._services = scope["app"].state.services
            if not services.db.url.startswith("sqlite"):
                self._max_age = POSTGRES_MAX_AGE
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
        ready = services.lookups.ready_subdir(feed, subdir, services.changes.value(), self._max_age)
        if ready is None:
            return False
        located, files = ready
        policy = located.feed.policy
        if located.feed.connectors or (policy is not None and (policy.active or policy.filters_repodata)):
            return False
        if services.repodata.was_filtered(located.feed.id, subdir):
            return False
        snapshot = located.snapshot
        request = Request(scope, receive)
        if len(parts) == 6:
            if not name.endswith(_SHARD_SUFFIX):
                return False
            digest_hex = name.removesuffix(_SHARD_SUFFIX)
            body = snapshot.built_shard(digest_hex)
            if body is None:
                return False
            response = shard_response(request, digest_hex, body)
        elif name == _SHARD_INDEX:
            index = snapshot.built_shard_index()
            if index is None:
                return False
            response = encoded_response(request, index, "application/zstd", REPODATA_CACHE_CONTROL)
        elif name in _REPODATA:
            kind, media_type = _REPODATA[name]
            encoded = snapshot.json if kind == "json" else snapshot.zst if kind == "zst" else snapshot.built_bz2()
            if encoded is None:
                return False
            response = encoded_response(request, encoded, media_type, REPODATA_CACHE_CONTROL)
        elif name.endswith(_PACKAGE_SUFFIXES):
            blob = _local_blob(services, snapshot, files, name)
            if blob is None:
                return False
            path, sha256, stat = blob
            response = blob_response(request, path, sha256, True, stat=stat, blobs_root=services.blobs.root)
            if response.status_code == 200:
                services.downloads.record(
                    feed_id=located.feed.id, subdir=subdir, filename=name, principal=principal.name
                )
        else:
            return False
        await response(scope, receive, send)
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
        found = files[filename] = (services.blobs.local_path(sha256), sha256)
    path, sha256 = found
    try:
        stat = os.stat(path)
    except OSError:
        return None  # the route says what is missing
    return path, sha256, stat
