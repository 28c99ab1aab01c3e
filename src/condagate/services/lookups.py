"""Per-process memory of recent channel lookups, so that a burst of package downloads does not ask
the database the same question thousands of times a second.

A feed subdir checked against the database less than ``FRESH_SECONDS`` ago is reused as it was:
a forced re-upload or a deleted feed in another worker process is seen by downloads here within
that time. Repodata requests always check (an upload must be visible at once).

Ready subdirs (``ready_subdir``) are what ``web.fast_lane`` serves from: a feed subdir as the
channel routes last resolved it, with the change signal (``store.change_signal``) as it was *before*
that resolution read the database. While the signal has not moved, nothing was committed since by any
writer it covers, so the entry is current; where it does not cover every writer now (PostgreSQL while
its change listener cannot vouch), the signal's ``max_age`` bounds the trust. A proxy feed's entry also
carries what the signal does not cover, the state of its upstreams (``services.channel.UpstreamTerms``),
which the lane checks itself.
Ready files (``ready_file``) are the same for one of a feed's own package files, as a download
through the route last located it from the database: a process that serves downloads and no
repodata (or whose subdir entry a write elsewhere made stale) reads the database once per file
and change, not once per download.
"""

from __future__ import annotations

import time
from typing import Any

from condagate.store.change_signal import ChangeSignal

FRESH_SECONDS = 1.0


class RecentLookups:
    def __init__(self, changes: ChangeSignal | None = None) -> None:
        # The bound on ready entries comes from the signal, which knows whether its listener vouches
        # now; without one, the callers' ``max_age`` applies.
        self._changes = changes
        self._subdirs: dict[tuple[str, str], tuple[Any, float]] = {}
        self._files: dict[tuple[str, str, str], tuple[Any, float]] = {}
        self._cached_files: dict[tuple[int, str, str], str] = {}
        # (feed name as asked, subdir) -> (resolved subdir, change signal before the read, when, files)
        self._ready: dict[tuple[str, str], tuple[Any, int, float, dict[str, Any]]] = {}
        # (feed name as asked, subdir, file name) -> (feed, sha256, change signal before the read, when)
        self._ready_files: dict[tuple[str, str, str], tuple[Any, str, int, float]] = {}

    def remember_ready(self, feed_name: str, subdir: str, located: Any, mark: int) -> None:
        if len(self._ready) > 10_000:  # a bound, not a policy: entries are replaced on every change
            self._ready.clear()
        self._ready[(feed_name, subdir)] = (located, mark, time.monotonic(), {})

    def ready_subdir(self, feed_name: str, subdir: str, mark: int, max_age: float | None = None) -> Any | None:
        """The entry for ``(feed_name, subdir)`` while the change signal still reads ``mark`` (and, where
        the signal does not cover every writer now, while it is younger than its ``max_age``):
        (located, per-entry memo of files) or None."""
        found = self._ready.get((feed_name, subdir))
        if found is None or found[1] != mark or self._too_old(found[2], max_age):
            return None
        return found[0], found[3]

    def remember_ready_file(
        self, feed_name: str, subdir: str, filename: str, feed: Any, sha256: str, mark: int
    ) -> None:
        if len(self._ready_files) > 100_000:  # a bound, not a policy
            self._ready_files.clear()
        self._ready_files[(feed_name, subdir, filename)] = (feed, sha256, mark, time.monotonic())

    def ready_file(
        self, feed_name: str, subdir: str, filename: str, mark: int, max_age: float | None = None
    ) -> tuple[Any, str] | None:
        """(feed, sha256) of one of the feed's own files while the change signal still reads ``mark``
        (and, as for ``ready_subdir``, while young enough), or None."""
        found = self._ready_files.get((feed_name, subdir, filename))
        if found is None or found[2] != mark or self._too_old(found[3], max_age):
            return None
        return found[0], found[1]

    def _too_old(self, remembered_at: float, max_age: float | None) -> bool:
        """``max_age``: the caller's bound, used only without a signal (unit tests); with one, the signal's."""
        bound = max_age if self._changes is None else self._changes.max_age()
        return bound is not None and time.monotonic() - remembered_at > bound

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
        for ready_key in [key for key in self._ready if key[0] == feed_name]:
            self._ready.pop(ready_key, None)
        for ready_file_key in [key for key in self._ready_files if key[0] == feed_name]:
            self._ready_files.pop(ready_file_key, None)
        for key in [key for key in self._subdirs if key[0] == feed_name]:
            self._subdirs.pop(key, None)
        for file_key in [key for key in self._files if key[0] == feed_name]:
            self._files.pop(file_key, None)

    def remember_cached_file(self, connector_id: int, subdir: str, filename: str, sha256: str) -> None:
        self._cached_files[(connector_id, subdir, filename)] = sha256

    def cached_file(self, connector_id: int, subdir: str, filename: str) -> str | None:
        return self._cached_files.get((connector_id, subdir, filename))
