"""Counting failures (wrong keys, wrong passwords) per client address or user name, per process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class FailureLimiter:
    """At most ``limit`` failures per ``window`` seconds for one subject; then refused until the
    window of the oldest failure has passed. Remembers at most ``max_subjects`` subjects."""

    def __init__(self, limit: int, window: float, max_subjects: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self._max_subjects = max_subjects
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, subject: str) -> float:
        """Seconds until ``subject`` may try again; 0 when it may try now."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(subject, now)
            if len(times) < self.limit:
                return 0.0
            return max(0.0, times[0] + self.window - now)

    def blocked_for(self, subject: str) -> float:
        """``retry_after``, with no lock and no copy for a subject with fewer failures on record than
        the limit (every right key and password): what the hot path asks."""
        times = self._failures.get(subject)
        if times is None or len(times) < self.limit:
            return 0.0
        return self.retry_after(subject)

    def attempt(self, subject: str) -> float:
        """Count an attempt as a failure before it is checked (so that concurrent attempts cannot
        all slip under the limit); ``forgive`` takes it back when it succeeds. Returns the seconds to
        wait, without counting, when the subject is over the limit."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(subject, now)
            if len(times) >= self.limit:
                return max(0.001, times[0] + self.window - now)
            times.append(now)
            self._remember(subject, times)
            return 0.0

    def forgive(self, subject: str) -> None:
        """Take back the last counted attempt (it succeeded); earlier failures still count."""
        with self._lock:
            times = self._failures.get(subject)
            if times:
                times.pop()

    def failed(self, subject: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(subject, now)
            times.append(now)
            self._remember(subject, times)

    def _remember(self, subject: str, times: list[float]) -> None:
        self._failures[subject] = times
        self._failures.move_to_end(subject)
        while len(self._failures) > self._max_subjects:
            self._failures.popitem(last=False)

    def _recent(self, subject: str, now: float) -> list[float]:
        return [t for t in self._failures.get(subject, []) if t > now - self.window]
