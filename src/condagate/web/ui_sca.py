"""Web UI of vulnerability and license rules (SCA): a feed's vulnerable packages and license
compliance, advisories with their assessments (administrators assess them here), and a feed's SCA
settings with the preview of what a change would make unsolvable.

The feed and package pages show a summary through partials (``_feed_sca.html``, ``_package_sca.html``)
whose context ``feed_context`` and ``package_context`` give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from condagate.errors import CondagateError
from condagate.security.permissions import Permission, Principal, Scope
from condagate.services import advisories, catalog, feeds, licenses, sca, sca_impact, vulnerabilities
from condagate.services.context import Services
from condagate.services.policy import SCA_POLICIES, SEVERITY_LEVELS, FeedPolicy
from condagate.web.auth import current_principal, requires
from condagate.web.ui_common import render, services_of
from condagate.web.upstream_wait import wait_for_feed

router = APIRouter(include_in_schema=False)
VIEW = [Depends(requires(Permission.VIEW))]
MANAGE = [Depends(requires(Permission.MANAGE_FEED))]
ADVISORIES_PAGE_SIZE = 50
SEVERITY_FILTERS = ("critical", "high", "medium", "low", "none", "unknown")


# The partials' context ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedSca:
    """``_feed_sca.html``'s ``sca``: the feed's policies and links to its SCA pages."""

    feed: str
    policy: FeedPolicy
    may_manage: bool


def feed_context(services: Services, principal: Principal, feed: str) -> FeedSca:
    """The feed page's SCA box (blocking: one database read)."""
    return FeedSca(feed, sca.feed_policy_of(services, feed), principal.may(Permission.MANAGE_FEED, feed))


@dataclass(frozen=True)
class VersionSca:
    version: str
    status: str  # affected, clean, no-data, unknown-version
    note: str
    ecosystem_name: str | None
    action: str  # what the feed's policies make of it: allow, warn, block (its worst file)
    advisories: tuple[sca.AdvisoryVerdict, ...]
    licenses: list[sca.LicenseVerdict]  # one per distinct declared license of its files


@dataclass(frozen=True)
class PackageSca:
    """``_package_sca.html``'s ``sca``: each version's advisories and license state in this feed."""

    feed: str
    name: str
    policy: FeedPolicy
    versions: dict[str, VersionSca] = field(default_factory=dict)


def package_context(services: Services, detail: catalog.PackageDetail) -> PackageSca:
    """The package page's SCA state per version (blocking; answers are memoised per SCA revision)."""
    policy = sca.feed_policy_of(services, detail.feed)
    shown: dict[str, VersionSca] = {}
    for version in detail.versions:
        state = vulnerabilities.vulnerability_state(
            services, feed_id=policy.id, name=detail.name, version=version.version
        )
        vulnerability_action, details = sca.vulnerability_verdict(policy, state)
        declared = sorted({f.license for f in version.files}) or [""]
        license_states = [sca.license_verdict(services, policy, text or None) for text in declared]
        action = max(
            [vulnerability_action, *(item.action for item in license_states)],
            key=[sca.ALLOW, sca.WARN, sca.BLOCK].index,
        )
        shown[version.version] = VersionSca(
            version.version, state.status, state.note, state.ecosystem_name, action, details, license_states
        )
    return PackageSca(detail.feed, detail.name, policy, shown)


# A feed's vulnerable packages and its license compliance --------------------------------------------


@dataclass(frozen=True)
class VulnerableRow:
    name: str
    version: str
    subdirs: list[str]
    status: str
    note: str
    action: str
    advisories: tuple[sca.AdvisoryVerdict, ...]


@router.get("/feeds/{feed}/vulnerabilities", dependencies=VIEW)
async def vulnerabilities_page(request: Request, feed: str, package: str = Query("", max_length=200)) -> Response:
    services = services_of(request)
    await wait_for_feed(services, feed)

    def gather() -> dict[str, Any]:
        info = feeds.get_feed(services, name=feed)
        policy = sca.feed_policy_of(services, feed)
        found = advisories.feed_vulnerabilities(services, feed=feed, package=package.strip())
        rows = []
        for item in found.packages:
            action, details = sca.vulnerability_verdict(policy, item.state)
            rows.append(
                VulnerableRow(
                    item.name, item.version, item.subdirs, item.state.status, item.state.note, action, details
                )
            )
        rank = {sca.BLOCK: 0, sca.WARN: 1, sca.ALLOW: 2}
        rows.sort(key=lambda r: (rank[r.action], r.status != "affected", r.name, r.version))
        return {"feed": info, "policy": policy, "found": found, "rows": rows, "package": package.strip()}

    return render(request, "sca_vulnerabilities.html", await run_in_threadpool(gather))


@router.get("/feeds/{feed}/compliance", dependencies=VIEW)
async def compliance_page(request: Request, feed: str) -> Response:
    services = services_of(request)
    await wait_for_feed(services, feed)

    def gather() -> dict[str, Any]:
        info = feeds.get_feed(services, name=feed)
        policy = sca.feed_policy_of(services, feed)
        report = licenses.compliance(services, feed=feed)
        # What the feed's license policy makes of each rule's verdict (off: nothing is acted on).
        effective = {
            group.license: sca.license_verdict(services, policy, group.packages[0].declared or None).action
            for group in report.by_license
        }
        return {"feed": info, "policy": policy, "report": report, "effective": effective}

    return render(request, "sca_compliance.html", await run_in_threadpool(gather))


# Advisories and assessments --------------------------------------------------------------------------


@router.get("/advisories", dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))])
async def advisories_page(
    request: Request,
    package: str = Query("", max_length=200),
    severity: str = Query("", max_length=20),
    page: int = Query(1, ge=1, le=100_000),
) -> Response:
    services = services_of(request)
    chosen = severity if severity in SEVERITY_FILTERS else ""

    def gather() -> dict[str, Any]:
        listing = advisories.list_advisories(
            services,
            package=package.strip(),
            severity=chosen,
            offset=(page - 1) * ADVISORIES_PAGE_SIZE,
            limit=ADVISORIES_PAGE_SIZE,
        )
        pages = max(1, -(-listing.total // ADVISORIES_PAGE_SIZE))
        return {"listing": listing, "package": package.strip(), "severity": chosen, "page": page, "pages": pages}

    context = await run_in_threadpool(gather)
    return render(request, "advisories.html", {**context, "severities": SEVERITY_FILTERS})


def _advisory_page(
    request: Request,
    advisory_id: str,
    *,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    services = services_of(request)
    principal = current_principal(request)
    detail = advisories.get_advisory(services, advisory_id, visible_feeds=lambda f: principal.may(Permission.VIEW, f))
    visible = [f.name for f in feeds.list_feeds(services) if principal.may(Permission.VIEW, f.name)]
    context = {
        "detail": detail,
        "advisory": detail.advisory,
        "feeds": visible,
        "verdicts": (*advisories.VERDICTS, advisories.CLEAR),
        "error": error,
        "form": {"verdict": "", "feed": "", "comment": "", **(values or {})},
        "assessed": request.query_params.get("assessed", ""),
    }
    return render(request, "advisory.html", context, status_code=status_code)


@router.get("/advisories/{advisory_id}", dependencies=[Depends(requires(Permission.VIEW, Scope.ANY))])
async def advisory_page(request: Request, advisory_id: str) -> Response:
    return await run_in_threadpool(lambda: _advisory_page(request, advisory_id))


@router.post("/advisories/{advisory_id}/assess", dependencies=[Depends(requires(Permission.ADMIN))])
async def assess(
    request: Request,
    advisory_id: str,
    verdict: str = Form(""),
    feed: str = Form(""),
    comment: str = Form(""),
) -> Response:
    """An administrator's verdict (ignore, caution, block, or clear), system-wide or for one feed."""
    services = services_of(request)
    actor = current_principal(request).name
    values = {"verdict": verdict, "feed": feed, "comment": comment}

    def run() -> Response:
        try:
            advisories.assess(
                services,
                advisory_id=advisory_id,
                verdict=verdict,
                feed=feed.strip() or None,
                comment=comment.strip(),
                actor=actor,
            )
        except CondagateError as exc:
            if exc.code == "advisory_not_found":
                raise
            return _advisory_page(request, advisory_id, error=exc.message, values=values, status_code=exc.status_code)
        target = f"/advisories/{quote(advisory_id)}?" + urlencode({"assessed": verdict})
        return RedirectResponse(target, status_code=303)

    return await run_in_threadpool(run)


# A feed's SCA settings, with the impact preview ------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


def _settings_page(
    request: Request,
    feed: str,
    *,
    values: dict[str, Any] | None = None,
    preview: sca_impact.ScaImpact | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    services = services_of(request)
    info = feeds.get_feed(services, name=feed)
    form: dict[str, Any] = {
        "vulnerability_policy": info.vulnerability_policy,
        "min_severity": info.min_severity,
        "hide_blocked": info.hide_blocked,
        "license_policy": info.license_policy,
        "specs": "",
        "subdirs": "",
        **(values or {}),
    }
    context = {
        "feed": info,
        "form": form,
        "policies": SCA_POLICIES,
        "severities": SEVERITY_LEVELS,
        "preview": preview,
        "error": error,
        "saved": request.query_params.get("saved") == "1",
    }
    return render(request, "sca_settings.html", context, status_code=status_code)


@router.get("/feeds/{feed}/sca", dependencies=MANAGE)
async def sca_settings_page(request: Request, feed: str) -> Response:
    return await run_in_threadpool(lambda: _settings_page(request, feed))


@router.post("/feeds/{feed}/sca", dependencies=MANAGE)
async def update_sca_settings(
    request: Request,
    feed: str,
    vulnerability_policy: str = Form("off"),
    min_severity: str = Form("high"),
    hide_blocked: str = Form(""),
    license_policy: str = Form("off"),
    specs: str = Form("", max_length=10_000),
    subdirs: str = Form("", max_length=1_000),
    action: str = Form("preview"),
) -> Response:
    """``action``: ``preview`` shows what the change would block and make unsolvable; ``save`` applies it."""
    services = services_of(request)
    settings = feeds.ScaSettings(vulnerability_policy, min_severity, hide_blocked == "1", license_policy)
    values = {
        "vulnerability_policy": vulnerability_policy,
        "min_severity": min_severity,
        "hide_blocked": hide_blocked == "1",
        "license_policy": license_policy,
        "specs": specs,
        "subdirs": subdirs,
    }
    if action == "preview":
        await wait_for_feed(services, feed)

    def run() -> Response:
        try:
            if action == "save":
                feeds.update_feed(services, name=feed, sca=settings)
                return RedirectResponse(f"/feeds/{quote(feed)}/sca?saved=1", status_code=303)
            preview = sca_impact.impact(
                services,
                feed=feed,
                change=sca_impact.ProposedChange(settings),
                specs=_lines(specs),
                subdirs=_lines(subdirs),
            )
        except CondagateError as exc:
            if exc.code == "feed_not_found":
                raise
            return _settings_page(request, feed, values=values, error=exc.message, status_code=exc.status_code)
        return _settings_page(request, feed, values=values, preview=preview)

    return await run_in_threadpool(run)
