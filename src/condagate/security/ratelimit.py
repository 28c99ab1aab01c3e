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

    def failed(self, subject: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(subject, now)
            times.append(now)
            self._failures[subject] = times
            self._failures.move_to_end(subject)
            while len(self._failures) > self._max_subjects:
                self._failures.popitem(last=False)

    def succeeded(self, subject: str) -> None:
        with self._lock:
            self._failures.pop(subject, None)

    def _recent(self, subject: str, now: float) -> list[float]:
        return [t for t in self._failures.get(subject, []) if t > now - self.window]
