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


class AccessRecorder:
    def __init__(self, db: Database, keep_days: int = 90) -> None:
        self._db = db
        self._keep_days = keep_days
        self._pending: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pruned_on: object = None

    def record(
        self, *, api_key_id: int | None, principal: str, client: str, method: str, path: str, status: int
    ) -> None:
        self.record_many([(api_key_id, principal, client, method, path, status, time.time())])

    def record_many(self, requests: Iterable[tuple[int | None, str, str, str, str, int, float]]) -> None:
        """Requests as (api_key_id, principal, client, method, path, status, when: a ``time.time()``)."""
        entries: list[dict[str, object]] = [
            {
                "api_key_id": api_key_id,
                "principal": principal[:200],
                "at": datetime.fromtimestamp(when, UTC),
                "client": client[:64],
                "method": method[:10],
                "path": path[:2000],
                "status": status,
            }
            for api_key_id, principal, client, method, path, status, when in requests
        ]
        if not entries:
            return
        with self._lock:
            self._pending.extend(entries)
            if len(self._pending) > MAX_PENDING:
                del self._pending[: len(self._pending) - MAX_PENDING]

    def flush(self, last_used: dict[int, datetime] | None = None) -> int:
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch and not last_used:
                return 0
            try:
                with self._db.write(quiet=True) as session:
                    security_store.add_access_entries(session=session, entries=batch)
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
                    self._pending[:0] = batch
                return 0
            return len(batch)
