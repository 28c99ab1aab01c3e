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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        self.tmp.mkdir(parents=True, exist_ok=True)

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
        return True

    def exists(self, sha256: str) -> bool:
        return self.local_path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.local_path(sha256).unlink()

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
