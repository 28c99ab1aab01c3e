"""Server-rendered web UI: feeds, the "Create new feed" wizard, a feed's packages, a package's files.

Connector pages live in ``ui_connectors``; their routes are part of this router.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.errors import BadRequest, CondagateError
from condagate.security.permissions import Permission, Scope
from condagate.services import authentication, catalog, connectors, feeds, sessions
from condagate.web import ui_connectors, ui_security
from condagate.web.auth import current_principal, requires
from condagate.web.ui_common import daily_chart, render, services_of
from condagate.web.upstream_wait import wait_for_feed

PAGE_SIZE = 25
STATISTICS_DAYS = 30  # the feed's "Most downloaded" and the package's chart
TOP_PACKAGES = 10


router = APIRouter(include_in_schema=False)


def _local_path(target: str) -> str:
    """Where to go after logging in: a path on this server only, never another site."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target and target.isprintable():
        return target
    return "/"


@router.get("/", dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))])
async def feeds_page(request: Request) -> Response:
    principal = current_principal(request)
    items = await run_in_threadpool(feeds.list_feeds, services_of(request))
    return render(request, "feeds.html", {"feeds": [i for i in items if principal.may(Permission.VIEW, i.name)]})


def _wizard(request: Request, values: dict[str, str], *, error: str | None = None, status_code: int = 200) -> Response:
    """The "Create new feed" wizard: hosted, or connected to one of the connectors (by name)."""
    listed = connectors.list_connectors(services_of(request))
    form = {"name": "", "description": "", "kind": "hosted", "connector": "", **values}
    return render(request, "feed_new.html", {"error": error, "connectors": listed, **form}, status_code=status_code)


@router.get("/feeds/new", dependencies=[Depends(requires(Permission.MANAGE_FEED))])
async def new_feed_page(request: Request, connector: str = "") -> Response:
    values = {"kind": "proxy", "connector": connector} if connector else {}
    return await run_in_threadpool(lambda: _wizard(request, values))


@router.post("/feeds/new", dependencies=[Depends(requires(Permission.MANAGE_FEED))])
async def create_feed(
    request: Request,
    name: str = Form(""),
    description: str = Form(""),
    kind: str = Form("hosted"),
    connector: str = Form(""),
) -> Response:
    values = {"name": name, "description": description, "kind": kind, "connector": connector}

    def create() -> Response:
        try:
            if kind not in ("hosted", "proxy"):
                raise BadRequest(f"unknown feed kind {kind!r}: choose Hosted or Connect to an upstream")
            if kind == "proxy" and not connector:
                raise BadRequest("choose the upstream connector the feed proxies")
            feeds.create_feed(
                services_of(request),
                name=name.strip(),
                description=description.strip(),
                connectors=[connector] if kind == "proxy" else None,
            )
        except CondagateError as exc:
            return _wizard(request, values, error=exc.message, status_code=exc.status_code)
        return RedirectResponse(f"/feeds/{name.strip()}", status_code=303)

    return await run_in_threadpool(create)


@router.get("/feeds/{feed}", dependencies=[Depends(requires(Permission.VIEW))])
async def feed_page(request: Request, feed: str, q: str = "", page: int = 1) -> Response:
    services = services_of(request)
    page = max(page, 1)

    def gather() -> dict[str, Any]:
        info = feeds.get_feed(services, name=feed)
        listing = catalog.list_packages(
            services, feed=feed, search=q.strip(), offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
        )
        downloads = catalog.downloads_of_packages(services, feed=feed, names=[item.name for item in listing.items])
        context: dict[str, Any] = {"feed": info, "listing": listing, "downloads": downloads, "stale": [], "top": None}
        if info.kind == "proxy":
            by_name = {c.name: c for c in connectors.list_connectors(services)}
            context["upstreams"] = [by_name[name] for name in info.connectors if name in by_name]
            states = catalog.upstream_states(services, feed=feed, subdirs=listing.subdirs)
            context["stale"] = [state for state in states if state.stale]
            statistics = catalog.download_statistics(services, feed=feed, days=STATISTICS_DAYS, top=TOP_PACKAGES)
            context["top"] = statistics
            context["chart"] = daily_chart(statistics.per_day, days=STATISTICS_DAYS, width=440, height=110)
        return context

    await wait_for_feed(services, feed)
    context = await run_in_threadpool(gather)
    listing = context["listing"]
    pages = max(1, -(-listing.total // PAGE_SIZE))
    with_summary = any(item.summary for item in listing.items)
    return render(request, "feed.html", {**context, "q": q, "page": page, "pages": pages, "with_summary": with_summary})


@router.get("/feeds/{feed}/packages/{name}", dependencies=[Depends(requires(Permission.VIEW))])
async def package_page(request: Request, feed: str, name: str) -> Response:
    await wait_for_feed(services_of(request), feed)
    detail = await run_in_threadpool(lambda: catalog.package_detail(services_of(request), feed=feed, name=name))
    chart = daily_chart(detail.downloads_per_day, days=STATISTICS_DAYS, width=440, height=150)
    return render(request, "package.html", {"detail": detail, "chart": chart})


@router.get("/login", dependencies=[Depends(requires(Permission.PUBLIC))])
async def login_page(request: Request, then: str = Query("/", alias="next")) -> Response:
    context = {"error": None, "next": _local_path(then), "user": "", "api_key_chosen": False}
    return render(request, "login.html", context)


@router.post("/login", dependencies=[Depends(requires(Permission.PUBLIC))])
async def login(
    request: Request,
    user: str = Form(""),
    password: str = Form(""),
    api_key: str = Form(""),
    then: str = Form("/", alias="next"),
) -> Response:
    """Log in with a user name and password, or with an API key: a server-side session starts."""
    services = services_of(request)
    target = _local_path(then)
    client = request.state.client

    def refuse(message: str, status_code: int) -> Response:
        context = {"error": message, "next": target, "user": user[:200], "api_key_chosen": bool(api_key)}
        return render(request, "login.html", context, status_code=status_code)

    try:
        principal = await run_in_threadpool(
            authentication.log_in, services, client=client, user=user.strip(), password=password,
            api_key=api_key.strip(),
        )
    except CondagateError as exc:
        return refuse(exc.message, exc.status_code)
    # A new session, never the old one again: logging in as someone else ends the session before it.
    await run_in_threadpool(sessions.end_session, services, current_principal(request))
    session_id = await run_in_threadpool(sessions.start_session, services, principal)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        sessions.SESSION_COOKIE,
        session_id,
        max_age=int(services.settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", dependencies=[Depends(requires(Permission.PUBLIC))])
async def logout(request: Request) -> Response:
    await run_in_threadpool(sessions.end_session, services_of(request), current_principal(request))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(sessions.SESSION_COOKIE, path="/")
    return response


router.include_router(ui_connectors.router)
router.include_router(ui_security.router)
