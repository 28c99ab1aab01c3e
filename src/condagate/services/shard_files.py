"""This host's shard bodies of large subdirs, one file per shard named by its digest, so that a worker
keeps a large subdir's shard keys and digests, not their bodies (~80 MB and ~110 MB of allocator
fragmentation per 500,000-record subdir, in every worker).

Files are content-addressed within a feed (``shards/<feed id>/<sha256 hex>.msgpack.zst``; a feed
never reads another's): whichever worker encodes a shard first writes it (temp name, then rename; on
one writer thread per process, after the answer that needed the shards), the others find it. A file
nobody read or wrote for ``UNUSED_SECONDS`` goes; a worker that still lists that shard encodes it
again from its records when asked for it (``SubdirSnapshot``); a superseded one is then gone (404, as
for a client holding a very old index before). Where nothing can be written (a full disk) the bodies
stay in memory, as for small subdirs.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from condagate.services.unused_files import listed, remove_if_unused

log = logging.getLogger(__name__)

UNUSED_SECONDS = 60 * 60
RETRY_SECONDS = 60.0  # after a failed write nothing is written for this long (bodies stay in memory)
_PRUNE_EVERY = 10 * 60.0  # seconds between two looks for unused files (every feed's), per process
_TOUCH_EVERY = 10 * 60.0  # a read file's mtime is moved at most this often per process
_DIGEST_HEX = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".msgpack.zst"
_TEMP_PREFIX = ".writing-"
_temp_names = itertools.count()


class ShardFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._guard = threading.Lock()
        self._touched: dict[str, float] = {}  # path -> when this process last wrote, found or touched it
        self._failed_at: float | None = None
        self._pruned_at: float | None = None
        # One writer per process: a large subdir's first shard index does not wait for its ~16,000 files.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="shard-files")

    def later(self, work: Callable[[], int]) -> Future[int]:
        """``work`` on this process's shard file writer."""
        return self._writer.submit(work)

    def close(self) -> None:
        """Stop the writer (what is queued is dropped: the bodies stay where they are)."""
        self._writer.shutdown(wait=True, cancel_futures=True)

    def prune_now_and_then(self) -> None:
        """``prune`` at most every ``_PRUNE_EVERY`` seconds per process (any caller may ask)."""
        now = time.monotonic()
        with self._guard:
            if self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY:
                return
            self._pruned_at = now
        self.prune()

    def prune(self) -> None:
        """Remove the files (and crashed writers' temp files) nobody read or wrote for ``UNUSED_SECONDS``
        in every feed's folder, and the folders left empty (a feed deleted by another process). Never
        fails: what cannot be removed now is left for the next time."""
        cutoff = time.time() - UNUSED_SECONDS
        for folder in listed(self.folder):
            if not folder.is_dir(follow_symlinks=False):
                continue
            for entry in listed(folder.path):
                remove_if_unused(entry, cutoff)
            with contextlib.suppress(OSError):  # not empty, gone, or changed lately: left alone
                if folder.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.rmdir(folder.path)

    def of_feed(self, feed_id: int) -> FeedShardFiles:
        return FeedShardFiles(self, feed_id)

    def forget_feed(self, feed_id: int) -> None:
        """Remove a deleted feed's files (a feed created later may get its id)."""
        shutil.rmtree(self.folder / str(int(feed_id)), ignore_errors=True)


class FeedShardFiles:
    """One feed's shard files."""

    def __init__(self, files: ShardFiles, feed_id: int) -> None:
        self._files = files
        self._feed_id = int(feed_id)
        self.folder = files.folder / str(self._feed_id)

    def later(self, work: Callable[[], int]) -> Future[int]:
        return self._files.later(work)

    def put(self, digest: bytes, body: bytes, replace: bool = False) -> bool:
        """Whether the shard is in its file now (found, or written; ``replace``: written even if found,
        a damaged file's bytes); ``False`` when it cannot be written (the caller keeps the body), without
        trying for ``RETRY_SECONDS`` after a failure."""
        files = self._files
        files.prune_now_and_then()  # whatever comes of this write: a full disk needs it most
        path = self._path(digest.hex())
        if not replace and self._found(path):
            return True
        failed_at = files._failed_at
        if failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS:
            return False
        try:
            self._write(path, body)
        except OSError as exc:
            files._failed_at = time.monotonic()
            log.warning("could not write shard files to %s (kept in memory for now): %s", self.folder, exc)
            return False
        files._failed_at = None
        return True

    def get(self, digest_hex: str) -> bytes | None:
        """The shard's bytes, or None when this feed has no whole file of that digest (the bytes are
        checked against it: a damaged file is as good as none)."""
        if _DIGEST_HEX.fullmatch(digest_hex) is None:
            return None
        path = self._path(digest_hex)
        try:
            body = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        if hashlib.sha256(body).hexdigest() != digest_hex:
            return None
        self._touch(path)
        return body

    def _path(self, digest_hex: str) -> Path:
        return self.folder / (digest_hex + _SUFFIX)

    def _found(self, path: Path) -> bool:
        try:
            found = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        if found.st_size == 0:
            return False
        self._touch(path)
        return True

    def _touch(self, path: Path) -> None:
        files = self._files
        key = str(path)
        now = time.monotonic()
        touched = files._touched.get(key)
        if touched is not None and now - touched < _TOUCH_EVERY:
            return
        with contextlib.suppress(OSError):
            os.utime(path)
        with files._guard:
            if len(files._touched) > 200_000:  # a bound, not a policy: digests change with every version
                files._touched = {}
            files._touched[key] = now

    def _write(self, path: Path, body: bytes) -> None:
        # Four system calls a file (~40 us): a large subdir's first shard build writes 16,000 of them
        # before it answers. The temp name is this process's and thread's own, so O_EXCL never meets one
        # of another writer's (a crashed one's is pruned).
        temp = str(self.folder / f"{_TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{next(_temp_names)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self._files._touched[str(path)] = time.monotonic()
