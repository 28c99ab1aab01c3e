"""Serving pre-encoded bytes and blobs with ETag, Last-Modified, 304 and HEAD."""

from __future__ import annotations

import logging
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


def blob_response(request: Request, path: Path, sha256: str, replaceable: bool = False) -> Response:
    """A package file: its sha256 is its ETag; Range and HEAD are handled by ``FileResponse``."""
    etag = f'"{sha256}"'
    stat = path.stat()
    last_modified = datetime.fromtimestamp(stat.st_mtime, UTC)
    cache_control = REVALIDATE_CACHE_CONTROL if replaceable else IMMUTABLE_CACHE_CONTROL
    headers = {"etag": etag, "cache-control": cache_control, "last-modified": http_date(last_modified)}
    if is_not_modified(request, etag, last_modified):
        return Response(status_code=304, headers=headers)
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
