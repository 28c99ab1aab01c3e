"""Serving pre-encoded bytes and blobs with ETag, Last-Modified, 304 and HEAD."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

from fastapi import Request, Response
from starlette.responses import FileResponse, StreamingResponse

from condagate.errors import CondagateError
from condagate.services.repodata_cache import Encoded

log = logging.getLogger(__name__)

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
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        return _etag_matches(if_none_match, etag)
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since and last_modified is not None:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        return last_modified.replace(microsecond=0) <= since
    return False


def encoded_response(request: Request, encoded: Encoded, media_type: str, cache_control: str) -> Response:
    headers = {
        "etag": encoded.etag,
        "last-modified": http_date(encoded.last_modified),
        "cache-control": cache_control,
    }
    if is_not_modified(request, encoded.etag, encoded.last_modified):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["content-length"] = str(len(encoded.body))
        return Response(content=b"", media_type=media_type, headers=headers)
    return Response(content=encoded.body, media_type=media_type, headers=headers)


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


def blob_response(
    request: Request,
    path: Path,
    sha256: str,
    replaceable: bool = False,
    stat: os.stat_result | None = None,
    blobs_root: Path | None = None,
) -> Response:
    """A package file: its sha256 is its ETag; Range and HEAD are handled by ``FileResponse``.

    Behind nginx (``accel_redirect`` set, see the README), the answer names the blob instead of
    sending it: ``X-Accel-Redirect`` (and/or the ``sendfile_header``) with its path under the blob
    folder; the front server sends the bytes (Range included) from an internal location."""
    etag = f'"{sha256}"'
    stat = stat or path.stat()
    last_modified = datetime.fromtimestamp(stat.st_mtime, UTC)
    cache_control = REVALIDATE_CACHE_CONTROL if replaceable else IMMUTABLE_CACHE_CONTROL
    headers = {"etag": etag, "cache-control": cache_control, "last-modified": http_date(last_modified)}
    if is_not_modified(request, etag, last_modified):
        return Response(status_code=304, headers=headers)
    settings = request.app.state.services.settings
    if (settings.accel_redirect or settings.sendfile_header) and blobs_root is not None:
        relative = path.relative_to(blobs_root).as_posix()
        if settings.accel_redirect:
            headers["x-accel-redirect"] = settings.accel_redirect.rstrip("/") + "/" + relative
        if settings.sendfile_header:
            headers[settings.sendfile_header.lower()] = str(path.absolute())  # a relative DATA_DIR too
        return Response(b"", media_type="application/octet-stream", headers=headers)
    return FileResponse(path, media_type="application/octet-stream", headers=headers, stat_result=stat)


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
