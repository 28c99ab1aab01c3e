"""This host's files of deferred encodings (a large subdir's repodata.json, ``Encoded.deferred``), so
that every worker serves them with ``pathsend`` from one copy in the page cache instead of holding or
producing hundreds of MB each.

A file is named by its feed subdir and the encoding's ETag, which names its bytes: the first worker to
serve it writes it (to a temp name, then renamed: a reader never sees half a file), the others find
it. A worker serving a file touches it (at most once a minute). When a newer file of the same subdir
is written, the older ones go once nobody touched them for ``SUPERSEDED_SECONDS`` (a worker that has
not seen the change yet serves the old one until its next request rebuilds); any file nobody touched
for ``UNUSED_SECONDS`` goes too. A worker whose file is gone writes it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from condagate.process_memory import return_freed_memory
from condagate.services.subdir_snapshot import Encoded
from condagate.services.unused_files import listed, remove_if_unused

log = logging.getLogger(__name__)

UNUSED_SECONDS = 15 * 60
SUPERSEDED_SECONDS = 3 * 60
RETRY_SECONDS = 60.0  # after a failed write (a full disk), the bytes are sent without a file this long
_TOUCH_EVERY = 60.0  # seconds: a served file's mtime is moved at most this often (one utime per minute)
_GROUP = re.compile(r"[0-9]{1,19}-[a-z0-9-]{1,32}")  # feed id, subdir
_ETAG = re.compile(r'"([0-9a-f]{16,64}-[a-z0-9]{1,16})"')
_TEMP_PREFIX = ".writing-"


class WriteFailed(OSError):
    """A file could not be written lately: the caller sends the bytes without one for a while."""


class EncodedFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._touched: dict[str, float] = {}  # file name -> when this process last touched it
        self._guard = threading.Lock()
        self._writing: dict[str, threading.Lock] = {}  # one writer per file name in this process
        self._failed_at: float | None = None  # when a write last failed (a full disk: not retried at once)

    def path(self, encoded: Encoded, feed_id: int, subdir: str) -> tuple[Path, os.stat_result]:
        """The file holding ``encoded`` (of that feed subdir) and its stat, written now if this host has
        none that is whole (blocking: call it from a worker thread). Raises ``OSError`` when it cannot
        be written (``WriteFailed`` for ``RETRY_SECONDS`` after a failure, without trying)."""
        group = f"{feed_id}-{subdir}"
        if _GROUP.fullmatch(group) is None:
            raise ValueError(f"not a feed subdir: {group!r}")
        name = f"{group}.{file_name(encoded.etag)}"
        path = self.folder / name
        found = self._whole(name, path, encoded.size)
        if found is not None:
            return path, found
        with self._lock_for(name):
            found = self._whole(name, path, encoded.size)
            if found is None:
                failed_at = self._failed_at
                if failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS:
                    raise WriteFailed(f"writing to {self.folder} failed {time.monotonic() - failed_at:.0f} s ago")
                try:
                    found = self._write(path, encoded)
                except OSError:
                    self._failed_at = time.monotonic()
                    raise
                self._failed_at = None
                self._prune(keep=name, group=group)
            self._touched[name] = time.monotonic()
        return path, found

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            if len(self._writing) > 1_000:  # a bound, not a policy: names change with every version
                self._writing = {key: lock for key, lock in self._writing.items() if lock.locked()}
            return self._writing.setdefault(name, threading.Lock())

    def _whole(self, name: str, path: Path, size: int) -> os.stat_result | None:
        """``path``'s stat if it is there with all its bytes (a crash may leave a short file under its
        name), touched at most once a minute so that pruning leaves it alone."""
        try:
            found = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if found.st_size != size:
            return None
        touched = self._touched.get(name)
        now = time.monotonic()
        if touched is None or now - touched >= _TOUCH_EVERY:
            try:
                os.utime(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            self._touched[name] = now
        return found

    def _write(self, path: Path, encoded: Encoded) -> os.stat_result:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.folder, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                written = 0
                for chunk in encoded.iter_chunks():
                    handle.write(chunk)
                    written += len(chunk)
            if written != encoded.size:
                raise RuntimeError(f"{path.name}: produced {written} bytes, expected {encoded.size}")
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        finally:
            return_freed_memory(encoded.size)  # the chunks it was produced in (~100 MB kept otherwise)
        return path.stat()

    def _prune(self, keep: str, group: str) -> None:
        """Remove the group's older files nobody touched for ``SUPERSEDED_SECONDS``, and any file (or a
        crashed writer's temp file) nobody touched for ``UNUSED_SECONDS``. Never fails: what cannot be
        removed now is left for the next time."""
        now = time.time()
        for entry in listed(self.folder):
            if entry.name == keep:
                continue
            superseded = entry.name.startswith(group + ".")
            remove_if_unused(entry, now - (SUPERSEDED_SECONDS if superseded else UNUSED_SECONDS))
        forget = time.monotonic() - UNUSED_SECONDS
        self._touched = {name: at for name, at in self._touched.items() if at >= forget}


def file_name(etag: str) -> str:
    """An encoding's file name from its ETag (condagate's own: ``"HEX-KIND"``; anything else is a bug)."""
    found = _ETAG.fullmatch(etag)
    if found is None:
        raise ValueError(f"not an ETag of condagate's encodings: {etag!r}")
    return found.group(1)
