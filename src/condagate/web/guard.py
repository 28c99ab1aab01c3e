"""Every request passes here before any route reads its body: who is asking (credentials in every
form clients send), and how large and how slow a body may be. (The security headers of the answer
are added by ``web.bookkeeping``, around the guard, so that the guard's own refusals carry them too.)

Credentials are resolved from the in-memory security snapshot (``services.access``): a key costs a
sha256 and a dictionary lookup; a password is verified with argon2 once and then remembered for a
few minutes; only a web UI session cookie reads the database. Wrong credentials answer 401 before
the body is read, and count towards the client address's failure limit (429 beyond it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from condagate.security.permissions import Permission, Principal
from condagate.services.access_control import PasswordChecksBusy
from condagate.services.context import Services
from condagate.services.sessions import SESSION_COOKIE, principal_for_session
from condagate.web.problems import error_body, error_headers

# Routes that take package bodies (up to the upload limit); everything else takes small JSON or forms.
_UPLOAD_ROUTES = [
    ("POST", re.compile(r"/api/feeds/[^/]+/upload/[^/]+")),
    ("POST", re.compile(r"/api/channels/[^/]+/upload/[^/]+")),
    ("POST", re.compile(r"/api/v1/upload/[^/]+")),
    ("PUT", re.compile(r"(?:/t/[^/]+)?/conda/[^/]+/[^/]+/[^/]+")),
    ("POST", re.compile(r"/api/advisories/import")),  # a zip of OSV documents
]
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Writes that callers who may only view still make: logging in and out, their own API keys.
_READ_ONLY_WRITES = re.compile(r"/login|/logout|/api/apikeys(?:/[0-9]+)?|/apikeys(?:/[0-9]+/revoke)?")
_MAX_CREDENTIAL_LENGTH = 4096
_UPLOAD_FRAMING = 1024 * 1024
_TOKEN_PATH = re.compile(r"/t/([^/]*)(/|$)")
# A user name in Basic auth that means "the password is an API key".
_KEY_USERS = frozenset({"", "api", "token", "apikey", "api-key", "__token__", "x-api-key"})

# The request headers that may carry credentials (one pass over the headers finds them all).
_CREDENTIAL_HEADERS = frozenset({b"x-api-key", b"x-apikey", b"authorization", b"cookie"})


class BadCredentials(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _is_upload(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in _UPLOAD_ROUTES)


class TrustedProxies:
    def __init__(self, spec: str) -> None:
        self._networks = [ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()]

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_of(self, peer: str, forwarded_for: str | None) -> str:
        """The first address, from the right, that is not one of our proxies."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
            if not self.trusts(hop):
                return hop[:64]
        return peer


class GuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # From the settings, on the first request (the services exist from the app's start-up on).
        self._services: Services | None = None
        self._proxies = TrustedProxies("")
        self._always_https = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = self._services
        if services is None:
            services = self._services = scope["app"].state.services
            self._proxies = TrustedProxies(services.settings.trusted_proxies)
            self._always_https = services.settings.public_url.startswith("https://")
        state = scope.setdefault("state", {})
        peer = (scope.get("client") or ("-", 0))[0]
        trusted_peer = bool(self._proxies) and self._proxies.trusts(peer)
        if trusted_peer:
            state["client"] = self._proxies.client_of(peer, _header(scope, b"x-forwarded-for"))
            if (_header(scope, b"x-forwarded-proto") or "").lower() == "https":
                scope["scheme"] = "https"
        else:
            state["client"] = peer
        state["via_proxy"] = trusted_peer
        if self._always_https:
            scope["scheme"] = "https"
        method = scope["method"]

        try:
            principal = await self._authenticate(services, scope, state["client"])
        except BadCredentials as exc:
            await _answer(send, 401, "authentication_required", exc.message)
            return
        except _TooManyFailures as exc:
            await _answer(send, 429, "too_many_failures", str(exc), {"retry-after": str(exc.retry_after)})
            return
        except PasswordChecksBusy as exc:
            await _answer(send, 503, exc.code, exc.message, {"retry-after": "2"})
            return
        state["principal"] = principal

        if method in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        settings = services.settings
        if not _may_write_somewhere(principal) and not _READ_ONLY_WRITES.fullmatch(path):
            # Before a single byte of the body is read: a body from a caller who may change nothing
            # (anonymous, a read-only key) costs nothing.
            if principal.authenticated:
                await _answer(send, 403, "permission_denied", f"{principal.name} may only view and download")
            else:
                message = "this needs credentials: send an API key, or a user name and password"
                await _answer(send, 401, "authentication_required", message)
            return
        if _is_upload(method, path):
            # The upload code checks the package's own limit with a precise message; this is the outer
            # net, with room for multipart framing.
            limit, deadline, idle = settings.max_upload_bytes + _UPLOAD_FRAMING, None, settings.upload_idle_seconds
        else:
            limit, deadline = settings.max_body_bytes, settings.body_timeout_seconds
            idle = deadline
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            message = f"the request body exceeds this route's limit of {limit} bytes"
            await _answer(send, 413, "payload_too_large", message)
            return
        await self.app(scope, _bounded_receive(receive, limit, deadline, idle), send)

    async def _authenticate(self, services: Services, scope: Scope, client: str) -> Principal:
        access = services.access
        found = _credential_headers(scope)
        key, user, password = _presented(scope, found)
        if key is None and user is None:
            cookie = _cookie(found.get(b"cookie"), SESSION_COOKIE)
            if cookie:
                found_session = await run_in_threadpool(principal_for_session, services, cookie)
                if found_session is not None:
                    return found_session
            return access.anonymous
        if key is not None or (user or "").lower() in _KEY_USERS:
            return self._key_principal(services, key if key is not None else password or "", client)
        assert user is not None and password is not None
        # Counted before the check, taken back on success: concurrent guesses (the check runs in a
        # thread) cannot slip past the limits.
        limits = [(services.failed_logins, client), (services.failed_user_logins, "user:" + user.lower())]
        for limiter, subject in limits:
            wait = limiter.attempt(subject)
            if wait:
                raise _TooManyFailures(wait)
        principal = access.cached_password_principal(user, password) or await run_in_threadpool(
            access.principal_for_password, user, password
        )
        if principal is None:
            raise BadCredentials("the user name or password is wrong")
        for limiter, subject in limits:
            limiter.forgive(subject)
        return principal

    @staticmethod
    def _key_principal(services: Services, key: str, client: str) -> Principal:
        """A key is checked without a pause (a hash and a lookup, no await): an address over its limit
        is refused first, a wrong key is then counted (``attempt``: 429 instead of 401 if that reaches
        the limit), and a right one costs the limiter one look, with no count to take back."""
        limiter = services.failed_logins
        wait = limiter.blocked_for(client)
        if wait:
            raise _TooManyFailures(wait)
        principal = services.access.principal_for_key(key)
        if principal is None:
            wait = limiter.attempt(client)
            if wait:
                raise _TooManyFailures(wait)
            raise BadCredentials("the API key is not valid (revoked, expired or mistyped)")
        return principal


class _TooManyFailures(Exception):
    def __init__(self, wait: float) -> None:
        self.retry_after = max(1, int(wait + 0.999))
        super().__init__(f"too many wrong credentials from this address: try again in {self.retry_after} s")


def _may_write_somewhere(principal: Principal) -> bool:
    """Whether the caller holds anything beyond viewing, on any feed or system-wide."""
    granted = set(principal.system).union(*principal.feeds.values()) if principal.feeds else set(principal.system)
    return bool(granted - {Permission.VIEW})


def _credential_headers(scope: Scope) -> dict[bytes, bytes]:
    """The first value of each header that may carry credentials, by (lower-case) name."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _CREDENTIAL_HEADERS and name not in found:
            found[name] = value
    return found


def _presented(scope: Scope, found: dict[bytes, bytes]) -> tuple[str | None, str | None, str | None]:
    """(key, user, password) from X-API-Key / X-ApiKey, Bearer, Basic, or a ``/t/KEY/`` path."""
    for name in (b"x-api-key", b"x-apikey"):
        raw = found.get(name)
        if raw:
            return _bounded(bytes(raw).decode("latin-1").strip()), None, None
    raw = found.get(b"authorization")
    authorization = bytes(raw).decode("latin-1") if raw else None
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return _bounded(value), None, None
        if scheme.lower() == "basic" and value:
            try:
                decoded = base64.b64decode(_bounded(value), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise BadCredentials("the Authorization header's value is not base64 of user:password") from exc
            user, sep, password = decoded.partition(":")
            if not sep or not password:
                raise BadCredentials("the Authorization header holds no password (send user:password or api:KEY)")
            return None, user, password
        if scheme.lower() not in ("bearer", "basic"):
            raise BadCredentials("unsupported Authorization header: send 'Basic user:password' or 'Bearer KEY'")
    match = _TOKEN_PATH.match(scope["path"])
    if match:
        return _bounded(match.group(1)), None, None
    return None, None, None


def _bounded(value: str) -> str:
    if len(value) > _MAX_CREDENTIAL_LENGTH:
        raise BadCredentials("the credentials are too long")
    return value


def _cookie(raw: bytes | None, name: str) -> str | None:
    if not raw:
        return None
    for part in bytes(raw).decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value[:200]
    return None


async def _answer(send: Send, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
    body = error_body(status, code, message)
    await send({"type": "http.response.start", "status": status, "headers": error_headers(status, body, extra)})
    await send({"type": "http.response.body", "body": body})


def _bounded_receive(
    receive: Receive, limit: int, deadline: float | None, idle: float
) -> Callable[[], Awaitable[Message]]:
    """A body of at most ``limit`` bytes that arrives whole within ``deadline`` seconds (small bodies)
    and never pauses longer than ``idle`` seconds (uploads): 413 or 408 otherwise, raised as the
    framework's HTTPException so that any route reading the body answers it cleanly."""
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + deadline if deadline is not None else None
    received = 0
    complete = False

    async def bounded() -> Message:
        nonlocal received, complete
        if complete:  # the body is in; later calls wait for a disconnect, as long as the answer takes
            return await receive()
        timeout = idle if ends_at is None else max(0.0, min(idle, ends_at - loop.time()))
        try:
            message: dict[str, Any] = dict(await asyncio.wait_for(receive(), timeout))
        except TimeoutError:
            raise HTTPException(408, "the request body did not arrive in time") from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"the request body exceeds this route's limit of {limit} bytes")
            complete = not message.get("more_body", False)
        return message

    return bounded
