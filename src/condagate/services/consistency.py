"""``condagate check``: blobs against the rows that use them, rows against their records and their
subdir's revision, and the upstream repodata kept on disk; ``repair`` fixes what is safe to fix.

Run on the server's host, while the server runs or not. What a running server may be doing is
respected: an orphan blob younger than an hour is kept (an upload's blob is in place a moment before
its row commits), temp files are never touched, and each repair takes the blob's lock and checks
again before it acts. A file that cannot be served correctly is marked broken, not deleted: it
leaves the repodata and its download says why, until it is uploaded again or deleted.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zstandard

from condagate.services.blob_cleanup import blob_lock_name, delete_if_unused
from condagate.services.context import Services
from condagate.store import consistency as consistency_store
from condagate.store import packages as package_store
from condagate.store.blobs import StoredBlob
from condagate.store.consistency import CachedRow, FileRow
from condagate.store.locks import held

ORPHAN_MIN_AGE_SECONDS = 3600.0  # an upload in flight has its blob in place before its row commits

# Problem kinds (stable: ``--json`` output and scripts use them).
ORPHAN_BLOB = "orphan_blob"
MISSING_BLOB = "missing_blob"
WRONG_SHA256 = "wrong_sha256"
WRONG_SIZE = "wrong_size"
RECORD_MISMATCH = "record_mismatch"
BROKEN_BUT_INTACT = "broken_but_intact"
SUBDIR_STATE_MISSING = "subdir_state_missing"
SUBDIR_STATE_BEHIND = "subdir_state_behind"
CACHED_MISSING_BLOB = "cached_missing_blob"
CACHED_WRONG_SHA256 = "cached_wrong_sha256"
CACHED_WRONG_SIZE = "cached_wrong_size"
CACHED_RECORD_MISMATCH = "cached_record_mismatch"
UPSTREAM_COPY_UNREADABLE = "upstream_copy_unreadable"
UPSTREAM_COPY_WITHOUT_CONNECTOR = "upstream_copy_without_connector"


class HashProgress(Protocol):
    """Told how many bytes will be hashed, then each chunk hashed (a progress bar on a terminal)."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, done_bytes: int) -> None: ...


@dataclass
class Problem:
    kind: str
    subject: str  # what is wrong: "FEED/SUBDIR/FILENAME", "blob SHA256", "connector NAME: SUBDIR/FILENAME"
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    action: str = ""  # what --repair did, or why it did not
    repaired: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "message": self.message,
            "repaired": self.repaired,
            "action": self.action,
            **self.details,
        }


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem
    blobs: int = 0
    package_files: int = 0
    cached_files: int = 0
    subdirs: int = 0
    hashed_bytes: int = 0
    quick: bool = False
    repair: bool = False

    @property
    def unrepaired(self) -> list[Problem]:
        return [problem for problem in self.problems if not problem.repaired]

    @property
    def clean(self) -> bool:
        return not self.unrepaired

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "problems": [problem.as_json() for problem in self.problems],
            "notes": self.notes,
            "summary": {
                "blobs": self.blobs,
                "package_files": self.package_files,
                "cached_files": self.cached_files,
                "subdirs": self.subdirs,
                "hashed_bytes": self.hashed_bytes,
                "quick": self.quick,
                "problems": len(self.problems),
                "repaired": len(self.problems) - len(self.unrepaired),
            },
        }


@dataclass(frozen=True)
class _BlobState:
    """A referenced blob as found: missing (size None), or its size and, unless quick, its digest."""

    size: int | None
    digest: str | None = None


@dataclass(frozen=True)
class _FileRef:
    id: int
    subject: str
    sha256: str
    size: int
    broken_reason: str | None
    record_agrees: bool


@dataclass(frozen=True)
class _CachedRef:
    connector_id: int
    subject: str
    subdir: str
    filename: str
    sha256: str
    size: int


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
    referenced = {ref.sha256 for ref in files} | {ref.sha256 for ref in cached}
    orphans = [stored[sha256] for sha256 in sorted(stored.keys() - referenced)]
    states = _blob_states(services, referenced, stored, quick, progress, report)
    _check_orphans(services, orphans, repair, report)
    _check_files(services, files, states, repair, report)
    _check_cached(services, cached, states, repair, report)
    _check_subdirs(services, repair, report)
    _check_upstream_copies(services, repair, report)
    temp_files = services.blobs.temp_files()
    if temp_files:
        report.notes.append(
            f"{len(temp_files)} temp file(s) in {services.blobs.tmp}: uploads or downloads in flight, or "
            "left by a crash (the server removes those when it starts); not orphans"
        )
    return report


def _read_rows(services: Services, report: Report) -> tuple[list[_FileRef], list[_CachedRef]]:
    """Every row that uses a blob; record problems are found while reading (records are not kept)."""
    files: list[_FileRef] = []
    cached: list[_CachedRef] = []
    with services.db.read() as session:
        for row in consistency_store.package_files(session=session):
            subject = f"{row.feed}/{row.subdir}/{row.filename}"
            agrees = _check_record(row, subject, report)
            files.append(_FileRef(row.id, subject, row.sha256, row.size, row.broken_reason, agrees))
        for cached_row in consistency_store.cached_packages(session=session):
            subject = f"connector {cached_row.connector}: {cached_row.subdir}/{cached_row.filename}"
            ref = _CachedRef(
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


def _check_cached_record(row: CachedRow, ref: _CachedRef, report: Report) -> None:
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
) -> dict[str, _BlobState]:
    found: dict[str, StoredBlob | None] = {}
    for sha256 in sorted(referenced):
        # Not seen by the scan: stored since (an upload that committed meanwhile), or really missing.
        found[sha256] = stored.get(sha256) or services.blobs.stat(sha256)
    states: dict[str, _BlobState] = {}
    if quick:
        return {sha256: _BlobState(blob.size if blob else None) for sha256, blob in found.items()}
    if progress is not None:
        progress.start(sum(blob.size for blob in found.values() if blob is not None))
    for sha256, blob in found.items():
        digest = None if blob is None else services.blobs.digest(sha256, progress.advance if progress else None)
        if digest is None:
            states[sha256] = _BlobState(None)
        else:
            states[sha256] = _BlobState(digest[1], digest[0])
            report.hashed_bytes += digest[1]
    return states


def _check_orphans(services: Services, orphans: list[StoredBlob], repair: bool, report: Report) -> None:
    now = time.time()
    for blob in orphans:
        age = max(0.0, now - blob.mtime)
        problem = Problem(
            ORPHAN_BLOB,
            f"blob {blob.sha256}",
            f"no package file or cached copy uses this blob ({blob.size} bytes, {_age(age)} old)",
            {"sha256": blob.sha256, "size": blob.size, "age_seconds": int(age)},
        )
        report.problems.append(problem)
        if not repair:
            continue
        if age < ORPHAN_MIN_AGE_SECONDS:
            problem.action = (
                "kept: younger than an hour (an upload may be in flight); run 'condagate check --repair' again later"
            )
            continue
        with held(services.locks_dir, blob_lock_name(blob.sha256)):
            with services.db.read() as session:
                in_use = package_store.sha256_in_use(session=session, sha256=blob.sha256)
            if in_use:
                problem.action = "kept: a row uses it now"
                continue
            services.blobs.delete(blob.sha256)
        problem.repaired, problem.action = True, "removed"


def _check_files(
    services: Services, files: list[_FileRef], states: dict[str, _BlobState], repair: bool, report: Report
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
                    _clear_broken(services, ref, intact)
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
            _mark_broken(services, ref, state, problems)
    if still_broken:
        shown = "; ".join(still_broken[:20]) + ("; ..." if len(still_broken) > 20 else "")
        report.notes.append(
            f"{len(still_broken)} package file(s) marked broken earlier are not served: upload them again "
            f"(--force) or delete them: {shown}"
        )


def _blob_problem(
    subject: str, sha256: str, size: int, state: _BlobState, missing: str, wrong_sha256: str, wrong_size: str
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


def _mark_broken(services: Services, ref: _FileRef, state: _BlobState, problems: list[Problem]) -> None:
    with held(services.locks_dir, blob_lock_name(ref.sha256)):
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


def _quarantine_if_corrupt(services: Services, sha256: str, size: int, state: _BlobState) -> Path | None:
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


def _clear_broken(services: Services, ref: _FileRef, problem: Problem) -> None:
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


def _check_cached(
    services: Services, cached: list[_CachedRef], states: dict[str, _BlobState], repair: bool, report: Report
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
            _forget_cached(services, ref, state, problems)


def _forget_cached(services: Services, ref: _CachedRef, state: _BlobState, problems: list[Problem]) -> None:
    """A cached copy is a cache: forget it, and the next download fetches the file from the upstream again."""
    with held(services.locks_dir, blob_lock_name(ref.sha256)):
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
            with services.db.write() as session:
                restored = consistency_store.restore_subdir_revision(
                    session=session, feed_id=subdir.feed_id, subdir=subdir.subdir
                )
            problem.repaired, problem.action = True, f"revision set to {restored} (repodata rebuilt on next request)"


def _check_upstream_copies(services: Services, repair: bool, report: Report) -> None:
    """The last good repodata of each connector subdir, kept on disk by ``upstream.repodata_cache``
    (DATA_DIR/upstream/CONNECTOR_ID/SUBDIR/{repodata.json.zst,meta.json})."""
    root = services.settings.data_dir / "upstream"
    if not root.is_dir():
        return
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    with services.db.read() as session:  # after listing: a connector created meanwhile is known
        known = consistency_store.connector_ids(session=session)
    for folder in folders:
        if not folder.name.isdigit() or int(folder.name) not in known:
            _upstream_problem(
                folder,
                UPSTREAM_COPY_WITHOUT_CONNECTOR,
                f"upstream repodata kept for connector id {folder.name}, which no longer exists",
                repair,
                report,
            )
            continue
        for subdir in sorted(path for path in folder.iterdir() if path.is_dir()):
            error = _unreadable(subdir)
            if error:
                _upstream_problem(
                    subdir,
                    UPSTREAM_COPY_UNREADABLE,
                    f"the kept upstream repodata is unreadable ({error}): it cannot serve while the upstream is down",
                    repair,
                    report,
                )


def _unreadable(folder: Path) -> str:
    data, meta = folder / "repodata.json.zst", folder / "meta.json"
    if not data.exists() and not meta.exists():
        return ""
    try:
        if not isinstance(json.loads(meta.read_text()), dict):
            return "meta.json is not a JSON object"
        with data.open("rb") as handle, zstandard.ZstdDecompressor().stream_reader(handle) as reader:
            first = reader.read(1)
            while reader.read(1 << 20):
                pass
    except (OSError, ValueError, zstandard.ZstdError) as exc:
        return str(exc) or type(exc).__name__
    return "" if first == b"{" else "repodata.json.zst does not hold a JSON object"


def _upstream_problem(folder: Path, kind: str, message: str, repair: bool, report: Report) -> None:
    problem = Problem(kind, str(folder), message, {"path": str(folder)})
    report.problems.append(problem)
    if repair:
        shutil.rmtree(folder, ignore_errors=True)
        problem.repaired = not folder.exists()
        problem.action = "removed (fetched again from the upstream when asked for)" if problem.repaired else ""


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def kinds_of(problems: Iterable[Problem]) -> dict[str, int]:
    """How many problems of each kind, in the order first seen (for the summary)."""
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    return counts
