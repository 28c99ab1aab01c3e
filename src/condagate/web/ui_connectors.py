"""Connector pages: the list with its create form, one connector's settings (with its edit and delete
forms) and health, "Refresh now"."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.conda.subdirs import KNOWN_SUBDIRS
from condagate.errors import BadRequest, CondagateError
from condagate.security.permissions import Permission, Scope
from condagate.services import catalog, connectors
from condagate.web.auth import requires
from condagate.web.ui_common import render, services_of

router = APIRouter(include_in_schema=False)

_SEPARATORS = re.compile(r"[\s,]+")
_EMPTY_FORM = {
    "name": "",
    "url": "",
    "include": "",
    "exclude": "",
    "subdirs": "",
    "cache_minutes": "30",
    "timeout_seconds": "30",
    "username": "",
    "allow_redirects": "same-origin",
}
# What the upstream check found, for the connector's page after the redirect (read once, then dropped).
CHECK_COOKIE = "condagate_checked"


def _words(value: str) -> list[str]:
    return [word for word in _SEPARATORS.split(value.strip()) if word]


def _number(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise BadRequest(f"{what} must be a whole number, not {value.strip()[:40]!r}") from None


def _checked_redirect(request: Request, name: str, checked: connectors.UpstreamCheck | None) -> Response:
    response = RedirectResponse(f"/connectors/{name}", status_code=303)
    if checked is not None:
        response.set_cookie(
            CHECK_COOKIE,
            f"{checked.subdir}:{checked.package_files}:{checked.packages}:{int(checked.filtered)}",
            max_age=120,
            path=f"/connectors/{name}",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response


def _check_notice(request: Request) -> str:
    """The upstream check's outcome, rebuilt from numbers only (the cookie's text is never shown)."""
    parts = request.cookies.get(CHECK_COOKIE, "").split(":")
    if len(parts) != 4 or parts[0] not in KNOWN_SUBDIRS or not all(p.isdigit() and len(p) < 10 for p in parts[1:]):
        return ""
    files, packages, filtered = (int(p) for p in parts[1:])
    return connectors.UpstreamCheck(parts[0], files, packages, 0, bool(filtered)).message


def _list_page(
    request: Request, *, form: dict[str, str] | None = None, error: str | None = None, status_code: int = 200
) -> Response:
    services = services_of(request)
    listed = [connectors.get_connector(services, info.name) for info in connectors.list_connectors(services)]
    return render(
        request,
        "connectors.html",
        {"connectors": listed, "form": form or _EMPTY_FORM, "error": error},
        status_code=status_code,
    )


@router.get("/connectors", dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))])
async def connectors_page(request: Request) -> Response:
    return await run_in_threadpool(lambda: _list_page(request))


@router.post("/connectors", dependencies=[Depends(requires(Permission.ADMIN))])
async def create_connector(
    request: Request,
    name: str = Form(""),
    url: str = Form(""),
    include: str = Form(""),
    exclude: str = Form(""),
    subdirs: str = Form(""),
    cache_minutes: str = Form("30"),
    timeout_seconds: str = Form("30"),
    username: str = Form(""),
    password: str = Form(""),
    token: str = Form(""),
    allow_redirects: str = Form("same-origin"),
    skip_check: str = Form(""),
) -> Response:
    # Secrets are never sent back into the page: after an error they have to be typed again.
    form = {
        "name": name,
        "url": url,
        "include": include,
        "exclude": exclude,
        "subdirs": subdirs,
        "cache_minutes": cache_minutes,
        "timeout_seconds": timeout_seconds,
        "username": username,
        "allow_redirects": allow_redirects,
        "skip_check": skip_check,
    }

    def create() -> Response:
        try:
            spec = connectors.ConnectorSpec(
                name=name.strip(),
                url=url.strip(),
                include=_words(include),
                exclude=_words(exclude),
                subdirs=_words(subdirs),
                cache_minutes=_number(cache_minutes, "the cache lifetime"),
                timeout_seconds=_number(timeout_seconds, "the timeout"),
                username=username.strip(),
                password=password,
                token=token.strip(),
                allow_redirects=allow_redirects,
            )
            created, checked = connectors.create_connector(services_of(request), spec, check=not skip_check)
        except CondagateError as exc:
            return _list_page(request, form=form, error=exc.message, status_code=exc.status_code)
        return _checked_redirect(request, created.name, checked)

    return await run_in_threadpool(create)


def _edit_form(info: connectors.ConnectorInfo) -> dict[str, str]:
    return {
        "url": info.url,
        "include": ", ".join(info.include),
        "exclude": ", ".join(info.exclude),
        "subdirs": ", ".join(info.subdirs),
        "cache_minutes": str(info.cache_minutes),
        "timeout_seconds": str(info.timeout_seconds),
        "allow_redirects": info.allow_redirects,
        "username": "",
    }


def _connector_page(
    request: Request,
    name: str,
    *,
    refreshed: str = "",
    form: dict[str, str] | None = None,
    error: str | None = None,
    error_at: str = "",
    status_code: int = 200,
) -> Response:
    info = connectors.get_connector(services_of(request), name)
    context: dict[str, Any] = {
        "connector": info,
        "refreshed": refreshed if refreshed in ("ok", "failed") else "",
        "form": form or _edit_form(info),
        "error": error,
        "error_at": error_at,  # "settings" or "delete": the form the error belongs to
        "checked": _check_notice(request),
    }
    response = render(request, "connector.html", context, status_code=status_code)
    if context["checked"]:
        response.delete_cookie(CHECK_COOKIE, path=f"/connectors/{info.name}")
    return response


@router.get("/connectors/{connector}", dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))])
async def connector_page(request: Request, connector: str, refreshed: str = "") -> Response:
    return await run_in_threadpool(lambda: _connector_page(request, connector, refreshed=refreshed))


@router.post("/connectors/{connector}/settings", dependencies=[Depends(requires(Permission.ADMIN))])
async def update_connector(
    request: Request,
    connector: str,
    url: str | None = Form(None),
    include: str | None = Form(None),
    exclude: str | None = Form(None),
    subdirs: str | None = Form(None),
    cache_minutes: str | None = Form(None),
    timeout_seconds: str | None = Form(None),
    username: str = Form(""),
    password: str = Form(""),
    token: str = Form(""),
    clear_credentials: str = Form(""),
    allow_redirects: str | None = Form(None),
    skip_check: str = Form(""),
) -> Response:
    """The edit form sends every setting (an empty list field: none, or all subdirs); a field left out
    keeps its value, and so do empty credentials."""
    sent = {
        "url": url,
        "include": include,
        "exclude": exclude,
        "subdirs": subdirs,
        "cache_minutes": cache_minutes,
        "timeout_seconds": timeout_seconds,
        "allow_redirects": allow_redirects,
    }
    form = {**{key: value or "" for key, value in sent.items()}, "username": username, "skip_check": skip_check}

    def words(value: str | None) -> list[str] | None:
        return None if value is None else _words(value)

    def number(value: str | None, what: str) -> int | None:
        return None if value is None or not value.strip() else _number(value, what)

    def update() -> Response:
        try:
            changes = connectors.ConnectorChanges(
                url=(url or "").strip() or None,
                include=words(include),
                exclude=words(exclude),
                subdirs=words(subdirs),
                cache_minutes=number(cache_minutes, "the cache lifetime"),
                timeout_seconds=number(timeout_seconds, "the timeout"),
                username=username.strip() or None,
                password=password or None,
                token=token.strip() or None,
                clear_credentials=bool(clear_credentials),
                allow_redirects=allow_redirects or None,
            )
            info, checked = connectors.update_connector(services_of(request), connector, changes, check=not skip_check)
        except CondagateError as exc:
            if exc.status_code == 404:
                raise
            return _connector_page(
                request, connector, form=form, error=exc.message, error_at="settings", status_code=exc.status_code
            )
        return _checked_redirect(request, info.name, checked)

    return await run_in_threadpool(update)


@router.post("/connectors/{connector}/delete", dependencies=[Depends(requires(Permission.ADMIN))])
async def delete_connector(request: Request, connector: str, detach: str = Form("")) -> Response:
    def delete() -> Response:
        try:
            connectors.delete_connector(services_of(request), connector, detach=bool(detach))
        except CondagateError as exc:
            if exc.status_code == 404:
                raise
            return _connector_page(
                request, connector, error=exc.message, error_at="delete", status_code=exc.status_code
            )
        return RedirectResponse("/connectors", status_code=303)

    return await run_in_threadpool(delete)


def refresh_subdirs(info: connectors.ConnectorInfo) -> list[str]:
    """What "Refresh now" checks: every subdir already fetched, else the configured or browsed ones."""
    return [h.subdir for h in info.health] or info.subdirs or list(catalog.DEFAULT_BROWSE_SUBDIRS)


@router.post("/connectors/{connector}/refresh", dependencies=[Depends(requires(Permission.ADMIN))])
async def refresh_connector(request: Request, connector: str) -> Response:
    services = services_of(request)

    def refresh() -> str:
        info = connectors.get_connector(services, connector)
        outcome = "ok"
        for subdir in refresh_subdirs(info):  # one failing subdir does not keep the others from a check
            try:
                connectors.refresh_connector(services, info.name, [subdir])
            except CondagateError:
                outcome = "failed"  # the error is in the health table: recorded per subdir
        failing = [h for h in connectors.get_connector(services, info.name).health if h.last_error]
        return "failed" if failing else outcome

    outcome = await run_in_threadpool(refresh)
    return RedirectResponse(f"/connectors/{connector}?refreshed={outcome}", status_code=303)
