"""REST API: feeds and their packages."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from condagate.security.permissions import Permission
from condagate.services import catalog, feeds
from condagate.services.context import Services
from condagate.web.auth import requires

router = APIRouter(prefix="/api", tags=["feeds"])


class FeedCreate(BaseModel):
    name: str = Field(description="URL-safe feed name, e.g. private-conda")
    description: str = ""


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
        "channel_url": channel_url,
        "conda_config": f"conda config --add channels {channel_url}",
    }


@router.get("/feeds", dependencies=[Depends(requires(Permission.VIEW))], summary="List feeds")
async def list_feeds(request: Request) -> list[dict[str, Any]]:
    return [feed_json(request, info) for info in await run_in_threadpool(feeds.list_feeds, _services(request))]


@router.post("/feeds", status_code=201, dependencies=[Depends(requires(Permission.ADMIN))], summary="Create a feed")
async def create_feed(request: Request, body: FeedCreate) -> dict[str, Any]:
    info = await run_in_threadpool(
        lambda: feeds.create_feed(_services(request), name=body.name, description=body.description)
    )
    return feed_json(request, info)


@router.get("/feeds/{feed}", dependencies=[Depends(requires(Permission.VIEW))], summary="Show a feed")
async def show_feed(request: Request, feed: str) -> dict[str, Any]:
    info = await run_in_threadpool(lambda: feeds.get_feed(_services(request), name=feed))
    return feed_json(request, info)


@router.delete("/feeds/{feed}", status_code=204, dependencies=[Depends(requires(Permission.ADMIN))],
               summary="Delete a feed and its packages")
async def delete_feed(request: Request, feed: str) -> Response:
    await run_in_threadpool(lambda: feeds.delete_feed(_services(request), name=feed))
    return Response(status_code=204)


@router.get("/feeds/{feed}/packages", dependencies=[Depends(requires(Permission.VIEW))], tags=["packages"],
            summary="List a feed's packages, with search and paging")
async def list_packages(
    request: Request,
    feed: str,
    search: str = "",
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=50, ge=1, le=500),
) -> dict[str, Any]:
    page = await run_in_threadpool(
        lambda: catalog.list_packages(_services(request), feed=feed, search=search, offset=offset, limit=limit)
    )
    return asdict(page)


@router.get("/feeds/{feed}/packages/{name}", dependencies=[Depends(requires(Permission.VIEW))], tags=["packages"],
            summary="Show a package: versions, files per subdir, dependencies, checksums, downloads")
async def show_package(request: Request, feed: str, name: str) -> dict[str, Any]:
    detail = await run_in_threadpool(lambda: catalog.package_detail(_services(request), feed=feed, name=name))
    return asdict(detail)
