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

from condagate.services.subdir_snapshot import Encoded

log = logging.getLogger(__name__)

UNUSED_SECONDS = 15 * 60
SUPERSEDED_SECONDS = 3 * 60
_TOUCH_EVERY = 60.0  # seconds: a served file's mtime is moved at most this often (one utime per minute)
_GROUP = re.compile(r"[0-9]{1,19}-[a-z0-9-]{1,32}")  # feed id, subdir
_ETAG = re.compile(r'"([0-9a-f]{16,64}-[a-z0-9]{1,16})"')
_TEMP_PREFIX = ".writing-"


class EncodedFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._touched: dict[str, float] = {}  # file name -> when this process last touched it
        self._writing = threading.Lock()  # one file written at a time per process; others wait for it

    def path(self, encoded: Encoded, feed_id: int, subdir: str) -> Path:
        """The file holding ``encoded`` (of that feed subdir), written now if this host has none
        (blocking: call it from a worker thread)."""
        group = f"{feed_id}-{subdir}"
        if _GROUP.fullmatch(group) is None:
            raise ValueError(f"not a feed subdir: {group!r}")
        name = f"{group}.{file_name(encoded.etag)}"
        path = self.folder / name
        if self._fresh(name, path):
            return path
        with self._writing:
            if not path.is_file():
                self._write(path, encoded)
                self._prune(keep=name, group=group)
            self._touched[name] = time.monotonic()
        return path

    def _fresh(self, name: str, path: Path) -> bool:
        """Whether ``path`` is there (touched, at most once a minute, so that pruning leaves it alone)."""
        touched = self._touched.get(name)
        now = time.monotonic()
        if touched is not None and now - touched < _TOUCH_EVERY:
            return path.is_file()
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        self._touched[name] = now
        return True

    def _write(self, path: Path, encoded: Encoded) -> None:
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

    def _prune(self, keep: str, group: str) -> None:
        """Remove the group's older files nobody touched for ``SUPERSEDED_SECONDS``, and any file (or a
        crashed writer's temp file) nobody touched for ``UNUSED_SECONDS``."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name == keep:
                    continue
                superseded = entry.name.startswith(group + ".")
                cutoff = now - (SUPERSEDED_SECONDS if superseded else UNUSED_SECONDS)
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        self._touched.pop(entry.name, None)
                except FileNotFoundError:
                    continue  # another worker removed it


def file_name(etag: str) -> str:
    """An encoding's file name from its ETag (condagate's own: ``"HEX-KIND"``; anything else is a bug)."""
    found = _ETAG.fullmatch(etag)
    if found is None:
        raise ValueError(f"not an ETag of condagate's encodings: {etag!r}")
    return found.group(1)
