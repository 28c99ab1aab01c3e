"""Credentials from every form the clients use, and the permission declaration each route carries."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from condagate.errors import AuthenticationRequired, PermissionDenied
from condagate.security.permissions import ANONYMOUS, Permission, Principal, authorize
from condagate.services.authentication import principal_for_key

UI_COOKIE = "condagate_session"


def presented_key(request: Request) -> str | None:
    """The API key from X-API-Key / X-ApiKey, Bearer, Basic (any user, key as password),
    a ``/t/KEY/`` path token, or the web UI's cookie, in that order."""
    return _presented(request)[0]


def _presented(request: Request) -> tuple[str | None, bool]:
    """(key, whether it came from the UI cookie)."""
    headers = request.headers
    for header in ("x-api-key", "x-apikey"):
        if headers.get(header):
            return headers[header], False
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthenticationRequired("the Basic authorization header is malformed") from exc
        _user, _, password = decoded.partition(":")
        return password or None, False
    token = request.path_params.get("token")
    if token:
        return str(token), False
    return request.cookies.get(UI_COOKIE) or None, True


async def current_principal(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    key, from_cookie = _presented(request)
    try:
        principal = (
            ANONYMOUS if key is None else await run_in_threadpool(principal_for_key, request.app.state.services, key)
        )
    except AuthenticationRequired:
        if not from_cookie:
            raise
        principal = ANONYMOUS  # a revoked key left in the browser: browse anonymously, log in again
    request.state.principal = principal
    return principal


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def refuse_cross_site_writes(request: Request) -> None:
    """Browsers attach cookies they hold and Basic credentials they cached to a form another site
    submits; they also always say where it comes from. Conda clients and scripts send no Origin."""
    if request.method in _SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    host = request.headers.get("host", "")
    cross_origin = origin is not None and origin != "null" and urlsplit(origin).netloc != host
    if cross_origin or origin == "null" or fetch_site in ("cross-site", "same-site"):
        raise PermissionDenied("a write from another site's page is refused (cross-site request)")


class Requires:
    """A route's permission declaration; ``tests`` walk the routes and fail on any without one."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, request: Request) -> Principal:
        refuse_cross_site_writes(request)
        if self.permission == Permission.PUBLIC:
            return ANONYMOUS
        principal = await current_principal(request)
        authorize(principal, self.permission, request.path_params.get("feed"))
        return principal

    def __repr__(self) -> str:
        return f"Requires({self.permission.value})"


def requires(permission: Permission) -> Requires:
    return Requires(permission)
