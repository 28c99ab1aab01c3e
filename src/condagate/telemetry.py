"""What condagate counts for Prometheus, and how ``/metrics`` reads it back.

Counters, histograms and gauges live in memory (prometheus-client); nothing here does I/O on the
request path. Like loggers, they are process-wide and built on first use, never at import: the
instrumented code (web, services, upstream) calls the small functions below. Under ``condagate
serve`` every worker process writes its values to its own memory-mapped files in one per-start folder
(``PROMETHEUS_MULTIPROC_DIR``, prepared by ``prepare_multiprocess_dir`` before the workers start), and
a scrape answered by any worker adds them all up. Without that variable (tests, the CLI) the values
stay in this process.

Label values come from small fixed sets (route families, outcomes) or from the connectors' names
(bounded by the number of connectors): never a raw path, feed or file name.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from condagate.errors import UpstreamMismatch, UpstreamTimeout

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Route families: the request label (a fixed set, so that the number of series stays bounded).
CHANNEL_REPODATA = "channel_repodata"  # repodata variants, shards, channeldata, a channel's index
CHANNEL_PACKAGE = "channel_package"  # package files (hosted, cached or streamed from an upstream)
UPLOAD = "upload"
API = "api"
UI = "ui"
OTHER = "other"  # /health, /metrics, unknown paths
ROUTE_FAMILIES = (CHANNEL_REPODATA, CHANNEL_PACKAGE, UPLOAD, API, UI, OTHER)

_PACKAGE_SUFFIXES = (".conda", ".tar.bz2")
_UI_SEGMENTS = frozenset(
    {"", "feeds", "connectors", "security", "apikeys", "account", "access-log", "login", "logout", "static"}
)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# Outcomes of an upstream fetch that say the upstream answered (connector_up = 1).
_ANSWERED = frozenset({"ok", "not_modified", "missing"})
_FLUSHED = "condagate_download_counts_flushed_timestamp_seconds"


def route_family(method: str, path: str) -> str:
    """The family of a request, from its method and raw path (a ``/t/KEY`` prefix is skipped)."""
    if path.startswith("/t/"):
        parts = path.split("/", 3)
        path = "/" + parts[3] if len(parts) == 4 else "/"
    if path.startswith("/conda/"):
        if method in ("PUT", "POST"):
            return UPLOAD
        parts = path.split("/")  # "", "conda", FEED, SUBDIR, FILENAME
        if len(parts) == 5 and parts[4].endswith(_PACKAGE_SUFFIXES):
            return CHANNEL_PACKAGE
        return CHANNEL_REPODATA
    if path.startswith("/api/"):
        return UPLOAD if method == "POST" and "/upload/" in path else API
    if path[1:].split("/", 1)[0] in _UI_SEGMENTS:
        return UI
    return OTHER


def outcome_of(exc: BaseException) -> str:
    """How an upstream fetch that raised ended, in the words of ``condagate_upstream_fetches_total``."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamMismatch):
        return "mismatch"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"  # the client left and nobody else waited for the file
    return "error"


class Telemetry:
    """The metric objects of this process, with the children of the per-request ones kept at hand."""

    def __init__(self) -> None:
        # Imported here, not at module import: prometheus-client picks its multi-process mode from the
        # environment when it is first imported, and ``condagate serve`` sets that up first.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "condagate_http_requests",
            "HTTP requests answered, by route family and status code",
            ["family", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "condagate_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (whole downloads included), by route family",
            ["family"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.response_bytes = Counter(
            "condagate_http_response_bytes",
            "Bytes of response bodies sent, by route family",
            ["family"],
            registry=registry,
        )
        self.uploads = Counter(
            "condagate_uploads",
            "Upload requests: accepted (stored, or already there) or refused (any error)",
            ["outcome"],
            registry=registry,
        )
        self.proxy_cache = Counter(
            "condagate_proxy_cache_requests",
            "Downloads of upstream package files: hit (served from the cache) or miss (fetched from the upstream)",
            ["result"],
            registry=registry,
        )
        self.upstream_fetches = Counter(
            "condagate_upstream_fetches",
            "Requests to upstreams by kind (repodata, package), connector and outcome "
            "(ok, not_modified, missing, error, timeout, mismatch, cancelled)",
            ["kind", "connector", "outcome"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "condagate_upstream_fetch_duration_seconds",
            "Duration of upstream fetches (a package's: until its last byte is verified), by kind",
            ["kind"],
            buckets=_UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.connector_up = Gauge(
            "condagate_connector_up",
            "1 when the connector's latest fetch (any worker's) got an answer, else 0",
            ["connector"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.breakers_open = Gauge(
            "condagate_connector_breakers_open",
            "Subdirs of the connector whose circuit breaker is open (no fetch before its back-off ends); "
            "the highest of the workers",
            ["connector"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.downloads_pending: Gauge = Gauge(
            "condagate_download_counts_pending",
            "Download counts held in memory, not yet written to the database",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.downloads_flushed: Gauge = Gauge(
            _FLUSHED,
            "When download counts were last written successfully (the oldest of the workers)",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._requests_by: dict[tuple[str, int], Counter] = {}  # (family, status) -> its child
        self._uploads = {outcome: self.uploads.labels(outcome) for outcome in ("accepted", "refused")}
        self._cache = {result: self.proxy_cache.labels(result) for result in ("hit", "miss")}

    def observe_requests(self, requests: Iterable[tuple[str, int, float, int]]) -> None:
        """A batch of answered requests, each (family, status, seconds, bytes sent), added up first:
        one update per series and batch (the access-log writer calls this off the request path)."""
        counts: dict[tuple[str, int], int] = {}
        latencies: dict[str, list[float]] = {}
        sent_by_family: dict[str, int] = {}
        for family, status, seconds, sent in requests:
            counts[family, status] = counts.get((family, status), 0) + 1
            latencies.setdefault(family, []).append(seconds)
            if sent:
                sent_by_family[family] = sent_by_family.get(family, 0) + sent
        for (family, status), count in counts.items():
            counter = self._requests_by.get((family, status))
            if counter is None:
                counter = self._requests_by[family, status] = self.requests.labels(family, str(status))
            counter.inc(count)
            if family == UPLOAD:
                self._uploads["accepted" if 200 <= status < 300 else "refused"].inc(count)
        for family, durations in latencies.items():
            _observe_all(self.request_seconds.labels(family), durations)
        for family, sent in sent_by_family.items():
            self.response_bytes.labels(family).inc(sent)


def _observe_all(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for each value, with one update per bucket (each update of a
    multi-process value takes a lock and writes its file): the values counted into their buckets
    here, as ``observe`` places one (the first bound not below it), then added once each."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another prometheus-client: the public way
        for value in values:
            histogram.observe(value)
        return
    per_bucket = [0] * len(bounds)
    for value in values:
        per_bucket[bisect.bisect_left(bounds, value)] += 1
    total.inc(sum(values))
    for index, count in enumerate(per_bucket):
        if count:
            buckets[index].inc(count)


_instance: Telemetry | None = None
_instance_lock = threading.Lock()


def metrics() -> Telemetry:
    """This process's metrics, built on first use."""
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _instance = Telemetry()
    return _instance


# --- what the instrumented code calls -----------------------------------------------------------------


def proxy_cache(result: str) -> None:
    """An upstream package file served from the cache (``hit``) or fetched from its upstream (``miss``)."""
    metrics()._cache[result].inc()


def upstream_fetched(kind: str, connector: str, outcome: str, seconds: float) -> None:
    """One fetch from an upstream ended: ``kind`` is ``repodata`` or ``package``."""
    telemetry = metrics()
    telemetry.upstream_fetches.labels(kind, connector, outcome).inc()
    telemetry.upstream_seconds.labels(kind).observe(seconds)
    telemetry.connector_up.labels(connector).set(1 if outcome in _ANSWERED else 0)


def connector_breakers(connector: str, open_breakers: int) -> None:
    metrics().breakers_open.labels(connector).set(open_breakers)


def download_counted() -> None:
    metrics().downloads_pending.inc()


def download_counts_flushed(count: int) -> None:
    """A flush succeeded (``count`` download counts written, perhaps none)."""
    telemetry = metrics()
    if count:
        telemetry.downloads_pending.dec(count)
    telemetry.downloads_flushed.set(time.time())


# --- reading it back -------------------------------------------------------------------------------


def prepare_multiprocess_dir(data_dir: Path) -> Path:
    """Before the workers start: an empty folder for their metric files, named in the environment.

    ``DATA_DIR/metrics/PID`` (this server's process id; folders of servers no longer running are
    removed), or the folder ``PROMETHEUS_MULTIPROC_DIR`` already names, emptied of metric files.
    Must run before prometheus-client is first imported in this process (the workers are forked)."""
    preset = os.environ.get(MULTIPROC_ENV)
    if preset:
        folder = Path(preset)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        root = data_dir / "metrics"
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            if not old.name.isdigit() or not _alive(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
        folder = root / str(os.getpid())
        folder.mkdir(exist_ok=True)
        os.environ[MULTIPROC_ENV] = str(folder)
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(f"prometheus-client was imported before {MULTIPROC_ENV} was set: workers would not add up")
    clear_multiprocess_dir(folder)
    return folder


def clear_multiprocess_dir(folder: Path) -> None:
    """Forget values written before the workers start (the start-up work in the server's own process)."""
    for path in folder.glob("*.db"):
        path.unlink(missing_ok=True)


def exposition(accept: str) -> tuple[bytes, str]:
    """The scrape: this process's metrics, or all workers' added up; text format (or OpenMetrics when asked)."""
    from prometheus_client.exposition import choose_encoder

    folder = os.environ.get(MULTIPROC_ENV)
    source: _Source
    if folder:
        _forget_dead_workers(folder)
        source = _WorkerFiles(Path(folder))
    else:
        source = metrics().registry
    encode, content_type = choose_encoder(accept)
    return encode(_Scrape(source)), content_type


class _Source(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _WorkerFiles:
    """Every worker's metric files, added up (as prometheus-client's ``MultiProcessCollector``), less a
    file a worker has created and not yet sized: the library fails on it, and a scrape may meet one when
    it races a worker's first write of a metric (that worker has no values in it yet)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = [str(path) for path in self.folder.glob("*.db") if _sized(path)]
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call,no-any-return]


def _sized(path: Path) -> bool:
    try:
        return path.stat().st_size >= 8  # the header that says how much of the file is used
    except FileNotFoundError:  # a dead worker's live gauges, removed meanwhile
        return False


class _Scrape:
    """The collected metrics, plus what is known at scrape time: the version, and the age of the
    oldest worker's last successful download-count flush."""

    def __init__(self, source: _Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        from condagate import __version__

        # Always there, even before any worker has written a value (a scrape right after start).
        build = GaugeMetricFamily("condagate_build_info", "The running condagate version", labels=["version"])
        build.add_metric([__version__], 1.0)
        yield build
        families = list(self.source.collect())
        yield from families
        flushed = [sample.value for family in families if family.name == _FLUSHED for sample in family.samples]
        if flushed:
            yield GaugeMetricFamily(
                "condagate_download_counts_flush_age_seconds",
                "Seconds since the oldest of the workers' last successful write of download counts",
                value=max(0.0, time.time() - min(flushed)),
            )


def _forget_dead_workers(folder: str) -> None:
    """Drop the live-only gauges of workers that have exited (a crash, a respawn): the library's
    ``mark_process_dead``, done at scrape time since granian has no hook for a worker's exit."""
    from prometheus_client.multiprocess import mark_process_dead

    pids = {name.rsplit("_", 1)[-1].removesuffix(".db") for name in os.listdir(folder) if name.startswith("gauge_live")}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), folder)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
