"""Server-rendered web UI: feeds, the "Create new feed" wizard, a feed's packages, a package's files.

Connector pages live in ``ui_connectors``; their routes are part of this router.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.errors import BadRequest, CondagateError
from condagate.security.permissions import Permission, Scope
from condagate.services import authentication, catalog, connectors, feeds, promotion_links, sessions
from condagate.services.context import Services
from condagate.web import ui_connectors, ui_promotion, ui_sca, ui_security
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


def _chosen(picked: list[str]) -> list[str]:
    """Connectors picked in order (the wizard's first choice, then its "and then" slots), each once."""
    chosen: list[str] = []
    for name in (value.strip() for value in picked):
        if name and name not in chosen:
            chosen.append(name)
    return chosen


PAIR_NAMES = ("unapproved-conda", "approved-conda")  # the approval flow's pair, as the mission names it


def _free_pair_names(services: Services) -> tuple[str, str]:
    """The pair's suggested names: the mission's, or with the first suffix neither feed has yet."""
    taken = {info.name.lower() for info in feeds.list_feeds(services)}
    source, target = PAIR_NAMES
    suffix = 1
    while source.lower() in taken or target.lower() in taken:
        suffix += 1
        source, target = (f"{name}-{suffix}" for name in PAIR_NAMES)
    return source, target


def _wizard(
    request: Request,
    values: dict[str, Any],
    *,
    error: str | None = None,
    invalid: str = "",
    status_code: int = 200,
) -> Response:
    """The "Create new feed" wizard: hosted, or connected to one or more connectors (by name, in order);
    one feed, or the approval flow's two (``feeds=two``: a source feed and its promotion target).
    ``invalid``: the field the error is about (``name``, ``source_name``, ``target_name``)."""
    services = services_of(request)
    listed = connectors.list_connectors(services)
    form: dict[str, Any] = {"name": "", "description": "", "kind": "hosted", "chosen": [], "feeds": "one", **values}
    if not form.get("source_name") and not form.get("target_name"):
        form["source_name"], form["target_name"] = _free_pair_names(services)
    context = {"error": error, "invalid": invalid or ("name" if error else ""), "connectors": listed, **form}
    return render(request, "feed_new.html", context, status_code=status_code)


@router.get("/feeds/new", dependencies=[Depends(requires(Permission.MANAGE_FEED))])
async def new_feed_page(request: Request, connector: str = "") -> Response:
    values: dict[str, Any] = {"kind": "proxy", "chosen": [connector]} if connector else {}
    return await run_in_threadpool(lambda: _wizard(request, values))


@router.post("/feeds/new", dependencies=[Depends(requires(Permission.MANAGE_FEED))])
async def create_feed(
    request: Request,
    name: str = Form(""),
    description: str = Form(""),
    kind: str = Form("hosted"),
    connector: list[str] = Form([]),
    feeds_count: str = Form("one", alias="feeds"),
    source_name: str = Form(""),
    target_name: str = Form(""),
) -> Response:
    chosen = _chosen(connector)
    values = {
        "name": name,
        "description": description,
        "kind": kind,
        "chosen": chosen,
        "feeds": "two" if feeds_count == "two" else "one",
        "source_name": source_name,
        "target_name": target_name,
    }
    actor = current_principal(request).name

    def create() -> Response:
        try:
            if kind not in ("hosted", "proxy"):
                raise BadRequest(f"unknown feed kind {kind!r}: choose Hosted or Connect to an upstream")
            if kind == "proxy" and not chosen:
                raise BadRequest("choose the upstream connector the feed proxies")
            if feeds_count == "two":
                return _create_pair(request, values, chosen if kind == "proxy" else [], actor)
            feeds.create_feed(
                services_of(request),
                name=name.strip(),
                description=description.strip(),
                connectors=chosen if kind == "proxy" else None,
            )
        except CondagateError as exc:
            return _wizard(request, values, error=exc.message, status_code=exc.status_code)
        return RedirectResponse(f"/feeds/{name.strip()}", status_code=303)

    return await run_in_threadpool(create)


def _create_pair(request: Request, values: dict[str, Any], chosen: list[str], actor: str) -> Response:
    """The wizard's "Yes, create two feeds": the unapproved feed (proxy of ``chosen``, hosted when none) and the
    approved feed it promotes into; each name checked on its own, so that the error names its field."""
    services = services_of(request)
    source, target = values["source_name"].strip(), values["target_name"].strip()
    taken = {info.name.lower() for info in feeds.list_feeds(services)}
    for field, label, value in (("source_name", "Unapproved feed", source), ("target_name", "Approved feed", target)):
        try:
            feeds.validate_feed_name(value)
        except CondagateError as exc:
            message = exc.message if value else "enter a name: letters, digits, '.', '_' and '-'"
            return _wizard(request, values, error=f"{label}: {message}", invalid=field, status_code=exc.status_code)
        if value.lower() in taken:
            message = f"{label}: a feed named {value!r} exists already: choose another name"
            return _wizard(request, values, error=message, invalid=field, status_code=409)
    if source.lower() == target.lower():
        message = "the unapproved and the approved feed need two different names"
        return _wizard(request, values, error=message, invalid="target_name", status_code=400)
    try:
        promotion_links.create_pair(services, source=source, target=target, connectors=chosen, actor=actor)
    except CondagateError as exc:
        return _wizard(request, values, error=exc.message, invalid="source_name", status_code=exc.status_code)
    return RedirectResponse(f"/feeds/{quote(source)}", status_code=303)


def _settings_page(
    request: Request,
    feed: str,
    *,
    values: dict[str, Any] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    services = services_of(request)
    info = feeds.get_feed(services, name=feed)
    form: dict[str, Any] = {
        "description": info.description,
        "chosen": info.connectors,
        "upstream_removals": info.upstream_removals,
        **(values or {}),
    }
    context = {
        "feed": info,
        "connectors": connectors.list_connectors(services),
        "may_attach": current_principal(request).may(Permission.MANAGE_FEED),
        "removals": feeds.UPSTREAM_REMOVALS,
        "error": error,
        **form,
    }
    return render(request, "feed_settings.html", context, status_code=status_code)


@router.get("/feeds/{feed}/settings", dependencies=[Depends(requires(Permission.MANAGE_FEED))])
async def feed_settings_page(request: Request, feed: str) -> Response:
    return await run_in_threadpool(lambda: _settings_page(request, feed))


@router.post("/feeds/{feed}/settings", dependencies=[Depends(requires(Permission.MANAGE_FEED))])
async def update_feed(
    request: Request,
    feed: str,
    description: str | None = Form(None),
    connector: list[str] = Form([]),
    connector_slots: str | None = Form(None),
    upstream_removals: str | None = Form(None),
) -> Response:
    """The form sends the description, the removal policy and the connectors in order (its slots,
    marked by ``connector_slots``: an empty one is skipped; all empty detaches every connector)."""
    chosen = _chosen(connector)
    values = {"description": description or "", "chosen": chosen, "upstream_removals": upstream_removals or ""}
    may_attach = current_principal(request).may(Permission.MANAGE_FEED)

    def update() -> Response:
        try:
            feeds.update_feed(
                services_of(request),
                name=feed,
                description=None if description is None else description.strip(),
                connectors=chosen if connector_slots is not None else None,
                upstream_removals=upstream_removals or None,
                may_attach=may_attach,
            )
        except CondagateError as exc:
            if exc.status_code == 404 and exc.code == "feed_not_found":
                raise
            return _settings_page(request, feed, values=values, error=exc.message, status_code=exc.status_code)
        return RedirectResponse(f"/feeds/{feed}", status_code=303)

    return await run_in_threadpool(update)


@router.get("/feeds/{feed}", dependencies=[Depends(requires(Permission.VIEW))])
async def feed_page(request: Request, feed: str, q: str = "", page: int = 1) -> Response:
    services, principal = services_of(request), current_principal(request)
    page = max(page, 1)

    def gather() -> dict[str, Any]:
        info = feeds.get_feed(services, name=feed)
        listing = catalog.list_packages(
            services, feed=feed, search=q.strip(), offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
        )
        downloads = catalog.downloads_of_packages(services, feed=feed, names=[item.name for item in listing.items])
        context: dict[str, Any] = {"feed": info, "listing": listing, "downloads": downloads, "stale": [], "top": None}
        context["promo"] = ui_promotion.feed_context(services, principal, feed)  # the approval flow's block
        context["sca"] = ui_sca.feed_context(services, principal, feed)  # vulnerabilities and licenses
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
    services, principal = services_of(request), current_principal(request)
    await wait_for_feed(services, feed)
    detail = await run_in_threadpool(lambda: catalog.package_detail(services, feed=feed, name=name))
    promo = await run_in_threadpool(lambda: ui_promotion.package_context(services, principal, feed, name))
    sca = await run_in_threadpool(lambda: ui_sca.package_context(services, detail))
    chart = daily_chart(detail.downloads_per_day, days=STATISTICS_DAYS, width=440, height=150)
    return render(request, "package.html", {"detail": detail, "chart": chart, "promo": promo, "sca": sca})


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
            authentication.log_in,
            services,
            client=client,
            user=user.strip(),
            password=password,
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
router.include_router(ui_promotion.router)
