"""REST API: license rules (system-wide and per feed) and a feed's license compliance report.

System-wide rules are an administrator's; a feed's rules are its managers' (they override the system's
for that feed), and whoever sees the feed sees its rules and the system rules it inherits.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from condagate.security.permissions import Permission
from condagate.services import licenses
from condagate.services.context import Services
from condagate.web.auth import current_principal, requires

router = APIRouter(prefix="/api", tags=["licenses"])
_SAFE = re.compile(r"[^A-Za-z0-9._-]")  # what a file name in a header may hold

_SUBJECTS_HELP = 'SPDX license ids (e.g. "GPL-3.0-only", "LicenseRef-..."), or "unknown" for unrecognised licenses'
_VERDICT_HELP = "allow or block for license ids; allow, warn or block for unknown"


class RuleChange(BaseModel):
    subjects: list[str] = Field(min_length=1, max_length=licenses.MAX_SUBJECTS, description=_SUBJECTS_HELP)
    verdict: str = Field(max_length=16, description=_VERDICT_HELP)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _rule_json(rule: licenses.LicenseRuleInfo) -> dict[str, Any]:
    shown = {**asdict(rule), "at": rule.at.isoformat(), "scope": "feed" if rule.feed is not None else "system"}
    if not shown["given"]:
        del shown["given"]
    return shown


def _rules_json(found: licenses.LicenseRuleList) -> dict[str, Any]:
    return {
        "feed": found.feed,
        "rules": [_rule_json(r) for r in found.rules],
        "inherited": [_rule_json(r) for r in found.inherited],
        "unknown": found.unknown,
        "license_policy": found.license_policy,
    }


async def _set(request: Request, feed: str | None, body: RuleChange) -> dict[str, Any]:
    actor = current_principal(request).name
    rules = await run_in_threadpool(
        lambda: licenses.set_rule(
            _services(request), feed=feed, subjects=body.subjects, verdict=body.verdict, actor=actor
        )
    )
    return {"feed": feed, "rules": [_rule_json(r) for r in rules]}


async def _remove(request: Request, feed: str | None, subjects: list[str]) -> dict[str, Any]:
    removed = await run_in_threadpool(lambda: licenses.remove_rule(_services(request), feed=feed, subjects=subjects))
    return {"feed": feed, "removed": removed}


_SUBJECT_QUERY = Query(min_length=1, max_length=licenses.MAX_SUBJECTS, description="Rules to remove: " + _SUBJECTS_HELP)


@router.get(
    "/licenses/rules",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="System-wide license rules (every feed's, unless the feed has its own for the id)",
)
async def list_system_rules(request: Request) -> dict[str, Any]:
    return _rules_json(await run_in_threadpool(lambda: licenses.list_rules(_services(request), feed=None)))


@router.put(
    "/licenses/rules",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="Allow or block license ids system-wide, or set the action on unknown licenses",
)
async def set_system_rules(request: Request, body: RuleChange) -> dict[str, Any]:
    return await _set(request, None, body)


@router.delete(
    "/licenses/rules",
    dependencies=[Depends(requires(Permission.ADMIN))],
    summary="Remove system-wide license rules (all or none)",
)
async def remove_system_rules(request: Request, subject: list[str] = _SUBJECT_QUERY) -> dict[str, Any]:
    return await _remove(request, None, subject)


@router.get(
    "/feeds/{feed}/licenses/rules",
    dependencies=[Depends(requires(Permission.VIEW))],
    summary="A feed's license rules, the system-wide ones it inherits, and its license policy",
)
async def list_feed_rules(request: Request, feed: str) -> dict[str, Any]:
    return _rules_json(await run_in_threadpool(lambda: licenses.list_rules(_services(request), feed=feed)))


@router.put(
    "/feeds/{feed}/licenses/rules",
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="Allow or block license ids on this feed (overriding the system's), or set its unknown action",
)
async def set_feed_rules(request: Request, feed: str, body: RuleChange) -> dict[str, Any]:
    return await _set(request, feed, body)


@router.delete(
    "/feeds/{feed}/licenses/rules",
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="Remove this feed's license rules (all or none); the system-wide ones apply again",
)
async def remove_feed_rules(request: Request, feed: str, subject: list[str] = _SUBJECT_QUERY) -> dict[str, Any]:
    return await _remove(request, feed, subject)


def _package_json(package: licenses.CompliancePackage) -> dict[str, Any]:
    return asdict(package)


def _group_json(group: licenses.LicenseGroup) -> dict[str, Any]:
    return {
        "license": group.license,
        "spdx": group.spdx,
        "recognised": group.recognised,
        "action": group.action,
        "reason": group.reason,
        "count": len(group.packages),
        "packages": [
            {"name": p.name, "version": p.version, "subdir": p.subdir, "filename": p.filename, "declared": p.declared}
            for p in group.packages
        ],
    }


@router.get(
    "/feeds/{feed}/compliance",
    dependencies=[Depends(requires(Permission.VIEW))],
    summary="License compliance: the feed's packages by license, the non-compliant ones, unknown licenses; "
    "?format=csv exports one row per package file",
)
async def feed_compliance(
    request: Request,
    feed: str,
    subdir: list[str] | None = Query(default=None, max_length=40, description="Only these subdirs"),
    format: Literal["json", "csv"] = Query(default="json"),  # noqa: A002 - the query parameter's name
) -> Any:
    report = await run_in_threadpool(lambda: licenses.compliance(_services(request), feed=feed, subdirs=subdir))
    if format == "csv":
        return Response(
            licenses.compliance_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="licenses-{_SAFE.sub("_", feed)}.csv"'},
        )
    return {
        "feed": report.feed,
        "license_policy": report.license_policy,
        "generated_at": report.generated_at.isoformat(),
        "subdirs": report.subdirs,
        "total": report.total,
        "by_license": [_group_json(g) for g in report.by_license],
        "non_compliant": [_package_json(p) for p in report.non_compliant],
        "unknown": [_group_json(g) for g in report.unknown],
        "warnings": report.warnings,
    }
