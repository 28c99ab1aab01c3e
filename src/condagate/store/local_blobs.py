"""Blobs in a local folder: ``ROOT/ab/cd/abcd...``; temp files in ``ROOT/tmp``.

Writes are atomic (temp file in the same folder tree, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from condagate.store.blobs import (
    FAULT_AFTER_BLOB_STORED,
    SHA256_RE,
    IncomingBlob,
    StoredBlob,
    TempFolder,
    hash_reader,
    require_sha256,
)


class FileRangeReader:
    """Bytes ``start`` up to ``start + size`` of an open file."""

    def __init__(self, handle: Any, size: int) -> None:
        self._handle = handle
        self.size = size
        self._left = size

    def read(self, count: int = 1024 * 1024) -> bytes:
        if self._left <= 0:
            return b""
        data: bytes = self._handle.read(min(count, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()


class LocalBlobStore:
    def __init__(self, root: Path, temp: TempFolder | None = None) -> None:
        self.root = root
        # In the blobs' folder tree: a finished temp file becomes its blob by a rename.
        self._temp = temp or TempFolder(root / "tmp")
        self.quarantine_dir = root / "quarantine"  # blobs whose bytes no longer match their name
        self.description = str(root)
        # Read once here, not per blob: see FAULT_AFTER_BLOB_STORED.
        self._exit_after_store = os.environ.get(FAULT_AFTER_BLOB_STORED) == "exit"

    def _path(self, sha256: str) -> Path:
        require_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def file_for_sending(self, sha256: str) -> Path | None:
        return self._path(sha256)

    def presigned_url(self, sha256: str, filename: str, expires_seconds: int) -> str | None:
        return None

    def check(self) -> None:
        self._temp.folder.mkdir(parents=True, exist_ok=True)

    def incoming(self) -> IncomingBlob:
        return self._temp.incoming()

    def commit(self, incoming: IncomingBlob) -> bool:
        target = self._path(incoming.sha256.hexdigest())
        if target.exists():
            incoming.discard()
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming.path, target)
        if self._exit_after_store:
            os._exit(70)  # the crash test: blob in place, row never committed
        return True

    def put_bytes(self, data: bytes) -> str:
        incoming = self._temp.incoming(md5=False)
        try:
            incoming.write(data)
            incoming.finish()
            sha256 = incoming.sha256.hexdigest()
            self.commit(incoming)
        except BaseException:
            incoming.discard()
            raise
        return sha256

    def read_bytes(self, sha256: str) -> bytes | None:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def stat(self, sha256: str) -> StoredBlob | None:
        try:
            stat = self._path(sha256).stat()
        except FileNotFoundError:
            return None
        return StoredBlob(sha256, stat.st_size, stat.st_mtime)

    def open(self, sha256: str, start: int = 0, end: int | None = None) -> FileRangeReader | None:
        try:
            handle = self._path(sha256).open("rb")
        except FileNotFoundError:
            return None
        size = os.fstat(handle.fileno()).st_size
        stop = size if end is None else min(end, size)
        handle.seek(start)
        return FileRangeReader(handle, max(0, stop - start))

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sha256).unlink()

    def scan(self) -> Iterator[StoredBlob]:
        for first in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            for second in sorted(first.glob("[0-9a-f][0-9a-f]")):
                for path in sorted(second.iterdir()):
                    name = path.name
                    if not SHA256_RE.match(name) or name[:2] != first.name or name[2:4] != second.name:
                        continue
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        stat = path.stat()
                        if path.is_file():
                            yield StoredBlob(name, stat.st_size, stat.st_mtime)

    def digest(self, sha256: str, progress: Callable[[int], None] | None = None) -> tuple[str, int] | None:
        reader = self.open(sha256)
        return None if reader is None else hash_reader(reader, progress)

    def quarantine(self, sha256: str) -> str | None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / sha256
        try:
            os.replace(self._path(sha256), target)
        except FileNotFoundError:
            return None
        return str(target)

    @contextlib.contextmanager
    def readable_copy(self, sha256: str) -> Iterator[Path]:
        path = self._path(sha256)
        if not path.is_file():
            raise FileNotFoundError(path)
        yield path

    def temp_files(self) -> list[Path]:
        return self._temp.files()

    def clean_temp_files(self) -> int:
        return self._temp.clean()
