"""Server-rendered web UI: feeds, a feed's packages, a package's versions and files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.errors import CondagateError
from condagate.security.permissions import Permission, Principal
from condagate.services import catalog, feeds
from condagate.services.authentication import principal_for_key
from condagate.services.context import Services
from condagate.web.auth import UI_COOKIE, current_principal, requires

PAGE_SIZE = 25


router = APIRouter(include_in_schema=False)


def _local_path(target: str) -> str:
    """Where to go after logging in: a path on this server only, never another site."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target and target.isprintable():
        return target
    return "/"


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    principal: Principal = getattr(request.state, "principal", None) or context.get("principal")  # type: ignore[assignment]
    context = {"principal": principal, "base_url": str(request.base_url).rstrip("/"), **context}
    response: Response = request.app.state.templates.TemplateResponse(request, template, context,
                                                                      status_code=status_code)
    return response


@router.get("/", dependencies=[Depends(requires(Permission.VIEW))])
async def feeds_page(request: Request) -> Response:
    items = await run_in_threadpool(feeds.list_feeds, _services(request))
    return _render(request, "feeds.html", {"feeds": items})


@router.get("/feeds/new", dependencies=[Depends(requires(Permission.ADMIN))])
async def new_feed_page(request: Request) -> Response:
    return _render(request, "feed_new.html", {"error": None, "name": "", "description": ""})


@router.post("/feeds/new", dependencies=[Depends(requires(Permission.ADMIN))])
async def create_feed(request: Request, name: str = Form(""), description: str = Form("")) -> Response:
    try:
        await run_in_threadpool(lambda: feeds.create_feed(_services(request), name=name.strip(),
                                                          description=description))
    except CondagateError as exc:
        return _render(request, "feed_new.html", {"error": exc.message, "name": name, "description": description},
                       status_code=exc.status_code)
    return RedirectResponse(f"/feeds/{name.strip()}", status_code=303)


@router.get("/feeds/{feed}", dependencies=[Depends(requires(Permission.VIEW))])
async def feed_page(request: Request, feed: str, q: str = "", page: int = 1) -> Response:
    services = _services(request)
    page = max(page, 1)
    info = await run_in_threadpool(lambda: feeds.get_feed(services, name=feed))
    listing = await run_in_threadpool(
        lambda: catalog.list_packages(services, feed=feed, search=q.strip(), offset=(page - 1) * PAGE_SIZE,
                                      limit=PAGE_SIZE)
    )
    downloads = await run_in_threadpool(
        lambda: catalog.downloads_of_packages(services, feed=feed, names=[item.name for item in listing.items])
    )
    pages = max(1, -(-listing.total // PAGE_SIZE))
    return _render(request, "feed.html", {"feed": info, "listing": listing, "downloads": downloads, "q": q,
                                          "page": page, "pages": pages})


@router.get("/feeds/{feed}/packages/{name}", dependencies=[Depends(requires(Permission.VIEW))])
async def package_page(request: Request, feed: str, name: str) -> Response:
    detail = await run_in_threadpool(lambda: catalog.package_detail(_services(request), feed=feed, name=name))
    return _render(request, "package.html", {"detail": detail})


@router.get("/login", dependencies=[Depends(requires(Permission.PUBLIC))])
async def login_page(request: Request, then: str = Query("/", alias="next")) -> Response:
    try:
        principal = await current_principal(request)
    except CondagateError:  # a stale cookie: the form is how to replace it
        principal = None
    return _render(request, "login.html", {"error": None, "principal": principal, "next": _local_path(then)})


@router.post("/login", dependencies=[Depends(requires(Permission.PUBLIC))])
async def login(request: Request, api_key: str = Form(""), then: str = Form("/", alias="next")) -> Response:
    target = _local_path(then)
    try:
        principal = await run_in_threadpool(principal_for_key, _services(request), api_key.strip())
    except CondagateError as exc:
        return _render(request, "login.html", {"error": exc.message, "principal": None, "next": target},
                       status_code=401)
    if not principal.authenticated:
        return _render(request, "login.html", {"error": "enter an API key", "principal": None, "next": target},
                       status_code=400)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(UI_COOKIE, api_key.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout", dependencies=[Depends(requires(Permission.PUBLIC))])
async def logout(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(UI_COOKIE)
    return response
