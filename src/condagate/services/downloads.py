"""Counts package downloads in memory and writes them in batches, off the download path."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, datetime

from condagate import telemetry
from condagate.store.db import Database
from condagate.store.downloads import CounterKey, PrincipalKey, add_downloads, add_principal_downloads

log = logging.getLogger(__name__)


class DownloadCounter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: Counter[CounterKey] = Counter()
        self._by_principal: Counter[PrincipalKey] = Counter()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def record(self, *, feed_id: int, subdir: str, filename: str, principal: str = "anonymous") -> None:
        name = filename.rsplit("-", 2)[0]  # NAME-VERSION-BUILD.ext: the name is all before the last two dashes
        today = datetime.now(UTC).date()
        key = (feed_id, subdir, filename, name, today)
        with self._lock:
            self._pending[key] += 1
            self._by_principal[(feed_id, filename, principal[:200], today)] += 1
        telemetry.download_counted()

    def flush(self) -> int:
        """Write pending counts; on a database error they are kept for the next flush."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, Counter()
                who, self._by_principal = self._by_principal, Counter()
            if not batch:
                telemetry.download_counts_flushed(0)
                return 0
            try:
                with self._db.write(quiet=True) as session:
                    add_downloads(session=session, counts=batch)
                    add_principal_downloads(session=session, counts=who)
            except Exception:
                log.exception("could not write %d download counts; will retry", len(batch))
                with self._lock:
                    self._pending.update(batch)
                    self._by_principal.update(who)
                return 0
            telemetry.download_counts_flushed(sum(batch.values()))
            return sum(batch.values())
