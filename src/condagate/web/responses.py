"""Serving pre-encoded bytes and blobs with ETag, Last-Modified, 304 and HEAD."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from weakref import WeakKeyDictionary

from fastapi import Request, Response
from starlette.responses import FileResponse, StreamingResponse
from starlette.types import Scope, Send

from condagate.errors import CondagateError, PackageNotFound
from condagate.services.subdir_snapshot import Encoded
from condagate.settings import Settings
from condagate.store.blobs import StoredBlob
from condagate.web.security_headers import secured

log = logging.getLogger(__name__)
_RawHeaders = list[tuple[bytes, bytes]]

REPODATA_CACHE_CONTROL = "public, max-age=30"
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def _etag_matches(header: str, etag: str) -> bool:
    wanted = etag.removeprefix("W/")
    return any(
        candidate.strip() == "*" or candidate.strip().removeprefix("W/") == wanted for candidate in header.split(",")
    )


def is_not_modified(request: Request, etag: str, last_modified: datetime | None) -> bool:
    headers = request.headers
    return not_modified(headers.get("if-none-match"), headers.get("if-modified-since"), etag, last_modified)


def not_modified(
    if_none_match: str | None, if_modified_since: str | None, etag: str, last_modified: datetime | None
) -> bool:
    """Whether a GET or HEAD with these conditional headers gets a 304 (If-None-Match wins)."""
    if if_none_match is not None:
        return _etag_matches(if_none_match, etag)
    if if_modified_since and last_modified is not None:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        return last_modified.replace(microsecond=0) <= since
    return False


def encoded_headers(encoded: Encoded, cache_control: str) -> dict[str, str]:
    return {
        "etag": encoded.etag,
        "last-modified": http_date(encoded.last_modified),
        "cache-control": cache_control,
    }


def encoded_response(request: Request, encoded: Encoded, media_type: str, cache_control: str) -> Response:
    """The answer to a GET or HEAD of ``encoded`` (its body only for a GET that is not a 304)."""
    headers = encoded_headers(encoded, cache_control)
    if is_not_modified(request, encoded.etag, encoded.last_modified):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["content-length"] = str(encoded.size)
        return Response(content=b"", media_type=media_type, headers=headers)
    return Response(content=encoded.body, media_type=media_type, headers=headers)


def _conditions(scope: Scope) -> tuple[str | None, str | None]:
    """(If-None-Match, If-Modified-Since) of a request, the first of each (as Starlette's Headers.get)."""
    if_none_match = if_modified_since = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if if_none_match is None:
                if_none_match = value.decode("latin-1")
        elif name == b"if-modified-since" and if_modified_since is None:
            if_modified_since = value.decode("latin-1")
    return if_none_match, if_modified_since


# Encoded bytes -> their answers' header lists (304; GET and HEAD) per (media type, cache control),
# for send_encoded: an Encoded is immutable, and its entry goes with it (weak keys).
_ENCODED_HEADERS: WeakKeyDictionary[Encoded, dict[tuple[str, str], tuple[_RawHeaders, _RawHeaders]]] = (
    WeakKeyDictionary()
)


# Encoded bodies below this size are joined once (in a worker thread, by the route) and then sent whole;
# larger ones (a big subdir's JSON blocks, its spliced .zst) are sent as the chunks they are kept in and
# never joined: no second copy of hundreds of MB, no join on every change.
JOIN_BELOW = 8 * 1024 * 1024


def sendable(encoded: Encoded) -> bool:
    """Whether ``send_encoded`` may send it as it is: whole already, or too large ever to be joined (and
    not deferred: the route sends that from this host's file)."""
    return encoded.joined() or (encoded.size >= JOIN_BELOW and not encoded.is_deferred())


async def send_encoded(scope: Scope, send: Send, encoded: Encoded, media_type: str, cache_control: str) -> None:
    """``encoded_response``'s answer (GET, HEAD, 304), header for header, sent without a Response (the
    security headers included, as ``web.bookkeeping`` would add them); a body kept in chunks is sent as
    them, as the route's ``ChunksResponse`` does."""
    by_kind = _ENCODED_HEADERS.get(encoded)
    if by_kind is None:
        by_kind = _ENCODED_HEADERS[encoded] = {}
    found = by_kind.get((media_type, cache_control))
    if found is None:
        common = [
            (b"etag", encoded.etag.encode("latin-1")),
            (b"last-modified", http_date(encoded.last_modified).encode("latin-1")),
            (b"cache-control", cache_control.encode("latin-1")),
        ]
        full = [*common, (b"content-length", str(encoded.size).encode()), (b"content-type", media_type.encode())]
        found = by_kind[(media_type, cache_control)] = (secured(common), secured(full))
    if not_modified(*_conditions(scope), encoded.etag, encoded.last_modified):
        await send({"type": "http.response.start", "status": 304, "headers": list(found[0])})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": list(found[1])})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
    elif encoded.joined():
        await send({"type": "http.response.body", "body": encoded.body})
    else:
        chunks = encoded.chunks
        last = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < last})


_IMMUTABLE = (b"cache-control", IMMUTABLE_CACHE_CONTROL.encode())


# A shard's answers' headers (304; GET and HEAD) by its digest: a shard never changes.
_SHARD_HEADERS: dict[str, tuple[str, _RawHeaders, _RawHeaders]] = {}


async def send_shard(scope: Scope, send: Send, digest_hex: str, body: bytes) -> None:
    """``shard_response``'s answer (GET, HEAD, 304), header for header, sent without a Response (the
    security headers included)."""
    found = _SHARD_HEADERS.get(digest_hex)
    if found is None:
        etag = f'"{digest_hex}"'
        raw_304 = [(b"etag", etag.encode("latin-1")), _IMMUTABLE]
        raw_200 = [*raw_304, (b"content-length", str(len(body)).encode()), (b"content-type", b"application/zstd")]
        if len(_SHARD_HEADERS) > 10_000:  # a bound, not a policy
            _SHARD_HEADERS.clear()
        found = _SHARD_HEADERS[digest_hex] = (etag, secured(raw_304), secured(raw_200))
    etag, raw_304, raw_200 = found
    if not_modified(*_conditions(scope), etag, None):
        await send({"type": "http.response.start", "status": 304, "headers": list(raw_304)})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": list(raw_200)})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


# A feed's own file can be replaced (upload --force): caches may keep it but must ask again (a cheap
# 304, the ETag is the sha256). Upstream files, fixed by their record's checksum, never change.
REVALIDATE_CACHE_CONTROL = "public, no-cache"


def shard_response(request: Request, digest_hex: str, body: bytes) -> Response:
    """A CEP 16 shard: named by its digest, so immutable."""
    etag = f'"{digest_hex}"'
    headers = {"etag": etag, "cache-control": IMMUTABLE_CACHE_CONTROL}
    if is_not_modified(request, etag, None):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["content-length"] = str(len(body))
        return Response(b"", media_type="application/zstd", headers=headers)
    return Response(body, media_type="application/zstd", headers=headers)


def blob_headers(sha256: str, replaceable: bool, mtime: float) -> tuple[str, datetime, dict[str, str]]:
    etag = f'"{sha256}"'
    last_modified = datetime.fromtimestamp(mtime, UTC)
    cache_control = REVALIDATE_CACHE_CONTROL if replaceable else IMMUTABLE_CACHE_CONTROL
    return (
        etag,
        last_modified,
        {"etag": etag, "cache-control": cache_control, "last-modified": http_date(last_modified)},
    )


def _accel_headers(settings: Settings, path: Path, sha256: str) -> dict[str, str]:
    headers = {}
    if settings.accel_redirect:
        relative = f"{sha256[:2]}/{sha256[2:4]}/{sha256}"  # the local store's layout under its folder
        headers["x-accel-redirect"] = settings.accel_redirect.rstrip("/") + "/" + relative
    if settings.sendfile_header:
        headers[settings.sendfile_header.lower()] = str(path.absolute())  # a relative DATA_DIR too
    return headers


def blob_response(request: Request, sha256: str, replaceable: bool, stored: StoredBlob) -> Response:
    """A package file: its sha256 is its ETag; Range and HEAD are handled by ``FileResponse`` (a local
    store) or by ``stored_blob_response`` (an S3 store: streamed, or a presigned redirect).

    Behind nginx (``accel_redirect`` set, see the README), the answer names the blob instead of
    sending it: ``X-Accel-Redirect`` (and/or the ``sendfile_header``) with its path under the blob
    folder; the front server sends the bytes (Range included) from an internal location.
    ``send_whole_blob`` sends the same answers without a Response object (the fast lane)."""
    services = request.app.state.services
    path = services.blobs.file_for_sending(sha256)
    if path is None:
        from condagate.web.stored_blob import stored_blob_response

        return stored_blob_response(request, services, sha256, replaceable, stored)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise PackageNotFound(f"the file {sha256[:12]}… was removed meanwhile: try again") from None
    etag, last_modified, headers = blob_headers(sha256, replaceable, stat.st_mtime)
    if is_not_modified(request, etag, last_modified):
        return Response(status_code=304, headers=headers)
    settings = services.settings
    if settings.accel_redirect or settings.sendfile_header:
        headers.update(_accel_headers(settings, path, sha256))
        return Response(b"", media_type="application/octet-stream", headers=headers)
    return FileResponse(path, media_type="application/octet-stream", headers=headers, stat_result=stat)


_OCTET_STREAM = (b"content-type", b"application/octet-stream")
_ACCEPT_RANGES = (b"accept-ranges", b"bytes")
_PATHSEND = "http.response.pathsend"
# A blob's answers' headers (304; 200) by what they are made of: a download only stats its file.
_BLOB_HEADERS: dict[tuple[object, ...], tuple[Path, str, str, datetime, _RawHeaders, _RawHeaders]] = {}


async def send_whole_blob(
    scope: Scope,
    send: Send,
    path: Path,
    sha256: str,
    replaceable: bool,
    stat: os.stat_result,
    settings: Settings,
) -> int | None:
    """``blob_response``'s answer to a GET or HEAD without ``Range``, header for header, sent straight
    to the server: a GET's bytes with the ``http.response.pathsend`` extension (the server sends the
    file; no Response object, no file handle here). Returns the status sent, or None having sent
    nothing where only ``FileResponse`` can answer (a GET on a server without ``pathsend``)."""
    accel = bool(settings.accel_redirect or settings.sendfile_header)
    key = (
        sha256,
        replaceable,
        stat.st_mtime,
        stat.st_size,
        accel and (settings.accel_redirect, settings.sendfile_header),
    )
    found = _BLOB_HEADERS.get(key)
    if found is None or found[0] != path:
        etag, last_modified, headers = blob_headers(sha256, replaceable, stat.st_mtime)
        raw_304 = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if accel:
            headers.update(_accel_headers(settings, path, sha256))
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            raw_200 = [*raw, (b"content-length", b"0"), _OCTET_STREAM]
        else:
            raw_200 = [*raw_304, _OCTET_STREAM, _ACCEPT_RANGES, (b"content-length", str(stat.st_size).encode())]
        if len(_BLOB_HEADERS) > 10_000:  # a bound, not a policy
            _BLOB_HEADERS.clear()
        found = _BLOB_HEADERS[key] = (path, str(path), etag, last_modified, secured(raw_304), secured(raw_200))
    _, path_text, etag, last_modified, raw_304, raw_200 = found
    if not_modified(*_conditions(scope), etag, last_modified):
        await send({"type": "http.response.start", "status": 304, "headers": list(raw_304)})
        await send({"type": "http.response.body", "body": b""})
        return 304
    head = scope["method"] == "HEAD"
    if accel:
        await send({"type": "http.response.start", "status": 200, "headers": list(raw_200)})
        await send({"type": "http.response.body", "body": b""})
        return 200
    if not head and _PATHSEND not in scope.get("extensions", {}):
        return None
    await send({"type": "http.response.start", "status": 200, "headers": list(raw_200)})
    if head:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": _PATHSEND, "path": path_text})
    return 200


class DownloadCutShort(Exception):
    """Ends a streamed download that has no Content-Length: the server drops the connection."""


def relayed_download(body: AsyncIterator[bytes], what: str, size: int | None, headers: dict[str, str]) -> Response:
    """A download relayed while it arrives. When it fails half-way (the upstream breaks off, or the
    bytes do not match the record) the answer has already started: the one honest signal left is a
    response shorter than its Content-Length, which every client reports as a broken transfer."""
    if size is not None:
        headers = {**headers, "content-length": str(size)}

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        except CondagateError as exc:
            log.warning("download of %s cut short: %s", what, exc.message)
            if size is None:
                raise DownloadCutShort(f"download of {what} cut short") from None

    return StreamingResponse(guarded(), media_type="application/octet-stream", headers=headers)
