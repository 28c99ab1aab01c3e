"""Upload: a streamed body becomes a validated package file in a feed (through ``services.publish``),
or nothing at all."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from anyio.to_thread import run_sync as run_in_threadpool

from condagate.conda.package import read_package
from condagate.conda.records import about_summary, build_record, encode_record
from condagate.conda.subdirs import parse_package_filename, require_known_subdir
from condagate.errors import (
    BadRequest,
    ChecksumMismatch,
    InvalidPackage,
    PackageExists,
    PayloadTooLarge,
    PermissionDenied,
)
from condagate.services.context import Services
from condagate.services.publish import Candidate, Outcome, publish
from condagate.store import feeds as feed_store
from condagate.store import packages as package_store
from condagate.store.blobs import IncomingBlob
from condagate.store.models import PackageFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadResult:
    feed: str
    filename: str
    subdir: str
    sha256: str
    md5: str
    size: int
    replaced: bool
    record: dict[str, Any]
    unchanged: bool = False  # the same bytes were already there: nothing changed (CI re-runs succeed)


def check_declared_size(content_length: str | None, limit: int, framing: int = 0) -> None:
    """Refuse before reading when the declared body is over ``limit`` plus the ``framing`` around the package."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit + framing:
        raise PayloadTooLarge(f"the upload is {content_length} bytes; this server accepts at most {limit}")


async def receive(services: Services, chunks: AsyncIterator[bytes]) -> IncomingBlob:
    """Stream a body into a temp blob while hashing it; never hold it in memory."""
    limit = services.settings.max_upload_bytes
    incoming = services.blobs.incoming()
    try:
        async for chunk in chunks:
            incoming.write(chunk)
            if incoming.size > limit:
                raise PayloadTooLarge(f"the upload exceeds this server's limit of {limit} bytes")
        if incoming.size == 0:
            raise InvalidPackage("the upload is empty")
        await run_in_threadpool(incoming.finish)  # fsync: not on the event loop
    except BaseException:
        incoming.discard()
        raise
    return incoming


def validate_declared_sha256(declared: str | None) -> str | None:
    """The declared sha256 normalised to lower case, or None when none was declared."""
    if not declared:
        return None
    declared = declared.strip().lower()
    if len(declared) != 64 or any(c not in "0123456789abcdef" for c in declared):
        raise BadRequest(f"the declared sha256 {declared!r} is not 64 hex digits")
    return declared


def store_upload(
    services: Services,
    *,
    feed_name: str,
    filename: str,
    incoming: IncomingBlob,
    subdir: str | None = None,
    declared_sha256: str | None = None,
    force: bool = False,
    may_overwrite: bool = False,
    uploaded_by: str = "",
) -> UploadResult:
    """Validate ``incoming`` and publish it in the feed; on any failure nothing is kept."""
    started = time.perf_counter()
    sha256 = incoming.sha256.hexdigest()
    try:
        parse_package_filename(filename)
        if subdir is not None:
            require_known_subdir(subdir)
        expected = validate_declared_sha256(declared_sha256)
        if expected is not None and expected != sha256:
            raise ChecksumMismatch(f"the upload's sha256 is {sha256}, but {expected} was declared")
        metadata = read_package(incoming.path, filename, expected_subdir=subdir)
        record = build_record(
            metadata,
            sha256=sha256,
            md5=incoming.md5_hex(),
            size=incoming.size,
            uploaded_at_ms=int(time.time() * 1000),
        )
        package_subdir = metadata.subdir
        with services.db.read() as session:
            feed = feed_store.get_feed(session=session, name=feed_name)
            present = package_store.find_file(
                session=session, feed_id=feed.id, subdir=package_subdir, filename=filename
            )
            if present is not None and present.sha256 == sha256 and present.broken_reason is None:
                incoming.discard()
                return UploadResult(
                    feed_name, filename, package_subdir, sha256, present.md5, present.size, False, record, True
                )
            if present is None or present.sha256 != sha256:  # the same bytes as a broken file: restoring it
                _refuse_existing(present, filename, force, may_overwrite)
        candidate = Candidate(
            subdir=package_subdir,
            filename=filename,
            name=metadata.index["name"],
            version=metadata.index["version"],
            build=metadata.index["build"],
            sha256=sha256,
            md5=record["md5"],
            size=incoming.size,
            record=encode_record(record),
            about=json.dumps(about_summary(metadata), sort_keys=True),
            incoming=incoming,
        )
        published = publish(
            services,
            feed_name,
            [candidate],
            actor=uploaded_by,
            action="upload",
            replace=force and may_overwrite,
            exists_hint="; upload with force to replace it",
        ).files[0]
    except BaseException:
        incoming.discard()
        raise
    log.info(
        "stored %s/%s/%s (%d bytes) in %.1f ms",
        feed_name,
        package_subdir,
        filename,
        incoming.size,
        (time.perf_counter() - started) * 1000,
    )
    return UploadResult(
        feed=feed_name,
        filename=filename,
        subdir=package_subdir,
        sha256=sha256,
        md5=record["md5"],
        size=incoming.size,
        replaced=published.outcome == Outcome.REPLACED,
        record=record,
        unchanged=published.outcome == Outcome.UNCHANGED,
    )


def _refuse_existing(existing: PackageFile | None, filename: str, force: bool, may_overwrite: bool) -> None:
    if existing is None:
        return
    if not force:
        raise PackageExists(
            f"{existing.subdir}/{filename} already exists in this feed; upload with force to replace it"
        )
    if not may_overwrite:
        raise PermissionDenied(f"replacing {existing.subdir}/{filename} needs the 'delete' permission")
