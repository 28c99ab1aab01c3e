"""Content-addressed blob storage: a blob's name is the sha256 of its bytes.

Services see the ``BlobStore`` interface only: bytes go in through a hashed local temp file
(``incoming`` → ``commit``), come out as chunks (``open``, with a byte range), and are described by
``stat``. Two backends implement it: a local folder (``store/local_blobs.py``) and an S3-compatible
bucket (``store/s3_blobs.py``), chosen by ``CONDAGATE_STORAGE_URL``. A blob appears under its real
name only whole (rename, or a completed S3 PUT), so a reader never sees a partial blob and a crash
never leaves one.

Two capabilities are for the web layer alone: ``file_for_sending`` (a local backend's file, for the
server's ``pathsend`` and ``X-Accel-Redirect``) and ``presigned_url`` (an S3 backend's short-lived
download address).
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

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024

# Fault injection for the crash test of ``condagate check`` (tests/e2e/test_check.py): with
# CONDAGATE_FAULT_AFTER_BLOB_STORED=exit the process dies right after a new blob is stored under
# its name and before its row is committed -- the one window where a crash leaves an orphan blob.
FAULT_AFTER_BLOB_STORED = "CONDAGATE_FAULT_AFTER_BLOB_STORED"


@dataclass(frozen=True)
class StoredBlob:
    """A stored blob: its name, size and modification time (``time.time()``)."""

    sha256: str
    size: int
    mtime: float


@dataclass
class IncomingBlob:
    """A local temp file being written, hashed as it grows; ``commit`` stores it under its sha256."""

    path: Path
    handle: BinaryIO
    sha256: hashlib._Hash
    _md5: hashlib._Hash | None  # None: not computed (kept state, which no record describes)
    size: int = 0

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.sha256.update(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        self.size += len(chunk)

    def md5_hex(self) -> str:
        """The md5 conda records carry (package files' only)."""
        if self._md5 is None:
            raise ValueError("this incoming blob was not opened to compute an md5")
        return self._md5.hexdigest()

    def finish(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class BlobReader(Protocol):
    """An open blob (or a byte range of it), read as chunks; close it when done."""

    size: int  # bytes this reader yields

    def read(self, count: int = CHUNK) -> bytes: ...

    def close(self) -> None: ...


class BlobStore(Protocol):
    description: str  # where the blobs are, for messages (never a secret)

    def incoming(self) -> IncomingBlob: ...

    def commit(self, incoming: IncomingBlob) -> bool:
        """Store a finished temp file under its sha256; True when the blob is new. Raises
        ``StorageUnavailable`` when the store cannot take it (nothing is stored then)."""

    def put_bytes(self, data: bytes) -> str:
        """Store small bytes (kept state, not packages); returns their sha256."""

    def read_bytes(self, sha256: str) -> bytes | None:
        """A small blob's bytes, or None when it is missing."""

    def exists(self, sha256: str) -> bool:
        """Whether the store holds the blob now (always asks: writers decide on it)."""

    def stat(self, sha256: str) -> StoredBlob | None:
        """Size and modification time of a blob, or None when it is missing; for serving, so a remote
        store may answer from a memory of a few seconds."""

    def open(self, sha256: str, start: int = 0, end: int | None = None) -> BlobReader | None:
        """Bytes ``start`` up to ``end`` (exclusive; None: to the end) of a blob; None when missing."""

    def delete(self, sha256: str) -> None: ...

    def scan(self) -> Iterator[StoredBlob]:
        """Every blob under its sha256 name (temp files and quarantined blobs are not blobs)."""

    def digest(self, sha256: str, progress: Callable[[int], None] | None = None) -> tuple[str, int] | None:
        """The sha256 and size of a blob's bytes as they are now (None when missing)."""

    def quarantine(self, sha256: str) -> str | None:
        """Move a blob whose bytes do not match its name aside (kept for inspection); where it went,
        or None when it is missing."""

    def temp_files(self) -> list[Path]:
        """This host's temp files: uploads and proxy downloads in flight, or leftovers of a crash."""

    def clean_temp_files(self) -> int:
        """Remove temp files left by a crash; called once at start, before any worker runs."""

    def readable_copy(self, sha256: str) -> contextlib.AbstractContextManager[Path]:
        """A local file with the blob's bytes for reading an archive's contents (the blob itself for a
        local store, a temp copy otherwise); raises FileNotFoundError when the blob is missing."""

    def file_for_sending(self, sha256: str) -> Path | None:
        """Web layer only: the local file the server may send itself, or None (not a local store)."""

    def presigned_url(self, sha256: str, filename: str, expires_seconds: int) -> str | None:
        """Web layer only: a short-lived download address, or None where the store has none."""

    def check(self) -> None:
        """Raise ``StorageUnavailable`` with the reason when the store cannot be used (at start)."""


class TempFolder:
    """Where bytes arriving on this server are written and hashed before they become a blob. Replicas
    may share the folder (a local store on a shared file system): each names its files with its
    ``owner`` and removes only its own leftovers at start."""

    def __init__(self, folder: Path, owner: str = "") -> None:
        self.folder = folder
        self._prefix = f"upload-{owner}-" if owner else "upload-"
        folder.mkdir(parents=True, exist_ok=True)

    def incoming(self, md5: bool = True) -> IncomingBlob:
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=self._prefix)
        # md5: what conda records carry, not security
        return IncomingBlob(Path(name), os.fdopen(fd, "wb"), hashlib.sha256(), hashlib.md5() if md5 else None)  # noqa: S324

    def copy_file(self) -> tuple[int, Path]:
        """A temp file for a copy of a stored blob (named like this server's other temp files, so a
        crash's leftover is listed and removed at start like theirs)."""
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=self._prefix + "copy-")
        return fd, Path(name)

    def files(self) -> list[Path]:
        """Every server's temp files: uploads and proxy downloads in flight, or leftovers of a crash."""
        return sorted(self.folder.glob("upload-*"))

    def clean(self) -> int:
        """Remove this server's leftovers of a crash (at start, before any worker runs)."""
        removed = 0
        for leftover in self.folder.glob(self._prefix + "*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed


def require_sha256(sha256: str) -> str:
    if not SHA256_RE.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


def hash_reader(reader: BlobReader, progress: Callable[[int], None] | None) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    try:
        while chunk := reader.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    finally:
        reader.close()
    return hasher.hexdigest(), size


def open_blob_store(url: str, temp_dir: Path, owner: str = "") -> BlobStore:
    """The store ``CONDAGATE_STORAGE_URL`` names: ``s3://bucket/prefix``, or a local folder
    (``file://`` optional). ``temp_dir``: this host's folder for temp files of an S3 store; ``owner``
    names this server's temp files in a local folder that replicas may share."""
    if url.startswith("s3://"):
        from condagate.store.s3_blobs import S3BlobStore

        return S3BlobStore.from_url(url, TempFolder(temp_dir, owner))
    from condagate.store.local_blobs import LocalBlobStore

    root = Path(url.removeprefix("file://")).expanduser()
    return LocalBlobStore(root, TempFolder(root / "tmp", owner))
