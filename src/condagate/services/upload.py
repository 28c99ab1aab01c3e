"""Upload: a streamed body becomes a validated package file in a feed, or nothing at all."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
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
from condagate.services.blob_cleanup import blob_lock_name, delete_if_unused, delete_unused_locked
from condagate.services.context import Services
from condagate.store import feeds as feed_store
from condagate.store import packages as package_store
from condagate.store.blobs import IncomingBlob
from condagate.store.locks import held
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
    """Validate ``incoming`` and add it to the feed; on any failure nothing is kept."""
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
            md5=incoming.md5.hexdigest(),
            size=incoming.size,
            uploaded_at_ms=int(time.time() * 1000),
        )
        package_subdir = metadata.subdir
        with services.db.read() as session:
            feed = feed_store.get_feed(session=session, name=feed_name)
            present = package_store.find_file(
                session=session, feed_id=feed.id, subdir=package_subdir, filename=filename
            )
            if present is not None and present.sha256 == sha256:
                incoming.discard()
                return UploadResult(
                    feed_name, filename, package_subdir, sha256, present.md5, present.size, False, record, True
                )
            _refuse_existing(present, filename, force, may_overwrite)
        with held(services.locks_dir, blob_lock_name(sha256)):
            blob_is_new = services.blobs.commit(incoming)
            try:
                with services.db.write() as session:
                    existing = package_store.find_file(
                        session=session, feed_id=feed.id, subdir=package_subdir, filename=filename
                    )
                    _refuse_existing(existing, filename, force, may_overwrite)
                    replaced_sha256 = existing.sha256 if existing is not None else None
                    if existing is not None:
                        package_store.delete_file(session=session, row=existing)
                    revision = package_store.bump_revision(session=session, feed_id=feed.id, subdir=package_subdir)
                    session.add(
                        PackageFile(
                            feed_id=feed.id,
                            subdir=package_subdir,
                            filename=filename,
                            name=metadata.index["name"],
                            version=metadata.index["version"],
                            build=metadata.index["build"],
                            sha256=sha256,
                            md5=record["md5"],
                            size=incoming.size,
                            record=encode_record(record).decode(),
                            about=json.dumps(about_summary(metadata), sort_keys=True),
                            revision=revision,
                            uploaded_at=datetime.now(UTC),
                            uploaded_by=uploaded_by,
                        )
                    )
            except BaseException:
                if blob_is_new:
                    delete_unused_locked(services, sha256)
                raise
    except BaseException:
        incoming.discard()
        raise
    services.lookups.forget_feed(feed_name)
    if replaced_sha256 is not None and replaced_sha256 != sha256:
        delete_if_unused(services, replaced_sha256)
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
        replaced=existing is not None,
        record=record,
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
