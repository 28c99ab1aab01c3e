"""Every GET to an upstream goes through here: condagate's redirect policy, a deadline, safe error text.

- Redirects are followed here, never by httpx: at most ``REDIRECT_LIMIT``, within the connector's own
  origin unless it allows ``any-public`` hosts, over http(s) only and never from https to http. Each
  hop's host is resolved and every address checked (``addresses.py``); the address actually connected
  to is checked again, so a name that resolves differently the second time gains nothing. Credentials
  (the token header, basic auth) go to the connector's own origin only.
- Deadlines. ``get`` (repodata, synchronous) has one deadline for connect, redirects, headers and
  body: each hop's timeouts are the time left (reads at most the per-read timeout), the body is read
  by ``iter_body`` which checks the deadline between chunks, and a watchdog shuts the socket down
  when the deadline passes, so a server that drips headers or body a byte at a time is cut off on
  time. ``open_stream`` (packages, asynchronous) bounds connect, redirects and headers by the
  connector's timeout; the body is then read at the upstream's pace, each read within that timeout.
- Errors name the connector and give a short reason: never the text httpx gives about the request
  (it can echo header values), never a URL's query; redacted and bounded in length.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import httpx

from condagate.errors import CondagateError, UpstreamTimeout, UpstreamUnavailable
from condagate.security.redact import redact
from condagate.upstream.addresses import AddressPolicy, Resolver, literal_address, system_resolver
from condagate.upstream.connector import ANY_PUBLIC, ConnectorConfig

REDIRECT_LIMIT = 5
MESSAGE_LIMIT = 400
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


# --- error text -----------------------------------------------------------------------------------


def bounded_message(text: str) -> str:
    """One line, secrets redacted, at most ``MESSAGE_LIMIT`` characters."""
    text = redact(" ".join("".join(c if c.isprintable() else " " for c in text).split()))
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "..."


def unavailable(connector_name: str, reason: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        bounded_message(f"connector {connector_name!r}: {reason}"),
        public=f"connector {connector_name!r} is unreachable or answered wrongly",
    )


def timed_out(connector_name: str, reason: str) -> UpstreamTimeout:
    return UpstreamTimeout(
        bounded_message(f"connector {connector_name!r}: {reason}"),
        public=f"connector {connector_name!r} did not answer in time",
    )


def shown(url: httpx.URL | str) -> str:
    """A URL for messages: no user info, no query or fragment (signed URLs carry secrets), path cut short."""
    url = httpx.URL(url)
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port else ""
    path = url.path if len(url.path) <= 120 else url.path[:119] + "..."
    return f"{url.scheme}://{host}{port}{path}"


def _os_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:119] + "..."


def failure_reason(exc: httpx.HTTPError) -> str:
    """A short reason for an httpx failure. Text comes only from the network side (the OS, the
    server's bytes), never from errors about the request, whose text can echo header values."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "it sent nothing for too long"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({_os_text(exc)})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"it broke the HTTP protocol ({_os_text(exc)})"
    if isinstance(exc, httpx.NetworkError):
        return f"the connection broke off ({_os_text(exc)})"
    if isinstance(exc, httpx.DecodingError):
        return "its response could not be decoded"
    if isinstance(exc, httpx.ProxyError):
        return "the proxy refused the request"
    if isinstance(exc, httpx.LocalProtocolError):
        return "the request could not be sent (is a credential or header malformed?)"
    return f"the request failed ({type(exc).__name__})"


def transfer_failure(connector_name: str, url: httpx.URL | str, exc: httpx.HTTPError) -> CondagateError:
    """An httpx failure as condagate's error: ``UpstreamTimeout`` for timeouts, else ``UpstreamUnavailable``."""
    if isinstance(exc, httpx.TimeoutException):
        return timed_out(connector_name, f"{shown(url)}: {failure_reason(exc)}")
    return unavailable(connector_name, f"{shown(url)} is unreachable: {failure_reason(exc)}")


# --- the deadline ---------------------------------------------------------------------------------


class Deadline:
    """One monotonic deadline for a whole fetch, named in the message when it passes."""

    def __init__(self, seconds: float, connector_name: str) -> None:
        self.seconds = seconds
        self.connector_name = connector_name
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def error(self, url: httpx.URL | str) -> UpstreamTimeout:
        return timed_out(
            self.connector_name, f"{shown(url)} did not arrive within the fetch's deadline of {self.seconds:g} s"
        )

    def check(self, url: httpx.URL | str) -> None:
        if self.expired:
            raise self.error(url)

    def timeout(self, per_read: float) -> httpx.Timeout:
        left = max(self.remaining(), 0.001)
        return httpx.Timeout(connect=left, read=min(left, per_read), write=left, pool=left)


# --- where a request may go -----------------------------------------------------------------------


def origin_of(url: httpx.URL) -> Origin:
    return (url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0))


@dataclass
class _Route:
    """One fetch's view of its connector: home origin, address policy, resolved names."""

    connector: ConnectorConfig
    resolver: Resolver
    proxied: bool  # an environment proxy connects for us: the peer is the proxy, names may not resolve here
    home: Origin = ("", "", 0)
    policy: AddressPolicy = field(default_factory=lambda: AddressPolicy(frozenset()))
    resolved: dict[tuple[str, int], Sequence[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.connector.name

    def credentials(self, url: httpx.URL) -> tuple[dict[str, str], tuple[str, str] | None]:
        if origin_of(url) == self.home:
            return self.connector.headers, self.connector.basic_auth
        return {}, None


def _parse(route: _Route, url: httpx.URL | str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise unavailable(route.name, "an invalid URL") from None
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
        raise unavailable(route.name, f"a {parsed.scheme or 'relative'}: URL is refused (http and https only)")
    return parsed.copy_with(userinfo=b"", fragment=None)


def _resolve(route: _Route, url: httpx.URL) -> Sequence[str] | None:
    """The addresses of the URL's host; None when it does not resolve here but a proxy will connect."""
    literal = literal_address(url.host)
    if literal is not None:
        return [literal]
    key = (url.host.lower(), origin_of(url)[2])
    if key not in route.resolved:
        try:
            addresses = list(route.resolver(*key))
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            if route.proxied:
                return None
            raise unavailable(route.name, f"{shown(url)}: the host name does not resolve")
        route.resolved[key] = addresses
    return route.resolved[key]


def _check_addresses(route: _Route, url: httpx.URL, addresses: Sequence[str] | None) -> None:
    refusal = route.policy.refusal(addresses or ())
    if refusal is not None:
        raise unavailable(route.name, f"{shown(url)} is refused: its host has {refusal}")


def _redirect_target(route: _Route, current: httpx.URL, response: httpx.Response, hops: int) -> httpx.URL | None:
    """Where a redirect answer points, once the redirect policy allows it; None for any other answer."""
    location = response.headers.get("location")
    if response.status_code not in _REDIRECT_STATUSES or location is None:
        return None
    if hops >= REDIRECT_LIMIT:
        raise unavailable(route.name, f"{shown(current)}: more than {REDIRECT_LIMIT} redirects")
    try:
        target = current.join(location)
    except (httpx.InvalidURL, UnicodeError):
        raise unavailable(route.name, f"{shown(current)} redirects to an invalid URL") from None
    if target.scheme not in _DEFAULT_PORTS:
        raise unavailable(route.name, f"{shown(current)} redirects to a {target.scheme}: URL, refused")
    target = _parse(route, target)
    if current.scheme == "https" and target.scheme == "http":
        raise unavailable(route.name, f"{shown(current)} redirects from https to http, refused")
    if route.connector.allow_redirects != ANY_PUBLIC and origin_of(target) != route.home:
        scheme, host, port = origin_of(target)
        raise unavailable(
            route.name,
            f"{shown(current)} redirects to another origin ({scheme}://{host}:{port}), refused: "
            "the connector follows redirects within its own origin only",
        )
    return target


def _environment_proxied(client: httpx.Client | httpx.AsyncClient) -> bool:
    return client.trust_env and bool(urllib.request.getproxies_environment())


def _route(client: httpx.Client | httpx.AsyncClient, connector: ConnectorConfig, resolver: Resolver | None) -> _Route:
    route = _Route(connector, resolver or system_resolver, _environment_proxied(client))
    home = _parse(route, connector.url)
    route.home = origin_of(home)
    return route


def _set_policy(route: _Route, home_addresses: Sequence[str] | None) -> None:
    route.policy = AddressPolicy.for_home(home_addresses or ())


class _Peers:
    """httpx's trace hook: checks the address each new connection reached, and keeps its socket so
    that a deadline can cut it off."""

    def __init__(self, route: _Route) -> None:
        self.route = route
        self.url = httpx.URL(route.connector.url)
        self.cut_off = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def _refusal(self, stream: Any) -> str | None:
        if self.route.proxied:
            return None
        peer = stream.get_extra_info("server_addr")
        if not isinstance(peer, tuple) or not peer:
            return None
        return self.route.policy.refusal([str(peer[0])])

    def _keep(self, stream: Any) -> None:
        sock = stream.get_extra_info("socket")
        with self._lock:
            self._socket = sock if isinstance(sock, socket.socket) else None
            if self.cut_off:
                self._shutdown()

    def _refused(self, refusal: str) -> UpstreamUnavailable:
        return unavailable(self.route.name, f"{shown(self.url)} is refused: the connection reached {refusal}")

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            if stream is None:
                return
            refusal = self._refusal(stream) if event == "connection.connect_tcp.complete" else None
            if refusal is not None:
                stream.close()
                raise self._refused(refusal)
            self._keep(stream)

    async def atrace(self, event: str, info: dict[str, Any]) -> None:
        stream = info.get("return_value")
        if event == "connection.connect_tcp.complete" and stream is not None:
            refusal = self._refusal(stream)
            if refusal is not None:
                await stream.aclose()
                raise self._refused(refusal)

    def cut(self) -> None:
        """The deadline passed: shut the connection down, which ends a blocked read at once."""
        with self._lock:
            self.cut_off = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown: an SSLSocket's would also drop its TLS object under a reader
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)


def _build(
    client: httpx.Client | httpx.AsyncClient,
    route: _Route,
    url: httpx.URL,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    trace: Any,
) -> tuple[httpx.Request, tuple[str, str] | None]:
    credentials, auth = route.credentials(url)
    request = client.build_request(
        "GET", url, headers={**headers, **credentials}, timeout=timeout, extensions={"trace": trace}
    )
    return request, auth


# --- synchronous: repodata ------------------------------------------------------------------------


@contextlib.contextmanager
def get(
    client: httpx.Client,
    connector: ConnectorConfig,
    url: str,
    *,
    deadline: Deadline,
    headers: Mapping[str, str] | None = None,
    resolver: Resolver | None = None,
) -> Iterator[httpx.Response]:
    """GET ``url`` under the policy, within ``deadline``; yields the final response, body unread (read
    it with ``iter_body``). Any failure raises ``UpstreamUnavailable`` or ``UpstreamTimeout``."""
    route = _route(client, connector, resolver)
    peers = _Peers(route)
    # A new connection per request (no keep-alive): the watchdog needs the socket, which httpx
    # reports only when it connects.
    sent_headers = {**(headers or {}), "Connection": "close"}
    watchdog = threading.Timer(max(deadline.remaining(), 0), peers.cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        _set_policy(route, _resolve(route, httpx.URL(connector.url).copy_with(userinfo=b"")))
        current = _parse(route, url)
        for hops in range(REDIRECT_LIMIT + 1):
            _check_addresses(route, current, _resolve(route, current))
            deadline.check(current)
            peers.url = current
            request, auth = _build(
                client, route, current, sent_headers, deadline.timeout(connector.timeout_seconds), peers.trace
            )
            response = client.send(request, stream=True, auth=auth, follow_redirects=False)
            try:
                target = _redirect_target(route, current, response, hops)
            except BaseException:
                response.close()
                raise
            if target is None:
                try:
                    yield response
                finally:
                    response.close()
                return
            response.close()
            current = target
    except httpx.HTTPError as exc:
        if peers.cut_off or deadline.expired:
            raise deadline.error(peers.url) from None
        raise transfer_failure(connector.name, peers.url, exc) from None
    finally:
        watchdog.cancel()


def iter_body(response: httpx.Response, deadline: Deadline) -> Iterator[bytes]:
    """The body as it arrives (still content-encoded), checking the deadline between chunks."""
    for chunk in response.iter_raw():
        deadline.check(response.url)
        yield chunk
    deadline.check(response.url)  # a connection cut at the deadline can look like the end of the body


# --- asynchronous: packages -----------------------------------------------------------------------


async def open_stream(
    client: httpx.AsyncClient,
    connector: ConnectorConfig,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    resolver: Resolver | None = None,
) -> httpx.Response:
    """GET ``url`` under the policy; the final response with its body unread, which the caller closes.
    Connect, redirects and headers within the connector's timeout; each later read within it too."""
    route = _route(client, connector, resolver)
    peers = _Peers(route)
    seconds = connector.timeout_seconds
    current = httpx.URL(connector.url)
    try:
        with anyio.fail_after(seconds):
            home = httpx.URL(connector.url).copy_with(userinfo=b"")
            _set_policy(route, await anyio.to_thread.run_sync(_resolve, route, home))
            current = _parse(route, url)
            for hops in range(REDIRECT_LIMIT + 1):
                _check_addresses(route, current, await anyio.to_thread.run_sync(_resolve, route, current))
                request, auth = _build(client, route, current, headers or {}, connector.timeout, peers.atrace)
                response = await client.send(request, stream=True, auth=auth, follow_redirects=False)
                try:
                    target = _redirect_target(route, current, response, hops)
                except BaseException:
                    await response.aclose()
                    raise
                if target is None:
                    return response
                await response.aclose()
                current = target
    except TimeoutError:
        raise timed_out(connector.name, f"{shown(current)} did not answer within {seconds} s") from None
    except httpx.HTTPError as exc:
        raise transfer_failure(connector.name, current, exc) from None
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


async def aiter_body(response: httpx.Response, connector_name: str) -> AsyncIterator[bytes]:
    """The body at the upstream's pace, each read within the request's read timeout; any failure is
    ``UpstreamUnavailable`` (the answer has begun: a timeout now is a broken transfer)."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        reason = failure_reason(exc)
        raise unavailable(connector_name, f"{shown(response.url)}: the transfer broke off: {reason}") from None
