"""REST API: feeds and their packages."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from starlette.concurrency import run_in_threadpool

from condagate.security.permissions import Permission, Principal, Scope
from condagate.services import catalog, connectors, feeds
from condagate.services.connectors import MAX_CACHE_MINUTES, MAX_TIMEOUT_SECONDS, MIN_TIMEOUT_SECONDS
from condagate.services.context import Services
from condagate.web.auth import current_principal, requires
from condagate.web.upstream_wait import wait_for_feed

router = APIRouter(prefix="/api", tags=["feeds"])


_REMOVALS_HELP = (
    "keep-cached: a file this feed cached stays installable after its upstream removes it; "
    "follow-upstream: it disappears with the upstream's record"
)
_REDIRECTS_HELP = (
    "same-origin: follow the upstream's redirects within its own origin only; "
    "any-public: also to other public hosts (CDNs). Never to private, loopback or link-local addresses."
)
_VULNERABILITY_HELP = (
    "off: advisories are only shown; warn: downloads proceed with an X-Condagate-Warning header; "
    "block: downloads of affected versions answer 403 and they cannot be promoted or uploaded here"
)
_SEVERITY_HELP = (
    "none, low, medium, high or critical: advisories below it are not acted on (unknown severity counts as "
    "reaching it; an assessment overrides)"
)
_HIDE_HELP = "Leave blocked records out of the repodata, so that a solver picks a safe version"
_LICENSE_HELP = "off, warn or block: what the license rules' warn and block verdicts do in this feed"
_CACHE_HELP = f"How long fetched repodata counts as fresh, in minutes (0 to {MAX_CACHE_MINUTES})"
_TIMEOUT_HELP = f"Timeout of each upstream request, in seconds ({MIN_TIMEOUT_SECONDS} to {MAX_TIMEOUT_SECONDS})"
# Documented here, checked by the service (whose message names both bounds, for the API and the forms).
_CACHE_BOUNDS: JsonDict = {"minimum": 0, "maximum": MAX_CACHE_MINUTES}
_TIMEOUT_BOUNDS: JsonDict = {"minimum": MIN_TIMEOUT_SECONDS, "maximum": MAX_TIMEOUT_SECONDS}


class FeedCreate(BaseModel):
    name: str = Field(description="URL-safe feed name, e.g. private-conda")
    description: str = Field(default="", max_length=feeds.MAX_DESCRIPTION)
    connectors: list[str] = Field(default=[], description="Connectors to proxy, first one wins a file name")
    upstream_removals: str = Field(default="keep-cached", description=_REMOVALS_HELP)


class FeedUpdate(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=feeds.MAX_DESCRIPTION)
    connectors: list[str] | None = Field(
        default=None,
        description="Replaces the feed's connectors, in order (the first wins a file name); [] detaches them all. "
        "Attaching a connector needs manage-feed system-wide, as creating a proxy feed does.",
    )
    upstream_removals: str | None = Field(default=None, description=_REMOVALS_HELP)
    vulnerability_policy: str | None = Field(default=None, description=_VULNERABILITY_HELP)
    min_severity: str | None = Field(default=None, description=_SEVERITY_HELP)
    hide_blocked: bool | None = Field(default=None, description=_HIDE_HELP)
    license_policy: str | None = Field(default=None, description=_LICENSE_HELP)

    def sca(self) -> feeds.ScaSettings:
        return feeds.ScaSettings(self.vulnerability_policy, self.min_severity, self.hide_blocked, self.license_policy)


class ConnectorCreate(BaseModel):
    name: str = Field(description="URL-safe connector name")
    url: str = Field(description="Upstream channel URL, e.g. https://conda.anaconda.org/conda-forge")
    include: list[str] = Field(default=[], description="Package-name globs to include (all when empty)")
    exclude: list[str] = Field(default=[], description="Package-name globs to exclude")
    subdirs: list[str] = Field(default=[], description="Subdirs to proxy (all when empty)")
    cache_minutes: int = Field(default=30, description=_CACHE_HELP, json_schema_extra=_CACHE_BOUNDS)
    timeout_seconds: int = Field(default=30, description=_TIMEOUT_HELP, json_schema_extra=_TIMEOUT_BOUNDS)
    username: str = ""
    password: str = ""
    token: str = ""
    allow_redirects: str = Field(default="same-origin", description=_REDIRECTS_HELP)
    check: bool = Field(
        default=True,
        description="Fetch the upstream's repodata for one subdir (noarch, or the first configured) before "
        "saving, and refuse an upstream that cannot be reached or is not a conda channel",
    )


class ConnectorUpdate(BaseModel):
    """Only the fields given change. Credentials: a value replaces (a token replaces a username and
    password, and the reverse); an empty or missing one keeps the current; clear_credentials removes them."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    subdirs: list[str] | None = None
    cache_minutes: int | None = Field(default=None, description=_CACHE_HELP, json_schema_extra=_CACHE_BOUNDS)
    timeout_seconds: int | None = Field(default=None, description=_TIMEOUT_HELP, json_schema_extra=_TIMEOUT_BOUNDS)
    username: str | None = None
    password: str | None = None
    token: str | None = None
    clear_credentials: bool = False
    allow_redirects: str | None = Field(default=None, description=_REDIRECTS_HELP)
    check: bool = Field(default=True, description="Check the upstream first when its URL or credentials change")


class RefreshRequest(BaseModel):
    subdirs: list[str] = []


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def feed_json(request: Request, info: feeds.FeedInfo) -> dict[str, Any]:
    channel_url = str(request.base_url).rstrip("/") + f"/conda/{info.name}"
    return {
        "name": info.name,
        "description": info.description,
        "created_at": info.created_at.isoformat(),
        "package_files": info.package_files,
        "kind": info.kind,
        "connectors": info.connectors,
        "upstream_removals": info.upstream_removals,
        "vulnerability_policy": info.vulnerability_policy,
        "min_severity": info.min_severity,
        "hide_blocked": info.hide_blocked,
        "license_policy": info.license_policy,
        "channel_url": channel_url,
        "conda_config": f"conda config --add channels {channel_url}",
    }


@router.get("/feeds", dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))], summary="List feeds")
async def list_feeds(request: Request) -> list[dict[str, Any]]:
    principal = current_principal(request)
    listed = await run_in_threadpool(feeds.list_feeds, _services(request))
    return [feed_json(request, info) for info in listed if principal.may(Permission.VIEW, info.name)]


@router.post(
    "/feeds", status_code=201, dependencies=[Depends(requires(Permission.MANAGE_FEED))], summary="Create a feed"
)
async def create_feed(request: Request, body: FeedCreate) -> dict[str, Any]:
    info = await run_in_threadpool(
        lambda: feeds.create_feed(
            _services(request),
            name=body.name,
            description=body.description,
            connectors=body.connectors,
            upstream_removals=body.upstream_removals,
        )
    )
    return feed_json(request, info)


@router.get("/feeds/{feed}", dependencies=[Depends(requires(Permission.VIEW))], summary="Show a feed")
async def show_feed(request: Request, feed: str) -> dict[str, Any]:
    info = await run_in_threadpool(lambda: feeds.get_feed(_services(request), name=feed))
    return feed_json(request, info)


@router.patch(
    "/feeds/{feed}",
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="Update a feed: description, connectors and their order, upstream removals, SCA policies",
)
async def update_feed(request: Request, feed: str, body: FeedUpdate) -> dict[str, Any]:
    may_attach = current_principal(request).may(Permission.MANAGE_FEED)  # system-wide, as for creating
    info = await run_in_threadpool(
        lambda: feeds.update_feed(
            _services(request),
            name=feed,
            description=body.description,
            connectors=body.connectors,
            upstream_removals=body.upstream_removals,
            may_attach=may_attach,
            sca=body.sca(),
        )
    )
    return feed_json(request, info)


@router.delete(
    "/feeds/{feed}",
    status_code=204,
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="Delete a feed and its packages",
)
async def delete_feed(request: Request, feed: str) -> Response:
    await run_in_threadpool(lambda: feeds.delete_feed(_services(request), name=feed))
    return Response(status_code=204)


@router.get(
    "/feeds/{feed}/packages",
    dependencies=[Depends(requires(Permission.VIEW))],
    tags=["packages"],
    summary="List a feed's packages, with search and paging",
)
async def list_packages(
    request: Request,
    feed: str,
    search: str = Query(default="", max_length=200),
    q: str = Query(default="", max_length=200, description="The same as search (the web UI's name)"),
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=50, ge=1, le=500),
) -> dict[str, Any]:
    await wait_for_feed(_services(request), feed)
    page = await run_in_threadpool(
        lambda: catalog.list_packages(_services(request), feed=feed, search=search or q, offset=offset, limit=limit)
    )
    return asdict(page)


@router.get(
    "/feeds/{feed}/packages/{name}",
    dependencies=[Depends(requires(Permission.VIEW))],
    tags=["packages"],
    summary="Show a package: versions, files per subdir, dependencies, checksums, downloads",
)
async def show_package(request: Request, feed: str, name: str) -> dict[str, Any]:
    await wait_for_feed(_services(request), feed)
    detail = await run_in_threadpool(lambda: catalog.package_detail(_services(request), feed=feed, name=name))
    return asdict(detail)


@router.get(
    "/feeds/{feed}/downloads",
    dependencies=[Depends(requires(Permission.VIEW))],
    tags=["packages"],
    summary="Download statistics: total, most downloaded packages, downloads per day",
)
async def feed_downloads(
    request: Request,
    feed: str,
    days: int = Query(default=30, ge=1, le=3660),
    top: int = Query(default=20, ge=1, le=500),
) -> dict[str, Any]:
    stats = await run_in_threadpool(
        lambda: catalog.download_statistics(_services(request), feed=feed, days=days, top=top)
    )
    return {
        "days": stats.days,
        "total": stats.total,
        "top_packages": [{"name": name, "downloads": count} for name, count in stats.top_packages],
        "per_day": [{"day": day, "downloads": count} for day, count in stats.per_day],
        "top_downloaders": [{"principal": who, "downloads": count} for who, count in stats.top_downloaders],
    }


@router.get(
    "/connectors",
    dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))],
    tags=["connectors"],
    summary="List connectors to upstream channels",
)
async def list_connectors(request: Request) -> list[dict[str, Any]]:
    principal = current_principal(request)
    listed = await run_in_threadpool(connectors.list_connectors, _services(request))
    return [_connector_json(principal, info) for info in listed]


@router.post(
    "/connectors",
    status_code=201,
    dependencies=[Depends(requires(Permission.ADMIN))],
    tags=["connectors"],
    summary="Create a connector to an upstream channel",
)
async def create_connector(request: Request, body: ConnectorCreate) -> dict[str, Any]:
    spec = connectors.ConnectorSpec(**body.model_dump(exclude={"check"}))
    info, checked = await run_in_threadpool(
        lambda: connectors.create_connector(_services(request), spec, check=body.check)
    )
    return _changed_json(current_principal(request), info, checked)


@router.patch(
    "/connectors/{connector}",
    dependencies=[Depends(requires(Permission.ADMIN))],
    tags=["connectors"],
    summary="Update a connector: URL, credentials, filters, subdirs, timeout, cache lifetime, redirects",
)
async def update_connector(request: Request, connector: str, body: ConnectorUpdate) -> dict[str, Any]:
    changes = connectors.ConnectorChanges(**body.model_dump(exclude={"check"}))
    info, checked = await run_in_threadpool(
        lambda: connectors.update_connector(_services(request), connector, changes, check=body.check)
    )
    return _changed_json(current_principal(request), info, checked)


def _changed_json(
    principal: Principal, info: connectors.ConnectorInfo, checked: connectors.UpstreamCheck | None
) -> dict[str, Any]:
    """A created or updated connector, with what the upstream check found (null when not checked)."""
    shown = _connector_json(principal, info)
    shown["check"] = None if checked is None else {**asdict(checked), "message": checked.message}
    return shown


@router.get(
    "/connectors/{connector}",
    dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))],
    tags=["connectors"],
    summary="Show a connector and its health",
)
async def show_connector(request: Request, connector: str) -> dict[str, Any]:
    info = await run_in_threadpool(connectors.get_connector, _services(request), connector)
    return _connector_json(current_principal(request), info)


def _connector_json(principal: Principal, info: connectors.ConnectorInfo) -> dict[str, Any]:
    """Feeds the caller may not see are left out, as everywhere."""
    shown = asdict(info)
    shown["feeds"] = principal.visible_feeds(list(info.feeds))
    if not principal.may(Permission.ADMIN):
        # What an upstream answered (addresses, statuses, texts) is for administrators.
        for state in shown.get("health", []):
            if state["last_error"]:
                state["last_error"] = "the upstream is unreachable or answered wrongly"
    return shown


@router.delete(
    "/connectors/{connector}",
    status_code=204,
    dependencies=[Depends(requires(Permission.ADMIN))],
    tags=["connectors"],
    summary="Delete a connector; one that feeds use is refused (409) unless detach=true",
)
async def delete_connector(
    request: Request,
    connector: str,
    detach: bool = Query(default=False, description="First detach the connector from the feeds that use it"),
) -> Response:
    await run_in_threadpool(lambda: connectors.delete_connector(_services(request), connector, detach=detach))
    return Response(status_code=204)


@router.post(
    "/connectors/{connector}/refresh",
    dependencies=[Depends(requires(Permission.ADMIN))],
    tags=["connectors"],
    summary="Check the upstream now for the given subdirs",
)
async def refresh_connector(request: Request, connector: str, body: RefreshRequest) -> dict[str, Any]:
    info = await run_in_threadpool(connectors.refresh_connector, _services(request), connector, body.subdirs)
    return asdict(info)
