"""Package pages' management actions (delete a file, a version, a package).

The forms on the package page carry the session's CSRF token and ask before they submit; after a
removal the browser goes back to the package page, or to the feed page when nothing of it is left.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.errors import PackageNotFound
from condagate.security.permissions import Permission, Scope
from condagate.services import catalog, package_removal
from condagate.web.auth import current_principal, requires
from condagate.web.ui_common import services_of

router = APIRouter(include_in_schema=False)
DELETE = [Depends(requires(Permission.DELETE, Scope.FEED))]


async def _remove_then_return(
    request: Request, feed: str, name: str, remove: Callable[[str], package_removal.Removal]
) -> Response:
    services = services_of(request)
    removed_by = current_principal(request).name

    def run() -> str:
        removal = remove(removed_by)
        notice = urlencode({"removed": len(removal.files), "freed": removal.bytes_freed})
        try:
            catalog.package_detail(services, feed=feed, name=name)
        except PackageNotFound:
            return f"/feeds/{quote(feed)}?{notice}"
        return f"/feeds/{quote(feed)}/packages/{quote(name)}?{notice}"

    return RedirectResponse(await run_in_threadpool(run), status_code=303)


def _subdir(value: str) -> str | None:
    return value.strip() or None


@router.post("/feeds/{feed}/packages/{name}/delete", dependencies=DELETE)
async def delete_package(request: Request, feed: str, name: str, subdir: str = Form("")) -> Response:
    services = services_of(request)
    return await _remove_then_return(
        request,
        feed,
        name,
        lambda who: package_removal.remove_package(
            services, feed=feed, name=name, subdir=_subdir(subdir), removed_by=who
        ),
    )


@router.post("/feeds/{feed}/packages/{name}/versions/{version}/delete", dependencies=DELETE)
async def delete_version(request: Request, feed: str, name: str, version: str, subdir: str = Form("")) -> Response:
    services = services_of(request)
    return await _remove_then_return(
        request,
        feed,
        name,
        lambda who: package_removal.remove_version(
            services, feed=feed, name=name, version=version, subdir=_subdir(subdir), removed_by=who
        ),
    )


@router.post("/feeds/{feed}/files/{subdir}/{filename}/delete", dependencies=DELETE)
async def delete_file(request: Request, feed: str, subdir: str, filename: str) -> Response:
    services = services_of(request)
    name = package_removal.split_filename(filename)[0]
    return await _remove_then_return(
        request,
        feed,
        name,
        lambda who: package_removal.remove_file(services, feed=feed, subdir=subdir, filename=filename, removed_by=who),
    )
