"""The permission declaration each route carries, and the one authorization decision it makes.

Who is asking was settled by ``web.guard`` before the route ran (``request.state.principal``);
``Requires`` decides whether that principal may do this, on the feed named in the path when there
is one. A test walks ``app.routes`` and fails on any route without a declaration.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import Request

from condagate.errors import PermissionDenied
from condagate.security.permissions import ANONYMOUS, Permission, Principal, Scope, authorize

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def current_principal(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", None) or ANONYMOUS
    return principal


def _allowed_origins(request: Request) -> set[str]:
    settings = request.app.state.services.settings
    hosts = {request.headers.get("host", "")}
    if settings.public_url:
        hosts.add(urlsplit(settings.public_url).netloc)
    forwarded_host = request.headers.get("x-forwarded-host")
    if forwarded_host and getattr(request.state, "via_proxy", False):
        hosts.add(forwarded_host)  # from a trusted proxy: the Host that browsers see
    return hosts


def refuse_cross_site_writes(request: Request) -> None:
    """Browsers attach cookies they hold and Basic credentials they cached to a form another site
    submits; they also always say where it comes from. Conda clients and scripts send no Origin."""
    if request.method in _SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    cross_origin = origin is not None and origin != "null" and urlsplit(origin).netloc not in _allowed_origins(request)
    if cross_origin or origin == "null" or fetch_site in ("cross-site", "same-site"):
        raise PermissionDenied("a write from another site's page is refused (cross-site request)")


async def check_csrf(request: Request, principal: Principal) -> None:
    """A write with a web UI session cookie must carry the session's CSRF token (form field or header)."""
    if principal.session_id is None or request.method in _SAFE_METHODS or principal.csrf_token is None:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), principal.csrf_token.encode()):
        raise PermissionDenied("the form is out of date (missing or wrong CSRF token): reload the page and try again")


class Requires:
    """A route's permission declaration. With a ``{feed}`` path parameter the permission must hold
    on that feed; otherwise where ``scope`` says (system-wide, or on at least one feed)."""

    def __init__(self, permission: Permission, scope: Scope = Scope.SYSTEM) -> None:
        self.permission = permission
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:
        refuse_cross_site_writes(request)
        principal = current_principal(request)
        if self.permission == Permission.PUBLIC:
            await check_csrf(request, principal)
            return principal
        feed = request.path_params.get("feed")
        scope = Scope.FEED if feed is not None else self.scope
        authorize(principal, self.permission, scope, feed)
        await check_csrf(request, principal)
        return principal

    def __repr__(self) -> str:
        return f"Requires({self.permission.value}, {self.scope.value})"


def requires(permission: Permission, scope: Scope = Scope.SYSTEM) -> Requires:
    return Requires(permission, scope)
