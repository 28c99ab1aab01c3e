"""Security pages: "Manage Security" (users, groups, the grants overview), "API Keys & Access Logs",
and "My account". Handlers are thin: each calls one ``services.security_admin`` use case, shows its
error on the page it came from, and redirects (303) after a change."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.errors import AuthenticationRequired, BadRequest, CondagateError, NotFound
from condagate.security.permissions import GRANTABLE, Permission, Principal, Scope
from condagate.services import feeds, security_admin
from condagate.web.auth import current_principal, requires
from condagate.web.ui_common import PERMISSION_LABELS, render, services_of

router = APIRouter(include_in_schema=False)
ADMIN = [Depends(requires(Permission.ADMIN))]
# Keys: anyone signed in reaches these routes; the service then limits non-administrators to their own.
SIGNED_IN = [Depends(requires(Permission.VIEW, Scope.ANY))]
ACCESS_LOG_LIMIT = 200
PERMISSIONS = [(p.value, PERMISSION_LABELS[p.value]) for p in GRANTABLE]


def _signed_in(request: Request) -> Principal:
    principal = current_principal(request)
    if not principal.authenticated:
        raise AuthenticationRequired("log in to see your account and API keys")
    return principal


# Manage Security ---------------------------------------------------------------------------------


def _security_page(
    request: Request,
    *,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    services = services_of(request)
    grants = security_admin.list_grants(services)
    context = {
        "users": security_admin.list_users(services),
        "groups": security_admin.list_groups(services),
        "grants": grants,
        "anonymous_everywhere": next(
            (g for g in grants if g.principal == "anonymous" and g.permission == "view" and g.feed is None), None
        ),
        "feeds": [info.name for info in feeds.list_feeds(services)],
        "permissions": PERMISSIONS,
        "errors": errors or {},
        "form": form or {},
    }
    return render(request, "security.html", context, status_code=status_code)


async def _change(
    request: Request, section: str, change: Callable[[], object], form: dict[str, str] | None = None
) -> Response:
    """Run one security change; back to its section of the page, or the page again with the message."""

    def run() -> Response:
        try:
            change()
        except CondagateError as exc:
            errors = {section: exc.message}
            return _security_page(request, errors=errors, form=form, status_code=exc.status_code)
        return RedirectResponse(f"/security#{section}", status_code=303)

    return await run_in_threadpool(run)


@router.get("/security", dependencies=ADMIN)
async def security_page(request: Request) -> Response:
    return await run_in_threadpool(lambda: _security_page(request))


@router.post("/security/users", dependencies=ADMIN)
async def create_user(request: Request, name: str = Form(""), password: str = Form("")) -> Response:
    services = services_of(request)
    return await _change(
        request,
        "users",
        lambda: security_admin.create_user(services, name=name.strip(), password=password or None),
        {"user_name": name},
    )


@router.post("/security/users/{user}/password", dependencies=ADMIN)
async def set_password(request: Request, user: str, password: str = Form("")) -> Response:
    services = services_of(request)

    def change() -> None:
        if not password:
            raise BadRequest(f"type the new password for {user}")
        security_admin.set_password(services, name=user, password=password)

    return await _change(request, "users", change)


@router.post("/security/users/{user}/delete", dependencies=ADMIN)
async def delete_user(request: Request, user: str) -> Response:
    services = services_of(request)
    return await _change(request, "users", lambda: security_admin.delete_user(services, name=user))


@router.post("/security/groups", dependencies=ADMIN)
async def create_group(request: Request, name: str = Form("")) -> Response:
    services = services_of(request)
    return await _change(
        request, "groups", lambda: security_admin.create_group(services, name=name.strip()), {"group_name": name}
    )


@router.post("/security/groups/{group}/delete", dependencies=ADMIN)
async def delete_group(request: Request, group: str) -> Response:
    services = services_of(request)
    return await _change(request, "groups", lambda: security_admin.delete_group(services, name=group))


@router.post("/security/groups/{group}/members", dependencies=ADMIN)
async def add_member(request: Request, group: str, user: str = Form("")) -> Response:
    services = services_of(request)

    def change() -> None:
        if not user:
            raise BadRequest(f"choose the user to add to {group}")
        security_admin.set_membership(services, group=group, user=user, member=True)

    return await _change(request, "groups", change)


@router.post("/security/groups/{group}/members/{user}/remove", dependencies=ADMIN)
async def remove_member(request: Request, group: str, user: str) -> Response:
    services = services_of(request)
    return await _change(
        request, "groups", lambda: security_admin.set_membership(services, group=group, user=user, member=False)
    )


@router.post("/security/grants", dependencies=ADMIN)
async def add_grant(
    request: Request, principal: str = Form(""), permission: str = Form(""), feed: str = Form("")
) -> Response:
    services = services_of(request)
    by = current_principal(request).name

    def change() -> None:
        if not principal:
            raise BadRequest("choose who gets the permission: Anonymous, a user or a group")
        security_admin.add_grant(services, principal=principal, permission=permission, feed=feed or None, by=by)

    form = {"grant_principal": principal, "grant_permission": permission, "grant_feed": feed}
    return await _change(request, "grants", change, form)


@router.post("/security/grants/{grant_id}/remove", dependencies=ADMIN)
async def remove_grant(request: Request, grant_id: int) -> Response:
    services = services_of(request)
    return await _change(request, "grants", lambda: security_admin.remove_grant_by_id(services, grant_id=grant_id))


# API keys, access logs, my account ---------------------------------------------------------------


def _shown_feeds(principal: Principal, keys: list[security_admin.KeyInfo]) -> dict[int, list[str]]:
    """Each key's feeds, without those the viewer may not see."""
    return {key.id: principal.visible_feeds(key.feeds) for key in keys}


def _keys_page(
    request: Request, *, error: str | None = None, form: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    services = services_of(request)
    principal = current_principal(request)
    keys = security_admin.list_keys(services, principal)
    context = {
        "keys": keys,
        "key_feeds": _shown_feeds(principal, keys),
        "users": [user.name for user in security_admin.list_users(services)],
        "feeds": [info.name for info in feeds.list_feeds(services)],
        "permissions": PERMISSIONS,
        "error": error,
        "form": form or {},
    }
    return render(request, "apikeys.html", context, status_code=status_code)


def _account_page(
    request: Request, *, error: str | None = None, form: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    services = services_of(request)
    principal = _signed_in(request)
    # An administrator's list holds every key: "My account" shows only the caller's own.
    keys = [
        key
        for key in security_admin.list_keys(services, principal)
        if (principal.user is not None and key.user == principal.user) or key.id == principal.key_id
    ]
    visible = principal.visible_feeds([info.name for info in feeds.list_feeds(services)])
    context = {
        "keys": keys,
        "key_feeds": _shown_feeds(principal, keys),
        "feeds": visible,
        "system_permissions": [p for p in GRANTABLE if p in principal.system],
        "feed_permissions": [
            (feed, [p for p in GRANTABLE if p in principal.feeds.get(feed, frozenset())])
            for feed in visible
            if principal.feeds.get(feed)
        ],
        "permissions": [(value, label) for value, label in PERMISSIONS if principal.may_somewhere(Permission(value))],
        "error": error,
        "form": form or {},
    }
    return render(request, "account.html", context, status_code=status_code)


def _page_for(back: str, principal: Principal) -> Callable[..., Response]:
    """The page a key form came from; only administrators see "API keys" (every user and feed)."""
    return _keys_page if back == "apikeys" and principal.may(Permission.ADMIN) else _account_page


@router.get("/apikeys", dependencies=ADMIN)
async def keys_page(request: Request) -> Response:
    return await run_in_threadpool(lambda: _keys_page(request))


@router.get("/account", dependencies=SIGNED_IN)
async def account_page(request: Request) -> Response:
    return await run_in_threadpool(lambda: _account_page(request))


def _expiry(value: str) -> datetime | None:
    """A date from the form: the key works until the end of that day (UTC)."""
    if not value.strip():
        return None
    try:
        return datetime.combine(date.fromisoformat(value.strip()) + timedelta(days=1), time(), UTC)
    except (ValueError, OverflowError):
        raise BadRequest(f"the expiry date must be a date like 2030-12-31, not {value.strip()[:40]!r}") from None


def channel_snippets(base_url: str, key: str, feeds: list[str]) -> list[dict[str, str]]:
    """Ready-to-use channel commands for a new key: Basic auth (``api:KEY@``) and conda's ``/t/KEY/`` form."""
    parts = urlsplit(base_url)
    root = parts.path.rstrip("/")
    return [
        {
            "feed": feed,
            "basic": f"conda config --add channels {parts.scheme}://api:{key}@{parts.netloc}{root}/conda/{feed}/",
            "token": f"conda config --add channels {parts.scheme}://{parts.netloc}{root}/t/{key}/conda/{feed}/",
        }
        for feed in feeds or ["FEED"]
    ]


@router.post("/apikeys", dependencies=SIGNED_IN)
async def create_key(
    request: Request,
    kind: str = Form(""),
    user: str = Form(""),
    feed: list[str] = Form([]),
    permission: list[str] = Form([]),
    key: str = Form(""),
    expires: str = Form(""),
    description: str = Form(""),
    back: str = Form("account"),
) -> Response:
    services = services_of(request)
    principal = _signed_in(request)
    page = _page_for(back, principal)
    # The typed-in key is never sent back into the page.
    form = {"kind": kind, "user": user, "feeds": feed, "permissions": permission, "expires": expires,
            "description": description}

    def create() -> Response:
        try:
            if kind == "feed":
                if not feed:
                    raise BadRequest("choose the feeds the key is for")
                owner = None
            elif kind == "personal":
                owner = user or principal.user
                if owner is None:
                    raise BadRequest("choose the user the key acts as")
            else:
                raise BadRequest("choose a personal key or a feed key")
            info = security_admin.create_key(
                services,
                principal,
                user=owner,
                feeds=feed,
                permissions=permission,
                key=key.strip() or None,
                expires_at=_expiry(expires),
                description=description.strip(),
            )
        except CondagateError as exc:
            return page(request, error=exc.message, form=form, status_code=exc.status_code)
        assert info.key is not None
        context = {
            "key": info,
            "key_feeds": _shown_feeds(principal, [info]),
            "snippets": channel_snippets(str(request.base_url), info.key, principal.visible_feeds(info.feeds)),
            "back": "/apikeys" if page is _keys_page else "/account",
        }
        response = render(request, "apikey_created.html", context, status_code=201)
        response.headers["Cache-Control"] = "no-store"  # the key is shown once: not kept by the browser either
        return response

    return await run_in_threadpool(create)


@router.post("/apikeys/{key_id}/revoke", dependencies=SIGNED_IN)
async def revoke_key(request: Request, key_id: int, back: str = Form("account")) -> Response:
    services = services_of(request)
    principal = _signed_in(request)
    page = _page_for(back, principal)

    def revoke() -> Response:
        try:
            security_admin.revoke_key(services, principal, key_id=key_id)
        except CondagateError as exc:
            return page(request, error=exc.message, status_code=exc.status_code)
        return RedirectResponse("/apikeys" if page is _keys_page else "/account", status_code=303)

    return await run_in_threadpool(revoke)


@router.get("/apikeys/{key_id}", dependencies=SIGNED_IN)
async def key_access_log_page(request: Request, key_id: int) -> Response:
    services = services_of(request)
    principal = _signed_in(request)

    def gather() -> dict[str, Any]:
        entries = security_admin.key_access_log(services, principal, key_id=key_id, limit=ACCESS_LOG_LIMIT)
        key = next((k for k in security_admin.list_keys(services, principal) if k.id == key_id), None)
        if key is None:
            raise NotFound(f"API key {key_id} does not exist")
        return {"key": key, "key_feeds": _shown_feeds(principal, [key]), "entries": entries,
                "limit": ACCESS_LOG_LIMIT}

    return render(request, "access_log.html", await run_in_threadpool(gather))


@router.get("/access-log", dependencies=ADMIN)
async def access_log_page(request: Request) -> Response:
    services = services_of(request)
    entries = await run_in_threadpool(lambda: security_admin.access_log(services, limit=ACCESS_LOG_LIMIT))
    return render(request, "access_log.html", {"key": None, "entries": entries, "limit": ACCESS_LOG_LIMIT})
