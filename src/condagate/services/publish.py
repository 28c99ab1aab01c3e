"""Publishing: the one path by which package files enter a feed (upload, promotion, ...).

Each candidate passes the feed's policy step (``services.policy``); then all candidates are written
in one transaction, all or none: each touched subdir takes a new revision (its row lock orders
concurrent writers), and the feed's per-process lookups are forgotten. A candidate either brings a
temp blob (an upload: committed here) or names a blob already stored (a promotion: the new row points
at it, the bytes are never copied). Blob locks are held from "blob exists" to "row committed", so
that no clean-up deletes a blob a new row is about to use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from condagate.errors import BadRequest, PackageExists, PackageNotFound, PolicyRefused
from condagate.services.blob_cleanup import blob_lock_name, delete_if_unused, delete_unused_locked
from condagate.services.context import Services
from condagate.services.policy import PolicyDecision, PublishPolicy, feed_policy
from condagate.store import feeds as feed_store
from condagate.store import packages as package_store
from condagate.store.blobs import IncomingBlob
from condagate.store.db import WriteConflict
from condagate.store.models import PackageFile

log = logging.getLogger(__name__)

_ATTEMPTS = 3  # a transaction that lost a race on a unique row is tried again: it then sees the winner


@dataclass
class Candidate:
    """A package file about to enter a feed: its identity, checksums, record and where its bytes are."""

    subdir: str
    filename: str
    name: str
    version: str
    build: str
    sha256: str
    md5: str
    size: int
    record: bytes  # the canonical repodata record (``conda.records.encode_record``)
    about: str = "{}"  # JSON of ``conda.records.about_summary``
    # A temp blob to commit (an upload); None: the stored blob ``sha256`` (a promotion), never copied.
    incoming: IncomingBlob | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.subdir, self.filename)


class Outcome(StrEnum):
    ADDED = "added"
    REPLACED = "replaced"  # a file of the same name with other bytes was replaced (upload --force)
    UNCHANGED = "unchanged"  # the feed already had these bytes under this name: nothing changed


@dataclass(frozen=True)
class Published:
    candidate: Candidate
    outcome: Outcome
    decision: PolicyDecision
    replaced_sha256: str | None = None


@dataclass(frozen=True)
class PublishResult:
    feed: str
    files: list[Published] = field(default_factory=list)

    @property
    def changed(self) -> list[Published]:
        return [p for p in self.files if p.outcome != Outcome.UNCHANGED]


# Called inside the publishing transaction with what it wrote: other rows that must land with the
# files or not at all (the promotion history).
InTransaction = Callable[[Session, list[Published]], None]


def publish(
    services: Services,
    feed_name: str,
    candidates: list[Candidate],
    *,
    actor: str,
    action: str = "upload",
    replace: bool = False,
    exists_hint: str = "",
    policy: PublishPolicy | None = None,
    in_transaction: InTransaction | None = None,
) -> PublishResult:
    """Add ``candidates`` to the feed, all or none. A file of the same name and the same bytes is left
    as it is (``unchanged``); with other bytes it is replaced when ``replace``, else refused (409,
    ``exists_hint`` appended to the message). Incoming blobs are discarded on any failure."""
    try:
        candidates = _distinct(candidates)
        policy = policy or feed_policy(services, feed_name)
        decisions = {c.key: _decide(policy, feed_name, c, action) for c in candidates}
        result, replaced = _publish_locked(
            services, feed_name, candidates, decisions, actor, replace, exists_hint, in_transaction
        )
    except BaseException:
        for candidate in candidates:
            if candidate.incoming is not None:
                candidate.incoming.discard()
        raise
    if result.changed:
        services.lookups.forget_feed(feed_name)
    for sha256 in sorted(replaced):
        delete_if_unused(services, sha256)
    for published in result.changed:  # the callers log the request; this is the per-file trail
        c = published.candidate
        log.debug(
            "%s %s %s/%s/%s (%d bytes)",
            actor or "anonymous",
            "replaced" if published.outcome == Outcome.REPLACED else f"published ({action})",
            feed_name,
            c.subdir,
            c.filename,
            c.size,
            extra={
                "fields": {
                    "event": "package_file_published",
                    "feed": feed_name,
                    "action": action,
                    "actor": actor,
                    "subdir": c.subdir,
                    "filename": c.filename,
                    "sha256": c.sha256,
                }
            },
        )
    return result


def _distinct(candidates: list[Candidate]) -> list[Candidate]:
    seen: dict[tuple[str, str], Candidate] = {}
    for candidate in candidates:
        earlier = seen.get(candidate.key)
        if earlier is not None and earlier.sha256 != candidate.sha256:
            raise BadRequest(f"{candidate.subdir}/{candidate.filename} is given twice, with different bytes")
        seen.setdefault(candidate.key, candidate)
    return sorted(seen.values(), key=lambda c: c.key)


def _decide(policy: PublishPolicy, feed_name: str, candidate: Candidate, action: str) -> PolicyDecision:
    decision = policy.check(feed=feed_name, candidate=candidate, action=action)
    if not decision.allowed:
        reason = decision.reason or "refused by the feed's policy"
        raise PolicyRefused(f"{candidate.subdir}/{candidate.filename} may not enter feed {feed_name!r}: {reason}")
    return decision


def _publish_locked(
    services: Services,
    feed_name: str,
    candidates: list[Candidate],
    decisions: dict[tuple[str, str], PolicyDecision],
    actor: str,
    replace: bool,
    exists_hint: str,
    in_transaction: InTransaction | None,
) -> tuple[PublishResult, set[str]]:
    """Hold every candidate's blob lock (in sha256 order: no two publishers wait on each other), put
    the blobs in place, and write the rows; a blob new here is removed again when the rows fail."""
    new_blobs: list[str] = []
    # One holder for them all (on PostgreSQL one connection, however many files).
    with services.locks.held_all(blob_lock_name(c.sha256) for c in candidates):
        try:
            for candidate in candidates:
                if candidate.incoming is not None:
                    if services.blobs.commit(candidate.incoming):
                        new_blobs.append(candidate.sha256)
                elif not services.blobs.exists(candidate.sha256):
                    raise PackageNotFound(
                        f"{candidate.subdir}/{candidate.filename}: its stored file ({candidate.sha256}) is missing"
                    )
            for attempt in range(_ATTEMPTS):
                try:
                    return _write(
                        services, feed_name, candidates, decisions, actor, replace, exists_hint, in_transaction
                    )
                except WriteConflict:
                    if attempt == _ATTEMPTS - 1:
                        raise
                    log.info("publishing into %s raced with another writer; trying again", feed_name)
            raise AssertionError("unreachable")
        except BaseException:
            for sha256 in new_blobs:
                delete_unused_locked(services, sha256)
            raise


def _unchanged(existing: PackageFile | None, candidate: Candidate) -> bool:
    """The feed serves these bytes under this name already (a file marked broken is not served)."""
    return existing is not None and existing.sha256 == candidate.sha256 and existing.broken_reason is None


def _write(
    services: Services,
    feed_name: str,
    candidates: list[Candidate],
    decisions: dict[tuple[str, str], PolicyDecision],
    actor: str,
    replace: bool,
    exists_hint: str,
    in_transaction: InTransaction | None,
) -> tuple[PublishResult, set[str]]:
    published: list[Published] = []
    replaced: set[str] = set()
    now = datetime.now(UTC)
    with services.db.write() as session:
        feed = feed_store.get_feed(session=session, name=feed_name)

        def present(c: Candidate) -> PackageFile | None:
            return package_store.find_file(session=session, feed_id=feed.id, subdir=c.subdir, filename=c.filename)

        # Take the revision (and so the row lock) of every subdir that changes, in subdir order, before
        # looking again: a concurrent publisher of the same file has then committed, and is seen.
        changing = sorted({c.subdir for c in candidates if not _unchanged(present(c), c)})
        revisions = {
            subdir: package_store.bump_revision(session=session, feed_id=feed.id, subdir=subdir) for subdir in changing
        }
        for candidate in candidates:
            existing = present(candidate)
            decision = decisions[candidate.key]
            if _unchanged(existing, candidate):
                published.append(Published(candidate, Outcome.UNCHANGED, decision))
                continue
            if existing is not None:
                if not replace and existing.sha256 != candidate.sha256:  # the same bytes restore a broken file
                    raise PackageExists(
                        f"{candidate.subdir}/{candidate.filename} already exists in this feed{exists_hint}"
                    )
                replaced.add(existing.sha256)
                package_store.delete_file(session=session, row=existing)
            if candidate.subdir not in revisions:
                revisions[candidate.subdir] = package_store.bump_revision(
                    session=session, feed_id=feed.id, subdir=candidate.subdir
                )
            session.add(
                PackageFile(
                    feed_id=feed.id,
                    subdir=candidate.subdir,
                    filename=candidate.filename,
                    name=candidate.name,
                    version=candidate.version,
                    build=candidate.build,
                    sha256=candidate.sha256,
                    md5=candidate.md5,
                    size=candidate.size,
                    record=candidate.record.decode(),
                    about=candidate.about,
                    revision=revisions[candidate.subdir],
                    uploaded_at=now,
                    uploaded_by=actor,
                )
            )
            outcome = Outcome.REPLACED if existing is not None else Outcome.ADDED
            published.append(Published(candidate, outcome, decision, existing.sha256 if existing else None))
        session.flush()
        if in_transaction is not None:
            in_transaction(session, published)
    replaced.difference_update(c.sha256 for c in candidates)
    return PublishResult(feed_name, published), replaced
