"""Prometheus /metrics: who may read it, and counters that move with what the server does — over
real HTTP, with two worker processes whose counts add up in one scrape."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from condagate.telemetry import ROUTE_FAMILIES, route_family

from conftest import upload
from servers import Server, condagate_command, free_port, start_server
from upstream_channel import UpstreamChannel

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers; /metrics open without a key to 10.0.0.0/8 only, seen through a proxy at 127.0.0.1."""
    server = start_server(
        tmp_path_factory.mktemp("metrics") / "data",
        extra_env={
            "CONDAGATE_WORKERS": "2",
            "CONDAGATE_METRICS_ALLOW": "10.0.0.0/8",
            "CONDAGATE_TRUSTED_PROXIES": "127.0.0.1",
        },
    )
    yield server
    server.stop()


def scrape(server: Server) -> Samples:
    with server.admin() as admin:
        response = admin.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(server: Server, check: Callable[[Samples], bool], seconds: float = 10.0) -> Samples:
    """Counters move right after the answer is sent: scrape until they have."""
    deadline = time.monotonic() + seconds
    while True:
        samples = scrape(server)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def new_feed(server: Server) -> str:
    name = "metrics-" + uuid.uuid4().hex[:8]
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": name}).status_code == 201
    return name


def as_reader_once_known(client: httpx.Client, key: str) -> httpx.Response:
    """A new key reaches the other worker's security snapshot within a second (security_refresh_seconds)."""
    deadline = time.monotonic() + 10
    while True:
        response = client.get("/metrics", headers={"X-API-Key": key})
        if response.status_code != 401 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_route_families_are_a_small_fixed_set():
    assert set(ROUTE_FAMILIES) == {"channel_repodata", "channel_package", "upload", "api", "ui", "other"}
    assert route_family("GET", "/conda/f/noarch/repodata.json.zst") == "channel_repodata"
    assert route_family("GET", "/t/KEY/conda/f/linux-64/shards/ab.msgpack.zst") == "channel_repodata"
    assert route_family("GET", "/conda/f/") == "channel_repodata"
    assert route_family("GET", "/conda/f/noarch/a-1-0.tar.bz2") == "channel_package"
    assert route_family("HEAD", "/t/KEY/conda/f/noarch/a-1-0.conda") == "channel_package"
    assert route_family("PUT", "/conda/f/noarch/a-1-0.conda") == "upload"
    assert route_family("POST", "/api/feeds/f/upload/a-1-0.conda") == "upload"
    assert route_family("POST", "/api/v1/upload/f") == "upload"
    assert route_family("GET", "/api/feeds") == "api"
    assert route_family("GET", "/") == "ui"
    assert route_family("GET", "/feeds/f") == "ui"
    assert route_family("GET", "/static/app.css") == "ui"
    assert route_family("GET", "/metrics") == "other"
    assert route_family("GET", "/wp-admin/setup.php") == "other"


def test_administrators_read_metrics_others_do_not(metered: Server):
    feed = new_feed(metered)
    with metered.admin() as admin:
        created = admin.post("/api/apikeys", json={"feeds": [feed], "permissions": ["view"]})
        assert created.status_code == 201, created.text
        reader = created.json()["key"]
    with metered.client() as client:
        anonymous = client.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic")
        assert as_reader_once_known(client, reader).status_code == 403
        assert client.get("/metrics", headers={"X-API-Key": "cg_wrong"}).status_code == 401
        # Any credential form: Basic with the key as password, and the key as Bearer token.
        assert client.get("/metrics", auth=("api", metered.api_key)).status_code == 200
        assert client.get("/metrics", headers={"Authorization": f"Bearer {metered.api_key}"}).status_code == 200
    names = {name for name, _ in scrape(metered)}
    for expected in (
        "condagate_http_requests_total",
        "condagate_http_request_duration_seconds_bucket",
        "condagate_http_response_bytes_total",
    ):
        assert expected in names


def test_allowed_addresses_behind_the_trusted_proxy(metered: Server):
    """The allow list is checked against the client's address as the guard and access log see it."""
    with metered.client() as client:
        assert client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 200
        assert client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.7"}).status_code == 401
        # The list adds to the decision, it does not skip the guard: wrong credentials are still refused.
        refused = client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3", "X-API-Key": "cg_wrong"})
        assert refused.status_code == 401


def test_allow_listed_loopback_needs_no_key(tmp_path: Path):
    server = start_server(tmp_path / "data", extra_env={"CONDAGATE_METRICS_ALLOW": "192.0.2.0/24, 127.0.0.1"})
    try:
        with server.client() as client:
            response = client.get("/metrics")
        assert response.status_code == 200, response.text
        # The first scrape, before any worker may have written a value: never empty.
        families = {family.name: family for family in text_string_to_metric_families(response.text)}
        build = families["condagate_build_info"].samples
        assert [sample.value for sample in build] == [1.0] and build[0].labels["version"]
    finally:
        server.stop()


def test_a_bad_allow_list_stops_the_server_with_one_line(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
    env.update({"CONDAGATE_DATA_DIR": str(tmp_path / "data"), "CONDAGATE_METRICS_ALLOW": "127.0.0.1, localhost"})
    done = subprocess.run(
        [*condagate_command(), "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "'localhost' is not an IP address or CIDR range" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_channel_requests_counted_by_family(metered: Server, make_package):
    feed = new_feed(metered)
    package = make_package()
    assert upload(metered, feed, package).status_code == 201
    family = {"family": "channel_repodata", "code": "200"}
    before = scrape(metered)
    count = 25
    with metered.client() as client:
        sizes = [len(client.get(f"/conda/{feed}/noarch/repodata.json").content) for _ in range(count)]
        assert client.get(f"/conda/{feed}/noarch/{package.name}").status_code == 200
    after = eventually(
        metered,
        lambda s: (
            value(s, "condagate_http_requests_total", **family)
            >= value(before, "condagate_http_requests_total", **family) + count
        ),
    )
    assert (
        value(after, "condagate_http_requests_total", **family)
        - value(before, "condagate_http_requests_total", **family)
        == count
    )
    latency = "condagate_http_request_duration_seconds_count"
    assert value(after, latency, family="channel_repodata") - value(before, latency, family="channel_repodata") == count
    sent = "condagate_http_response_bytes_total"
    assert value(after, sent, family="channel_repodata") - value(before, sent, family="channel_repodata") == sum(sizes)
    # A hosted package file (sent by the server itself, as a file): its bytes count too.
    grown = value(after, sent, family="channel_package") - value(before, sent, family="channel_package")
    assert grown == package.stat().st_size
    assert value(after, "condagate_http_requests_total", family="channel_package", code="200") >= 1


def test_uploads_counted_accepted_and_refused(metered: Server, make_package, tmp_path: Path):
    feed = new_feed(metered)
    before = scrape(metered)
    assert upload(metered, feed, make_package()).status_code == 201
    broken = tmp_path / "broken-1.0-0.conda"
    broken.write_bytes(b"not a package")
    assert upload(metered, feed, broken).status_code == 400
    with metered.client() as anonymous:  # refused by the guard, before any upload code runs
        assert anonymous.post(f"/api/feeds/{feed}/upload/x-1.0-0.conda", content=b"x").status_code == 401
    uploads = "condagate_uploads_total"
    after = eventually(
        metered, lambda s: value(s, uploads, outcome="refused") >= value(before, uploads, outcome="refused") + 2
    )
    assert value(after, uploads, outcome="accepted") - value(before, uploads, outcome="accepted") == 1
    assert value(after, uploads, outcome="refused") - value(before, uploads, outcome="refused") == 2


def test_download_counts_flushed(metered: Server, make_package):
    feed = new_feed(metered)
    package = make_package()
    assert upload(metered, feed, package).status_code == 201
    with metered.client() as client:
        for _ in range(3):
            assert client.get(f"/conda/{feed}/noarch/{package.name}").status_code == 200
    samples = eventually(metered, lambda s: value(s, "condagate_download_counts_pending") == 0)
    assert value(samples, "condagate_download_counts_pending") == 0
    assert 0 <= value(samples, "condagate_download_counts_flush_age_seconds") < 5  # flushed every 0.2 s here
    assert value(samples, "condagate_download_counts_flushed_timestamp_seconds") > time.time() - 60


FETCHES = "condagate_upstream_fetches_total"
CACHE = "condagate_proxy_cache_requests_total"
PROXIED = "requests-2.32.3-pyhd_0.conda"


def proxy_feed(server: Server, upstream: UpstreamChannel) -> tuple[str, str]:
    connector, feed = "metrics-up-" + uuid.uuid4().hex[:8], "metrics-proxy-" + uuid.uuid4().hex[:8]
    with server.admin() as admin:
        assert admin.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 201
        assert admin.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
    return connector, feed


def test_upstream_fetches_counted_with_their_outcome(metered: Server, upstream: UpstreamChannel):
    connector, feed = proxy_feed(metered, upstream)
    before = scrape(metered)
    with metered.client() as client:
        assert client.get(f"/conda/{feed}/noarch/repodata.json").status_code == 200
        assert client.get(f"/conda/{feed}/noarch/{PROXIED}").status_code == 200
    assert upstream.count(f"/noarch/{PROXIED}") == 1
    after = eventually(metered, lambda s: value(s, FETCHES, kind="package", connector=connector, outcome="ok") >= 1)
    assert value(after, FETCHES, kind="repodata", connector=connector, outcome="ok") >= 1
    assert value(after, FETCHES, kind="package", connector=connector, outcome="ok") == 1
    assert value(after, CACHE, result="miss") - value(before, CACHE, result="miss") == 1
    duration = "condagate_upstream_fetch_duration_seconds_count"
    assert value(after, duration, kind="package") - value(before, duration, kind="package") == 1
    assert value(after, "condagate_connector_up", connector=connector) == 1
    assert value(after, "condagate_connector_breakers_open", connector=connector) == 0

    # The upstream fails: the fetch is counted with its outcome, the connector is down, a breaker opens.
    upstream.faults.status = 500
    with metered.client() as client:
        assert client.get(f"/conda/{feed}/osx-64/repodata.json").status_code == 502
    failed = eventually(
        metered, lambda s: value(s, FETCHES, kind="repodata", connector=connector, outcome="error") >= 1
    )
    assert value(failed, FETCHES, kind="repodata", connector=connector, outcome="error") >= 1
    assert value(failed, "condagate_connector_up", connector=connector) == 0
    assert value(failed, "condagate_connector_breakers_open", connector=connector) >= 1


def test_proxy_cache_miss_then_hits(metered: Server, upstream: UpstreamChannel):
    _, feed = proxy_feed(metered, upstream)
    before = scrape(metered)
    with metered.client() as client:
        first = client.get(f"/conda/{feed}/noarch/{PROXIED}")
        assert first.status_code == 200
        for _ in range(4):  # from the cache, whichever worker answers
            again = client.get(f"/conda/{feed}/noarch/{PROXIED}", headers={"Connection": "close"})
            assert again.content == first.content
    assert upstream.count(f"/noarch/{PROXIED}") == 1
    after = eventually(metered, lambda s: value(s, CACHE, result="hit") - value(before, CACHE, result="hit") >= 4)
    assert value(after, CACHE, result="miss") - value(before, CACHE, result="miss") == 1
    assert value(after, CACHE, result="hit") - value(before, CACHE, result="hit") == 4


def _per_worker_requests(folder: Path, family: str) -> dict[str, float]:
    """Each worker's own count, read from its file in the server's multi-process folder."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        counts[pid] = sum(
            sample.value
            for metric in MultiProcessCollector.merge([str(path)])
            if metric.name == "condagate_http_requests"
            for sample in metric.samples
            if sample.labels.get("family") == family
        )
    return counts


def test_two_workers_counts_add_up(metered: Server):
    feed = new_feed(metered)
    folder = metered.data_dir / "metrics" / str(metered.process.pid)
    assert folder.is_dir()
    family = {"family": "channel_repodata", "code": "200"}
    before_total = value(scrape(metered), "condagate_http_requests_total", **family)
    before = _per_worker_requests(folder, "channel_repodata")

    def one(_: int) -> int:  # a connection of its own each: the workers take turns accepting them
        return httpx.get(f"{metered.url}/conda/{feed}/noarch/repodata.json", timeout=30).status_code

    sent = 0
    for _round in range(10):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(40))) == {200}
        sent += 40
        served = _per_worker_requests(folder, "channel_repodata")
        if sum(1 for pid, n in served.items() if n > before.get(pid, 0)) >= 2:
            break
    served = _per_worker_requests(folder, "channel_repodata")
    assert sum(1 for pid, n in served.items() if n > before.get(pid, 0)) >= 2, served
    after = eventually(metered, lambda s: value(s, "condagate_http_requests_total", **family) >= before_total + sent)
    assert value(after, "condagate_http_requests_total", **family) - before_total == sent
