"""A package file held by a store the server cannot send from (S3-compatible): answered with a
``302`` to a short-lived presigned URL where the deployment opted in (``CONDAGATE_S3_REDIRECT``),
otherwise streamed from the store -- with the same ETag, Last-Modified, 304, HEAD and single
``Range`` answers a local file gets from ``FileResponse``. Where they differ, this follows RFC 9110's
"may ignore": several ranges, a malformed ``Range`` and a ``Range`` on HEAD get the whole file (200),
where Starlette answers ``multipart/byteranges``, 400 and 206."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from fastapi import Request, Response
from starlette.concurrency import iterate_in_threadpool
from starlette.responses import RedirectResponse, StreamingResponse

from condagate.errors import CondagateError, PackageNotFound, RangeNotSatisfiable
from condagate.services.context import Services
from condagate.store.blobs import BlobReader, StoredBlob
from condagate.web.problems import PROBLEM_CONTENT_TYPE, error_body
from condagate.web.responses import blob_headers, is_not_modified

log = logging.getLogger(__name__)
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def requested_range(
    request: Request, etag: str, size: int, last_modified: str | None = None
) -> tuple[int, int] | None:
    """(start, end exclusive) of a single satisfiable ``Range``, or None for the whole file. Several
    ranges, or an ``If-Range`` that no longer matches, get the whole file (RFC 9110 allows both). An
    ``If-Range`` matches the ETag, or the Last-Modified date exactly (as Starlette's ``FileResponse``
    answers for a local store)."""
    header = request.headers.get("range")
    if not header or request.method != "GET":
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() not in (etag, last_modified):
        return None
    match = _RANGE_RE.match(header.strip().replace(" ", ""))
    if match is None:
        return None  # several ranges or another unit: the whole file
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = int(last)
        if count == 0:
            raise RangeNotSatisfiable(f"range {header!r} asks for no bytes of a {size}-byte file")
        return max(0, size - count), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"range {header!r} is outside the file ({size} bytes)")
    return start, end


def _chunks(reader: BlobReader, what: str) -> Iterator[bytes]:
    try:
        while chunk := reader.read():
            yield chunk
    except CondagateError as exc:
        # The answer has started: ending it short of its Content-Length is what clients report.
        log.warning("download of %s cut short: %s", what, exc.message)
    finally:
        reader.close()


def stored_blob_response(
    request: Request, services: Services, sha256: str, replaceable: bool, stored: StoredBlob
) -> Response:
    etag, last_modified, headers = blob_headers(sha256, replaceable, stored.mtime)
    if is_not_modified(request, etag, last_modified):
        return Response(status_code=304, headers=headers)
    settings = services.settings
    if request.method == "GET" and settings.presigned_redirects:
        filename = request.url.path.rsplit("/", 1)[-1]
        url = services.blobs.presigned_url(sha256, filename, settings.s3_redirect_seconds)
        if url is not None:
            # The address expires: never cached; the download itself is counted by the route.
            return RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})
    headers["accept-ranges"] = "bytes"
    if request.method == "HEAD":
        headers["content-length"] = str(stored.size)
        return Response(b"", media_type="application/octet-stream", headers=headers)
    try:
        wanted = requested_range(request, etag, stored.size, headers["last-modified"])
    except RangeNotSatisfiable as exc:
        body = error_body(416, exc.code, exc.message)
        return Response(
            body, status_code=416, media_type=PROBLEM_CONTENT_TYPE, headers={"content-range": f"bytes */{stored.size}"}
        )
    start, end = wanted if wanted is not None else (0, stored.size)
    reader = services.blobs.open(sha256, start, end)  # a failing store: StorageUnavailable, a clean 503
    if reader is None:
        raise PackageNotFound(f"the file {sha256[:12]}… was removed meanwhile: try again")
    headers["content-length"] = str(end - start)
    status = 200
    if wanted is not None:
        status = 206
        headers["content-range"] = f"bytes {start}-{end - 1}/{stored.size}"
    chunks = iterate_in_threadpool(_chunks(reader, request.url.path))
    return StreamingResponse(chunks, status_code=status, media_type="application/octet-stream", headers=headers)
