"""Connector pages: the list with its create form, one connector's settings and health, "Refresh now"."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

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
}


def _words(value: str) -> list[str]:
    return [word for word in _SEPARATORS.split(value.strip()) if word]


def _number(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise BadRequest(f"{what} must be a whole number, not {value.strip()!r}") from None


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
            )
            if spec.password and not spec.username:
                raise BadRequest("a password needs a username")
            created = connectors.create_connector(services_of(request), spec)
        except CondagateError as exc:
            return _list_page(request, form=form, error=exc.message, status_code=exc.status_code)
        return RedirectResponse(f"/connectors/{created.name}", status_code=303)

    return await run_in_threadpool(create)


@router.get("/connectors/{connector}", dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))])
async def connector_page(request: Request, connector: str, refreshed: str = "") -> Response:
    info = await run_in_threadpool(connectors.get_connector, services_of(request), connector)
    context: dict[str, Any] = {"connector": info, "refreshed": refreshed if refreshed in ("ok", "failed") else ""}
    return render(request, "connector.html", context)


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
