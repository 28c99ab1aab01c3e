"""What a proxy feed's upstream may make condagate do: follow redirects only within its own origin,
give up on a fetch at its deadline, refuse bodies that are too large or expand too far.

Every upstream here is a real server on 127.0.0.1: the local channel (``upstream_channel.py``), a
front that redirects to it, and small hostile servers (a tarpit, an endless body, a zstd bomb).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import zstandard

from servers import Server
from upstream_channel import UpstreamChannel

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextmanager
def local_upstream(answer: Handler) -> Iterator[tuple[str, Counter[str]]]:
    """An HTTP server on 127.0.0.1 that answers every GET with ``answer``; yields its URL and a count of paths."""
    seen: Counter[str] = Counter()

    class Handle(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

        def do_GET(self) -> None:  # noqa: N802
            seen[self.path] += 1
            with contextlib.suppress(OSError):  # condagate hung up on us: what these tests want
                answer(self)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def relay(channel: UpstreamChannel, handler: http.server.BaseHTTPRequestHandler, path: str) -> None:
    """Answer with what the local channel answers for ``path`` (status, ETag, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", channel.port, timeout=10)
    headers = {"If-None-Match": handler.headers["If-None-Match"]} if handler.headers["If-None-Match"] else {}
    connection.request("GET", path, headers=headers)
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    etag = {"ETag": answer.headers["ETag"]} if answer.headers["ETag"] else {}
    send(handler, answer.status, b"" if answer.status == 304 else body, **etag)


def make_proxy_feed(server: Server, upstream_url: str, **connector_fields: object) -> tuple[str, str]:
    connector, feed = f"up-{uuid.uuid4().hex[:8]}", f"proxy-{uuid.uuid4().hex[:8]}"
    with server.admin() as client:
        body = {"name": connector, "url": upstream_url, "check": False, **connector_fields}  # faulty on purpose
        created = client.post("/api/connectors", json=body)
        assert created.status_code == 201, created.text
        assert client.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
    return connector, feed


def last_error(server: Server, connector: str) -> str:
    with server.admin() as client:
        health = client.get(f"/api/connectors/{connector}").json()["health"]
    return next(h["last_error"] for h in health if h["subdir"] == "linux-64")


# --- redirects ------------------------------------------------------------------------------------


def test_redirects_within_the_upstreams_own_origin_are_followed(server: Server, upstream: UpstreamChannel):
    def moved(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/moved/"):
            relay(upstream, handler, handler.path.removeprefix("/moved"))
        else:
            send(handler, 302, Location=f"/moved{handler.path}")

    with local_upstream(moved) as (url, seen):
        _, feed = make_proxy_feed(server, url)
        with server.client() as client:
            repodata = client.get(f"/conda/{feed}/linux-64/repodata.json")
            assert repodata.status_code == 200, repodata.text
            assert "numpy-2.0.0-py311h0_0.conda" in repodata.json()["packages.conda"]
            package = client.get(f"/conda/{feed}/linux-64/numpy-2.0.0-py311h0_0.conda")
    assert package.status_code == 200
    assert package.content == (upstream.root / "linux-64" / "numpy-2.0.0-py311h0_0.conda").read_bytes()
    assert seen["/linux-64/repodata.json.zst"] == 1 and seen["/moved/linux-64/repodata.json.zst"] == 1
    assert seen["/moved/linux-64/numpy-2.0.0-py311h0_0.conda"] == 1


def test_a_redirect_to_another_port_is_refused_and_never_followed(server: Server, upstream: UpstreamChannel):
    def elsewhere(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, 302, Location=f"{upstream.url}{handler.path}")  # 127.0.0.1 too, another port

    with local_upstream(elsewhere) as (url, seen):
        connector, feed = make_proxy_feed(server, url)
        with server.client() as client:
            refused = client.get(f"/conda/{feed}/linux-64/repodata.json")
    assert refused.status_code == 502
    assert seen["/linux-64/repodata.json.zst"] == 1
    assert sum(upstream.requests.values()) == 0  # the target never heard of it
    error = last_error(server, connector)
    assert "another origin" in error and "answered" not in error  # nothing about the target's answer


def test_a_redirect_to_the_cloud_metadata_address_is_refused(server: Server):
    def metadata(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, 302, Location="http://169.254.169.254/latest/meta-data/iam/security-credentials/")

    with local_upstream(metadata) as (url, _):
        connector, feed = make_proxy_feed(server, url)
        with server.client() as client:
            refused = client.get(f"/conda/{feed}/linux-64/repodata.json")
    assert refused.status_code == 502
    assert "169.254.169.254" in last_error(server, connector) and "refused" in last_error(server, connector)


# --- the deadline ---------------------------------------------------------------------------------


def test_an_upstream_sending_a_byte_a_second_is_cut_off_at_the_deadline(server: Server):
    def tarpit(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.endswith(".zst"):
            send(handler, 404)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(60):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(1)

    with local_upstream(tarpit) as (url, seen):
        connector, feed = make_proxy_feed(server, url, timeout_seconds=2)
        started = time.monotonic()
        with server.client() as client:
            response = client.get(f"/conda/{feed}/linux-64/repodata.json")
        elapsed = time.monotonic() - started
    # 504 from the fetch itself; a request that stopped waiting for the fetch may say 502 (nothing cached)
    assert response.status_code in (502, 504), response.text
    assert elapsed < 3.5, elapsed
    assert "deadline of 2 s" in last_error(server, connector)
    assert seen["/linux-64/repodata.json"] == 1


# --- size caps ------------------------------------------------------------------------------------


def test_a_huge_plain_repodata_is_refused_before_it_is_read(server: Server):
    sent = Counter[str]()

    def huge(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.endswith(".zst"):
            send(handler, 404)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(1536 * 1024**2))  # 1.5 GiB
        handler.end_headers()
        block = b" " * 1024**2
        for _ in range(1536):
            handler.wfile.write(block)
            sent["bytes"] += len(block)

    with local_upstream(huge) as (url, _):
        connector, feed = make_proxy_feed(server, url)
        started = time.monotonic()
        with server.client() as client:
            response = client.get(f"/conda/{feed}/linux-64/repodata.json")
        assert response.status_code == 502
        assert time.monotonic() - started < 5
    assert "more than 1 GiB" in last_error(server, connector)
    assert sent["bytes"] < 256 * 1024**2  # condagate hung up instead of reading


def test_a_zstd_bomb_is_refused_quickly_and_with_bounded_memory(server: Server):
    compressor = zstandard.ZstdCompressor().compressobj()
    zeros = bytes(1024**2)
    bomb = b"".join([*(compressor.compress(zeros) for _ in range(1024)), compressor.flush()])  # 32 KB -> 1 GiB

    def bomber(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, 200, bomb) if handler.path.endswith(".zst") else send(handler, 404)

    workers = worker_pids(server)
    for pid in workers:
        reset_peak(pid)
    before = {pid: memory(pid, "VmRSS") for pid in workers}
    with local_upstream(bomber) as (url, _):
        connector, feed = make_proxy_feed(server, url)
        started = time.monotonic()
        with server.client() as client:
            response = client.get(f"/conda/{feed}/linux-64/repodata.json")
        elapsed = time.monotonic() - started
    assert response.status_code == 502 and elapsed < 5
    assert "decompression bomb" in last_error(server, connector)
    growth = max(memory(pid, "VmHWM") - before[pid] for pid in workers)
    print(f"zstd bomb: refused in {elapsed:.2f} s; peak RSS of the worker {growth / 1024:.0f} MiB over its baseline")
    assert growth < 100 * 1024  # KiB


def worker_pids(server: Server) -> list[int]:
    """The server process and its descendants (granian's workers)."""
    pids, queue = [], [server.process.pid]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            queue.extend(int(child) for child in children.read_text().split())
    return pids


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


def memory(pid: int, field: str) -> int:
    """KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")
