"""Upstream repodata kept in memory and shared by replicas, refreshed with conditional requests.

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
- The last good copy is kept for every replica (``kept_copies``: a database row and a blob). A process
  without the subdir in memory reads it from there; a due check first looks at the row: a body another
  replica fetched or validated within the lifetime is taken as it is, otherwise the request is
  conditional on the newest validators any replica kept.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from condagate import telemetry
from condagate.conda.parts_records import PartsRecords
from condagate.conda.repodata import RepodataParts, compress_zstd
from condagate.conda.upstream_repodata import UpstreamRecords
from condagate.conda.upstream_stream import parse_document
from condagate.errors import CondagateError, UpstreamUnavailable
from condagate.process_memory import return_freed_memory
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.kept_copies import KeptCopies, KeptState, SharedState
from condagate.upstream.repodata_fetch import fetch_repodata

log = logging.getLogger(__name__)
_generations = itertools.count(1)

HealthRecorder = Callable[..., None]
Key = tuple[int, str]


@dataclass(frozen=True)
class UpstreamSnapshot:
    connector_id: int
    subdir: str
    # file name -> record JSON bytes: a dict, or a large subdir's records kept compressed in ``parts``
    records: Mapping[str, bytes]
    names: dict[str, str]  # file name -> package name
    generation: int
    etag: str
    checked_at: float  # time.time() of the last successful check (200 or 304), here or by another replica
    error: str = ""
    error_at: float | None = None
    sha256: str = ""  # the kept body's blob ("" when it could not be kept)
    last_modified: str = ""
    parts: RepodataParts | None = None  # a large subdir's records cut into compressed blocks, for merges

    @classmethod
    def of(
        cls,
        connector_id: int,
        subdir: str,
        parsed: UpstreamRecords,
        generation: int,
        etag: str,
        checked_at: float,
        sha256: str = "",
        last_modified: str = "",
    ) -> UpstreamSnapshot:
        """A snapshot of ``parsed``. A large subdir's records are cut into compressed blocks and read from
        them (``PartsRecords``): ``parsed.records`` is then emptied, so that the record bytes are not
        kept a second time. A small one's stay the parsed dict."""
        records: Mapping[str, bytes] = parsed.records
        parts = parsed.parts  # read piece by piece: cut into blocks as it was read
        if parts is not None:
            records = PartsRecords(parts)
        elif (cut := RepodataParts.from_records(parsed.records, compress=True)).is_released():
            records, parts = PartsRecords(cut), cut  # else a small subdir: its records stay a dict
            freed = len(parsed.records) * 512  # ~0.5 kB of bytes per record
            parsed.records.clear()
            return_freed_memory(freed)
        return cls(
            connector_id, subdir, records, parsed.names, generation, etag, checked_at,
            sha256=sha256, last_modified=last_modified, parts=parts,
        )

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
        shared: SharedState,
        concurrency: int = 2,
        backoff_seconds: float = 30.0,
        max_backoff_seconds: float = 600.0,
        revalidate_wait_seconds: float = 0.5,
        record_listing: Callable[[int, str, set[str]], None] | None = None,
    ) -> None:
        self._record_listing = record_listing
        self._kept = KeptCopies(root, shared)
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
        # When this process saw a connector's fetch settings change: a check made before is not trusted.
        self._changed_at: dict[int, float] = {}

    def cached_subdirs(self, connector_id: int) -> list[str]:
        """Subdirs of the connector held in memory or kept by any replica (clients asked for them before)."""
        found = {subdir for cid, subdir in self._snapshots if cid == connector_id}
        found.update(self._kept.subdirs(connector_id))
        return sorted(found)

    def peek(self, connector_id: int, subdir: str) -> UpstreamSnapshot | None:
        return self._snapshots.get((connector_id, subdir))

    def breaker(self, connector_id: int, subdir: str) -> Breaker | None:
        return self._breakers.get((connector_id, subdir))

    def _observe(self, connector: ConnectorConfig) -> None:
        """Settings come from the database with every request, so a connector changed by any worker
        process shows here: what was fetched from another address or with other credentials, or parsed
        under other filters, is dropped (the kept copy is parsed again, if it is from the same URL)."""
        with self._guard:
            known = self._configs.get(connector.id)
            if known == connector:
                return
            self._configs[connector.id] = connector
        if known is not None and _fetched_with(known) != _fetched_with(connector):
            self._changed_at[connector.id] = time.time()
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
        future = self._inflight.get(key) or self._start(connector, subdir, force=True)
        return future.result(timeout=connector.timeout_seconds + 5.0)

    def forget(self, connector_id: int, remove_files: bool = False) -> None:
        with self._guard:
            for mapping in (self._snapshots, self._breakers, self._inflight):
                for key in [key for key in mapping if key[0] == connector_id]:
                    del mapping[key]  # a fetch in flight finishes, but its outcome is not kept
            self._disk_checked = {key for key in self._disk_checked if key[0] != connector_id}
        if remove_files:
            self._kept.remove(connector_id)

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._kept.close()

    def _start(self, connector: ConnectorConfig, subdir: str, force: bool = False) -> Future[UpstreamSnapshot]:
        """A fetch on the connector's executor; ``force``: ask the upstream even if another replica did
        within the lifetime."""
        key = (connector.id, subdir)
        with self._guard:
            running = self._inflight.get(key)
            if running is not None:
                return running
            executor = self._executors.get(connector.id)
            if executor is None:
                executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix=f"upstream-{connector.id}")
                self._executors[connector.id] = executor
            future = executor.submit(self._fetch, connector, subdir, force)
            self._inflight[key] = future
        return future

    def _fetch(self, connector: ConnectorConfig, subdir: str, force: bool = False) -> UpstreamSnapshot:
        key = (connector.id, subdir)
        try:
            current = self._snapshots.get(key)
            snapshot = self._refresh(connector, subdir, current, force)  # opens the breaker on a failure
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
        """The last good copy any replica kept, read once per process (parsing is CPU, not upstream I/O)."""
        key = (connector.id, subdir)
        if key in self._disk_checked:
            return self._snapshots.get(key)
        with self._guard:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._disk_checked:
                state = self._kept.read(connector, subdir)
                loaded = None if state is None else self._from_kept(connector, subdir, state)
                with self._guard:
                    if loaded is not None and key not in self._snapshots:
                        self._snapshots[key] = loaded
                    self._disk_checked.add(key)
        return self._snapshots.get(key)

    def _from_kept(self, connector: ConnectorConfig, subdir: str, state: KeptState) -> UpstreamSnapshot | None:
        """A snapshot of the kept body, as checked when it was last validated (by any replica)."""
        parsed = self._kept.records(connector, subdir, state)
        if parsed is None:
            return None
        return UpstreamSnapshot.of(
            connector.id, subdir, parsed, next(_generations), state.etag,
            self._validated_at(state, connector), sha256=state.sha256, last_modified=state.last_modified,
        )

    def _newest_kept(
        self, connector: ConnectorConfig, subdir: str, current: UpstreamSnapshot | None
    ) -> tuple[UpstreamSnapshot | None, bool]:
        """What to revalidate: the kept state when another replica kept a newer body or validated the
        same one later than this process, else what this process holds; and whether anything is kept."""
        state = self._kept.read(connector, subdir)
        if state is None or (current is not None and current.checked_at >= self._validated_at(state, connector)):
            return current, state is not None
        if current is not None and state.sha256 == current.sha256:
            validated, etag, modified = self._validated_at(state, connector), state.etag, state.last_modified
            return replace(current, checked_at=validated, etag=etag, last_modified=modified), True
        return self._from_kept(connector, subdir, state) or current, True

    def _validated_at(self, state: KeptState, connector: ConnectorConfig) -> float:
        """When the kept body was last validated, as far as this process trusts it: not before the
        connector's fetch settings changed here (0.0: due now)."""
        return state.validated_at if state.validated_at >= self._changed_at.get(connector.id, 0.0) else 0.0

    def _refresh(
        self, connector: ConnectorConfig, subdir: str, current: UpstreamSnapshot | None, force: bool = False
    ) -> UpstreamSnapshot:
        # One process (of every replica) asks the upstream at a time; the others then find what it kept
        # and validated, and send nothing.
        with self._kept.fetching(connector, subdir):
            return self._refresh_one(connector, subdir, current, force)

    def _refresh_one(
        self, connector: ConnectorConfig, subdir: str, current: UpstreamSnapshot | None, force: bool
    ) -> UpstreamSnapshot:
        base, kept = self._newest_kept(connector, subdir, current)
        if (
            not force
            and base is not None
            and base is not current
            and connector.cache_minutes > 0
            and time.time() - base.checked_at <= connector.cache_minutes * 60
        ):
            # Another replica checked the upstream within the lifetime: no request (and nothing to record).
            return replace(base, error="", error_at=None)
        started = time.perf_counter()
        dropped: tuple[int, str] | None = None  # (count, examples as JSON) when the records were parsed
        fetched_body = False
        try:
            # Nothing kept for other replicas (removed by a repair, or it could not be stored): the
            # whole body again, to keep it.
            validators = base is not None and kept
            fetched = fetch_repodata(
                self._http,
                connector,
                subdir,
                base.etag if base and validators else "",
                last_modified=base.last_modified if base and validators else "",
            )
            if fetched.not_modified and base is not None:
                snapshot = replace(base, checked_at=time.time(), error="", error_at=None)
                self._kept.validated(connector, subdir, snapshot.sha256, snapshot.checked_at)
            else:
                document = fetched.document()
                compressed = fetched.compressed or (compress_zstd(fetched.plain) if fetched.plain else None)
                # The body goes to the blob store while its records are checked.
                stored = self._kept.store_early(compressed) if compressed is not None else None
                parsed = (
                    UpstreamRecords(subdir, {}, {})
                    if document is None
                    # records unchanged since the last fetch are not checked again
                    else parse_document(document, connector.name_filter, checked=base)
                )
                if parsed.dropped:
                    log.warning(
                        "connector %s, subdir %s: dropped %d unservable records, e.g. %s",
                        connector.name, subdir, parsed.dropped, parsed.drop_reasons[:3],
                    )
                dropped = (parsed.dropped, json.dumps([list(reason) for reason in parsed.drop_reasons]))
                now = time.time()
                sha256 = ""
                if compressed is not None:
                    with self._guard:
                        current_settings = self._current(connector)
                    if current_settings:  # else the connector changed meanwhile: not kept for anyone
                        sha256 = self._kept.keep(
                            connector, subdir, compressed, stored, etag=fetched.etag,
                            last_modified=fetched.last_modified, fetched_at=now, not_as_written=parsed.not_as_written,
                        )
                etag, last_modified = fetched.etag, fetched.last_modified
                del fetched, compressed, document  # before a dict of records is cut into blocks
                snapshot = UpstreamSnapshot.of(
                    connector.id, subdir, parsed, next(_generations), etag, now,
                    sha256=sha256, last_modified=last_modified,
                )
                del parsed
                fetched_body = True
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
            if base is None:
                raise
            return replace(base, error=exc.message, error_at=time.time())
        elapsed = int((time.perf_counter() - started) * 1000)
        if self._record_listing is not None and fetched_body:
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
