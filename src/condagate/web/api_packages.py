"""REST API: removing package files, versions and packages from a feed."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from condagate.security.permissions import Permission, Scope
from condagate.services import package_removal
from condagate.services.context import Services
from condagate.web.auth import current_principal, requires

router = APIRouter(prefix="/api", tags=["packages"])
DELETE = [Depends(requires(Permission.DELETE, Scope.FEED))]
SUBDIR = Query(default=None, max_length=32, description="Only this subdir (default: every subdir)")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def removal_json(removal: package_removal.Removal) -> dict[str, Any]:
    return {
        "feed": removal.feed,
        "removed_by": removal.removed_by,
        "files": [asdict(f) for f in removal.files],
        "blobs_freed": removal.blobs_freed,
        "bytes_freed": removal.bytes_freed,
        "still_listed_from_upstream": removal.still_listed_from_upstream,
    }


@router.delete(
    "/feeds/{feed}/packages/{name}",
    dependencies=DELETE,
    summary="Delete every version of a package (its uploaded files and cached upstream copies)",
)
async def delete_package(request: Request, feed: str, name: str, subdir: str | None = SUBDIR) -> dict[str, Any]:
    removed_by = current_principal(request).name
    removal = await run_in_threadpool(
        lambda: package_removal.remove_package(
            _services(request), feed=feed, name=name, subdir=subdir, removed_by=removed_by
        )
    )
    return removal_json(removal)


@router.delete(
    "/feeds/{feed}/packages/{name}/versions/{version}",
    dependencies=DELETE,
    summary="Delete one version of a package: all its builds, in every subdir or one",
)
async def delete_version(
    request: Request, feed: str, name: str, version: str, subdir: str | None = SUBDIR
) -> dict[str, Any]:
    removed_by = current_principal(request).name
    removal = await run_in_threadpool(
        lambda: package_removal.remove_version(
            _services(request), feed=feed, name=name, version=version, subdir=subdir, removed_by=removed_by
        )
    )
    return removal_json(removal)


@router.delete(
    "/feeds/{feed}/files/{subdir}/{filename}",
    dependencies=DELETE,
    summary="Delete one package file (an uploaded file, or the cached copy of an upstream file)",
)
async def delete_file(request: Request, feed: str, subdir: str, filename: str) -> dict[str, Any]:
    removed_by = current_principal(request).name
    removal = await run_in_threadpool(
        lambda: package_removal.remove_file(
            _services(request), feed=feed, subdir=subdir, filename=filename, removed_by=removed_by
        )
    )
    return removal_json(removal)
