"""Counts package downloads in memory and writes them in batches, off the download path."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, datetime

from condagate.store.db import Database
from condagate.store.downloads import CounterKey, add_downloads

log = logging.getLogger(__name__)


class DownloadCounter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: Counter[CounterKey] = Counter()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def record(self, *, feed_id: int, subdir: str, filename: str) -> None:
        name = filename.rsplit("-", 2)[0]  # NAME-VERSION-BUILD.ext: the name is all before the last two dashes
        key = (feed_id, subdir, filename, name, datetime.now(UTC).date())
        with self._lock:
            self._pending[key] += 1

    def flush(self) -> int:
        """Write pending counts; on a database error they are kept for the next flush."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, Counter()
            if not batch:
                return 0
            try:
                with self._db.write() as session:
                    add_downloads(session=session, counts=batch)
            except Exception:
                log.exception("could not write %d download counts; will retry", len(batch))
                with self._lock:
                    self._pending.update(batch)
                return 0
            return sum(batch.values())
