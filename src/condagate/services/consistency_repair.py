"""``condagate check --repair``'s actions: each takes the blob's lock (where a blob is involved) and checks
again before it acts, as a running server may be changing the same rows."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from condagate.services.blob_cleanup import blob_lock_name, delete_if_unused
from condagate.services.consistency_report import MISSING_BLOB, RECORD_MISMATCH, WRONG_SHA256, WRONG_SIZE, Problem
from condagate.services.context import Services
from condagate.store import consistency as consistency_store
from condagate.store import packages as package_store
from condagate.store import upstream_state as upstream_state_store
from condagate.store.blobs import StoredBlob
from condagate.store.upstream_state import StateRow

ORPHAN_MIN_AGE_SECONDS = 3600.0  # an upload in flight has its blob in place before its row commits


@dataclass(frozen=True)
class BlobState:
    """A referenced blob as found: missing (size None), or its size and, unless quick, its digest."""

    size: int | None
    digest: str | None = None


@dataclass(frozen=True)
class FileRef:
    id: int
    subject: str
    sha256: str
    size: int
    broken_reason: str | None
    record_agrees: bool


@dataclass(frozen=True)
class CachedRef:
    connector_id: int
    subject: str
    subdir: str
    filename: str
    sha256: str
    size: int


def mark_broken(services: Services, ref: FileRef, state: BlobState, problems: list[Problem]) -> None:
    with services.locks.held(blob_lock_name(ref.sha256)):
        if state.size is None and services.blobs.exists(ref.sha256):
            for problem in problems:
                if problem.kind == MISSING_BLOB:
                    problem.action = "kept: its blob is there now (stored meanwhile); check again"
            problems = [problem for problem in problems if problem.kind != MISSING_BLOB]
            if not problems:
                return
        reason = "; ".join(_reason(problem) for problem in problems)
        with services.db.write() as session:
            marked = consistency_store.mark_broken(session=session, file_id=ref.id, sha256=ref.sha256, reason=reason)
        quarantined = _quarantine_if_corrupt(services, ref.sha256, ref.size, state)
    for problem in problems:
        problem.repaired = marked
        problem.action = "marked broken: no longer served" if marked else "kept: the row changed meanwhile"
        if quarantined is not None:
            problem.action += f"; its bytes moved to {quarantined}"


def _quarantine_if_corrupt(services: Services, sha256: str, size: int, state: BlobState) -> str | None:
    """Move aside a blob whose bytes are not what its name says (the caller holds its lock), so that
    uploading (or fetching) the right bytes again stores them. A size mismatch found by ``--quick``
    is hashed here to tell a wrong blob from a wrong row."""
    if state.size is None:
        return None
    digest = state.digest
    if digest is None and state.size != size:
        hashed = services.blobs.digest(sha256)
        digest = hashed[0] if hashed is not None else None
    if digest is None or digest == sha256:
        return None
    return services.blobs.quarantine(sha256)


def clear_broken(services: Services, ref: FileRef, problem: Problem) -> None:
    with services.db.write() as session:
        cleared = consistency_store.clear_broken(session=session, file_id=ref.id, sha256=ref.sha256)
    problem.repaired = cleared
    problem.action = "served again" if cleared else "kept: the row changed meanwhile"


def _reason(problem: Problem) -> str:
    return {
        MISSING_BLOB: "blob missing",
        WRONG_SHA256: "blob has other bytes (wrong sha256)",
        WRONG_SIZE: "blob has another size",
        RECORD_MISMATCH: "record disagrees with the row",
    }.get(problem.kind, problem.kind) + " (condagate check)"


def forget_cached(services: Services, ref: CachedRef, state: BlobState, problems: list[Problem]) -> None:
    """A cached copy is a cache: forget it, and the next download fetches the file from the upstream again."""
    with services.locks.held(blob_lock_name(ref.sha256)):
        with services.db.write() as session:
            forgotten = consistency_store.forget_cached_package(
                session=session,
                connector_id=ref.connector_id,
                subdir=ref.subdir,
                filename=ref.filename,
                sha256=ref.sha256,
            )
        quarantined = _quarantine_if_corrupt(services, ref.sha256, ref.size, state)
    if forgotten and quarantined is None and state.size is not None:
        delete_if_unused(services, ref.sha256)
    for problem in problems:
        problem.repaired = forgotten
        problem.action = (
            "forgotten: the next download fetches it from the upstream again"
            if forgotten
            else "kept: the row changed meanwhile"
        )
        if quarantined is not None:
            problem.action += f"; its bytes moved to {quarantined}"


def remove_orphan(services: Services, blob: StoredBlob, age: float, problem: Problem) -> None:
    if age < ORPHAN_MIN_AGE_SECONDS:
        problem.action = (
            "kept: younger than an hour (an upload may be in flight); run 'condagate check --repair' again later"
        )
        return
    with services.locks.held(blob_lock_name(blob.sha256)):
        with services.db.read() as session:
            in_use = package_store.sha256_in_use(session=session, sha256=blob.sha256)
        if in_use:
            problem.action = "kept: a row uses it now"
            return
        services.blobs.delete(blob.sha256)
    problem.repaired, problem.action = True, "removed"


def restore_subdir_revision(services: Services, feed_id: int, subdir: str, problem: Problem) -> None:
    with services.db.write() as session:
        restored = consistency_store.restore_subdir_revision(session=session, feed_id=feed_id, subdir=subdir)
    problem.repaired, problem.action = True, f"revision set to {restored} (repodata rebuilt on next request)"


def forget_upstream_state(services: Services, row: StateRow, state: BlobState, problem: Problem) -> None:
    """Kept upstream repodata whose blob is missing or wrong: drop the row (the next check of the
    upstream keeps a new copy); a blob with other bytes is moved aside."""
    with services.locks.held(blob_lock_name(row.sha256)):
        with services.db.write(quiet=True) as session:
            removed = upstream_state_store.remove(
                session=session, connector_id=row.connector_id, subdir=row.subdir, sha256=row.sha256
            )
        quarantined = _quarantine_if_corrupt(services, row.sha256, row.size, state) if removed else None
    if removed and quarantined is None and state.size is not None:
        delete_if_unused(services, row.sha256)
    problem.repaired = bool(removed)
    problem.action = (
        "removed (fetched again from the upstream when asked for)" if removed else "kept: the row changed meanwhile"
    )
    if quarantined is not None:
        problem.action += f"; its bytes moved to {quarantined}"


def remove_upstream_copy(folder: Path, problem: Problem) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    problem.repaired = not folder.exists()
    problem.action = "removed (fetched again from the upstream when asked for)" if problem.repaired else ""
