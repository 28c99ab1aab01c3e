"""Promotion, the approval flow: package files go from a source feed into one of its target feeds.

``promote`` plans the request (``services.promotion_plan``), fetches and verifies the files the source
lists only from its upstream, then publishes every file in one transaction through
``services.publish`` -- rows that point at the existing blob, never a copy of the bytes -- with one
history row per file. ``revoke`` removes a promoted version from the target and records that too.
Pairs and links: ``services.promotion_links``; the history: ``services.promotion_history``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from anyio.to_thread import run_sync as run_in_threadpool
from sqlalchemy.orm import Session

from condagate.conda.package import read_package
from condagate.conda.records import about_summary, encode_record
from condagate.errors import NotPromoted, PackageExists, PackageNotFound, PromotionConflict, UpstreamError
from condagate.services import channel, package_removal, proxy_download
from condagate.services.channel import PackageBlob, UpstreamPackage
from condagate.services.context import Services
from condagate.services.policy import PublishPolicy
from condagate.services.promotion_plan import LocatedFile, PlannedFile, PromotionPlan, PromotionRequest, plan
from condagate.services.publish import Candidate, Outcome, Published, publish
from condagate.store import feeds as feed_store
from condagate.store import promotions as promotion_store
from condagate.store.models import Promotion

log = logging.getLogger(__name__)
PROMOTE, REVOKE = "promote", "revoke"


@dataclass(frozen=True)
class PromotionResult:
    request_id: str
    source: str
    target: str
    actor: str
    comment: str
    at: datetime
    promoted: list[PlannedFile]
    already: list[PlannedFile]  # the target had these files (same name, same bytes) already
    fetched: list[PlannedFile] = field(default_factory=list)  # fetched from the upstream and verified first


async def promote(
    services: Services,
    *,
    source: str,
    target: str,
    request: PromotionRequest,
    actor: str,
    comment: str = "",
    policy: PublishPolicy | None = None,
) -> PromotionResult:
    """Promote ``request`` from ``source`` into ``target``: all files or none. Runs on the event loop
    (upstream files are fetched with the server's async client); the blocking parts in threads.
    ``policy``: the target's policy step (default: the target feed's own, ``services.policy``)."""
    planned = await run_in_threadpool(lambda: plan(services, source=source, target=target, request=request))
    planned.require_complete()
    fetched = []
    for item in planned.to_fetch:
        located = planned.located[item.key]
        assert located.upstream is not None
        blob = await _fetch(services, located.upstream)
        planned.located[item.key] = replace(located, blob=blob, upstream=None)
        fetched.append(item)
    result = await run_in_threadpool(lambda: _publish_plan(services, planned, actor, comment, policy))
    return replace(result, fetched=fetched)


async def _fetch(services: Services, item: UpstreamPackage) -> PackageBlob:
    """Download, verify against the source's record and cache an upstream file (as a proxy download does)."""
    opened = await proxy_download.open_upstream(services, item, keep_going=True)
    if isinstance(opened, PackageBlob):
        return opened
    async for _ in opened.body():  # a large file: streamed to the cache, verified at the end
        pass
    blob = await run_in_threadpool(
        channel.cached_blob,
        services,
        item.connector.id,
        item.feed_id,
        item.subdir,
        item.filename,
        item.record.get("sha256"),
    )
    if blob is None:
        raise UpstreamError(f"{item.subdir}/{item.filename} was fetched but is no longer cached")
    return blob


def _candidate(services: Services, key: tuple[str, str], located: LocatedFile) -> Candidate:
    subdir, filename = key
    if located.local is not None:
        row = located.local
        return Candidate(
            subdir=subdir,
            filename=filename,
            name=row["name"],
            version=row["version"],
            build=row["build"],
            sha256=row["sha256"],
            md5=row["md5"],
            size=int(row["size"]),
            record=str(row["record"]).encode(),
            about=str(row["about"]),
        )
    assert located.blob is not None, f"{subdir}/{filename} was not fetched"
    sha256 = located.blob.sha256
    record = dict(located.record)
    try:
        with services.blobs.readable_copy(sha256) as path:
            # Validates the archive (a target holds only packages an upload would accept); reads about.json.
            metadata = read_package(path, filename, expected_subdir=subdir)
            record["size"] = path.stat().st_size
            if not isinstance(record.get("md5"), str) or not record["md5"]:
                record["md5"] = _md5_of(path)
    except FileNotFoundError:
        raise PackageNotFound(f"{subdir}/{filename}: its cached file was removed meanwhile; try again") from None
    record["sha256"] = sha256
    return Candidate(
        subdir=subdir,
        filename=filename,
        name=str(metadata.index["name"]),
        version=str(metadata.index["version"]),
        build=str(metadata.index["build"]),
        sha256=sha256,
        md5=str(record["md5"]).lower(),
        size=int(record["size"]),
        record=encode_record(record),
        about=json.dumps(about_summary(metadata), sort_keys=True),
    )


def _md5_of(path: Any) -> str:
    digest = hashlib.md5()  # noqa: S324 - the md5 conda clients expect in a record, not security
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _publish_plan(
    services: Services, planned: PromotionPlan, actor: str, comment: str, policy: PublishPolicy | None
) -> PromotionResult:
    request_id = uuid.uuid4().hex
    at = datetime.now(UTC)
    by_key = {f.key: f for f in planned.add}
    candidates = [_candidate(services, key, planned.located[key]) for key in sorted(by_key)]

    def record_history(session: Session, published: list[Published]) -> None:
        promotion_store.add_entries(
            session=session,
            entries=[
                _entry(request_id, PROMOTE, planned.source, planned.target, p.candidate, actor, comment, at, p)
                for p in published
                if p.outcome != Outcome.UNCHANGED
            ],
        )

    try:
        result = publish(
            services,
            planned.target,
            candidates,
            actor=actor,
            action=PROMOTE,
            policy=policy,
            in_transaction=record_history,
        )
    except PackageExists as exc:  # the target got another file of that name meanwhile
        raise PromotionConflict(f"nothing was promoted: {exc.message}") from None
    promoted = [by_key[p.candidate.key] for p in result.changed]
    raced = [by_key[p.candidate.key] for p in result.files if p.outcome == Outcome.UNCHANGED]
    log.info(
        "%s promoted %d file(s) from %s to %s (request %s)",
        actor or "anonymous",
        len(promoted),
        planned.source,
        planned.target,
        request_id,
    )
    return PromotionResult(
        request_id, planned.source, planned.target, actor, comment, at, promoted, planned.present + raced
    )


def _entry(
    request_id: str,
    action: str,
    source: str,
    target: str,
    candidate: Candidate | PlannedFile | package_removal.RemovedFile,
    actor: str,
    comment: str,
    at: datetime,
    published: Published | None = None,
) -> Promotion:
    assessment = published.decision.assessment() if published is not None else {}
    return Promotion(
        request_id=request_id,
        action=action,
        source_feed=source,
        target_feed=target,
        subdir=candidate.subdir,
        filename=candidate.filename,
        name=candidate.name,
        version=candidate.version,
        build=candidate.build,
        sha256=candidate.sha256,
        actor=actor,
        comment=comment,
        at=at,
        assessment=json.dumps(assessment, sort_keys=True),
    )


@dataclass(frozen=True)
class RevocationResult:
    request_id: str
    target: str
    name: str
    version: str
    actor: str
    comment: str
    at: datetime
    files: list[package_removal.RemovedFile]


def revoke(
    services: Services,
    *,
    target: str,
    name: str,
    version: str,
    subdir: str | None = None,
    actor: str,
    comment: str = "",
) -> RevocationResult:
    """Remove a promoted version (every build, every subdir or ``subdir``) from ``target``, recorded
    in the history (its source: where the file was last promoted from)."""
    package_removal.validate_package_name(name)
    package_removal.validate_version(version)
    with services.db.read() as session:
        feed_store.get_feed(session=session, name=target)
        if not promotion_store.was_promoted(session=session, target_feed=target, name=name, version=version):
            raise NotPromoted(
                f"version {version} of package {name!r} was never promoted into feed {target!r}: "
                "delete it as a package instead"
            )
    removal = package_removal.remove_version(
        services, feed=target, name=name, version=version, subdir=subdir, removed_by=actor
    )
    request_id, at = uuid.uuid4().hex, datetime.now(UTC)
    with services.db.write() as session:
        sources = promotion_store.last_promotions(
            session=session, target_feed=target, files=[(f.subdir, f.filename) for f in removal.files]
        )
        promotion_store.add_entries(
            session=session,
            entries=[
                _entry(request_id, REVOKE, sources.get((f.subdir, f.filename), ""), target, f, actor, comment, at)
                for f in removal.files
            ],
        )
    log.info("%s revoked %s %s from %s (%d file(s))", actor or "anonymous", name, version, target, len(removal.files))
    return RevocationResult(request_id, target, name, version, actor, comment, at, removal.files)
