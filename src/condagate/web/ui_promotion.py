"""Web UI of the approval flow: promoting from a source feed (with a preview), revoking a promotion,
the promotion history, and a feed's promotion targets.

Every form carries the session's CSRF token; what needs a second feed's permission (linking a target
needs manage-feed there too) is decided here as the REST API decides it. Comments are user text:
the templates print them escaped and never as links.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.errors import BadRequest, CondagateError, PackageNotFound
from condagate.security.permissions import Permission, Principal, Scope, authorize
from condagate.services import catalog, feeds, promotion, promotion_history, promotion_links, promotion_plan
from condagate.services.context import Services
from condagate.services.promotion_history import HistoryEntry
from condagate.web.auth import current_principal, requires
from condagate.web.ui_common import render, services_of
from condagate.web.upstream_wait import wait_for_feed

router = APIRouter(include_in_schema=False)
VIEW = [Depends(requires(Permission.VIEW, Scope.FEED))]
PROMOTE = [Depends(requires(Permission.PROMOTE, Scope.FEED))]
DELETE = [Depends(requires(Permission.DELETE, Scope.FEED))]
MANAGE = [Depends(requires(Permission.MANAGE_FEED, Scope.FEED))]

HISTORY_PAGE_SIZE = 50
RECENT_ON_FEED = 10  # history entries on the feed page
RECENT_ON_PACKAGE = 30  # history entries on the package page
MAX_COMMENT = 2000
MAX_SPECS = 200


# The history, grouped ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionGroup:
    """One promotion or revocation request: its files share who, when, from, to and the comment."""

    request_id: str
    action: str
    actor: str
    at: datetime
    source: str
    target: str
    comment: str
    entries: list[HistoryEntry]

    @property
    def packages(self) -> list[tuple[str, str]]:
        """(name, version) of its files, each once, in order."""
        return list(dict.fromkeys((e.name, e.version) for e in self.entries))


def group_history(entries: list[HistoryEntry]) -> list[PromotionGroup]:
    """Consecutive entries of one request (the history is newest first) as one group."""
    groups: list[PromotionGroup] = []
    for entry in entries:
        last = groups[-1] if groups else None
        if last is not None and last.request_id == entry.request_id and last.target == entry.target:
            last.entries.append(entry)
            continue
        groups.append(
            PromotionGroup(
                entry.request_id,
                entry.action,
                entry.actor,
                entry.at,
                entry.source,
                entry.target,
                entry.comment,
                [entry],
            )
        )
    return groups


def visible_feeds(principal: Principal) -> set[str] | None:
    """None for a reader who sees every feed; else the feeds the reader may see (as the API filters)."""
    if principal.may(Permission.VIEW):
        return None
    return set(principal.visible_feeds(list(principal.feeds)))


# What the feed page and the package page show ----------------------------------------------------------


@dataclass(frozen=True)
class FeedPromotions:
    targets: list[str]  # every target (a promoter names one); shown as links where visible
    sources: list[str]  # visible ones only
    recent: list[PromotionGroup]
    total: int
    may_promote: bool
    may_manage: bool
    link_choices: list[str] = field(default_factory=list)  # feeds the manager may link as targets

    @property
    def shown(self) -> bool:
        return bool(self.targets or self.sources or self.total or self.may_manage)


def feed_context(services: Services, principal: Principal, feed: str) -> FeedPromotions:
    """The feed page's approval-flow block (blocking: a worker thread's job)."""
    targets = promotion_links.targets_of(services, feed=feed)
    sources = principal.visible_feeds(promotion_links.sources_of(services, feed=feed))
    page = promotion_history.history(services, feed=feed, visible_feeds=visible_feeds(principal), limit=RECENT_ON_FEED)
    may_manage = principal.may(Permission.MANAGE_FEED, feed)
    choices = []
    if may_manage:
        choices = [
            info.name
            for info in feeds.list_feeds(services)
            if info.name != feed and info.name not in targets and principal.may(Permission.MANAGE_FEED, info.name)
        ]
    may_see_targets = may_manage or principal.may(Permission.PROMOTE, feed)
    return FeedPromotions(
        targets=targets if may_see_targets else principal.visible_feeds(targets),
        sources=sources,
        recent=group_history(page.entries),
        total=page.total,
        may_promote=bool(targets) and principal.may(Permission.PROMOTE, feed),
        may_manage=may_manage,
        link_choices=choices,
    )


@dataclass(frozen=True)
class PackagePromotions:
    targets: list[str]
    may_promote: bool
    revocable: set[str]  # versions promoted into this feed that a deleter may revoke
    history: list[PromotionGroup]
    total: int


def package_context(services: Services, principal: Principal, feed: str, name: str) -> PackagePromotions:
    """The package page's promote and revoke actions and its history (blocking)."""
    targets = promotion_links.targets_of(services, feed=feed)
    shown = promotion_history.history(
        services, feed=feed, name=name, visible_feeds=visible_feeds(principal), limit=RECENT_ON_PACKAGE
    )
    revocable: set[str] = set()
    if principal.may(Permission.DELETE, feed):
        every = promotion_history.history(services, feed=feed, name=name, limit=None)
        revocable = {e.version for e in every.entries if e.action == promotion.PROMOTE and e.target == feed}
    return PackagePromotions(
        targets=targets,
        may_promote=bool(targets) and principal.may(Permission.PROMOTE, feed),
        revocable=revocable,
        history=group_history(shown.entries),
        total=shown.total,
    )


# Promote: the form, the preview, the result -----------------------------------------------------------


@dataclass
class PromoteForm:
    target: str = ""
    name: str = ""
    version: str = ""
    file: str = ""  # "subdir/filename"
    subdirs: list[str] = field(default_factory=list)
    specs: str = ""
    with_dependencies: bool = False
    comment: str = ""
    environment_name: str = ""
    environment_data: str = ""  # base64 of an environment file carried over from a preview

    @property
    def file_parts(self) -> tuple[str, str] | None:
        subdir, slash, filename = self.file.partition("/")
        return (subdir, filename) if slash and subdir and filename else None

    @property
    def what(self) -> str:
        """What the page promotes, in its heading."""
        if self.file:
            return self.file
        if self.name:
            return f"{self.name} {self.version}".strip()
        return "packages"


def _page_context(services: Services, feed: str, form: PromoteForm, *, preselect: bool) -> dict[str, Any]:
    """The promote page's choices: targets, subdirs (the version's or file's ticked when ``preselect``)."""
    info = feeds.get_feed(services, name=feed)  # a missing feed: 404, as every feed page
    targets = promotion_links.targets_of(services, feed=feed)
    problem = ""
    own: list[str] = []
    if form.file:
        parts = form.file_parts
        if parts is None:
            problem = f"{form.file!r} is not a package file (SUBDIR/FILENAME)"
        else:
            own = [parts[0]]
    elif form.name:
        try:
            detail = catalog.package_detail(services, feed=feed, name=form.name)
        except PackageNotFound as exc:
            problem = exc.message
        else:
            versions = {v.version: v for v in detail.versions}
            if form.version and form.version not in versions:
                problem = f"version {form.version} of {form.name} is not in feed {feed!r}"
            elif form.version:
                own = sorted({f.subdir for f in versions[form.version].files})
    served = catalog.list_packages(services, feed=feed, search=form.name, limit=0).subdirs
    if preselect:
        form.subdirs = list(own)
    if not form.target and targets:
        form.target = targets[0]
    return {
        "feed": info,
        "targets": targets,
        "subdir_choices": sorted(set(served) | set(own) | set(form.subdirs)),
        "form": form,
        "problem": problem,
        "error": None,
        "plan": None,
        "result": None,
    }


def _spec_lines(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _request_of(form: PromoteForm, environment: tuple[str, bytes] | None) -> promotion_plan.PromotionRequest:
    if len(form.comment) > MAX_COMMENT:
        raise BadRequest(f"the comment is {len(form.comment)} characters long; at most {MAX_COMMENT}")
    specs = _spec_lines(form.specs)
    if len(specs) > MAX_SPECS:
        raise BadRequest(f"{len(specs)} packages named; at most {MAX_SPECS} at once")
    files, versions = [], []
    if form.file:
        parts = form.file_parts
        if parts is None:
            raise BadRequest(f"{form.file!r} is not a package file (SUBDIR/FILENAME)")
        files.append(parts)
    elif form.name and form.version:
        versions.append((form.name, form.version))
    elif form.name:
        specs.insert(0, form.name)  # a name alone: its newest version
    if not (files or versions or specs or environment):
        raise BadRequest("nothing to promote: name the packages, or choose an environment file")
    return promotion_plan.PromotionRequest(
        files=files,
        versions=versions,
        specs=specs,
        subdirs=form.subdirs,
        with_dependencies=form.with_dependencies,
        environment=environment,
    )


async def _environment_of(form: PromoteForm, upload: UploadFile | None) -> tuple[str, bytes] | None:
    """The uploaded environment file, or the one a preview carried over (base64 in a hidden field)."""
    if upload is not None and upload.filename:
        content = await upload.read(promotion_plan.ENVIRONMENT_MAX_BYTES + 1)
        if content:
            filename = upload.filename.replace("\\", "/").rsplit("/", 1)[-1][:200] or "environment.yml"
            return filename, content
    if form.environment_data:
        try:
            content = base64.b64decode(form.environment_data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("the environment file carried over from the preview is damaged: choose it again") from None
        return form.environment_name or "environment.yml", content
    return None


def _carry(form: PromoteForm, environment: tuple[str, bytes] | None) -> None:
    if environment is None:
        form.environment_name = form.environment_data = ""
    else:
        form.environment_name = environment[0]
        form.environment_data = base64.b64encode(environment[1]).decode("ascii")


@router.get("/feeds/{feed}/promote", dependencies=PROMOTE)
async def promote_page(
    request: Request,
    feed: str,
    name: str = Query("", max_length=200),
    version: str = Query("", max_length=100),
    file: str = Query("", max_length=450),
    target: str = Query("", max_length=100),
) -> Response:
    services = services_of(request)
    form = PromoteForm(target=target, name=name.strip(), version=version.strip(), file=file.strip())
    await wait_for_feed(services, feed)
    context = await run_in_threadpool(lambda: _page_context(services, feed, form, preselect=True))
    return render(request, "promote.html", context)


@router.post("/feeds/{feed}/promote", dependencies=PROMOTE)
async def promote_submit(
    request: Request,
    feed: str,
    target: str = Form(""),
    name: str = Form(""),
    version: str = Form(""),
    file: str = Form(""),
    subdir: list[str] = Form([]),
    specs: str = Form(""),
    with_dependencies: str = Form(""),
    comment: str = Form(""),
    action: str = Form("preview"),
    environment: UploadFile | None = File(None),
    environment_name: str = Form(""),
    environment_data: str = Form(""),
) -> Response:
    """The form's "Preview" shows the plan and changes nothing; "Promote" promotes (all or nothing)."""
    services, principal = services_of(request), current_principal(request)
    form = PromoteForm(
        target=target.strip(),
        name=name.strip(),
        version=version.strip(),
        file=file.strip(),
        subdirs=[s.strip() for s in subdir if s.strip()],
        specs=specs,
        with_dependencies=bool(with_dependencies),
        comment=comment.strip(),
        environment_name=environment_name.strip(),
        environment_data=environment_data.strip(),
    )
    await wait_for_feed(services, feed)
    context = await run_in_threadpool(lambda: _page_context(services, feed, form, preselect=False))
    status = 200
    try:
        carried = await _environment_of(form, environment)
        _carry(form, carried)
        if not form.target:
            raise BadRequest("choose the feed to promote into")
        promotion_request = _request_of(form, carried)
        if action == "promote":
            result = await promotion.promote(
                services,
                source=feed,
                target=form.target,
                request=promotion_request,
                actor=principal.name,
                comment=form.comment,
            )
            context["result"] = result
            context["target_links"] = _target_links(principal, result)
            _carry(form, None)
        else:
            context["plan"] = await run_in_threadpool(
                lambda: promotion_plan.plan(services, source=feed, target=form.target, request=promotion_request)
            )
    except CondagateError as exc:
        context["error"] = exc.message
        status = exc.status_code
    return render(request, "promote.html", context, status_code=status)


def _target_links(principal: Principal, result: promotion.PromotionResult) -> list[str]:
    """The promoted packages' names, for links to the target's package pages (when visible)."""
    if not principal.may(Permission.VIEW, result.target):
        return []
    return sorted({f.name for f in [*result.promoted, *result.already]})


# Revoke ------------------------------------------------------------------------------------------------


@router.post("/feeds/{feed}/packages/{name}/versions/{version}/revoke", dependencies=DELETE)
async def revoke_version(
    request: Request, feed: str, name: str, version: str, comment: str = Form(""), subdir: str = Form("")
) -> Response:
    """Remove a promoted version from this (target) feed, recorded in the history."""
    services, actor = services_of(request), current_principal(request).name
    if len(comment) > MAX_COMMENT:
        raise BadRequest(f"the comment is {len(comment)} characters long; at most {MAX_COMMENT}")

    def run() -> str:
        result = promotion.revoke(
            services,
            target=feed,
            name=name,
            version=version,
            subdir=subdir.strip() or None,
            actor=actor,
            comment=comment.strip(),
        )
        notice = urlencode({"revoked": len(result.files)})
        try:
            catalog.package_detail(services, feed=feed, name=name)
        except PackageNotFound:
            return f"/feeds/{quote(feed)}?{notice}"
        return f"/feeds/{quote(feed)}/packages/{quote(name)}?{notice}"

    return RedirectResponse(await run_in_threadpool(run), status_code=303)


# Promotion targets of a feed ---------------------------------------------------------------------------


@router.post("/feeds/{feed}/promotion-targets", dependencies=MANAGE)
async def link_target(request: Request, feed: str, target: str = Form("")) -> Response:
    principal = current_principal(request)
    target = target.strip()
    if not target:
        raise BadRequest("choose the feed this feed's packages may be promoted into")
    # A link lets this feed's promoters write into the target: its managers must agree too.
    authorize(principal, Permission.MANAGE_FEED, Scope.FEED, target)
    await run_in_threadpool(
        lambda: promotion_links.link_target(services_of(request), source=feed, target=target, actor=principal.name)
    )
    return RedirectResponse(f"/feeds/{quote(feed)}?promotion_target=linked", status_code=303)


@router.post("/feeds/{feed}/promotion-targets/{target}/remove", dependencies=MANAGE)
async def unlink_target(request: Request, feed: str, target: str) -> Response:
    await run_in_threadpool(lambda: promotion_links.unlink_target(services_of(request), source=feed, target=target))
    return RedirectResponse(f"/feeds/{quote(feed)}?promotion_target=unlinked", status_code=303)


# The history page --------------------------------------------------------------------------------------


@router.get("/feeds/{feed}/promotions", dependencies=VIEW)
async def history_page(
    request: Request, feed: str, page: int = Query(1), package: str = Query("", max_length=200)
) -> Response:
    services, principal = services_of(request), current_principal(request)
    page = max(page, 1)
    package = package.strip()

    def gather() -> dict[str, Any]:
        info = feeds.get_feed(services, name=feed)
        found = promotion_history.history(
            services,
            feed=feed,
            name=package or None,
            visible_feeds=visible_feeds(principal),
            offset=(page - 1) * HISTORY_PAGE_SIZE,
            limit=HISTORY_PAGE_SIZE,
        )
        return {"feed": info, "groups": group_history(found.entries), "total": found.total}

    context = await run_in_threadpool(gather)
    pages = max(1, -(-context["total"] // HISTORY_PAGE_SIZE))
    export = {"package": package} if package else {}
    context.update(
        page=page,
        pages=pages,
        package=package,
        csv_url=f"/api/feeds/{quote(feed)}/promotions?{urlencode({**export, 'format': 'csv'})}",
        json_url=f"/api/feeds/{quote(feed)}/promotions?{urlencode({**export, 'limit': 100_000})}",
    )
    return render(request, "promotions.html", context)
