"""Content-addressed blob storage: a blob's name is the sha256 of its bytes.

Writes are atomic (temp file in the same folder tree, fsync, rename), so a reader never sees a
partial blob and a crash never leaves one under a real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024

# Fault injection for the crash test of ``condagate check`` (tests/e2e/test_check.py): with
# CONDAGATE_FAULT_AFTER_BLOB_STORED=exit the process dies right after a new blob is renamed into
# place and before its row is committed -- the one window where a crash leaves an orphan blob.
FAULT_AFTER_BLOB_STORED = "CONDAGATE_FAULT_AFTER_BLOB_STORED"


@dataclass(frozen=True)
class StoredBlob:
    """A blob as found on disk by a scan: its name, size and modification time (``time.time()``)."""

    sha256: str
    size: int
    mtime: float


@dataclass
class IncomingBlob:
    """A temp file being written, hashed as it grows."""

    path: Path
    handle: BinaryIO
    sha256: hashlib._Hash
    md5: hashlib._Hash
    size: int = 0

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)

    def finish(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class BlobStore(Protocol):
    def incoming(self) -> IncomingBlob: ...

    def commit(self, incoming: IncomingBlob) -> bool:
        """Move a finished temp file under its sha256; True when the blob is new."""

    def exists(self, sha256: str) -> bool: ...

    def local_path(self, sha256: str) -> Path: ...

    def delete(self, sha256: str) -> None: ...


def _require_sha256(sha256: str) -> str:
    if not _SHA256_RE.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class LocalBlobStore:
    """Blobs in a local folder: ``ROOT/ab/cd/abcd...``; temp files in ``ROOT/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"  # blobs whose bytes no longer match their name
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Read once here, not per blob: see FAULT_AFTER_BLOB_STORED.
        self._exit_after_store = os.environ.get(FAULT_AFTER_BLOB_STORED) == "exit"

    def local_path(self, sha256: str) -> Path:
        _require_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def incoming(self) -> IncomingBlob:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        return IncomingBlob(Path(name), os.fdopen(fd, "wb"), hashlib.sha256(), hashlib.md5())  # noqa: S324

    def commit(self, incoming: IncomingBlob) -> bool:
        target = self.local_path(incoming.sha256.hexdigest())
        if target.exists():
            incoming.discard()
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming.path, target)
        if self._exit_after_store:
            os._exit(70)  # the crash test: blob in place, row never committed
        return True

    def exists(self, sha256: str) -> bool:
        return self.local_path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.local_path(sha256).unlink()

    def scan(self) -> Iterator[StoredBlob]:
        """Every blob under its sha256 name (temp files and quarantined blobs are not blobs)."""
        for first in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            for second in sorted(first.glob("[0-9a-f][0-9a-f]")):
                for path in sorted(second.iterdir()):
                    name = path.name
                    if not _SHA256_RE.match(name) or name[:2] != first.name or name[2:4] != second.name:
                        continue
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        stat = path.stat()
                        if path.is_file():
                            yield StoredBlob(name, stat.st_size, stat.st_mtime)

    def stat(self, sha256: str) -> StoredBlob | None:
        """Size and modification time of a blob, or None when it is missing."""
        try:
            stat = self.local_path(sha256).stat()
        except FileNotFoundError:
            return None
        return StoredBlob(sha256, stat.st_size, stat.st_mtime)

    def digest(self, sha256: str, progress: Callable[[int], None] | None = None) -> tuple[str, int] | None:
        """The sha256 and size of a blob's bytes as they are now (None when it is missing);
        ``progress`` is told every chunk's length."""
        hasher = hashlib.sha256()
        size = 0
        try:
            with self.local_path(sha256).open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    hasher.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except FileNotFoundError:
            return None
        return hasher.hexdigest(), size

    def quarantine(self, sha256: str) -> Path | None:
        """Move a blob whose bytes do not match its name aside (kept for inspection), so that the
        next upload or proxy download of the right bytes can store them again; None when missing."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / sha256
        try:
            os.replace(self.local_path(sha256), target)
        except FileNotFoundError:
            return None
        return target

    def temp_files(self) -> list[Path]:
        """Temp files: uploads and proxy downloads in flight, or leftovers of a crash (removed at start)."""
        return sorted(self.tmp.glob("upload-*"))

    def clean_temp_files(self) -> int:
        """Remove temp files left by a crash; called once at start."""
        removed = 0
        for leftover in self.tmp.glob("upload-*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed


def open_blob_store(url: str) -> LocalBlobStore:
    if url.startswith("s3://"):
        raise ValueError("S3-compatible storage is not available yet; use a local folder")
    path = url.removeprefix("file://")
    return LocalBlobStore(Path(path).expanduser())
