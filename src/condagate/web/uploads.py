"""Upload endpoints: condagate's own, and the protocols rattler-build and pixi already speak
(quetz, prefix.dev, Artifactory). Each only adapts its request shape to ``services.upload``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from condagate.conda.subdirs import parse_package_filename, require_known_subdir
from condagate.errors import BadRequest, PayloadTooLarge
from condagate.security.permissions import Permission, Principal
from condagate.services import channel, upload
from condagate.services.context import Services
from condagate.web.auth import requires

router = APIRouter(tags=["upload protocols"])
ADD = Depends(requires(Permission.ADD))
# A multipart body holds the package plus framing and at most _FORM_FIELDS small fields.
_FORM_FIELDS = 16
_FORM_FIELD_BYTES = 16 * 1024
_MULTIPART_SLACK = _FORM_FIELDS * _FORM_FIELD_BYTES


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _result_json(result: upload.UploadResult) -> dict[str, Any]:
    return {
        "feed": result.feed,
        "subdir": result.subdir,
        "filename": result.filename,
        "sha256": result.sha256,
        "md5": result.md5,
        "size": result.size,
        "replaced": result.replaced,
        "unchanged": result.unchanged,
        "url": f"/conda/{result.feed}/{result.subdir}/{result.filename}",
    }


async def accept_upload(
    request: Request,
    principal: Principal,
    *,
    feed: str,
    filename: str,
    chunks: AsyncIterator[bytes] | None = None,
    subdir: str | None = None,
    sha256: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Checks that need no body first (feed, name, size), then stream, then validate and store.

    ``chunks`` is the package when it is one part of a larger body; else the body is the package."""
    services = _services(request)
    parse_package_filename(filename)
    if subdir is not None:
        require_known_subdir(subdir)
    upload.validate_declared_sha256(sha256)
    await run_in_threadpool(channel.resolve_feed, services, feed)
    if chunks is None:
        # Only a raw body's Content-Length is the package's size; receive() checks the real bytes anyway.
        upload.check_declared_size(request.headers.get("content-length"), services.settings.max_upload_bytes)
    incoming = await upload.receive(services, chunks if chunks is not None else request.stream())
    result = await run_in_threadpool(
        lambda: upload.store_upload(
            services,
            feed_name=feed,
            filename=filename,
            incoming=incoming,
            subdir=subdir,
            declared_sha256=sha256,
            force=force,
            may_overwrite=principal.may(Permission.DELETE),
            uploaded_by=principal.name,
        )
    )
    return _result_json(result)


@router.post(
    "/api/feeds/{feed}/upload/{filename}",
    status_code=201,
    tags=["packages"],
    summary="Upload a package file (raw body)",
)
async def api_upload(
    request: Request,
    feed: str,
    filename: str,
    force: bool = False,
    sha256: str | None = None,
    subdir: str | None = None,
    principal: Principal = ADD,
) -> dict[str, Any]:
    return await accept_upload(
        request, principal, feed=feed, filename=filename, sha256=sha256, force=force, subdir=subdir
    )


@router.post(
    "/api/channels/{feed}/upload/{filename}",
    status_code=201,
    summary="quetz upload protocol (rattler-build upload quetz)",
)
async def quetz_upload(
    request: Request,
    feed: str,
    filename: str,
    force: bool = False,
    sha256: str | None = None,
    principal: Principal = ADD,
) -> dict[str, Any]:
    return await accept_upload(request, principal, feed=feed, filename=filename, sha256=sha256, force=force)


@router.post(
    "/api/v1/upload/{feed}",
    status_code=201,
    summary="prefix.dev upload protocol (rattler-build upload prefix, pixi upload)",
)
async def prefix_upload(
    request: Request,
    feed: str,
    force: bool = Query(default=False),
    principal: Principal = ADD,
) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        filename = request.headers.get("x-file-name")
        if not filename:
            raise BadRequest("send the package as multipart/form-data part 'file', or raw with an X-File-Name header")
        return await accept_upload(
            request, principal, feed=feed, filename=filename, sha256=request.headers.get("x-file-sha256"), force=force
        )
    await run_in_threadpool(channel.resolve_feed, _services(request), feed)
    limit = _services(request).settings.max_upload_bytes
    upload.check_declared_size(request.headers.get("content-length"), limit, framing=_MULTIPART_SLACK)
    form = await _parse_multipart(request, limit)
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile) or not part.filename:
            raise BadRequest("the multipart upload has no complete 'file' part with a file name")
        declared = part.headers.get("x-file-sha256")
        return await accept_upload(
            request,
            principal,
            feed=feed,
            filename=part.filename,
            chunks=_read_parts(part),
            sha256=declared,
            force=force,
        )
    finally:
        await form.close()


async def _parse_multipart(request: Request, limit: int) -> FormData:
    """Parse the form while counting its bytes: without a Content-Length, ``request.form()`` would
    spool a body of any size to disk before the upload limit is ever checked."""
    parser = MultiPartParser(
        request.headers,
        _limited(request.stream(), limit + _MULTIPART_SLACK, limit),
        max_files=8,
        max_fields=_FORM_FIELDS,
        max_part_size=_FORM_FIELD_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart/form-data body: {exc.message}") from exc


async def _limited(chunks: AsyncIterator[bytes], limit: int, advertised: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"the upload exceeds this server's limit of {advertised} bytes")
        yield chunk


async def _read_parts(part: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await part.read(1024 * 1024):
        yield chunk


async def artifactory_upload(
    request: Request, feed: str, subdir: str, filename: str, principal: Principal = ADD
) -> dict[str, Any]:
    """Artifactory upload protocol: ``PUT /conda/FEED/SUBDIR/FILENAME`` (rattler-build upload artifactory)."""
    force = request.query_params.get("force", "").lower() in ("1", "true", "yes")
    return await accept_upload(
        request,
        principal,
        feed=feed,
        filename=filename,
        subdir=subdir,
        force=force,
        sha256=request.headers.get("x-checksum-sha256"),
    )
