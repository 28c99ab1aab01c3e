"""Attacks on the security layer, over real sockets against real servers on 127.0.0.1.

1. Anonymous memory exhaustion: huge, chunked and multipart bodies; concurrent password guesses.
2. Half-sent bodies and unfinished request heads, by the thousand.
3. Secrets (API keys, upstream tokens) in the server's log and in every answer.
4. Keys: the administrator key variable after the first start, weak typed-in keys, the failure limit.
5. Upstream credentials: control characters refused, encrypted at rest, owner-only files.
6. Names with control characters.
7. Security headers of HTML pages; no inline script.
8. Hidden feeds: a feed key sees its feed only; hidden and missing feeds answer alike; malformed credentials.

Measured numbers (memory growth, latencies) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import base64
import re
import socket
import stat
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from attack import (
    HalfOpen,
    address_of,
    deleted_open_files,
    percentile,
    raise_fd_limit,
    repeated,
    request_head,
    rss_bytes,
    send_lazily,
    summary,
)
from package_factory import PackageSpec, write_package
from servers import Server, start_server

MiB = 1024 * 1024
BODY_LIMIT = MiB  # CONDAGATE_MAX_BODY_BYTES's default


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def from_address(server: Server, source: str, **kwargs: Any) -> httpx.Client:
    """A client whose connections come from another loopback address (still to 127.0.0.1): the
    failure limit counts per client address, so tests that trip it use addresses of their own."""
    return httpx.Client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(local_address=source), **kwargs)


def chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """HTTP/1.1 chunked framing, for raw sockets."""
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def error_message(response: httpx.Response) -> str:
    body = response.json()
    assert body["detail"] == body["error"]["message"], body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    return message


def fragments(secret: str, size: int = 16) -> set[str]:
    """Every ``size``-character piece of ``secret``: a leak of part of a key counts as a leak."""
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def leaked(secret: str, text: str) -> list[str]:
    """The lines of ``text`` that hold a piece of ``secret``."""
    pieces = fragments(secret)
    return [line[:500] for line in text.splitlines() if any(piece in line for piece in pieces)]


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


class PeakRss:
    """Samples a server's resident memory in a thread: ``with PeakRss(pid) as peak: ...; peak.growth``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.before


# --- 1. Anonymous memory exhaustion -----------------------------------------------------------------


def test_anonymous_huge_body_is_refused_before_it_is_read(server: Server):
    """200 MB sent lazily behind ``Content-Length: 1500000000``: a 401 at once, the body left unread."""
    pid = server.process.pid
    with PeakRss(pid) as memory:
        answers = [
            send_lazily(
                server.url,
                "POST",
                "/api/feeds",
                {"Content-Type": "application/json", "Content-Length": "1500000000"},
                repeated(b"x" * MiB, 200 * MiB),
                timeout=30,
            )
            for _ in range(3)
        ]
    print(
        f"\n[huge anonymous body] answers after {[round(a.elapsed, 3) for a in answers]} s, "
        f"{[a.body_bytes_sent // MiB for a in answers]} MiB sent, RSS growth {memory.growth / MiB:.1f} MiB"
    )
    for answer in answers:
        assert answer.status == 401, answer.text()
        assert answer.headers.get("www-authenticate", "").startswith("Basic ")
        assert answer.elapsed < 5
        assert answer.body_bytes_sent < 100 * MiB  # the server stopped the upload; it did not drain it
    assert memory.growth < 50 * MiB


def test_authenticated_json_body_over_the_limit_is_413(server: Server):
    answer = send_lazily(
        server.url,
        "POST",
        "/api/feeds",
        {"Content-Type": "application/json", "Content-Length": str(BODY_LIMIT + 1), "X-API-Key": server.api_key},
        repeated(b" " * 65536, BODY_LIMIT + 1),
        timeout=30,
    )
    assert answer.status == 413, answer.text()
    assert answer.elapsed < 5
    assert str(BODY_LIMIT) in answer.text()
    # Just under the limit still works: the limit is the limit, not a refusal of every large body.
    name = unique("under-limit")
    # (Whitespace as the filler: a description is capped at 2,000 characters.)
    body = b'{"name": "' + name.encode() + b'",' + b" " * (BODY_LIMIT - 200) + b'"description": "d"}'
    with server.admin() as client:
        created = client.post("/api/feeds", content=body, headers={"Content-Type": "application/json"})
        assert created.status_code == 201, created.text[:300]
        assert client.delete(f"/api/feeds/{name}").status_code == 204


def test_authenticated_chunked_json_body_over_the_limit_is_413(server: Server):
    """No Content-Length to judge up front: the limit is enforced while the body streams in."""
    pid = server.process.pid
    with PeakRss(pid) as memory:
        answer = send_lazily(
            server.url,
            "POST",
            "/api/feeds",
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked", "X-API-Key": server.api_key},
            chunked(repeated(b" " * 65536, 5 * 1000 * 1000)),
            timeout=30,
        )
    print(
        f"\n[chunked 5 MB JSON] {answer.status} after {answer.elapsed:.3f} s, "
        f"{answer.body_bytes_sent / MiB:.1f} MiB sent, RSS growth {memory.growth / MiB:.1f} MiB"
    )
    assert answer.status == 413, answer.text()
    assert str(BODY_LIMIT) in answer.text()
    assert memory.growth < 50 * MiB


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_anonymous_multipart_login_of_50_mb_is_413(server: Server, framing: str):
    """``/login`` is the one form anonymous callers may post: its body is small-form sized too, and no
    spooled temp file is left behind."""
    boundary = "attack-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="password"; filename="p.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = 50 * 1000 * 1000

    def parts() -> Iterator[bytes]:
        yield head
        yield from repeated(b"z" * 65536, size)
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        body: Iterator[bytes] = chunked(parts())
    else:
        headers["Content-Length"] = str(len(head) + size + len(tail))
        body = parts()
    pid = server.process.pid
    spooled_before = deleted_open_files(pid)
    with PeakRss(pid) as memory:
        answer = send_lazily(server.url, "POST", "/login", headers, body, timeout=30)
    spooled_after = deleted_open_files(pid)
    print(
        f"\n[multipart /login, {framing}] {answer.status} after {answer.elapsed:.3f} s, "
        f"{answer.body_bytes_sent / MiB:.1f} MiB sent, RSS growth {memory.growth / MiB:.1f} MiB"
    )
    assert answer.status == 413, answer.text()[:300]
    assert answer.body_bytes_sent < 25 * 1000 * 1000
    assert memory.growth < 50 * MiB
    assert [f for f in spooled_after if f not in spooled_before] == []


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """At most 10 wrong credentials per client address and minute; a readable feed for anonymous callers."""
    server = start_server(tmp_path_factory.mktemp("limited") / "data", extra_env={"CONDAGATE_FAILED_AUTH_LIMIT": "10"})
    try:
        with server.admin() as client:
            assert client.post("/api/feeds", json={"name": "open-feed"}).status_code == 201
        yield server
    finally:
        server.stop()


def test_concurrent_password_guesses_are_capped_by_the_failure_limit(limited_server: Server):
    """50 wrong passwords at once from one address: the limit (10) must hold when they arrive together,
    and no guess beyond it may cost an argon2 run (64 MiB of memory and tens of milliseconds each)."""
    server = limited_server

    def guess(index: int) -> int:
        credentials = base64.b64encode(f"user{index}@example.com:wrong-password-{index}".encode()).decode()
        with from_address(server, "127.0.0.3") as client:
            return client.get("/api/feeds", headers={"Authorization": f"Basic {credentials}"}).status_code

    started = time.monotonic()
    with PeakRss(server.process.pid) as memory, ThreadPoolExecutor(50) as pool:
        statuses = Counter(pool.map(guess, range(50)))
    elapsed = time.monotonic() - started
    print(
        f"\n[50 concurrent wrong passwords, limit 10] {dict(statuses)} in {elapsed:.1f} s, "
        f"RSS peak growth {memory.growth / MiB:.0f} MiB"
    )
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[401] <= 10, f"{statuses[401]} guesses were verified; the limit is 10 per minute"
    assert memory.growth < 1024 * MiB


# --- 2. Half-sent bodies and unfinished heads ------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A JSON or form body must arrive whole within 2 seconds here."""
    server = start_server(
        tmp_path_factory.mktemp("slow-bodies") / "data", extra_env={"CONDAGATE_BODY_TIMEOUT_SECONDS": "2"}
    )
    try:
        yield server
    finally:
        server.stop()


def _hosted_package(server: Server, root: Path) -> tuple[str, str, bytes]:
    feed = unique("slow")
    package = write_package(root, PackageSpec(unique("pkg"), "1.0", "0"), ".conda")
    with server.admin() as client:
        assert client.post("/api/feeds", json={"name": feed}).status_code == 201
        uploaded = client.post(f"/api/feeds/{feed}/upload/{package.name}", content=package.read_bytes())
        assert uploaded.status_code == 201, uploaded.text
    return feed, f"/conda/{feed}/noarch/{package.name}", package.read_bytes()


def test_two_thousand_half_sent_bodies_do_not_stall_the_server(slow_server: Server, tmp_path: Path):
    """1,700 anonymous and 300 authenticated ``POST /api/feeds`` send their head and one byte of a
    1,000,000-byte body, then nothing: /health and a download keep answering, the anonymous ones got
    401 at once, the authenticated ones 408 once the 2-second body deadline passed."""
    server = slow_server
    authenticated_count, anonymous_count = 300, 1700
    raise_fd_limit(authenticated_count + anonymous_count + 1000)
    _feed, download_path, package = _hosted_package(server, tmp_path)
    body_headers = {"Content-Type": "application/json", "Content-Length": "1000000"}
    connections = HalfOpen()
    try:
        opened = time.monotonic()
        connections.open(
            server.url,
            authenticated_count,
            request_head("POST", "/api/feeds", {**body_headers, "X-API-Key": server.api_key}),
            b"{",
        )
        connections.open(server.url, anonymous_count, request_head("POST", "/api/feeds", body_headers), b"{")
        all_open = time.monotonic()

        health, downloads = [], []
        for _ in range(50):
            with server.client() as client:  # a new connection each time, as new clients come
                started = time.monotonic()
                response = client.get("/health", timeout=10)
                health.append(time.monotonic() - started)
                assert response.status_code == 200
        for _ in range(5):
            with server.client() as client:
                started = time.monotonic()
                response = client.get(download_path, timeout=10)
                downloads.append(time.monotonic() - started)
                assert response.status_code == 200
                assert response.content == package
        print(
            f"\n[2,000 half-sent bodies open, opened in {all_open - opened:.2f} s] /health {summary(health)}; "
            f"download {summary(downloads)}"
        )
        assert percentile(health, 0.99) < 3.0
        assert max(downloads) < 5.0

        anonymous = connections.read_answers(
            range(authenticated_count, authenticated_count + anonymous_count), until=time.monotonic() + 15
        )
        authenticated = connections.read_answers(range(authenticated_count), until=time.monotonic() + 15)
        print(
            f"[half-sent bodies] anonymous answers {dict(Counter(anonymous.values()))}, "
            f"authenticated answers {dict(Counter(authenticated.values()))} "
            f"({time.monotonic() - opened:.1f} s after the first was opened)"
        )
        assert Counter(anonymous.values()) == {401: anonymous_count}
        assert Counter(authenticated.values()) == {408: authenticated_count}
        assert b"did not arrive in time" in connections.answers[0]
    finally:
        connections.close()


def test_authenticated_half_sent_body_waits_for_the_deadline_only(slow_server: Server):
    """Not refused before the deadline (the body may still come), cut at it (2 s), not later."""
    connections = HalfOpen()
    try:
        headers = {"Content-Type": "application/json", "Content-Length": "1000", "X-API-Key": slow_server.api_key}
        started = time.monotonic()
        connections.open(slow_server.url, 1, request_head("POST", "/api/feeds", headers), b"{")
        early = connections.read_answers([0], until=time.monotonic() + 1.0)
        assert early == {}, "answered before the body deadline"
        answered = connections.read_answers([0], until=started + 15)
        elapsed = time.monotonic() - started
    finally:
        connections.close()
    assert answered == {0: 408}
    assert 1.8 <= elapsed < 6, elapsed


def test_two_thousand_unfinished_request_heads_do_not_stall_the_server(slow_server: Server):
    """Slowloris: 2,000 connections send part of a request head and then nothing. No credentials are
    needed for that; new clients must still be answered within a few seconds."""
    raise_fd_limit(4000)
    address = address_of(slow_server.url)
    sockets: list[socket.socket] = []
    answered: list[float] = []
    failure = ""
    try:
        for _ in range(2000):
            sock = socket.create_connection(address, timeout=10)
            sockets.append(sock)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        time.sleep(0.5)
        for _ in range(10):
            started = time.monotonic()
            try:
                with slow_server.client() as client:
                    status = client.get("/health", timeout=5).status_code
            except httpx.TimeoutException:
                failure = f"/health got no answer within 5 s after {len(answered)} answers"
                break
            answered.append(time.monotonic() - started)
            assert status == 200
    finally:
        for sock in sockets:
            sock.close()
    print(
        f"\n[2,000 unfinished request heads open] /health: {summary(answered) if answered else 'no answer'} {failure}"
    )
    assert not failure, failure


# --- 3. Secrets in logs and answers ----------------------------------------------------------------


def test_keys_and_upstream_tokens_never_reach_the_log_or_an_answer(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("secrets")
    server = start_server(root / "data")
    seen: list[httpx.Response] = []
    raw_answers: list[str] = []
    token = "SECRETTOKEN" + uuid.uuid4().hex
    try:
        package = write_package(root, PackageSpec(unique("pkg"), "1.0", "0"), ".conda")
        with server.admin() as admin:
            seen.append(admin.post("/api/feeds", json={"name": "hosted"}))
            seen.append(admin.post(f"/api/feeds/hosted/upload/{package.name}", content=package.read_bytes()))
            created = admin.post("/api/apikeys", json={"feeds": ["hosted"]})
            assert created.status_code == 201, created.text
            key = created.json()["key"]
            typed = "Typed." + uuid.uuid4().hex + "_Key~Z"
            created_typed = admin.post("/api/apikeys", json={"feeds": ["hosted"], "key": typed})
            assert created_typed.status_code == 201, created_typed.text
            connector = admin.post(
                "/api/connectors",
                json={
                    "name": "secret-up",
                    "url": "http://127.0.0.1:1/none",
                    "token": token,
                    "check": False,
                },
            )
            assert connector.status_code == 201, connector.text
            seen.append(connector)
            proxy = admin.post("/api/feeds", json={"name": "proxied", "connectors": ["secret-up"]})
            assert proxy.status_code == 201, proxy.text
            seen.append(proxy)

        repodata = "conda/hosted/noarch/repodata.json"
        with server.client() as client:
            for secret in (key, typed):
                basic = base64.b64encode(f"api:{secret}".encode()).decode()
                attempts = [
                    (f"/t/{secret}/{repodata}", {}, 200),
                    (f"/t/{secret}/conda/hosted/noarch/{package.name}", {}, 200),
                    (f"/{repodata}", {"Authorization": f"Basic {basic}"}, 200),
                    (f"/{repodata}", {"X-API-Key": secret}, 200),
                    (f"/{repodata}", {"Authorization": f"Bearer {secret}"}, 200),
                    (f"/{repodata}", {"Authorization": secret}, 401),  # the key with no scheme: a common mistake
                    (f"/{repodata}", {"Authorization": f"Token {secret}"}, 401),
                    (f"/t/{secret}/conda/no-such-feed/noarch/repodata.json", {}, 404),
                    (f"/t/{secret}x/{repodata}", {}, 401),  # mistyped
                    (f"/{repodata}?token={secret}&api_key={secret}", {}, 200),
                ]
                if secret == key:  # a generated key has a recognisable shape anywhere; a typed one does not
                    attempts.append((f"/no/such/page/{secret}", {}, 404))
                    attempts.append((f"/api/feeds/{secret}", {"X-API-Key": server.api_key}, 404))
                for path, headers, expected in attempts:
                    response = client.get(path, headers=headers)
                    seen.append(response)
                    if expected is not None:
                        assert response.status_code == expected, (path, headers, response.text)
                # Paths httpx would rewrite ("//t/..." reads as a host "t"): sent as they are.
                for path in (f"//t/{secret}/{repodata}", f"/T/{secret}/{repodata}", f"//T/{secret}/{repodata}"):
                    raw = send_lazily(server.url, "GET", path, {}, [], timeout=10)
                    assert raw.status == 404, (path, raw.text())
                    raw_answers.append(f"{raw.status} {raw.headers} {raw.text()}")
                login = client.post("/login", data={"api_key": secret + "x"})
                assert login.status_code in (400, 401), login.status_code
                seen.append(login)
            seen.append(client.get(f"/t/{server.api_key}/{repodata}"))
            with server.admin() as admin:
                # A typed key that breaks the rules is refused without being echoed.
                for bad in (typed + "!", typed + " ", typed * 10):
                    refused = admin.post("/api/apikeys", json={"feeds": ["hosted"], "key": bad})
                    assert refused.status_code == 400, refused.text
                    seen.append(refused)
                upstream = admin.get("/conda/proxied/noarch/repodata.json")
                assert upstream.status_code >= 500, upstream.text
                seen.append(upstream)
                seen.append(admin.post("/api/connectors/secret-up/refresh", json={"subdirs": ["noarch"]}))
                for path in (
                    "/api/connectors/secret-up",
                    "/api/connectors",
                    "/connectors",
                    "/connectors/secret-up",
                    "/api/access-log",
                    "/api/apikeys",
                    "/api/feeds/proxied",
                ):
                    response = admin.get(path)
                    assert response.status_code == 200, (path, response.text)
                    seen.append(response)
        time.sleep(0.5)  # the access-log lines of the last requests
    finally:
        server.stop()

    log = server.log()
    answers = "\n".join(
        [f"{r.request.method} {r.status_code} {dict(r.headers)} {r.content.decode(errors='replace')}" for r in seen]
        + raw_answers
    )
    leaks = [
        f"the {label} is in {where}: {lines}"
        for label, secret in (
            ("feed key", key),
            ("typed-in key", typed),
            ("admin key", server.api_key),
            ("upstream token", token),
        )
        for where, text in (("the server log", log), ("an answer", answers))
        if (lines := leaked(secret, text))
    ]
    assert not leaks, "\n".join(leaks)
    assert "/t/***/" in log  # the redaction ran (and the requests were logged)


# --- 4. Keys ---------------------------------------------------------------------------------------


def test_admin_key_variable_applies_only_at_the_first_start(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("restart") / "data"
    first_key = "First.Admin.Key-" + uuid.uuid4().hex
    second_key = "Second.Admin.Key-" + uuid.uuid4().hex
    start_server(data, admin_key=first_key).stop()
    server = start_server(data, admin_key=second_key)
    try:
        with server.client() as client:
            assert client.get("/api/users", headers={"X-API-Key": second_key}).status_code == 401
            assert client.get("/api/users", headers={"X-API-Key": first_key}).status_code == 200
    finally:
        server.stop()
    log = server.log()
    assert "CONDAGATE_ADMIN_API_KEY" in log and "ignored" in log, log[-3000:]
    assert not leaked(second_key, log) and not leaked(first_key, log)


def test_a_weak_admin_key_variable_is_refused_at_the_first_start(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("weak-admin") / "data"
    with pytest.raises(RuntimeError, match="24 to 200 characters"):
        start_server(data, admin_key="short").stop()


def test_weak_typed_in_keys_are_refused(server: Server):
    feed = unique("typed")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
        before = len(admin.get("/api/apikeys").json())
        for weak, reason in (
            ("short", "24 to 200"),
            ("a" * 28, "different characters"),
            ("abcdefghij-klmnopqrstuvw?xyz", "letters, digits"),
        ):
            response = admin.post("/api/apikeys", json={"feeds": [feed], "key": weak})
            assert response.status_code == 400, response.text
            assert reason in error_message(response)
        assert len(admin.get("/api/apikeys").json()) == before
        strong = "Strong-Typed.Key_" + uuid.uuid4().hex
        created = admin.post("/api/apikeys", json={"feeds": [feed], "key": strong})
        assert created.status_code == 201, created.text
    with server.client() as client:
        assert client.get(f"/conda/{feed}/noarch/repodata.json", headers={"X-API-Key": strong}).status_code == 200
        assert client.get(f"/conda/{feed}/noarch/repodata.json", headers={"X-API-Key": "short"}).status_code == 401


def test_wrong_keys_from_one_address_are_refused_with_429(limited_server: Server):
    """25 wrong keys from one address (every credential form counts): 401 up to the limit (10), then
    429 with Retry-After. The blocked address is refused even with a correct key, and a forged
    X-Forwarded-For does not get around it; anonymous reads from it still work, and other addresses
    are not affected."""
    server = limited_server
    statuses, retry_after = [], []
    with from_address(server, "127.0.0.2") as client:
        for attempt in range(25):
            wrong = f"cg-wrong{attempt:02d}" + "x" * 32
            form = attempt % 4
            if form == 0:
                response = client.get("/api/feeds", headers={"X-API-Key": wrong})
            elif form == 1:
                response = client.get("/api/feeds", headers={"Authorization": f"Bearer {wrong}"})
            elif form == 2:
                basic = base64.b64encode(f"api:{wrong}".encode()).decode()
                response = client.get("/api/feeds", headers={"Authorization": f"Basic {basic}"})
            else:
                response = client.get(f"/t/{wrong}/conda/open-feed/noarch/repodata.json")
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after.append(response.headers.get("retry-after", ""))
                assert "try again" in error_message(response)
        assert statuses == [401] * 10 + [429] * 15, statuses
        assert all(value.isdigit() and 1 <= int(value) <= 60 for value in retry_after), retry_after

        correct = client.get("/api/users", headers={"X-API-Key": server.api_key})
        assert correct.status_code == 429, "a blocked address is refused whatever it sends"
        forged = client.get("/api/users", headers={"X-API-Key": server.api_key, "X-Forwarded-For": "10.9.8.7"})
        assert forged.status_code == 429, "X-Forwarded-For from an untrusted peer must not change the address"
        assert client.get("/health").status_code == 200
        assert client.get("/conda/open-feed/noarch/repodata.json").status_code == 200
        assert client.get("/api/feeds").status_code == 200
    with from_address(server, "127.0.0.4") as other:
        assert other.get("/api/users", headers={"X-API-Key": server.api_key}).status_code == 200


# --- 5. Upstream credentials -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "label"),
    [
        ({"token": "abc\n"}, "token"),
        ({"token": "abc\r\nX-Injected: yes"}, "token"),
        ({"token": " abc"}, "token"),
        ({"username": "bob\n", "password": "secret"}, "username"),
        ({"username": "bob", "password": "secret\n"}, "password"),
    ],
    ids=["token-newline", "token-header-injection", "token-space", "username-newline", "password-newline"],
)
def test_connector_credentials_with_control_characters_are_refused(
    server: Server, credentials: dict[str, str], label: str
):
    name = unique("ctl")
    with server.admin() as admin:
        response = admin.post("/api/connectors", json={"name": name, "url": "http://127.0.0.1:1/none", **credentials})
        assert response.status_code == 400, response.text
        message = error_message(response)
        assert label in message and ("newline" in message or "control" in message), message
        assert admin.get(f"/api/connectors/{name}").status_code == 404
        assert name not in [c["name"] for c in admin.get("/api/connectors").json()]


@pytest.mark.parametrize(
    "template",
    ["http://127.0.0.1:1/t/{}/channel", "http://127.0.0.1:1/channel?token={}"],
    ids=["conda-token-path", "token-query"],
)
def test_a_token_in_the_connector_url_is_refused_or_kept_secret(server: Server, template: str):
    """anaconda.org's own form puts the token in the channel URL (``/t/TOKEN/``). Such a URL is either
    refused (as ``user:password@`` is) or its token is kept as secret as the ``token`` field: not shown
    to anonymous callers, not stored in clear text."""
    token = "SECRETTOKEN" + uuid.uuid4().hex
    name = unique("urltoken")
    with server.admin() as admin:
        created = admin.post("/api/connectors", json={"name": name, "url": template.format(token)})
    if created.status_code == 400:
        assert "token" in error_message(created)
        return
    assert created.status_code == 201, created.text
    with server.client() as anonymous:
        answers = [
            anonymous.get("/api/connectors"),
            anonymous.get(f"/api/connectors/{name}"),
            anonymous.get("/connectors"),
        ]
    with server.admin() as admin:
        answers.append(admin.get("/api/connectors"))
    for answer in answers:
        assert answer.status_code in (200, 401, 404), answer.text[:300]
        assert not leaked(token, answer.text), f"{answer.request.url}: {leaked(token, answer.text)}"
    url = server.database_url or f"sqlite:///{server.data_dir / 'condagate.db'}"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(
                sqlalchemy.text("SELECT * FROM connectors WHERE name = :name"), {"name": name}
            ).one()
    finally:
        engine.dispose()
    assert not any(token in str(value) for value in stored), "the token is stored in clear text"


def _stored_connector(server: Server, name: str) -> dict[str, str]:
    url = server.database_url or f"sqlite:///{server.data_dir / 'condagate.db'}"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sqlalchemy.text("SELECT username, password, token FROM connectors WHERE name = :name"), {"name": name}
            ).one()
    finally:
        engine.dispose()
    return {"username": row[0], "password": row[1], "token": row[2]}


def test_upstream_credentials_are_encrypted_at_rest_in_owner_only_files(server: Server):
    token = "SECRETTOKEN" + uuid.uuid4().hex
    password = "UPSTREAMPASSWORD" + uuid.uuid4().hex
    with server.admin() as admin:
        for name, credentials in (
            (unique("tok"), {"token": token}),
            (unique("pw"), {"username": "mirror", "password": password}),
        ):
            created = admin.post(
                "/api/connectors", json={"name": name, "url": "http://127.0.0.1:1/none", "check": False, **credentials}
            )
            assert created.status_code == 201, created.text
            assert created.json()["authentication"] in ("token", "basic")
            stored = _stored_connector(server, name)
            for column, value in credentials.items():
                assert stored[column].startswith("enc:v1:"), stored
                assert value not in stored[column]
    data = server.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700, oct(data.stat().st_mode)
    key_file = data / "secret.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, oct(key_file.stat().st_mode)
    if not server.database_url:
        files = [data / name for name in ("condagate.db", "condagate.db-wal", "condagate.db-shm")]
        for path in files:
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
        raw = b"".join(path.read_bytes() for path in files if path.exists())
        assert token.encode() not in raw and password.encode() not in raw
        assert b"enc:v1:" in raw


# --- 6. Names --------------------------------------------------------------------------------------


def test_names_ending_in_a_newline_are_refused(server: Server):
    """``re.match`` with ``$`` lets a final newline through: a feed or connector named ``nl\\n``."""
    with server.admin() as admin:
        feed = admin.post("/api/feeds", json={"name": "nl\n"})
        assert feed.status_code == 400, feed.text
        assert "invalid feed name" in error_message(feed)
        connector = admin.post("/api/connectors", json={"name": "nl\n", "url": "http://127.0.0.1:1/none"})
        assert connector.status_code == 400, connector.text
        assert "nl\n" not in [f["name"] for f in admin.get("/api/feeds").json()]
        assert "nl\n" not in [c["name"] for c in admin.get("/api/connectors").json()]


# --- 7. Headers and scripts ------------------------------------------------------------------------


def _csp(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers.get("content-security-policy", "")
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = [w.lower() for w in words[1:]]
    return directives


_SCRIPT_TAG = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
_EVENT_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)


def test_html_pages_carry_a_strict_content_security_policy(server: Server):
    with server.client() as client:
        pages = [
            client.get("/"),
            client.get("/login"),
            client.get("/feeds/no-such-feed-here", headers={"Accept": "text/html"}),
        ]
        api = client.get("/api/feeds")
    with server.admin() as admin:
        pages += [admin.get("/connectors"), admin.get("/feeds/new")]
    for page in pages:
        assert page.headers.get("content-type", "").startswith("text/html"), (page.url, page.status_code)
        csp = _csp(page)
        script = csp.get("script-src", csp.get("default-src"))
        assert script, (page.url, page.headers)
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"} & set(script), script
        assert csp.get("frame-ancestors") == ["'none'"], csp
        assert csp.get("object-src") == ["'none'"], csp
        assert page.headers.get("x-content-type-options") == "nosniff"
        # What the policy forbids must not be needed: no inline script, no inline event handler.
        for attributes, content in _SCRIPT_TAG.findall(page.text):
            assert "src=" in attributes.lower() and not content.strip(), (page.url, attributes, content[:200])
        assert not _EVENT_HANDLER.search(page.text), (page.url, _EVENT_HANDLER.search(page.text))
    assert api.headers.get("x-content-type-options") == "nosniff"


def test_api_docs_page_has_no_inline_script(server: Server):
    with server.client() as client:
        docs = client.get("/api/docs")
        assert docs.status_code == 200
        scripts = _SCRIPT_TAG.findall(docs.text)
        assert scripts, docs.text
        assert "'unsafe-inline'" not in _csp(docs).get("script-src", ["'unsafe-inline'"])
        assert not _EVENT_HANDLER.search(docs.text)
        for attributes, content in scripts:
            assert not content.strip(), f"inline script in /api/docs: {content[:200]}"
            source = re.search(r"""src\s*=\s*["']([^"']+)["']""", attributes)
            assert source and source.group(1).startswith("/"), attributes  # same origin, no CDN
            loaded = client.get(source.group(1))
            assert loaded.status_code == 200, source.group(1)
            assert "javascript" in loaded.headers.get("content-type", ""), loaded.headers


# --- 8. Hidden feeds and malformed credentials -----------------------------------------------------


@pytest.fixture(scope="module")
def hidden_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Anonymous callers see nothing; feed A and feed B (with a package); a feed key for A."""
    root = tmp_path_factory.mktemp("hidden")
    server = start_server(root / "data")
    try:
        package = write_package(root, PackageSpec("hidden-pkg", "1.0", "0"), ".conda")
        with server.admin() as admin:
            removed = admin.delete("/api/grants", params={"principal": "anonymous", "permission": "view"})
            assert removed.status_code == 204, removed.text
            for name in ("feed-a", "feed-b"):
                assert admin.post("/api/feeds", json={"name": name}).status_code == 201
            uploaded = admin.post(f"/api/feeds/feed-b/upload/{package.name}", content=package.read_bytes())
            assert uploaded.status_code == 201, uploaded.text
            created = admin.post("/api/apikeys", json={"feeds": ["feed-a"]})
            assert created.status_code == 201, created.text
        with server.client() as client:
            wait_until(lambda: client.get("/api/feeds").status_code == 401)
        yield {"server": server, "key": created.json()["key"], "package": package.name}
    finally:
        server.stop()


def _same_answer(hidden: httpx.Response, missing: httpx.Response, hidden_name: str, missing_name: str) -> None:
    assert hidden.status_code == missing.status_code, (hidden.text, missing.text)
    assert hidden.headers.get("content-type") == missing.headers.get("content-type")
    assert hidden.text.replace(hidden_name, "NAME") == missing.text.replace(missing_name, "NAME")


def test_a_feed_key_sees_its_feed_only(hidden_server: dict[str, Any]):
    server: Server = hidden_server["server"]
    package = hidden_server["package"]
    with server.client(headers={"X-API-Key": hidden_server["key"]}) as client:
        assert [f["name"] for f in client.get("/api/feeds").json()] == ["feed-a"]
        assert client.get("/conda/feed-a/noarch/repodata.json").status_code == 200
        pairs = [
            ("/conda/{}/noarch/repodata.json", "GET", None),
            ("/conda/{}/noarch/" + package, "GET", None),
            ("/conda/{}/channeldata.json", "GET", None),
            ("/api/feeds/{}", "GET", None),
            ("/api/feeds/{}/packages", "GET", None),
            ("/api/feeds/{}/packages/hidden-pkg", "GET", None),
            ("/feeds/{}", "GET", None),
            ("/api/feeds/{}/upload/" + package, "POST", b"not a package"),
            ("/api/feeds/{}", "DELETE", None),
        ]
        for template, method, content in pairs:
            hidden = client.request(method, template.format("feed-b"), content=content)
            missing = client.request(method, template.format("doesnotexist"), content=content)
            # a read-only key's writes are refused before their body is read, hidden feed or not
            assert hidden.status_code == (404 if method == "GET" else 403), (template, hidden.status_code, hidden.text)
            _same_answer(hidden, missing, "feed-b", "doesnotexist")
        connectors = client.get("/api/connectors").json()
        assert all(c["feeds"] == [] for c in connectors)


def test_anonymous_callers_cannot_tell_hidden_feeds_from_missing_ones(hidden_server: dict[str, Any]):
    server: Server = hidden_server["server"]
    with server.client() as client:
        for template in (
            "/conda/{}/noarch/repodata.json",
            "/conda/{}/noarch/" + hidden_server["package"],
            "/api/feeds/{}",
            "/api/feeds/{}/packages",
        ):
            hidden = client.get(template.format("feed-b"))
            missing = client.get(template.format("doesnotexist"))
            assert hidden.status_code == missing.status_code == 401, (template, hidden.text)
            assert hidden.headers["www-authenticate"] == missing.headers["www-authenticate"]
            assert hidden.headers["www-authenticate"].startswith("Basic ")
            assert hidden.content == missing.content


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon-here").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:password").decode()},
        {"Authorization": "Weird xyz"},
        {"Authorization": "Bearer " + "a" * 10_000},
        {"Authorization": "Basic " + "QUFB" * 2_500},
        {"X-API-Key": "k" * 10_000},
        {"Authorization": "Basic " + base64.b64encode(b"api:" + b"x" * 3000).decode()},
    ],
    ids=[
        "basic-not-base64",
        "basic-no-colon",
        "basic-not-utf8",
        "unknown-scheme",
        "bearer-10kB",
        "basic-10kB",
        "x-api-key-10kB",
        "basic-long-key",
    ],
)
def test_malformed_credentials_get_a_clear_401(hidden_server: dict[str, Any], headers: dict[str, str]):
    server: Server = hidden_server["server"]
    with server.client() as client:
        for path in ("/conda/feed-a/noarch/repodata.json", "/api/feeds"):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (response.status_code, response.text[:300])
            assert response.headers["www-authenticate"].startswith("Basic ")
            message = error_message(response)
            # Clear: it says what is wrong, in words (no secret was sent, so nothing to blank out).
            assert "***" not in message, message
            assert len(message) < 300
