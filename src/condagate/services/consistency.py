"""``condagate check``: blobs against the rows that use them, rows against their records and their
subdir's revision, the upstream repodata kept for every replica (a row and a blob per connector subdir)
and this host's copies of it; ``repair`` fixes what is safe to fix.

Run on the server's host, while the server runs or not. What a running server may be doing is
respected: an orphan blob younger than an hour is kept (an upload's blob is in place a moment before
its row commits), temp files are never touched, and each repair takes the blob's lock and checks
again before it acts. A file that cannot be served correctly is marked broken, not deleted: it
leaves the repodata and its download says why, until it is uploaded again or deleted.
"""

from __future__ import annotations

import json
import time
from typing import Any

from condagate.services.consistency_repair import (
    BlobState,
    CachedRef,
    FileRef,
    clear_broken,
    forget_cached,
    forget_upstream_state,
    mark_broken,
    remove_orphan,
    remove_upstream_copy,
    restore_subdir_revision,
)
from condagate.services.consistency_report import (
    BROKEN_BUT_INTACT,
    CACHED_MISSING_BLOB,
    CACHED_RECORD_MISMATCH,
    CACHED_WRONG_SHA256,
    CACHED_WRONG_SIZE,
    MISSING_BLOB,
    ORPHAN_BLOB,
    RECORD_MISMATCH,
    SUBDIR_STATE_BEHIND,
    SUBDIR_STATE_MISSING,
    UPSTREAM_COPY_UNREADABLE,
    UPSTREAM_COPY_WITHOUT_CONNECTOR,
    WRONG_SHA256,
    WRONG_SIZE,
    HashProgress,
    Problem,
    Report,
)
from condagate.services.context import Services
from condagate.store import consistency as consistency_store
from condagate.store import upstream_state as upstream_state_store
from condagate.store.blobs import StoredBlob
from condagate.store.consistency import CachedRow, FileRow
from condagate.store.upstream_state import StateRow


def record_disagreements(record_json: str, columns: dict[str, object]) -> list[str]:
    """How a stored record disagrees with its row's columns (a field the record lacks is not compared)."""
    try:
        record = json.loads(record_json)
    except ValueError as exc:
        return [f"the record is not valid JSON ({exc})"]
    if not isinstance(record, dict):
        return ["the record is not a JSON object"]
    return [
        f"{key} is {record[key]!r} in the record but {value!r} in the row"
        for key, value in columns.items()
        if key in record and record[key] != value
    ]


def check(
    services: Services, *, repair: bool = False, quick: bool = False, progress: HashProgress | None = None
) -> Report:
    """Check everything; with ``repair``, fix what is safe to fix (see the module docstring)."""
    report = Report(quick=quick, repair=repair)
    # Blobs first, rows second: a blob stored meanwhile then has its row too (or is in flight, and young).
    stored = {blob.sha256: blob for blob in services.blobs.scan()}
    report.blobs = len(stored)
    files, cached = _read_rows(services, report)
    with services.db.read() as session:
        kept = upstream_state_store.all_rows(session=session)
    referenced = {ref.sha256 for ref in files} | {ref.sha256 for ref in cached} | {row.sha256 for row in kept}
    orphans = [stored[sha256] for sha256 in sorted(stored.keys() - referenced)]
    states = _blob_states(services, referenced, stored, quick, progress, report)
    _check_orphans(services, orphans, repair, report)
    _check_files(services, files, states, repair, report)
    _check_cached(services, cached, states, repair, report)
    _check_subdirs(services, repair, report)
    _check_upstream_states(services, kept, states, repair, report)
    _check_upstream_copies(services, repair, report)
    temp_files = services.blobs.temp_files()
    if temp_files:
        report.notes.append(
            f"{len(temp_files)} temp file(s) in {temp_files[0].parent}: uploads or downloads in flight, or "
            "left by a crash (the server removes those when it starts); not orphans"
        )
    return report


def _read_rows(services: Services, report: Report) -> tuple[list[FileRef], list[CachedRef]]:
    """Every row that uses a blob; record problems are found while reading (records are not kept)."""
    files: list[FileRef] = []
    cached: list[CachedRef] = []
    with services.db.read() as session:
        for row in consistency_store.package_files(session=session):
            subject = f"{row.feed}/{row.subdir}/{row.filename}"
            agrees = _check_record(row, subject, report)
            files.append(FileRef(row.id, subject, row.sha256, row.size, row.broken_reason, agrees))
        for cached_row in consistency_store.cached_packages(session=session):
            subject = f"connector {cached_row.connector}: {cached_row.subdir}/{cached_row.filename}"
            ref = CachedRef(
                cached_row.connector_id,
                subject,
                cached_row.subdir,
                cached_row.filename,
                cached_row.sha256,
                cached_row.size,
            )
            cached.append(ref)
            _check_cached_record(cached_row, ref, report)
    report.package_files, report.cached_files = len(files), len(cached)
    return files, cached


def _check_record(row: FileRow, subject: str, report: Report) -> bool:
    """Whether the row's record agrees with its columns; a disagreement is a problem unless the row
    is marked broken already."""
    columns: dict[str, object] = {
        "name": row.name,
        "version": row.version,
        "build": row.build,
        "subdir": row.subdir,
        "sha256": row.sha256,
        "md5": row.md5,
        "size": row.size,
    }
    disagreements = record_disagreements(row.record, columns)
    if disagreements and row.broken_reason is None:
        report.problems.append(
            Problem(
                RECORD_MISMATCH,
                subject,
                "its repodata record disagrees with its row: " + "; ".join(disagreements),
                {"file_id": row.id, "sha256": row.sha256},
            )
        )
    return not disagreements


def _check_cached_record(row: CachedRow, ref: CachedRef, report: Report) -> None:
    if not row.record:
        return  # cached before records were kept
    columns: dict[str, object] = {"sha256": row.sha256, "size": row.size, "subdir": row.subdir}
    if row.name:
        columns["name"] = row.name
    disagreements = record_disagreements(row.record, columns)
    if disagreements:
        report.problems.append(
            Problem(
                CACHED_RECORD_MISMATCH,
                ref.subject,
                "the record kept with the cached copy disagrees with its row: " + "; ".join(disagreements),
                {"connector_id": ref.connector_id, "sha256": ref.sha256},
            )
        )


def _blob_states(
    services: Services,
    referenced: set[str],
    stored: dict[str, StoredBlob],
    quick: bool,
    progress: HashProgress | None,
    report: Report,
) -> dict[str, BlobState]:
    found: dict[str, StoredBlob | None] = {}
    for sha256 in sorted(referenced):
        # Not seen by the scan: stored since (an upload that committed meanwhile), or really missing.
        found[sha256] = stored.get(sha256) or services.blobs.stat(sha256)
    states: dict[str, BlobState] = {}
    if quick:
        return {sha256: BlobState(blob.size if blob else None) for sha256, blob in found.items()}
    if progress is not None:
        progress.start(sum(blob.size for blob in found.values() if blob is not None))
    for sha256, blob in found.items():
        digest = None if blob is None else services.blobs.digest(sha256, progress.advance if progress else None)
        if digest is None:
            states[sha256] = BlobState(None)
        else:
            states[sha256] = BlobState(digest[1], digest[0])
            report.hashed_bytes += digest[1]
    return states


def _check_orphans(services: Services, orphans: list[StoredBlob], repair: bool, report: Report) -> None:
    now = time.time()
    for blob in orphans:
        age = max(0.0, now - blob.mtime)
        problem = Problem(
            ORPHAN_BLOB,
            f"blob {blob.sha256}",
            f"no package file, cached copy or kept upstream repodata uses this blob ({blob.size} bytes, "
            f"{_age(age)} old)",
            {"sha256": blob.sha256, "size": blob.size, "age_seconds": int(age)},
        )
        report.problems.append(problem)
        if repair:
            remove_orphan(services, blob, age, problem)


def _check_files(
    services: Services, files: list[FileRef], states: dict[str, BlobState], repair: bool, report: Report
) -> None:
    still_broken: list[str] = []
    record_problems = {p.details["file_id"]: p for p in report.problems if p.kind == RECORD_MISMATCH}
    for ref in files:
        state = states[ref.sha256]
        if ref.broken_reason is not None:
            if state.digest == ref.sha256 and state.size == ref.size and ref.record_agrees:
                intact = Problem(
                    BROKEN_BUT_INTACT,
                    ref.subject,
                    f"marked broken ({ref.broken_reason}), but its blob and record are intact now",
                    {"file_id": ref.id, "sha256": ref.sha256},
                )
                report.problems.append(intact)
                if repair:
                    clear_broken(services, ref, intact)
            else:
                still_broken.append(f"{ref.subject} ({ref.broken_reason})")
            continue
        problem = _blob_problem(ref.subject, ref.sha256, ref.size, state, MISSING_BLOB, WRONG_SHA256, WRONG_SIZE)
        if problem is not None:
            problem.details["file_id"] = ref.id
            report.problems.append(problem)
        if not repair:
            continue
        problems = [p for p in (problem, record_problems.get(ref.id)) if p is not None]
        if problems:
            mark_broken(services, ref, state, problems)
    if still_broken:
        shown = "; ".join(still_broken[:20]) + ("; ..." if len(still_broken) > 20 else "")
        report.notes.append(
            f"{len(still_broken)} package file(s) marked broken earlier are not served: upload them again "
            f"(--force) or delete them: {shown}"
        )


def _blob_problem(
    subject: str, sha256: str, size: int, state: BlobState, missing: str, wrong_sha256: str, wrong_size: str
) -> Problem | None:
    details: dict[str, Any] = {"sha256": sha256, "size": size}
    if state.size is None:
        return Problem(missing, subject, f"its blob {sha256} is missing", details)
    if state.digest is not None and state.digest != sha256:
        details["actual_sha256"] = state.digest
    if state.size != size:  # the likelier story when both differ: cut short, or grown
        details["actual_size"] = state.size
        return Problem(wrong_size, subject, f"its blob is {state.size} bytes, the row says {size}", details)
    if state.digest is not None and state.digest != sha256:
        return Problem(wrong_sha256, subject, f"its blob's bytes have sha256 {state.digest}, not {sha256}", details)
    return None


def _check_cached(
    services: Services, cached: list[CachedRef], states: dict[str, BlobState], repair: bool, report: Report
) -> None:
    record_problems = {
        (p.details["connector_id"], p.subject): p for p in report.problems if p.kind == CACHED_RECORD_MISMATCH
    }
    for ref in cached:
        state = states[ref.sha256]
        problem = _blob_problem(
            ref.subject, ref.sha256, ref.size, state, CACHED_MISSING_BLOB, CACHED_WRONG_SHA256, CACHED_WRONG_SIZE
        )
        if problem is not None:
            problem.details["connector_id"] = ref.connector_id
            report.problems.append(problem)
        problems = [p for p in (problem, record_problems.get((ref.connector_id, ref.subject))) if p is not None]
        if repair and problems:
            forget_cached(services, ref, state, problems)


def _check_subdirs(services: Services, repair: bool, report: Report) -> None:
    with services.db.read() as session:
        # Rows before states: a change committed in between leaves the state newer, never older.
        subdirs = consistency_store.subdirs_with_rows(session=session)
        revisions = consistency_store.subdir_revisions(session=session)
    report.subdirs = len(subdirs)
    for subdir in subdirs:
        subject = f"{subdir.feed}/{subdir.subdir}"
        revision = revisions.get((subdir.feed_id, subdir.subdir))
        details: dict[str, Any] = {"files": subdir.files, "newest_file_revision": subdir.max_revision}
        if revision is None:
            problem = Problem(
                SUBDIR_STATE_MISSING,
                subject,
                f"{subdir.files} package file(s) but no revision row: its repodata may not follow changes",
                details,
            )
        elif revision < subdir.max_revision:
            details["revision"] = revision
            problem = Problem(
                SUBDIR_STATE_BEHIND,
                subject,
                f"its revision {revision} is older than its newest file's ({subdir.max_revision}): "
                "servers may not list newer files",
                details,
            )
        else:
            continue
        report.problems.append(problem)
        if repair:
            restore_subdir_revision(services, subdir.feed_id, subdir.subdir, problem)


def _check_upstream_states(
    services: Services, kept: list[StateRow], states: dict[str, BlobState], repair: bool, report: Report
) -> None:
    """The upstream repodata kept for every replica: each row's blob must be there, with its bytes."""
    for row in kept:
        subject = f"connector {row.connector_id}: {row.subdir}/repodata.json.zst"
        problem = _blob_problem(
            subject,
            row.sha256,
            row.size,
            states[row.sha256],
            UPSTREAM_COPY_UNREADABLE,
            UPSTREAM_COPY_UNREADABLE,
            UPSTREAM_COPY_UNREADABLE,
        )
        if problem is None:
            continue
        problem.message = (
            f"the kept upstream repodata is unusable ({problem.message}): it cannot serve while the upstream is down"
        )
        problem.details.update(connector_id=row.connector_id, subdir=row.subdir)
        report.problems.append(problem)
        if repair:
            forget_upstream_state(services, row, states[row.sha256], problem)


def _check_upstream_copies(services: Services, repair: bool, report: Report) -> None:
    """This host's copies of the kept upstream repodata (DATA_DIR/upstream/CONNECTOR_ID/SUBDIR), a cache
    used only when its sha256 is the row's: a folder of a connector that no longer exists is a problem."""
    root = services.settings.data_dir / "upstream"
    if not root.is_dir():
        return
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    with services.db.read() as session:  # after listing: a connector created meanwhile is known
        known = consistency_store.connector_ids(session=session)
    for folder in folders:
        if not folder.name.isdigit() or int(folder.name) not in known:
            problem = Problem(
                UPSTREAM_COPY_WITHOUT_CONNECTOR,
                str(folder),
                f"upstream repodata kept for connector id {folder.name}, which no longer exists",
                {"path": str(folder)},
            )
            report.problems.append(problem)
            if repair:
                remove_upstream_copy(folder, problem)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"
