"""REST API: the approval flow -- feed pairs, promotion targets, promotions, revocations, history."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from condagate.errors import PayloadTooLarge
from condagate.security.permissions import Permission, Principal, Scope, authorize
from condagate.services import promotion, promotion_history, promotion_links, promotion_plan
from condagate.services.context import Services
from condagate.web.api import feed_json
from condagate.web.auth import current_principal, requires

router = APIRouter(prefix="/api", tags=["promotion"])
_SAFE = re.compile(r"[^A-Za-z0-9._-]")  # what a file name in a header may hold


class PairCreate(BaseModel):
    source: str = Field(description="The feed packages wait in, e.g. unapproved-conda (a proxy of the connectors)")
    target: str = Field(description="The hosted feed approved packages are promoted into, e.g. approved-conda")
    connectors: list[str] = Field(default=[], description="Connectors the source proxies (hosted when empty)")
    source_description: str = ""
    target_description: str = ""


class TargetLink(BaseModel):
    target: str = Field(description="A feed this feed's packages may be promoted into")


class FileRef(BaseModel):
    subdir: str = Field(max_length=32)
    filename: str = Field(max_length=400)


class VersionRef(BaseModel):
    name: str = Field(max_length=200)
    version: str = Field(max_length=100)


class PromotionBody(BaseModel):
    target: str = Field(description="The promotion target to promote into")
    files: list[FileRef] = Field(default=[], max_length=promotion_plan.MAX_FILES)
    versions: list[VersionRef] = Field(default=[], max_length=1000, description="All files of each version")
    specs: list[str] = Field(
        default=[],
        max_length=200,
        description="NAME, NAME==VERSION, NAME>=VERSION...: the newest matching version (all its builds); "
        "with with_dependencies, match specs solved against the source",
    )
    subdirs: list[str] = Field(default=[], max_length=40, description="Only these subdirs (default: the source's)")
    with_dependencies: bool = Field(default=False, description="Also promote the dependency closure")
    comment: str = Field(default="", max_length=2000, description="Why: kept in the promotion history")
    dry_run: bool = Field(default=False, description="Only say what would be promoted")


class RevocationBody(BaseModel):
    name: str = Field(max_length=200)
    version: str = Field(max_length=100)
    subdir: str | None = Field(default=None, max_length=32, description="Only this subdir (default: all)")
    comment: str = Field(default="", max_length=2000)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post(
    "/feed-pairs",
    status_code=201,
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="Create a promotion pair: a source feed (proxying connectors) and a hosted target feed",
)
async def create_pair(request: Request, body: PairCreate) -> dict[str, Any]:
    actor = current_principal(request).name
    pair = await run_in_threadpool(
        lambda: promotion_links.create_pair(
            _services(request),
            source=body.source,
            target=body.target,
            connectors=body.connectors,
            source_description=body.source_description,
            target_description=body.target_description,
            actor=actor,
        )
    )
    return {"source": feed_json(request, pair.source), "target": feed_json(request, pair.target)}


@router.get(
    "/feeds/{feed}/promotion-targets",
    dependencies=[Depends(requires(Permission.VIEW))],
    summary="The feeds this feed's packages may be promoted into, and those promoting into it",
)
async def list_targets(request: Request, feed: str) -> dict[str, Any]:
    services, principal = _services(request), current_principal(request)
    targets = await run_in_threadpool(lambda: promotion_links.targets_of(services, feed=feed))
    sources = await run_in_threadpool(lambda: promotion_links.sources_of(services, feed=feed))
    return {"feed": feed, "targets": principal.visible_feeds(targets), "sources": principal.visible_feeds(sources)}


@router.post(
    "/feeds/{feed}/promotion-targets",
    status_code=201,
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="Let this feed's promoters promote into another feed (manage-feed on both feeds)",
)
async def add_target(request: Request, feed: str, body: TargetLink, response: Response) -> dict[str, Any]:
    principal = current_principal(request)
    # A link lets this feed's promoters write into the target: its managers must agree too.
    authorize(principal, Permission.MANAGE_FEED, Scope.FEED, body.target)
    added = await run_in_threadpool(
        lambda: promotion_links.link_target(_services(request), source=feed, target=body.target, actor=principal.name)
    )
    if not added:
        response.status_code = 200
    return {"feed": feed, "target": body.target, "added": added}


@router.delete(
    "/feeds/{feed}/promotion-targets/{target}",
    status_code=204,
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="Stop promotions from this feed into a target",
)
async def remove_target(request: Request, feed: str, target: str) -> Response:
    await run_in_threadpool(lambda: promotion_links.unlink_target(_services(request), source=feed, target=target))
    return Response(status_code=204)


def _file_json(planned: promotion_plan.PlannedFile) -> dict[str, Any]:
    shown = asdict(planned)
    if not shown["target_sha256"]:
        del shown["target_sha256"]
    return shown


def plan_json(planned: promotion_plan.PromotionPlan) -> dict[str, Any]:
    return {
        "source": planned.source,
        "target": planned.target,
        "dry_run": True,
        "added": [_file_json(f) for f in planned.add],
        "already": [_file_json(f) for f in planned.present],
        "conflicts": [_file_json(f) for f in planned.conflicts],
        "missing": [asdict(m) for m in planned.missing],
        "to_fetch": [_file_json(f) for f in planned.to_fetch],
    }


def result_json(result: promotion.PromotionResult) -> dict[str, Any]:
    return {
        "source": result.source,
        "target": result.target,
        "dry_run": False,
        "request_id": result.request_id,
        "actor": result.actor,
        "comment": result.comment,
        "at": result.at.isoformat(),
        "added": [_file_json(f) for f in result.promoted],
        "already": [_file_json(f) for f in result.already],
        "conflicts": [],
        "missing": [],
        "fetched": [_file_json(f) for f in result.fetched],
    }


async def _promote_or_plan(
    request: Request,
    feed: str,
    target: str,
    promotion_request: promotion_plan.PromotionRequest,
    comment: str,
    dry_run: bool,
) -> dict[str, Any]:
    services, principal = _services(request), current_principal(request)
    if dry_run:
        planned = await run_in_threadpool(
            lambda: promotion_plan.plan(services, source=feed, target=target, request=promotion_request)
        )
        return plan_json(planned)
    result = await promotion.promote(
        services, source=feed, target=target, request=promotion_request, actor=principal.name, comment=comment
    )
    return result_json(result)


@router.post(
    "/feeds/{feed}/promotions",
    dependencies=[Depends(requires(Permission.PROMOTE))],
    summary="Promote files, versions or specs (with dependencies) into a promotion target; or preview it",
)
async def promote(request: Request, feed: str, body: PromotionBody) -> dict[str, Any]:
    promotion_request = promotion_plan.PromotionRequest(
        files=[(f.subdir, f.filename) for f in body.files],
        versions=[(v.name, v.version) for v in body.versions],
        specs=body.specs,
        subdirs=body.subdirs,
        with_dependencies=body.with_dependencies,
    )
    return await _promote_or_plan(request, feed, body.target, promotion_request, body.comment, body.dry_run)


@router.post(
    "/feeds/{feed}/promotions/environment",
    dependencies=[Depends(requires(Permission.PROMOTE))],
    summary="Promote what an environment file pins or needs (environment.yml, explicit list, conda-lock, pixi.lock)",
)
async def promote_environment(
    request: Request,
    feed: str,
    target: str = Query(max_length=100, description="The promotion target"),
    filename: str = Query(
        default="environment.yml", max_length=200, description="The file's name: tells its format apart"
    ),
    subdir: list[str] = Query(default=[], max_length=40, description="Solve for these subdirs (repeat)"),
    comment: str = Query(default="", max_length=2000),
    dry_run: bool = False,
) -> dict[str, Any]:
    content = await _read_body(request, promotion_plan.ENVIRONMENT_MAX_BYTES)
    promotion_request = promotion_plan.PromotionRequest(subdirs=subdir, environment=(filename, content))
    return await _promote_or_plan(request, feed, target, promotion_request, comment, dry_run)


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"an environment file may have at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get(
    "/feeds/{feed}/promotions",
    dependencies=[Depends(requires(Permission.VIEW))],
    summary="Promotion history of a feed (as source or target), newest first; ?format=csv exports it",
)
async def promotion_history_of_feed(
    request: Request,
    feed: str,
    package: str | None = Query(default=None, max_length=200, description="Only this package"),
    version: str | None = Query(default=None, max_length=100, description="Only this version"),
    offset: int = Query(default=0, ge=0),
    limit: int | None = Query(default=None, ge=1, le=100_000, description="JSON: 50 unless given; CSV: all"),
    format: Literal["json", "csv"] = Query(default="json"),  # noqa: A002 - the query parameter's name
) -> Any:
    principal = current_principal(request)
    page = await run_in_threadpool(
        lambda: promotion_history.history(
            _services(request),
            feed=feed,
            name=package,
            version=version,
            visible_feeds=_visible_feeds(principal),
            offset=offset,
            limit=limit if limit is not None or format == "csv" else 50,
        )
    )
    if format == "csv":
        return Response(
            promotion_history.history_csv(page.entries),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="promotions-{_SAFE.sub("_", feed)}.csv"'},
        )
    return {
        "feed": feed,
        "total": page.total,
        "offset": page.offset,
        "limit": page.limit,
        "entries": [{**asdict(e), "at": e.at.isoformat()} for e in page.entries],
    }


def _visible_feeds(principal: Principal) -> set[str] | None:
    """None for a reader who sees every feed; else the feeds the reader may see."""
    if principal.may(Permission.VIEW):
        return None
    return set(principal.visible_feeds(list(principal.feeds)))


@router.post(
    "/feeds/{feed}/revocations",
    dependencies=[Depends(requires(Permission.DELETE))],
    summary="Revoke a promoted version: remove it from this (target) feed, recorded in the history",
)
async def revoke(request: Request, feed: str, body: RevocationBody) -> dict[str, Any]:
    actor = current_principal(request).name
    result = await run_in_threadpool(
        lambda: promotion.revoke(
            _services(request),
            target=feed,
            name=body.name,
            version=body.version,
            subdir=body.subdir,
            actor=actor,
            comment=body.comment,
        )
    )
    return {
        "request_id": result.request_id,
        "target": result.target,
        "name": result.name,
        "version": result.version,
        "actor": result.actor,
        "comment": result.comment,
        "at": result.at.isoformat(),
        "files": [asdict(f) for f in result.files],
    }
