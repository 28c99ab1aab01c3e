"""REST API: vulnerability advisories (OSV import, listing), assessments, package-name overrides,
and a feed's vulnerable packages."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from condagate.errors import PayloadTooLarge
from condagate.security.permissions import Permission, Scope
from condagate.services import advisories
from condagate.services.context import Services
from condagate.web.auth import current_principal, requires
from condagate.web.upstream_wait import wait_for_feed

router = APIRouter(prefix="/api", tags=["advisories"])

# An import body: a zip of OSV documents or one JSON document. The guard's body limit for this route
# applies first; this is the route's own bound.
MAX_IMPORT_BYTES = 256 * 1024 * 1024
_SPOOL_IN_MEMORY = 8 * 1024 * 1024


class AssessmentBody(BaseModel):
    verdict: Literal["ignore", "caution", "block", "clear"] = Field(
        description="ignore: not relevant here; caution: warn only; block: refuse the affected versions; "
        "clear: withdraw the verdict (the history is kept)"
    )
    feed: str | None = Field(default=None, max_length=100, description="Only for this feed (default: system-wide)")
    comment: str = Field(default="", max_length=advisories.MAX_COMMENT, description="Why: kept with who and when")


class NameOverrideBody(BaseModel):
    pypi_name: str | None = Field(
        max_length=200, description="The PyPI project this conda package packages; null: it has no PyPI counterpart"
    )


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post(
    "/advisories/import",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="Import OSV advisories: the body is a zip of OSV JSON documents, or one JSON document",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def import_advisories(
    request: Request,
    source: str = Query(default="upload", max_length=200, description="A name for the body in failure reports"),
) -> dict[str, Any]:
    """Each document is imported whole or not at all; bad ones are reported with their file and reason
    while the rest is imported. An advisory already stored is replaced only by a newer ``modified``."""
    services = _services(request)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=str(services.settings.data_dir)) as body:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_IMPORT_BYTES:
                raise PayloadTooLarge(f"an advisory import may have at most {MAX_IMPORT_BYTES} bytes: import in parts")
            body.write(chunk)
        body.seek(0)
        summary = await run_in_threadpool(lambda: advisories.import_body(services, body, source=source))
    return summary.as_dict()


@router.get(
    "/advisories",
    dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))],
    summary="List imported advisories, newest first; filter by package, severity, withdrawn",
)
async def list_advisories(
    request: Request,
    package: str = Query(default="", max_length=200, description="A conda package name (mapped to PyPI) or PyPI name"),
    severity: str = Query(default="", max_length=100, description="critical, high, medium, low, none, unknown (a,b)"),
    withdrawn: bool | None = Query(default=None, description="true: only withdrawn; false: only in force"),
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=50, ge=1, le=1000),
) -> dict[str, Any]:
    page = await run_in_threadpool(
        lambda: advisories.list_advisories(
            _services(request), package=package, severity=severity, withdrawn=withdrawn, offset=offset, limit=limit
        )
    )
    return asdict(page)


@router.get(
    "/advisories/{advisory_id}",
    dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))],
    summary="Show an advisory: details, affected packages and versions, assessments",
)
async def show_advisory(request: Request, advisory_id: str) -> dict[str, Any]:
    principal = current_principal(request)
    detail = await run_in_threadpool(
        lambda: advisories.get_advisory(
            _services(request), advisory_id, visible_feeds=lambda feed: principal.may(Permission.VIEW, feed)
        )
    )
    return asdict(detail)


@router.post(
    "/advisories/{advisory_id}/assessments",
    status_code=201,
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="Assess an advisory (ignore, caution, block) system-wide or for one feed, or clear the verdict",
)
async def assess_advisory(request: Request, advisory_id: str, body: AssessmentBody) -> dict[str, Any]:
    actor = current_principal(request).name
    info = await run_in_threadpool(
        lambda: advisories.assess(
            _services(request),
            advisory_id=advisory_id,
            verdict=body.verdict,
            feed=body.feed,
            comment=body.comment,
            actor=actor,
        )
    )
    return asdict(info)


@router.get(
    "/advisories/{advisory_id}/assessments",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="The assessments of an advisory, newest first (in_force marks those that count)",
)
async def advisory_assessments(request: Request, advisory_id: str) -> list[dict[str, Any]]:
    history = await run_in_threadpool(
        lambda: advisories.assessment_history(_services(request), advisory_id=advisory_id)
    )
    return [asdict(item) for item in history]


@router.get(
    "/assessments",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="All assessments, newest first; of one feed, or system-wide ones only",
)
async def list_assessments(
    request: Request,
    feed: str | None = Query(default=None, max_length=100),
    system: bool = Query(default=False, description="Only system-wide assessments"),
) -> list[dict[str, Any]]:
    history = await run_in_threadpool(
        lambda: advisories.assessment_history(_services(request), feed=feed, system_only=system)
    )
    return [asdict(item) for item in history]


@router.get(
    "/package-names",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="Administrators' conda -> PyPI name overrides",
)
async def list_name_overrides(request: Request) -> list[dict[str, Any]]:
    found = await run_in_threadpool(advisories.list_name_overrides, _services(request))
    return [asdict(item) for item in found]


@router.get(
    "/package-names/{conda_name}",
    dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))],
    summary="How a conda package name maps to PyPI (grayskull table, override, fall-back rule) for advisories",
)
async def show_name_mapping(request: Request, conda_name: str) -> dict[str, Any]:
    info = await run_in_threadpool(advisories.name_mapping, _services(request), conda_name)
    return asdict(info)


@router.put(
    "/package-names/{conda_name}",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="Override a conda package's PyPI name (null: it has no PyPI counterpart)",
)
async def set_name_override(request: Request, conda_name: str, body: NameOverrideBody) -> dict[str, Any]:
    actor = current_principal(request).name
    info = await run_in_threadpool(
        lambda: advisories.set_name_override(
            _services(request), conda_name=conda_name, pypi_name=body.pypi_name, actor=actor
        )
    )
    return asdict(info)


@router.delete(
    "/package-names/{conda_name}",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="Remove a name override: the grayskull table or the fall-back rule apply again",
)
async def clear_name_override(request: Request, conda_name: str) -> dict[str, Any]:
    info = await run_in_threadpool(lambda: advisories.clear_name_override(_services(request), conda_name=conda_name))
    return asdict(info)


@router.get(
    "/feeds/{feed}/vulnerabilities",
    dependencies=[Depends(requires(Permission.VIEW))],
    summary="The feed's vulnerable package versions, with their advisories",
)
async def feed_vulnerabilities(
    request: Request,
    feed: str,
    package: str = Query(default="", max_length=200, description="Only this package"),
    include_unknown: bool = Query(default=True, description="Also versions that could not be decided"),
) -> dict[str, Any]:
    services = _services(request)
    await wait_for_feed(services, feed)
    found = await run_in_threadpool(
        lambda: advisories.feed_vulnerabilities(services, feed=feed, include_unknown=include_unknown, package=package)
    )
    return asdict(found)
