"""Cross-process locks on files in the data folder (``flock``): one upstream download per file,
whether the competing requests land in one worker process or in several."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


class FileLock:
    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / (hashlib.sha256(name.encode()).hexdigest()[:40] + ".lock")
        self._fd: int | None = None

    async def acquire(self, timeout: float) -> bool:
        """Wait (without blocking the event loop) until the lock is ours; False after ``timeout``."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        delay = 0.01
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        return False
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.2)
                    continue
                self._fd = fd
                return True
        except BaseException:  # cancelled while waiting
            os.close(fd)
            raise

    def __del__(self) -> None:
        # A response that was never sent (the client left first) must not keep the file locked.
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def held(folder: Path, name: str) -> Iterator[None]:
    """Hold the named lock for a short critical section (blocking; for worker threads, not the event loop)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(name.encode()).hexdigest()[:40] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
