"""Per-process memory of recent channel lookups, so that a burst of package downloads does not ask
the database the same question thousands of times a second.

A feed subdir checked against the database less than ``FRESH_SECONDS`` ago is reused as it was:
a forced re-upload or a deleted feed in another worker process is seen by downloads here within
that time. Repodata requests always check (an upload must be visible at once).
"""

from __future__ import annotations

import time
from typing import Any

FRESH_SECONDS = 1.0


class RecentLookups:
    def __init__(self) -> None:
        self._subdirs: dict[tuple[str, str], tuple[Any, float]] = {}
        self._files: dict[tuple[str, str, str], tuple[Any, float]] = {}
        self._cached_files: dict[tuple[int, str, str], str] = {}

    def remember_subdir(self, feed_name: str, subdir: str, located: Any) -> None:
        self._subdirs[(feed_name, subdir)] = (located, time.monotonic())

    def recent_subdir(self, feed_name: str, subdir: str) -> Any | None:
        found = self._subdirs.get((feed_name, subdir))
        if found is None or time.monotonic() - found[1] > FRESH_SECONDS:
            return None
        return found[0]

    def remember_file(self, feed_name: str, subdir: str, filename: str, located: Any) -> None:
        if len(self._files) > 100_000:  # a bound, not a policy: entries only live a second anyway
            self._files.clear()
        self._files[(feed_name, subdir, filename)] = (located, time.monotonic())

    def recent_file(self, feed_name: str, subdir: str, filename: str) -> Any | None:
        found = self._files.get((feed_name, subdir, filename))
        if found is None or time.monotonic() - found[1] > FRESH_SECONDS:
            return None
        return found[0]

    def forget_feed(self, feed_name: str) -> None:
        for key in [key for key in self._subdirs if key[0] == feed_name]:
            self._subdirs.pop(key, None)
        for file_key in [key for key in self._files if key[0] == feed_name]:
            self._files.pop(file_key, None)

    def remember_cached_file(self, connector_id: int, subdir: str, filename: str, sha256: str) -> None:
        self._cached_files[(connector_id, subdir, filename)] = sha256

    def cached_file(self, connector_id: int, subdir: str, filename: str) -> str | None:
        return self._cached_files.get((connector_id, subdir, filename))
