"""A local upstream conda channel for proxy tests: real packages, repodata written by py-rattler's
indexer, served over real HTTP on 127.0.0.1 with switches for the faults upstreams have."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import http.server
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import zstandard
from rattler.index import index_fs

from package_factory import PackageSpec, write_package


@dataclass
class Faults:
    """What the upstream does wrong right now; tests flip these."""

    status: int | None = None  # answer every request with this status (e.g. 500)
    delay: float = 0.0  # seconds before answering
    truncate: bool = False  # promise the full Content-Length, send half, close
    wrong_bytes: bool = False  # package files: same length, different bytes
    garbage_repodata: bool = False  # repodata: not JSON
    paths: tuple[str, ...] = ()  # limit the faults to paths containing one of these (all when empty)
    required_authorization: str | None = None  # answer 401 unless this exact Authorization header comes
    # Package files: send this many body bytes, then hold the rest until ``resume`` is set (a download
    # caught mid-way, for as long as a test needs; at most ``pause_seconds``).
    pause_after: int | None = None
    resume: threading.Event = field(default_factory=threading.Event)
    pause_seconds: float = 120.0

    def applies(self, path: str) -> bool:
        return not self.paths or any(part in path for part in self.paths)


@dataclass
class UpstreamChannel:
    root: Path
    faults: Faults = field(default_factory=Faults)
    requests: Counter[str] = field(default_factory=Counter)
    conditional_hits: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connections: set[socket.socket] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, spec: PackageSpec, extension: str = ".conda") -> Path:
        directory = self.root / spec.subdir
        directory.mkdir(parents=True, exist_ok=True)
        return write_package(directory, spec, extension)

    def index(self, base_url: str | None = None) -> None:
        """(Re)write repodata with rattler's indexer; optionally as CEP-15 v2 with an absolute base_url."""
        (self.root / "noarch").mkdir(parents=True, exist_ok=True)
        # In a thread of its own: callers may have an event loop running (Playwright's sync API does).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, index_fs(self.root, write_zst=True, write_shards=False, force=True)).result()
        if base_url is None:
            return
        for repodata_path in self.root.glob("*/repodata.json"):
            document = json.loads(repodata_path.read_bytes())
            document["repodata_version"] = 2
            document["info"]["base_url"] = f"{base_url}/{repodata_path.parent.name}/"
            body = json.dumps(document).encode()
            repodata_path.write_bytes(body)
            repodata_path.with_suffix(".json.zst").write_bytes(zstandard.ZstdCompressor().compress(body))

    def start(self) -> None:
        channel = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with channel._lock:
                    channel._connections.add(self.connection)

            def finish(self) -> None:
                with channel._lock:
                    channel._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(head=True)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                with channel._lock:
                    channel.requests[f"{self.command} {path}"] += 1
                required = channel.faults.required_authorization
                if required is not None and self.headers.get("Authorization") != required:
                    self._send(401, b"credentials required", "text/plain", head)
                    return
                faults = channel.faults if channel.faults.applies(path) else Faults()
                if faults.delay:
                    time.sleep(faults.delay)
                if faults.status:
                    self._send(faults.status, b"upstream failure", "text/plain", head)
                    return
                target = (channel.root / path.lstrip("/")).resolve()
                if not target.is_relative_to(channel.root.resolve()) or not target.is_file():
                    self._send(404, b"not found", "text/plain", head)
                    return
                body = target.read_bytes()
                if faults.garbage_repodata and "repodata" in path:
                    body = b"<html>this is not repodata</html>"
                if faults.wrong_bytes and path.endswith((".conda", ".tar.bz2")):
                    body = bytes(b ^ 0xFF for b in body)
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                if self.headers.get("If-None-Match") == etag:
                    with channel._lock:
                        channel.conditional_hits[path] += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content_type = "application/json" if path.endswith(".json") else "application/octet-stream"
                if faults.truncate and not head:
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                pause_after = faults.pause_after  # read once: a test may clear it while this request waits
                if pause_after is not None and not head and path.endswith((".conda", ".tar.bz2")):
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("ETag", etag)
                    self.end_headers()
                    self.wfile.write(body[:pause_after])
                    self.wfile.flush()
                    faults.resume.wait(faults.pause_seconds)
                    with contextlib.suppress(OSError):  # the downloader may be gone (killed) by now
                        self.wfile.write(body[pause_after:])
                    return
                self._send(200, body, content_type, head, {"ETag": etag})

            def _send(
                self, status: int, body: bytes, content_type: str, head: bool, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """The upstream goes away: connections are refused until ``start`` again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:  # kept-alive connections too: a real outage does not spare them
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()

    def count(self, suffix: str, method: str = "GET") -> int:
        with self._lock:
            return sum(n for key, n in self.requests.items() if key.startswith(method + " ") and key.endswith(suffix))
