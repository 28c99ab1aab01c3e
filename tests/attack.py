"""Tools for the attack tests: raw HTTP/1.1 over sockets (bodies that are huge, slow or never finished),
the memory of a server's process tree, and latency percentiles. Traffic only ever goes to 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


def address_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname == LOOPBACK, f"attack traffic goes to {LOOPBACK} only, not {url}"
    return LOOPBACK, int(parts.port or 80)


# --- the server's memory ----------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (granian's workers), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_bytes(pid: int) -> int:
    """The resident memory of ``pid`` and its descendants, summed (VmRSS)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def deleted_open_files(pid: int) -> list[str]:
    """Files the server's processes hold open that are deleted (spooled temp files), with their sizes."""
    found = []
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{member}/fd/{fd}")
                    if target.endswith("(deleted)"):
                        size = os.stat(f"/proc/{member}/fd/{fd}").st_size
                        found.append(f"{target} ({size} bytes)")
    return found


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --- raw HTTP/1.1 -----------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float  # seconds from the first byte sent to the whole answer read
    body_bytes_sent: int  # how much of the request body went out before the answer came

    def text(self) -> str:
        return self.body.decode(errors="replace")


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) once ``data`` holds a whole answer (Content-Length or chunked), else None."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        return (status, headers, rest[:length]) if len(rest) >= length else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, position = b"", 0
        while True:
            line_end = rest.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(rest[position:line_end].split(b";")[0], 16)
            if size == 0:
                return status, headers, body
            start = line_end + 2
            if len(rest) < start + size + 2:
                return None
            body += rest[start : start + size]
            position = start + size + 2
    return None  # read until the connection closes


def send_lazily(
    url: str, method: str, path: str, headers: dict[str, str], body: Iterable[bytes], timeout: float
) -> RawResponse:
    """Send the head, then ``body`` piece by piece while watching for an early answer; stop sending as
    soon as an answer arrives (or the server closes). Raises TimeoutError when no answer comes."""
    sock = socket.create_connection(address_of(url), timeout=timeout)
    sock.setblocking(False)
    started = time.monotonic()
    deadline = started + timeout
    sent = 0
    received = b""
    pending = memoryview(request_head(method, path, headers))
    head_done = False
    pieces: Iterator[bytes] = iter(body)
    body_done = False
    closed = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while time.monotonic() < deadline:
                if body_done and not pending:
                    selector.modify(sock, selectors.EVENT_READ)
                for _key, events in selector.select(max(0.0, deadline - time.monotonic())):
                    if events & selectors.EVENT_READ:
                        try:
                            chunk = sock.recv(65536)
                        except ConnectionResetError:
                            chunk = b""
                        if not chunk:
                            closed = True
                        received += chunk
                        parsed = parse_response(received)
                        if parsed is not None or closed:
                            if parsed is None:
                                if not received:
                                    raise ConnectionError("the server closed the connection without an answer")
                                parsed = parse_response(received + b"\r\n\r\n") or (0, {}, received)
                            status, response_headers, response_body = parsed
                            return RawResponse(
                                status, response_headers, response_body, time.monotonic() - started, sent
                            )
                    if events & selectors.EVENT_WRITE and not (body_done and not pending):
                        if not pending:
                            piece = next(pieces, None)
                            if piece is None:
                                body_done = True
                                continue
                            pending = memoryview(piece)
                        try:
                            count = sock.send(pending)
                        except (BrokenPipeError, ConnectionResetError):
                            body_done, pending = True, memoryview(b"")
                            continue
                        if head_done:
                            sent += count
                        pending = pending[count:]
                        if not pending and not head_done:
                            head_done = True
        raise TimeoutError(f"no answer within {timeout} s ({sent} body bytes sent)")
    finally:
        sock.close()


def repeated(piece: bytes, total: int) -> Iterator[bytes]:
    """``total`` bytes made of ``piece``, generated lazily."""
    sent = 0
    while sent < total:
        chunk = piece[: total - sent]
        sent += len(chunk)
        yield chunk


# --- many connections at once -----------------------------------------------------------------------


@dataclass
class HalfOpen:
    """Connections that sent a request head and part of a body, then went quiet."""

    sockets: list[socket.socket] = field(default_factory=list)
    answers: dict[int, bytes] = field(default_factory=dict)  # index -> bytes read so far

    def open(self, url: str, count: int, head: bytes, first_bytes: bytes) -> None:
        address = address_of(url)
        for _ in range(count):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(head + first_bytes)
            sock.setblocking(False)
            self.sockets.append(sock)

    def read_answers(self, indices: Iterable[int], until: float) -> dict[int, int]:
        """Read what the given connections answer until each has a whole answer or the server closed
        it, or ``until`` (monotonic) passes; returns index -> status (0: closed without an answer)."""
        wanted = set(indices)
        statuses: dict[int, int] = {}
        with selectors.DefaultSelector() as selector:
            for index in wanted:
                selector.register(self.sockets[index], selectors.EVENT_READ, index)
            while wanted and time.monotonic() < until:
                for key, _events in selector.select(max(0.0, min(0.5, until - time.monotonic()))):
                    index = key.data
                    try:
                        chunk = self.sockets[index].recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    data = self.answers.get(index, b"") + chunk
                    self.answers[index] = data
                    parsed = parse_response(data)
                    if parsed is not None or not chunk:
                        statuses[index] = parsed[0] if parsed is not None else 0
                        wanted.discard(index)
                        selector.unregister(self.sockets[index])
        return statuses

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"n={len(values)} p50={percentile(values, 0.5) * 1000:.1f} ms p99={percentile(values, 0.99) * 1000:.1f} ms "
        f"max={max(values) * 1000:.1f} ms mean={statistics.mean(values) * 1000:.1f} ms"
    )
