"""Upstream repodata kept in memory and on disk, refreshed with conditional requests.

Policy (pulp's words): *on-demand*. A subdir is fetched the first time a client asks for it; after
that it is served from the cache and re-checked once it is older than the connector's cache
lifetime. Nothing that serves requests ever waits on an upstream without a bound:

- Fetches run on a small executor of their own per connector (``concurrency`` threads), never on
  the threads that serve requests, and each has a deadline for the whole fetch (the connector's
  timeout).
- Single flight: concurrent requests for one connector subdir share one fetch and its outcome,
  failures included. Callers get the fetch's future and decide how long to wait (requests wait
  asynchronously; see ``services.channel``).
- A failure opens a circuit breaker for the subdir: no new fetch before ``retry_at`` (back-off
  doubling from ``backoff_seconds`` up to ``max_backoff_seconds``); meanwhile requests get the last
  good copy at once (stale), or learn at once that there is none.
- Cached data is never held back behind a refresh (stale-while-revalidate), also with a lifetime of
  0, where a request waits for the revalidation at most ``revalidate_wait_seconds``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from condagate import telemetry
from condagate.conda.repodata import compress_zstd
from condagate.conda.upstream_repodata import (
    UpstreamRecords,
    checks_fingerprint,
    parse_upstream_repodata,
    reload_checked_repodata,
)
from condagate.errors import CondagateError, UpstreamUnavailable
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_fetch import decompress_zstd, fetch_repodata

log = logging.getLogger(__name__)
_generations = itertools.count(1)

HealthRecorder = Callable[..., None]
Key = tuple[int, str]


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


@dataclass(frozen=True)
class Breaker:
    """A subdir whose last fetch failed: no new fetch before ``retry_at`` (time.time())."""

    error: str
    failing_since: float
    retry_at: float
    failures: int


@dataclass(frozen=True)
class Pending:
    """A fetch a request may wait for: ``wait`` seconds at most."""

    future: Future[UpstreamSnapshot]
    wait: float


@dataclass(frozen=True)
class UpstreamView:
    """What a request can use of one connector subdir, without waiting."""

    snapshot: UpstreamSnapshot | None
    pending: Pending | None = None
    error: str = ""  # why there is no data, or why the data is stale


class UpstreamRepodataCache:
    def __init__(
        self,
        root: Path,
        http: httpx.Client,
        record_health: HealthRecorder,
        *,
        concurrency: int = 2,
        backoff_seconds: float = 30.0,
        max_backoff_seconds: float = 600.0,
        revalidate_wait_seconds: float = 0.5,
        record_listing: Callable[[int, str, set[str]], None] | None = None,
    ) -> None:
        self._record_listing = record_listing
        self._root = root
        self._http = http
        self._record_health = record_health
        self._concurrency = concurrency
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._revalidate_wait = revalidate_wait_seconds
        self._snapshots: dict[Key, UpstreamSnapshot] = {}
        self._inflight: dict[Key, Future[UpstreamSnapshot]] = {}
        self._breakers: dict[Key, Breaker] = {}
        self._executors: dict[int, ThreadPoolExecutor] = {}
        self._disk_checked: set[Key] = set()
        self._guard = threading.Lock()
        self._load_locks: dict[Key, threading.Lock] = {}
        self._configs: dict[int, ConnectorConfig] = {}  # each connector's settings as last seen here

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

    def breaker(self, connector_id: int, subdir: str) -> Breaker | None:
        return self._breakers.get((connector_id, subdir))

    def _observe(self, connector: ConnectorConfig) -> None:
        """Settings come from the database with every request, so a connector changed by any worker
        process shows here: what was fetched from another address or with other credentials, or parsed
        under other filters, is dropped (the copy on disk is parsed again, if it is from the same URL)."""
        with self._guard:
            known = self._configs.get(connector.id)
            if known == connector:
                return
            self._configs[connector.id] = connector
        if known is not None and _fetched_with(known) != _fetched_with(connector):
            self.forget(connector.id)

    def _current(self, connector: ConnectorConfig) -> bool:
        """Whether a fetch with these settings still counts (call with the guard held)."""
        return _fetched_with(self._configs.get(connector.id, connector)) == _fetched_with(connector)

    def view(self, connector: ConnectorConfig, subdir: str, *, refresh: bool = True) -> UpstreamView:
        """What is cached now, and the fetch to wait for when one is due (started here, once)."""
        self._observe(connector)
        key = (connector.id, subdir)
        snapshot = self._snapshots.get(key) or self._load_once(connector, subdir)
        now = time.time()
        breaker = self._breakers.get(key)
        future = self._inflight.get(key)
        if future is None and refresh and (breaker is None or breaker.retry_at <= now):
            lifetime = connector.cache_minutes * 60
            if snapshot is None or connector.cache_minutes <= 0 or now - snapshot.checked_at > lifetime:
                future = self._start(connector, subdir)
        error = breaker.error if breaker is not None else snapshot.error if snapshot is not None else ""
        if future is None:
            return UpstreamView(snapshot, None, error)
        if snapshot is None:
            # Nothing to serve yet: worth waiting for, up to the fetch's own deadline.
            return UpstreamView(None, Pending(future, connector.timeout_seconds + 1.0), error)
        if connector.cache_minutes <= 0:
            return UpstreamView(snapshot, Pending(future, self._revalidate_wait), error)
        return UpstreamView(snapshot, None, error)  # revalidating in the background

    def get(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot:
        """Blocking form for callers that may wait (mirroring, the CLI's refresh): the fetch's
        outcome, bounded by its deadline; raises when there is no data."""
        view = self.view(connector, subdir)
        if view.pending is not None:
            try:
                return view.pending.future.result(timeout=view.pending.wait)
            except CondagateError:
                if view.snapshot is None:
                    raise
            except TimeoutError:
                pass
        snapshot = self._snapshots.get((connector.id, subdir)) or view.snapshot
        if snapshot is None:
            raise UpstreamUnavailable(view.error or f"connector {connector.name!r} has no data for {subdir} yet")
        return snapshot

    def refresh(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot:
        """Check the upstream now, back-off or not (the UI's and CLI's "refresh")."""
        self._observe(connector)
        key = (connector.id, subdir)
        with self._guard:
            self._breakers.pop(key, None)
        future = self._inflight.get(key) or self._start(connector, subdir)
        return future.result(timeout=connector.timeout_seconds + 5.0)

    def forget(self, connector_id: int, remove_files: bool = False) -> None:
        with self._guard:
            for mapping in (self._snapshots, self._breakers, self._inflight):
                for key in [key for key in mapping if key[0] == connector_id]:
                    del mapping[key]  # a fetch in flight finishes, but its outcome is not kept
            self._disk_checked = {key for key in self._disk_checked if key[0] != connector_id}
        if remove_files:
            shutil.rmtree(self._root / str(connector_id), ignore_errors=True)

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, connector: ConnectorConfig, subdir: str) -> Future[UpstreamSnapshot]:
        key = (connector.id, subdir)
        with self._guard:
            running = self._inflight.get(key)
            if running is not None:
                return running
            executor = self._executors.get(connector.id)
            if executor is None:
                executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix=f"upstream-{connector.id}")
                self._executors[connector.id] = executor
            future = executor.submit(self._fetch, connector, subdir)
            self._inflight[key] = future
        return future

    def _fetch(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot:
        key = (connector.id, subdir)
        try:
            current = self._snapshots.get(key)
            snapshot = self._refresh(connector, subdir, current)  # opens the breaker on a failure
            with self._guard:
                if self._current(connector):  # not changed meanwhile
                    self._snapshots[key] = snapshot
                    if not snapshot.stale:
                        self._breakers.pop(key, None)
            return snapshot
        except CondagateError:
            raise
        except Exception as exc:  # never let one subdir's surprise escape as a 500 elsewhere
            log.exception("fetching %s/%s failed", connector.name, subdir)
            with self._guard:
                self._open_breaker(key, "unexpected error while fetching")
            raise UpstreamUnavailable(f"connector {connector.name!r}: unexpected error while fetching") from exc
        finally:
            with self._guard:
                if self._current(connector):  # else forgotten: a newer fetch may own the key
                    self._inflight.pop(key, None)
                telemetry.connector_breakers(connector.name, sum(1 for cid, _ in self._breakers if cid == connector.id))

    def _open_breaker(self, key: Key, error: str) -> Breaker:
        now = time.time()
        previous = self._breakers.get(key)
        failures = previous.failures + 1 if previous is not None else 1
        delay = min(self._max_backoff, self._backoff * 2 ** min(failures - 1, 30))
        since = previous.failing_since if previous is not None else now
        breaker = Breaker(error, since, now + delay, failures)
        self._breakers[key] = breaker
        return breaker

    def _load_once(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot | None:
        """The last good copy on disk, read once per process (parsing is CPU, not upstream I/O)."""
        key = (connector.id, subdir)
        if key in self._disk_checked:
            return self._snapshots.get(key)
        with self._guard:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._disk_checked:
                loaded = self._load(connector, subdir)
                with self._guard:
                    if loaded is not None and key not in self._snapshots:
                        self._snapshots[key] = loaded
                    self._disk_checked.add(key)
        return self._snapshots.get(key)

    def _refresh(self, connector: ConnectorConfig, subdir: str, current: UpstreamSnapshot | None) -> UpstreamSnapshot:
        started = time.perf_counter()
        dropped: tuple[int, str] | None = None  # (count, examples as JSON) when the records were parsed
        try:
            fetched = fetch_repodata(self._http, connector, subdir, current.etag if current else "")
            if fetched.body is None and current is not None:
                snapshot = replace(current, checked_at=time.time(), error="", error_at=None)
            else:
                parsed = (
                    UpstreamRecords(subdir, {})
                    if fetched.missing or fetched.body is None
                    else parse_upstream_repodata(
                        # records unchanged since the last fetch are not checked again
                        fetched.body, connector.name_filter, checked=current.records if current else None
                    )
                )
                if parsed.dropped:
                    log.warning(
                        "connector %s, subdir %s: dropped %d unservable records, e.g. %s",
                        connector.name, subdir, parsed.dropped, parsed.drop_reasons[:3],
                    )
                dropped = (parsed.dropped, json.dumps([list(reason) for reason in parsed.drop_reasons]))
                if fetched.body:
                    compressed = fetched.compressed or compress_zstd(fetched.body)
                    self._save(connector, subdir, compressed, fetched.etag)
                    self._save_checked(connector, subdir, compressed, parsed.not_as_written)
                snapshot = UpstreamSnapshot(
                    connector.id, subdir, parsed.records, next(_generations), fetched.etag, time.time()
                )
                del fetched
        except CondagateError as exc:
            elapsed = int((time.perf_counter() - started) * 1000)
            with self._guard:
                if self._current(connector):
                    breaker = self._open_breaker((connector.id, subdir), exc.message)
                else:  # the connector changed meanwhile: this failure says nothing about its new settings
                    breaker = Breaker(exc.message, time.time(), time.time(), 1)
            self._record_health(
                connector_id=connector.id,
                subdir=subdir,
                ok=False,
                response_ms=elapsed,
                error=exc.message,
                failing_since=datetime.fromtimestamp(breaker.failing_since, UTC),
                next_try_at=datetime.fromtimestamp(breaker.retry_at, UTC),
            )
            log.warning("connector %s, subdir %s: %s", connector.name, subdir, exc.message)
            if current is None:
                raise
            return replace(current, error=exc.message, error_at=time.time())
        elapsed = int((time.perf_counter() - started) * 1000)
        if self._record_listing is not None and (current is None or snapshot.generation != current.generation):
            try:
                self._record_listing(connector.id, subdir, set(snapshot.records))
            except Exception:  # bookkeeping of removed files must not fail a good fetch
                log.exception("could not note which cached files %s/%s still lists", connector.name, subdir)
        self._record_health(
            connector_id=connector.id,
            subdir=subdir,
            ok=True,
            response_ms=elapsed,
            etag=snapshot.etag,
            records=len(snapshot.records),
            dropped=dropped,
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

    def _save_checked(
        self, connector: ConnectorConfig, subdir: str, compressed: bytes, not_as_written: frozenset[str] | None
    ) -> None:
        """Note which records of the kept copy were not served as written, so that a restart reads it
        again without checking every record (``reload_checked_repodata``). Bound to the copy's digest
        and to the code of the checks; readable and writable by condagate's user only."""
        index = self._folder(connector, subdir) / _CHECKED
        fingerprint = checks_fingerprint()
        temp = index.with_name(f".{_CHECKED}.{os.getpid()}.tmp")
        try:
            if not_as_written is None or not fingerprint:
                index.unlink(missing_ok=True)  # the copy it described is gone
                return
            content = {
                "zst_sha256": hashlib.sha256(compressed).hexdigest(),
                "checks": fingerprint,
                "not_as_written": sorted(not_as_written),
            }
            temp.unlink(missing_ok=True)
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
                json.dump(content, file)  # ASCII: any file name, lone surrogates included, reads back the same
            os.replace(temp, index)
        except OSError as exc:  # only how fast a restart reads the copy depends on it
            log.warning("could not note the checked records of %s/%s: %s", connector.name, subdir, exc)

    def _reload_checked(
        self, connector: ConnectorConfig, subdir: str, compressed: bytes, body: bytes
    ) -> UpstreamRecords | None:
        """The kept copy without the per-record checks, when condagate's own note says it checked these
        very bytes with this very code; None otherwise (then every record is checked again)."""
        index = self._folder(connector, subdir) / _CHECKED
        try:
            status = index.stat()
            if status.st_uid != os.geteuid() or status.st_mode & 0o077:  # not condagate's own note
                return None
            content = json.loads(index.read_text())
        except (OSError, ValueError):
            return None
        listed = content.get("not_as_written") if isinstance(content, dict) else None
        if (
            not isinstance(listed, list)
            or not all(isinstance(filename, str) for filename in listed)
            or content.get("checks") != checks_fingerprint()
            or not content["checks"]
            or content.get("zst_sha256") != hashlib.sha256(compressed).hexdigest()
        ):
            return None
        return reload_checked_repodata(body, frozenset(listed), connector.name_filter)

    def _load(self, connector: ConnectorConfig, subdir: str) -> UpstreamSnapshot | None:
        folder = self._folder(connector, subdir)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("url") != connector.url:
                return None
            compressed = (folder / "repodata.json.zst").read_bytes()
            body = decompress_zstd(compressed)
            parsed = self._reload_checked(connector, subdir, compressed, body)
            if parsed is None:
                parsed = parse_upstream_repodata(body, connector.name_filter)
                self._save_checked(connector, subdir, compressed, parsed.not_as_written)
        except (OSError, ValueError, CondagateError):
            return None
        # Loaded from disk: serve it, but check the upstream soon (checked_at = 0 makes it due).
        return UpstreamSnapshot(
            connector.id, subdir, parsed.records, next(_generations), str(meta.get("etag", "")), 0.0
        )


_CHECKED = "checked.json"  # next to repodata.json.zst: which of its records were not served as written


def _fetched_with(connector: ConnectorConfig) -> tuple[object, ...]:
    """The settings a connector's fetched and parsed repodata depends on."""
    return (
        connector.url,
        connector.username,
        connector.password,
        connector.token,
        connector.allow_redirects,
        connector.include,
        connector.exclude,
    )
