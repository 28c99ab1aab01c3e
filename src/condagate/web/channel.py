"""The conda channel protocol: repodata variants, shards, channeldata and package files.

A feed's SCA policy applies here (``services.sca_filter``, ``services.sca``): its repodata, shards and
channeldata leave out the records it blocks when the feed hides them, and every package download
(GET and HEAD, hosted, cached or relayed from the upstream, mirroring included) of a blocked file
answers 403 naming the advisory or license rule; a warned one is served with an
``X-Condagate-Warning`` header.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.types import Receive, Scope, Send

from condagate import telemetry
from condagate.errors import NotFound, PackageNotFound
from condagate.security.permissions import Permission, Principal
from condagate.services import channel, sca, sca_filter
from condagate.services.context import Services
from condagate.services.encoded_files import EncodedFiles, WriteFailed
from condagate.services.filtered_repodata import Served
from condagate.services.proxy_download import open_upstream
from condagate.services.subdir_snapshot import Encoded
from condagate.web.auth import requires
from condagate.web.responses import (
    IMMUTABLE_CACHE_CONTROL,
    JOIN_BELOW,
    REPODATA_CACHE_CONTROL,
    blob_response,
    encoded_headers,
    encoded_response,
    is_not_modified,
    relayed_download,
    shard_response,
)
from condagate.web.uploads import artifactory_upload
from condagate.web.upstream_wait import wait_for

log = logging.getLogger(__name__)
router = APIRouter(tags=["channel"])
VIEW = [Depends(requires(Permission.VIEW))]
GET_HEAD = ["GET", "HEAD"]
STALE_HEADER = "X-Condagate-Stale"

_REPODATA_FILES = {
    "repodata.json": ("json", "application/json"),
    "repodata.json.zst": ("zst", "application/zstd"),
    "repodata.json.bz2": ("bz2", "application/x-bzip2"),
    # The full repodata is a correct current_repodata (the protocol allows it) and costs no extra encoding.
    "current_repodata.json": ("json", "application/json"),
    "current_repodata.json.zst": ("zst", "application/zstd"),
    "current_repodata.json.bz2": ("bz2", "application/x-bzip2"),
}


class ChunksResponse(Response):
    """A body sent as the chunks it is kept in (one ASGI message each), with its exact length."""

    def __init__(self, chunks: Sequence[bytes], media_type: str, headers: dict[str, str]) -> None:
        self._chunks = chunks
        super().__init__(b"", media_type=media_type, headers={**headers, "content-length": str(sum(map(len, chunks)))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self._chunks) - 1
        for index, chunk in enumerate(self._chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < last})
        if last < 0:
            await send({"type": "http.response.body", "body": b""})


async def repodata_response(
    request: Request, encoded: Encoded, media_type: str, files: EncodedFiles, located: channel.FeedSubdir
) -> Response:
    """``encoded_response`` for repodata that may be kept in chunks (``Encoded.of_chunks``), or only as
    this host's file (``Encoded.deferred``: a large subdir's JSON, sent with ``pathsend``)."""
    if request.method == "HEAD" or is_not_modified(request, encoded.etag, encoded.last_modified):
        return encoded_response(request, encoded, media_type, REPODATA_CACHE_CONTROL)  # no body needed
    headers = encoded_headers(encoded, REPODATA_CACHE_CONTROL)
    if encoded.is_deferred():
        try:
            path, stat = await run_in_threadpool(files.path, encoded, located.feed.id, located.snapshot.subdir)
        except OSError as exc:  # a full disk, a folder that is not one: produced while sent, all the same
            if not isinstance(exc, WriteFailed):  # logged once, not for every request while it lasts
                where = f"{located.feed.name}/{located.snapshot.subdir}"
                log.warning("could not write the JSON of %s to %s: %s", where, files.folder, exc)
            return StreamingResponse(
                iterate_in_threadpool(iter(encoded.iter_chunks())),
                media_type=media_type,
                headers={**headers, "content-length": str(encoded.size)},
            )
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)
    if not encoded.joined() and encoded.size < JOIN_BELOW:
        await run_in_threadpool(lambda: encoded.body)
    if encoded.joined():
        return encoded_response(request, encoded, media_type, REPODATA_CACHE_CONTROL)
    return ChunksResponse(encoded.chunks, media_type, headers)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _located(services: Services, feed: str, subdir: str) -> channel.FeedSubdir:
    """The feed subdir with whatever its upstreams have; a first fetch is waited for (bounded)."""
    located = await run_in_threadpool(channel.feed_subdir, services, feed, subdir)
    if located.pending:
        await wait_for(located.pending)
        located = await run_in_threadpool(lambda: channel.feed_subdir(services, feed, subdir, refresh=False))
    located.require_data()
    return located


async def _served(services: Services, located: channel.FeedSubdir) -> Served:
    """The subdir as the feed serves it: less what its SCA policy hides (no extra work without one)."""
    if not located.feed.sca.filters_repodata and not services.repodata.was_filtered(
        located.feed.id, located.snapshot.subdir
    ):
        return located.snapshot
    return await run_in_threadpool(sca_filter.served_subdir, services, located)


def _with_stale_notice(request: Request, response: Response, located: channel.FeedSubdir) -> Response:
    principal: Principal = request.state.principal
    notice = located.stale_notice if principal.may(Permission.ADMIN) else located.public_stale_notice
    if notice:
        # Served from the last good copy: say so, so that clients and operators can tell.
        printable = "".join(c if " " <= c <= "~" else " " for c in notice)  # upstream text: no CR/LF, ASCII
        response.headers[STALE_HEADER] = printable[:1000]
    return response


@router.api_route("/conda/{feed}/", methods=GET_HEAD, dependencies=VIEW, response_model=None)
async def channel_index(request: Request, feed: str) -> Response | dict[str, str]:
    """The channel's own URL: a browser goes to the feed's page; other clients get where things are."""
    ref = await run_in_threadpool(channel.resolve_feed, _services(request), feed)
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"/feeds/{ref.name}", status_code=303)
    channel_url = str(request.base_url).rstrip("/") + f"/conda/{ref.name}"
    return {
        "feed": ref.name,
        "channel_url": channel_url,
        "conda_config": f"conda config --add channels {channel_url}",
        "repodata": channel_url + "/SUBDIR/repodata.json",
    }


@router.api_route("/conda/{feed}/channeldata.json", methods=GET_HEAD, dependencies=VIEW)
async def channeldata(request: Request, feed: str) -> Response:
    encoded = await run_in_threadpool(sca_filter.served_channeldata, _services(request), feed)
    return encoded_response(request, encoded, "application/json", REPODATA_CACHE_CONTROL)


@router.api_route("/conda/{feed}/notices.json", methods=GET_HEAD, dependencies=VIEW)
async def notices(request: Request, feed: str) -> Response:
    await run_in_threadpool(channel.resolve_feed, _services(request), feed)
    raise NotFound(f"feed {feed!r} publishes no notices")


@router.api_route("/conda/{feed}/{subdir}/repodata_shards.msgpack.zst", methods=GET_HEAD, dependencies=VIEW)
async def shard_index(request: Request, feed: str, subdir: str) -> Response:
    services = _services(request)
    located = await _located(services, feed, subdir)
    served = await _served(services, located)
    encoded = await run_in_threadpool(served.shard_index)
    response = encoded_response(request, encoded, "application/zstd", REPODATA_CACHE_CONTROL)
    return _with_stale_notice(request, response, located)


@router.api_route("/conda/{feed}/{subdir}/shards/{shard_name}", methods=GET_HEAD, dependencies=VIEW)
async def shard(request: Request, feed: str, subdir: str, shard_name: str) -> Response:
    services = _services(request)
    digest_hex = shard_name.removesuffix(".msgpack.zst")

    located = await _located(services, feed, subdir)
    served = await _served(services, located)
    body = await run_in_threadpool(services.repodata.shard, located.feed.id, served, subdir, digest_hex)
    if body is None or not shard_name.endswith(".msgpack.zst"):
        raise NotFound(f"no shard {shard_name!r} in {feed}/{subdir}")
    return shard_response(request, digest_hex, body)


@router.api_route("/conda/{feed}/{subdir}/{filename}", methods=GET_HEAD, dependencies=VIEW)
async def subdir_file(request: Request, feed: str, subdir: str, filename: str) -> Response:
    services = _services(request)
    variant = _REPODATA_FILES.get(filename)
    if variant is not None:
        located = await _located(services, feed, subdir)
        kind, media_type = variant
        served = await _served(services, located)
        encoded = served.json if kind == "json" else served.zst if kind == "zst" else None
        if encoded is None:
            encoded = await run_in_threadpool(served.bz2)
        response = await repodata_response(request, encoded, media_type, services.encoded_files, located)
        return _with_stale_notice(request, response, located)
    try:
        found = await run_in_threadpool(channel.locate_package, services, feed, subdir, filename)
    except PackageNotFound:
        # Perhaps listed by an upstream whose subdir this process has not fetched yet: fetch, then look again.
        located = await _located(services, feed, subdir)
        if located.snapshot.record(filename) is None:
            raise
        found = await run_in_threadpool(channel.locate_package, services, feed, subdir, filename)
    warning: sca.ScaVerdict | None = None
    if found.policy is not None and found.policy.active:  # a blocked file: 403 before any byte or fetch
        warning = await run_in_threadpool(sca.check_download, services, found)
    warned = {sca.WARNING_HEADER: warning.warning(f"{subdir}/{filename}")} if warning is not None else {}
    if request.method == "GET" and isinstance(found, channel.PackageBlob) and not found.replaceable:
        telemetry.proxy_cache("hit")  # an upstream file, served from the proxy cache
    if isinstance(found, channel.UpstreamPackage):
        if request.method == "HEAD":
            head = _upstream_head(found)
            head.headers.update(warned)
            return head
        # Mirroring (condagate mirror) finishes a download whose client leaves; for anyone else a
        # download nobody waits for stops. Only callers who may add to the feed can ask for that.
        mirroring = bool(request.query_params.get("mirror"))
        keep_going = mirroring and request.state.principal.may(Permission.ADD, feed)
        found_or_stream = await open_upstream(services, found, keep_going=keep_going)
        if not isinstance(found_or_stream, channel.PackageBlob):
            if not request.query_params.get("mirror"):
                services.downloads.record(
                    feed_id=found.feed_id, subdir=subdir, filename=filename, principal=request.state.principal.name
                )
            return relayed_download(
                found_or_stream.body(),
                f"{feed}/{subdir}/{filename}",
                found_or_stream.size,
                {"cache-control": IMMUTABLE_CACHE_CONTROL, **warned},
            )
        found = found_or_stream
    response = blob_response(request, found.sha256, found.replaceable, found.stored)
    response.headers.update(warned)
    if (
        request.method == "GET"
        and response.status_code in (200, 302)  # 302: a presigned redirect to the object store
        and _is_whole_download(request)
        and not request.query_params.get("mirror")
    ):
        services.downloads.record(
            feed_id=found.feed_id, subdir=subdir, filename=filename, principal=request.state.principal.name
        )
    return response


def _upstream_head(item: channel.UpstreamPackage) -> Response:
    headers = {"cache-control": IMMUTABLE_CACHE_CONTROL}
    if isinstance(item.record.get("size"), int):
        headers["content-length"] = str(item.record["size"])
    if isinstance(item.record.get("sha256"), str):
        headers["etag"] = f'"{item.record["sha256"]}"'
    return Response(b"", media_type="application/octet-stream", headers=headers)


def _is_whole_download(request: Request) -> bool:
    """A resumed download (Range not starting at 0) is the same download, counted once."""
    requested = request.headers.get("range", "")
    return not requested or requested.replace(" ", "").startswith("bytes=0-")


router.add_api_route(
    "/conda/{feed}/{subdir}/{filename}",
    artifactory_upload,
    methods=["PUT"],
    status_code=201,
    tags=["upload protocols"],
    summary="Artifactory upload protocol (rattler-build upload artifactory)",
)
