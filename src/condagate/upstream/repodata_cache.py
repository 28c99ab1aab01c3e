"""Upstream repodata kept in memory and on disk, refreshed with conditional requests.

Policy (pulp's words): *on-demand*. A subdir is fetched the first time a client asks for it; after
that it is served from the cache and re-checked in the background once it is older than the
connector's cache lifetime (a lifetime of 0 re-checks on every request, in the foreground). When a
check fails, the last good repodata keeps being served and the error is recorded (stale).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from condagate.conda.repodata import compress_zstd
from condagate.conda.upstream_repodata import UpstreamRecords, parse_upstream_repodata
from condagate.errors import CondagateError
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_fetch import decompress_zstd, fetch_repodata

log = logging.getLogger(__name__)
_generations = itertools.count(1)

HealthRecorder = Callable[..., None]


@dataclass(frozen=True)
class UpstreamSnapshot:
    connector_id: int
    subdir: str
    records: dict[str, tuple[str, bytes]]
    generation: int
    etag: str
    checked_at: float  # time.time() of the last successful check (200 or 304)
    error: str = ""
    error_at: float | None = None

    @property
    def stale(self) -> bool:
        return bool(self.error)


class UpstreamRepodataCache:
    def __init__(self, root: Path, http: httpx.Client, record_health: HealthRecorder) -> None:
        self._root = root
        self._http = http
        self._record_health = record_health
        self._snapshots: dict[tuple[int, str], UpstreamSnapshot] = {}
        self._locks: dict[tuple[int, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._refreshing: set[tuple[int, str]] = set()

    def _lock(self, key: tuple[int, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _folder(self, connector: ConnectorConfig, subdir: str) -> Path:
        return self._root / str(connector.id) / subdir

    def cached_subdirs(self, connector_id: int) -> list[str]:
        """Subdirs of the connector held in memory or on disk (clients asked for them before)."""
        on_disk = self._root / str(connector_id)
        found = {subdir for cid, subdir in self._snapshots if cid == connector_id}
        if on_disk.is_dir():
            found.update(path.parent.name for path in on_disk.glob("*/repodata.json.zst"))
        return sorted(found)

    def peek(self, connector_id: int, subdir: str) -> UpstreamSnapshot | None:
        return self._snapshots.get((connector_id, subdir))

    def get(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot:
        """The subdir's records; fetched in the foreground only when nothing is cached yet."""
        key = (connector.id, subdir)
        snapshot = self._snapshots.get(key)
        if snapshot is None:
            with self._lock(key):
                snapshot = self._snapshots.get(key) or self._load(connector, subdir)
                if snapshot is None:
                    snapshot = self._refresh(connector, subdir, None)
                self._snapshots[key] = snapshot
        age = time.time() - snapshot.checked_at
        if connector.cache_minutes <= 0:
            with self._lock(key):
                snapshot = self._refresh(connector, subdir, self._snapshots[key])
                self._snapshots[key] = snapshot
        elif age > connector.cache_minutes * 60 or (snapshot.stale and age > 30):
            self._refresh_in_background(connector, subdir)
        return snapshot

    def refresh(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot:
        """Check the upstream now (the UI's and CLI's "refresh")."""
        key = (connector.id, subdir)
        with self._lock(key):
            snapshot = self._refresh(connector, subdir, self._snapshots.get(key) or self._load(connector, subdir))
            self._snapshots[key] = snapshot
            return snapshot

    def forget(self, connector_id: int, remove_files: bool = False) -> None:
        for key in [key for key in self._snapshots if key[0] == connector_id]:
            del self._snapshots[key]
        if remove_files:
            shutil.rmtree(self._root / str(connector_id), ignore_errors=True)

    def _refresh_in_background(self, connector: ConnectorConfig, subdir: str) -> None:
        key = (connector.id, subdir)
        with self._guard:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def run() -> None:
            try:
                self.refresh(connector, subdir)
            except Exception:
                log.exception("background refresh of %s/%s failed", connector.name, subdir)
            finally:
                with self._guard:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name=f"refresh-{connector.name}-{subdir}", daemon=True).start()

    def _refresh(self, connector: ConnectorConfig, subdir: str, current: UpstreamSnapshot | None) -> UpstreamSnapshot:
        started = time.perf_counter()
        try:
            fetched = fetch_repodata(self._http, connector, subdir, current.etag if current else "")
            if fetched.body is None and current is not None:
                snapshot = replace(current, checked_at=time.time(), error="", error_at=None)
            else:
                parsed = (
                    UpstreamRecords(subdir, {})
                    if fetched.missing or fetched.body is None
                    else parse_upstream_repodata(fetched.body, connector.name_filter)
                )
                if fetched.body:
                    self._save(connector, subdir, fetched.compressed or compress_zstd(fetched.body), fetched.etag)
                snapshot = UpstreamSnapshot(
                    connector.id, subdir, parsed.records, next(_generations), fetched.etag, time.time()
                )
                del fetched
        except CondagateError as exc:
            elapsed = int((time.perf_counter() - started) * 1000)
            self._record_health(
                connector_id=connector.id, subdir=subdir, ok=False, response_ms=elapsed, error=exc.message
            )
            log.warning("connector %s, subdir %s: %s", connector.name, subdir, exc.message)
            if current is None:
                raise
            return replace(current, error=exc.message, error_at=time.time())
        elapsed = int((time.perf_counter() - started) * 1000)
        self._record_health(
            connector_id=connector.id,
            subdir=subdir,
            ok=True,
            response_ms=elapsed,
            etag=snapshot.etag,
            records=len(snapshot.records),
        )
        return snapshot

    def _save(self, connector: ConnectorConfig, subdir: str, compressed: bytes, etag: str) -> None:
        """Keep the last good repodata on disk (compressed) so a restart with the upstream down still serves."""
        folder = self._folder(connector, subdir)
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".repodata.json.zst.{os.getpid()}.tmp"
        temp.write_bytes(compressed)
        os.replace(temp, folder / "repodata.json.zst")
        meta = folder / f".meta.json.{os.getpid()}.tmp"
        meta.write_text(json.dumps({"etag": etag, "url": connector.url, "saved_at": datetime.now(UTC).isoformat()}))
        os.replace(meta, folder / "meta.json")

    def _load(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot | None:
        folder = self._folder(connector, subdir)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("url") != connector.url:
                return None
            body = decompress_zstd((folder / "repodata.json.zst").read_bytes())
            parsed = parse_upstream_repodata(body, connector.name_filter)
        except (OSError, ValueError, CondagateError):
            return None
        # Loaded from disk: serve it, but check the upstream soon (checked_at = 0 makes it due).
        return UpstreamSnapshot(
            connector.id, subdir, parsed.records, next(_generations), str(meta.get("etag", "")), 0.0
        )
