"""The upstream HTTP policy: where redirects may lead, the whole-fetch deadline, size caps, error text.

No test traffic leaves 127.0.0.0/8: requests to other addresses go to an ``httpx.MockTransport``
that fails the test if a request reaches a refused address, with an injected resolver; real sockets
are local servers on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
import zstandard

from condagate.errors import CondagateError, UpstreamTimeout, UpstreamUnavailable
from condagate.upstream import http as upstream_http
from condagate.upstream.addresses import AddressPolicy, address_kind
from condagate.upstream.connector import ANY_PUBLIC, ConnectorConfig
from condagate.upstream.repodata_fetch import RepodataLimits, decompress_zstd, fetch_repodata

DNS: dict[str, list[str]] = {
    "channel.example": ["151.101.1.1"],
    "cdn.example": ["151.101.2.2"],
    "internal.example": ["10.0.0.7"],
    "mixed.example": ["151.101.3.3", "10.0.0.8"],
    "metadata.example": ["169.254.169.254"],
}
# Requests may only ever go to these; anything else reaching the transport fails the test.
REACHABLE = {"channel.example", "cdn.example", "10.1.1.1", "10.2.2.2", "127.0.0.1", "127.0.0.2"}
REPODATA = json.dumps({"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {}}).encode()


def resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return DNS[host]


@dataclass
class FakeUpstreams:
    """Every upstream behind one MockTransport: ``routes`` maps host+path to a response factory."""

    routes: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    seen: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.url.host not in REACHABLE:
            pytest.fail(f"a request reached a refused address: {request.url}")
        answer = self.routes.get(f"{request.url.host}{request.url.path}")
        return answer(request) if answer else httpx.Response(404)

    def redirect(self, source: str, location: str, status: int = 302) -> None:
        self.routes[source] = lambda request: httpx.Response(status, headers={"Location": location})

    def serve(self, source: str, body: bytes = REPODATA, **headers: str) -> None:
        self.routes[source] = lambda request: streamed(body, **headers)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler), trust_env=False)

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler), trust_env=False)


def streamed(body: bytes, **headers: str) -> httpx.Response:
    """A response whose body is read from its stream, as from a real server (``content=`` would be
    read, and content-decoded, by httpx up front)."""
    return httpx.Response(200, stream=httpx.ByteStream(body), headers={"Content-Length": str(len(body)), **headers})


def connector(url: str = "https://channel.example/conda", **fields: object) -> ConnectorConfig:
    return replace(ConnectorConfig(id=1, name="up", url=url), **fields)  # type: ignore[arg-type]


def fetch(upstreams: FakeUpstreams, conn: ConnectorConfig, **kwargs: object) -> bytes | None:
    with upstreams.client() as client:
        document = fetch_repodata(client, conn, "linux-64", resolver=resolver, **kwargs).document()
        return document.whole() if document is not None else b""


def open_package(upstreams: FakeUpstreams, conn: ConnectorConfig, filename: str = "a-1-0.conda") -> httpx.Response:
    async def run() -> httpx.Response:
        async with upstreams.async_client() as client:
            url = conn.file_url("linux-64", filename)
            response = await upstream_http.open_stream(client, conn, url, resolver=resolver)
            await response.aread()
            await response.aclose()
            return response

    return asyncio.run(run())


# --- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("151.101.1.1", "public"),
        ("2a04:4e42::81", "public"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "reserved"),
    ],
)
def test_address_kinds(address: str, kind: str) -> None:
    assert address_kind(address) == kind


def test_an_internal_connector_may_reach_its_own_kind_and_public_ones_only() -> None:
    loopback = AddressPolicy.for_home(["127.0.0.1"])
    assert loopback.refusal(["127.0.0.2", "151.101.1.1"]) is None
    assert loopback.refusal(["10.0.0.1"]) == "a private address"
    assert loopback.refusal(["0.0.0.0"]) == "the unspecified address"
    public = AddressPolicy.for_home(["151.101.1.1"])
    for refused in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "192.168.1.1", "fd00::1", "224.0.0.1", "240.0.0.1"):
        assert public.refusal(["151.101.2.2", refused]) is not None, refused


# --- redirects ------------------------------------------------------------------------------------

REFUSED_TARGETS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/conda/linux-64/repodata.json.zst",
    "http://192.168.1.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fd00::1]/",
    "http://0.0.0.0:8624/",
    "https://internal.example/conda/linux-64/repodata.json.zst",  # a name for a private address
    "https://mixed.example/x",  # one of its addresses is private
    "https://metadata.example/",
]


@pytest.mark.parametrize("allow_redirects", ["same-origin", ANY_PUBLIC])
@pytest.mark.parametrize("target", REFUSED_TARGETS)
def test_redirects_to_internal_addresses_are_refused(target: str, allow_redirects: str) -> None:
    upstreams = FakeUpstreams()
    upstreams.redirect("channel.example/conda/linux-64/repodata.json.zst", target)
    conn = connector("http://channel.example/conda", allow_redirects=allow_redirects)
    with pytest.raises(UpstreamUnavailable, match="refused") as refused:
        fetch(upstreams, conn)
    assert "connector 'up'" in refused.value.message
    reason = "another origin" if allow_redirects == "same-origin" else "address"
    assert reason in refused.value.message
    assert [request.url.host for request in upstreams.seen] == ["channel.example"]


@pytest.mark.parametrize(
    "target",
    [
        "https://cdn.example/files/repodata.json.zst",
        "https://channel.example:8443/x",
        "http://channel.example/conda/linux-64/repodata.json.zst",
    ],
)
def test_redirects_to_another_origin_are_refused_by_default(target: str) -> None:
    upstreams = FakeUpstreams()
    upstreams.redirect("channel.example/conda/linux-64/repodata.json.zst", target)
    upstreams.serve("cdn.example/files/repodata.json.zst", zstandard.ZstdCompressor().compress(REPODATA))
    with pytest.raises(UpstreamUnavailable, match="refused"):
        fetch(upstreams, connector())
    assert [request.url.host for request in upstreams.seen] == ["channel.example"]


def test_any_public_follows_other_public_hosts_without_credentials() -> None:
    upstreams = FakeUpstreams()
    upstreams.redirect("channel.example/conda/linux-64/repodata.json.zst", "https://cdn.example/signed?sig=s3cret")
    upstreams.serve("cdn.example/signed", zstandard.ZstdCompressor().compress(REPODATA), ETag='"v1"')
    conn = connector(allow_redirects=ANY_PUBLIC, token="tok-0123456789abcdef")
    assert fetch(upstreams, conn) == REPODATA
    first, second = upstreams.seen
    assert first.headers["Authorization"] == "Bearer tok-0123456789abcdef"
    assert second.url.host == "cdn.example" and "Authorization" not in second.headers
    # an https connector never follows a redirect down to http, whatever it allows
    upstreams.redirect("channel.example/conda/linux-64/repodata.json.zst", "http://cdn.example/signed")
    with pytest.raises(UpstreamUnavailable, match="https to http"):
        fetch(upstreams, conn)


def test_same_origin_redirects_keep_credentials_and_are_limited_to_five() -> None:
    upstreams = FakeUpstreams()
    for hop in range(5):
        upstreams.redirect(f"channel.example/hop{hop}", f"/hop{hop + 1}", status=(301, 302, 303, 307, 308)[hop])
    upstreams.redirect("channel.example/conda/linux-64/repodata.json.zst", "/hop1")
    upstreams.serve("channel.example/hop5", zstandard.ZstdCompressor().compress(REPODATA))
    conn = connector(username="alice", password="pw-0123456789")
    assert fetch(upstreams, conn) == REPODATA
    assert len(upstreams.seen) == 6
    assert all(request.headers["Authorization"].startswith("Basic ") for request in upstreams.seen)
    upstreams.redirect("channel.example/conda/linux-64/repodata.json.zst", "/hop0")  # now six redirects
    upstreams.seen.clear()
    with pytest.raises(UpstreamUnavailable, match="more than 5 redirects"):
        fetch(upstreams, conn)
    assert len(upstreams.seen) == 6


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://channel.example/x", "ftp://channel.example/x"])
def test_other_schemes_are_refused(target: str) -> None:
    upstreams = FakeUpstreams()
    upstreams.redirect("channel.example/conda/linux-64/repodata.json.zst", target)
    with pytest.raises(UpstreamUnavailable, match="URL, refused"):
        fetch(upstreams, connector(allow_redirects=ANY_PUBLIC))
    with pytest.raises(UpstreamUnavailable, match="http and https only"):
        fetch(upstreams, connector(url="file:///srv/channel"))


def test_internal_connectors_stay_within_their_own_kind() -> None:
    upstreams = FakeUpstreams()
    upstreams.redirect("10.1.1.1/linux-64/repodata.json.zst", "http://10.2.2.2/linux-64/repodata.json.zst")
    upstreams.serve("10.2.2.2/linux-64/repodata.json.zst", zstandard.ZstdCompressor().compress(REPODATA))
    assert fetch(upstreams, connector("http://10.1.1.1", allow_redirects=ANY_PUBLIC)) == REPODATA
    upstreams.redirect("10.1.1.1/linux-64/repodata.json.zst", "http://127.0.0.2/linux-64/repodata.json.zst")
    with pytest.raises(UpstreamUnavailable, match="loopback address"):
        fetch(upstreams, connector("http://10.1.1.1", allow_redirects=ANY_PUBLIC))
    upstreams.redirect("127.0.0.1/linux-64/repodata.json.zst", "http://169.254.169.254/")
    with pytest.raises(UpstreamUnavailable, match="link-local address"):
        fetch(upstreams, connector("http://127.0.0.1", allow_redirects=ANY_PUBLIC))


@pytest.mark.parametrize("target", ["http://169.254.169.254/", "http://192.168.1.1/a.conda", "https://cdn.example/a"])
def test_package_downloads_follow_the_same_policy(target: str) -> None:
    upstreams = FakeUpstreams()
    upstreams.redirect("channel.example/conda/linux-64/a-1-0.conda", target)
    with pytest.raises(UpstreamUnavailable, match="refused"):
        open_package(upstreams, connector(token="tok-0123456789abcdef"))
    assert [request.url.host for request in upstreams.seen] == ["channel.example"]
    upstreams.redirect("channel.example/conda/linux-64/a-1-0.conda", "/conda/files/a-1-0.conda")
    upstreams.serve("channel.example/conda/files/a-1-0.conda", b"package bytes")
    assert open_package(upstreams, connector(token="tok-0123456789abcdef")).content == b"package bytes"
    assert upstreams.seen[-1].headers["Authorization"] == "Bearer tok-0123456789abcdef"


def test_a_name_that_does_not_resolve_is_refused_before_connecting() -> None:
    upstreams = FakeUpstreams()
    with pytest.raises(UpstreamUnavailable, match="does not resolve"):
        fetch(upstreams, connector("https://nowhere.example"))
    assert upstreams.seen == []


class LocalServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 whose connection handler the test writes."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.handle = handle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            self.handle(connection)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def local_server() -> Iterator[Callable[[Callable[[socket.socket], None]], LocalServer]]:
    servers: list[LocalServer] = []

    def start(handle: Callable[[socket.socket], None]) -> LocalServer:
        servers.append(LocalServer(handle))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_the_connected_address_is_checked_again(local_server: Callable[..., LocalServer]) -> None:
    """A name that resolved to a public address for the check, then to 127.0.0.1 for the connection
    (DNS rebinding): the connection is closed before a request is sent."""
    requests: list[bytes] = []

    def handle(connection: socket.socket) -> None:
        requests.append(read_request(connection))
        connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    server = local_server(handle)

    def rebinding(host: str, port: int) -> list[str]:
        assert host == "localhost"
        return ["151.101.1.1"]

    with httpx.Client(trust_env=False) as client, pytest.raises(UpstreamUnavailable, match="reached a loopback"):
        fetch_repodata(client, connector(f"http://localhost:{server.port}"), "linux-64", resolver=rebinding)
    time.sleep(0.2)
    assert requests in ([], [b""])  # connected (that is how the address is known), nothing sent


# --- the deadline ---------------------------------------------------------------------------------


def tarpit(head: bytes, body_drip: bool) -> Callable[[socket.socket], None]:
    """Send ``head`` at once and then the body a byte per 0.5 s, or ``head`` itself a byte per 0.5 s
    and never the blank line that would end it."""

    def handle(connection: socket.socket) -> None:
        if b".zst " in read_request(connection):  # no .zst: the plain variant gets what time is left
            connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        if body_drip:
            connection.sendall(head)
        for byte in b" " * 120 if body_drip else head[:-2]:
            connection.sendall(bytes([byte]))
            time.sleep(0.5)

    return handle


@pytest.mark.parametrize("body_drip", [True, False], ids=["body", "headers"])
def test_a_dripping_upstream_times_out_at_the_deadline(
    body_drip: bool, local_server: Callable[..., LocalServer]
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
    server = local_server(tarpit(head, body_drip))
    started = time.monotonic()
    with httpx.Client(trust_env=False) as client, pytest.raises(UpstreamTimeout) as timeout:
        fetch_repodata(client, connector(f"http://127.0.0.1:{server.port}", timeout_seconds=2), "linux-64")
    elapsed = time.monotonic() - started
    assert 1.9 < elapsed < 3.0, elapsed
    assert "connector 'up'" in timeout.value.message and "deadline of 2 s" in timeout.value.message


def test_package_headers_must_arrive_within_the_timeout(local_server: Callable[..., LocalServer]) -> None:
    server = local_server(tarpit(b"HTTP/1.1 200 OK\r\n" + b"X-Padding: p\r\n" * 100 + b"\r\n", body_drip=False))
    conn = connector(f"http://127.0.0.1:{server.port}", timeout_seconds=2)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="did not answer within 2 s"):
        asyncio.run(_open_real(conn))
    assert time.monotonic() - started < 3.0


async def _open_real(conn: ConnectorConfig) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await upstream_http.open_stream(client, conn, conn.file_url("linux-64", "a-1-0.conda"))
        await response.aclose()


def test_a_slow_body_from_any_transport_is_cut_at_the_deadline() -> None:
    class Slow(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(100):
                time.sleep(0.2)
                yield b" "

    upstreams = FakeUpstreams()
    upstreams.routes["channel.example/conda/linux-64/repodata.json"] = lambda request: httpx.Response(
        200, stream=Slow()
    )
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="deadline of 1 s"):
        fetch(upstreams, connector(timeout_seconds=1))
    assert time.monotonic() - started < 1.5


# --- size caps ------------------------------------------------------------------------------------

SMALL = RepodataLimits(
    max_json_bytes=1024**2,
    max_zst_bytes=64 * 1024,
    max_decompressed_bytes=4 * 1024**2,
    max_ratio=100,
    ratio_floor=256 * 1024,
)


def chunked(body: bytes, size: int = 64 * 1024) -> httpx.SyncByteStream:
    class Chunks(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for start in range(0, len(body), size):
                yield body[start : start + size]

    return Chunks()


def bomb(size: int) -> bytes:
    compressor = zstandard.ZstdCompressor().compressobj()
    zeros = bytes(1024**2)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join([*parts, compressor.flush()])


@pytest.mark.parametrize("declared", [True, False])
def test_a_plain_body_over_the_cap_is_refused(declared: bool) -> None:
    upstreams = FakeUpstreams()
    body = b" " * (2 * 1024**2)
    upstreams.routes["channel.example/conda/linux-64/repodata.json"] = lambda request: (
        streamed(body) if declared else httpx.Response(200, stream=chunked(body))
    )
    with pytest.raises(UpstreamUnavailable, match="larger than 1 MiB|more than 1 MiB"):
        fetch(upstreams, connector(), limits=SMALL)
    small = REPODATA + b" " * 1000
    upstreams.routes["channel.example/conda/linux-64/repodata.json"] = lambda request: httpx.Response(
        200, stream=chunked(small, 100)
    )
    assert fetch(upstreams, connector(), limits=SMALL) == small


def test_zst_caps_compressed_decompressed_and_ratio() -> None:
    upstreams = FakeUpstreams()
    path = "channel.example/conda/linux-64/repodata.json.zst"
    upstreams.serve(path, os.urandom(100 * 1024))
    with pytest.raises(UpstreamUnavailable, match="more than 64 KiB"):
        fetch(upstreams, connector(), limits=SMALL)
    random_json = json.dumps({"packages": {}, "x": os.urandom(3 * 1024**2).hex()}).encode()  # 6 MiB, ratio ~2
    upstreams.serve(path, zstandard.ZstdCompressor().compress(random_json))
    with pytest.raises(UpstreamUnavailable, match="decompressed is larger than 4 MiB"):
        fetch(upstreams, connector(), limits=replace(SMALL, max_zst_bytes=64 * 1024**2))
    upstreams.serve(path, bomb(64 * 1024**2))
    with pytest.raises(UpstreamUnavailable, match="expands more than 100-fold"):
        fetch(upstreams, connector(), limits=SMALL)
    upstreams.serve(path, b"not zstd at all")
    with pytest.raises(UpstreamUnavailable, match="not valid zstd"):
        fetch(upstreams, connector(), limits=SMALL)


def test_content_encodings_are_decoded_with_the_same_caps() -> None:
    upstreams = FakeUpstreams()
    path = "channel.example/conda/linux-64/repodata.json"
    upstreams.serve(path, gzip.compress(REPODATA), **{"Content-Encoding": "gzip"})
    assert fetch(upstreams, connector(), limits=SMALL) == REPODATA
    upstreams.serve(path, zstandard.ZstdCompressor().compress(REPODATA), **{"Content-Encoding": "zstd"})
    assert fetch(upstreams, connector(), limits=SMALL) == REPODATA
    upstreams.serve(path, gzip.compress(b" " * 50 * 1024**2), **{"Content-Encoding": "gzip"})
    with pytest.raises(UpstreamUnavailable, match="expands more than 100-fold|larger than 1 MiB"):
        fetch(upstreams, connector(), limits=SMALL)
    upstreams.serve(path, b"\x8b\x00", **{"Content-Encoding": "br"})
    with pytest.raises(UpstreamUnavailable, match="does not decode"):
        fetch(upstreams, connector(), limits=SMALL)
    assert upstreams.seen[0].headers["Accept-Encoding"] == "identity"  # the .zst variant, first
    assert upstreams.seen[1].headers["Accept-Encoding"] == "gzip, zstd"


def test_kept_zst_is_decompressed_within_the_cap() -> None:
    assert decompress_zstd(zstandard.ZstdCompressor().compress(REPODATA)) == REPODATA
    with pytest.raises(UpstreamUnavailable, match="larger than 1 MiB"):
        decompress_zstd(bomb(2 * 1024**2), limit=1024**2)


BOMB_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import httpx, zstandard
    from condagate.errors import UpstreamUnavailable
    from condagate.upstream.connector import ConnectorConfig
    from condagate.upstream.repodata_fetch import fetch_repodata

    with open(sys.argv[1], "rb") as file:  # made by the test: making it here would raise the peak first
        bomb = file.read()
    small = zstandard.ZstdCompressor().compress(b'{"packages": {}}')
    body = {"warm": small, "bomb": bomb}
    current = ["warm"]
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, stream=httpx.ByteStream(body[current[0]]))),
        trust_env=False,
    )
    connector = ConnectorConfig(1, "bomb", "https://channel.example")
    resolve = lambda host, port: ["151.101.1.1"]
    fetch_repodata(client, connector, "linux-64", resolver=resolve)  # everything imported and warm

    def status(field):
        with open("/proc/self/status") as file:
            return int(next(line for line in file if line.startswith(field + ":")).split()[1])

    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # the peak (VmHWM) starts again from the current RSS
    before = status("VmRSS")
    current[0] = "bomb"
    started = time.monotonic()
    try:
        fetch_repodata(client, connector, "linux-64", resolver=resolve)
        message = "accepted"
    except UpstreamUnavailable as exc:
        message = exc.message
    seconds = time.monotonic() - started
    after = status("VmHWM")
    print(json.dumps({"bomb": len(bomb), "before_kib": before, "after_kib": after, "seconds": seconds,
                      "message": message}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures with Linux's /proc")
def test_a_zstd_bomb_is_refused_quickly_with_bounded_memory(tmp_path: Path) -> None:
    """32 KB that expand to 1 GiB: the peak RSS of this fetch alone, in a process of its own (Linux's
    VmHWM, reset before the fetch; ru_maxrss would carry pytest's own peak over the exec)."""
    (tmp_path / "bomb.zst").write_bytes(bomb(1024**3))
    command = [sys.executable, "-c", BOMB_SCRIPT, str(tmp_path / "bomb.zst")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout)
    print(measured)
    assert measured["bomb"] < 64 * 1024
    assert "expands more than 100-fold" in measured["message"]
    assert measured["seconds"] < 2
    assert (measured["after_kib"] - measured["before_kib"]) * 1024 < 100 * 1024**2


def test_repodata_is_held_once_decompressed_plus_its_compressed_bytes() -> None:
    """No joined chunks, no copies: the peak is the document, the .zst as received, and about a chunk."""
    document = json.dumps({"packages": {}, "x": os.urandom(16 * 1024**2).hex()}).encode()  # 32 MiB
    compressed = zstandard.ZstdCompressor().compress(document)
    upstreams = FakeUpstreams()
    upstreams.routes["channel.example/conda/linux-64/repodata.json.zst"] = lambda request: httpx.Response(
        200, stream=chunked(compressed)
    )
    tracemalloc.start()
    try:
        body = fetch(upstreams, connector())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body == document
    overhead = peak - len(document) - len(compressed)
    print(
        f"peak {peak / 1024**2:.1f} MiB; document {len(document) / 1024**2:.1f} MiB, "
        f".zst {len(compressed) / 1024**2:.1f} MiB: {overhead / 1024**2:.1f} MiB more"
    )
    assert overhead < 12 * 1024**2


# --- error text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.LocalProtocolError("Illegal header value b'Bearer tok-0123456789abcdef '"),
        httpx.ConnectError("refused; Authorization: Bearer tok-0123456789abcdef " + "x" * 2000),
        httpx.RemoteProtocolError("illegal status line: b'token tok-0123456789abcdef'"),
        httpx.ReadTimeout("timed out with Authorization: Basic YWxpY2U6cHctMDEyMzQ1Njc4OQ=="),
    ],
)
def test_error_messages_hold_no_credentials_and_are_bounded(failure: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    conn = connector(token="tok-0123456789abcdef")
    for run in ("repodata", "package"):
        with pytest.raises(CondagateError) as caught:
            if run == "repodata":
                with httpx.Client(transport=httpx.MockTransport(handler), trust_env=False) as client:
                    fetch_repodata(client, conn, "linux-64", resolver=resolver)
            else:
                asyncio.run(_open_mock(handler, conn))
        message = caught.value.message
        assert isinstance(caught.value, UpstreamUnavailable | UpstreamTimeout)
        assert message.startswith("connector 'up'") and len(message) <= upstream_http.MESSAGE_LIMIT
        assert "tok-0123456789abcdef" not in message and "YWxpY2U6" not in message, message


async def _open_mock(handler: Callable[[httpx.Request], httpx.Response], conn: ConnectorConfig) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), trust_env=False) as client:
        await upstream_http.open_stream(client, conn, conn.file_url("linux-64", "a-1-0.conda"), resolver=resolver)


def test_urls_in_messages_lose_their_query_and_user_info() -> None:
    assert upstream_http.shown("https://u:p@cdn.example:8443/a/b.conda?X-Amz-Signature=s3cret#f") == (
        "https://cdn.example:8443/a/b.conda"
    )
    upstreams = FakeUpstreams()
    upstreams.routes["channel.example/conda/linux-64/repodata.json.zst"] = lambda request: httpx.Response(
        500, extensions={"reason_phrase": b"Broken token tok-0123456789abcdef " + b"y" * 1000}
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        fetch(upstreams, connector())
    assert "answered 500" in caught.value.message and "tok-0123456789abcdef" not in caught.value.message
    assert len(caught.value.message) <= upstream_http.MESSAGE_LIMIT
