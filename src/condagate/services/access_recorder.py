"""The access log of API keys and users, and keys' last-used times: kept in memory and written in
batches with the download counts, never on the request path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from condagate.store import security as security_store
from condagate.store.db import Database

log = logging.getLogger(__name__)
MAX_PENDING = 50_000  # beyond this (a database outage under load) the oldest entries are dropped


# Who (key, principal), from where, method, path, status: requests alike in all of them are one row.
_Request = tuple[int | None, str, str, str, str, int]


class AccessRecorder:
    def __init__(self, db: Database, keep_days: int = 90) -> None:
        self._db = db
        self._keep_days = keep_days
        # Requests not written yet, alike ones counted together: [count, first time, last time].
        self._pending: dict[_Request, list[float]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pruned_on: object = None

    def record(
        self, *, api_key_id: int | None, principal: str, client: str, method: str, path: str, status: int
    ) -> None:
        self.record_many([(api_key_id, principal, client, method, path, status, time.time())])

    def record_many(self, requests: Iterable[tuple[int | None, str, str, str, str, int, float]]) -> None:
        """Requests as (api_key_id, principal, client, method, path, status, when: a ``time.time()``)."""
        with self._lock:
            pending = self._pending
            for api_key_id, principal, client, method, path, status, when in requests:
                key = (api_key_id, principal[:200], client[:64], method[:10], path[:2000], status)
                seen = pending.get(key)
                if seen is None:
                    if len(pending) >= MAX_PENDING:
                        del pending[next(iter(pending))]  # the oldest
                    pending[key] = [1, when, when]
                else:
                    seen[0] += 1
                    seen[2] = when

    @staticmethod
    def _rows(batch: dict[_Request, list[float]]) -> list[dict[str, object]]:
        return [
            {
                "api_key_id": api_key_id,
                "principal": principal,
                "client": client,
                "method": method,
                "path": path,
                "status": status,
                "request_count": int(count),
                "at": datetime.fromtimestamp(last, UTC),
                "first_at": None if count == 1 else datetime.fromtimestamp(first, UTC),
            }
            for (api_key_id, principal, client, method, path, status), (count, first, last) in batch.items()
        ]

    def flush(self, last_used: dict[int, datetime] | None = None) -> int:
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch and not last_used:
                return 0
            try:
                with self._db.write(quiet=True) as session:
                    security_store.add_access_entries(session=session, entries=self._rows(batch))
                    if last_used:
                        security_store.touch_keys(session=session, last_used=last_used)
                    today = datetime.now(UTC).date()
                    if self._pruned_on != today:
                        security_store.prune_access_log(
                            session=session, before=datetime.now(UTC) - timedelta(days=self._keep_days)
                        )
                        self._pruned_on = today
            except Exception:
                log.exception("could not write %d access-log entries; will retry", len(batch))
                with self._lock:
                    for key, (count, first, last) in batch.items():
                        seen = self._pending.setdefault(key, [0, first, last])
                        seen[0] += count
                        seen[1] = min(seen[1], first)
                        seen[2] = max(seen[2], last)
                return 0
            return len(batch)
