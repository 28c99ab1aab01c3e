"""REST API: what an SCA change would make unsolvable in a feed (the blast radius), before it is made."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from condagate.security.permissions import Permission
from condagate.services import sca_impact
from condagate.services.context import Services
from condagate.services.feeds import ScaSettings
from condagate.web.auth import requires
from condagate.web.upstream_wait import wait_for_feed

router = APIRouter(prefix="/api", tags=["feeds"])


class ProposedAssessment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    advisory: str = Field(max_length=100, description="The advisory id, e.g. GHSA-... or PYSEC-...")
    verdict: str | None = Field(description="ignore, caution or block; null: as if it had no assessment")


class ImpactRequest(BaseModel):
    """A proposed change (fields left out keep the feed's current values) and what to solve for."""

    model_config = ConfigDict(extra="forbid")

    vulnerability_policy: str | None = Field(default=None, description="off, warn or block")
    min_severity: str | None = Field(default=None, description="none, low, medium, high or critical")
    hide_blocked: bool | None = None
    license_policy: str | None = Field(default=None, description="off, warn or block")
    assessments: list[ProposedAssessment] = Field(default=[], max_length=100)
    specs: list[str] = Field(
        default=[],
        max_length=sca_impact.MAX_SPECS,
        description="Match specs to solve for (default: the packages whose files change)",
    )
    subdirs: list[str] = Field(default=[], max_length=20, description="Subdirs to solve for, with noarch")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post(
    "/feeds/{feed}/sca-impact",
    dependencies=[Depends(requires(Permission.MANAGE_FEED))],
    summary="What an SCA policy change or an assessment would block and make unsolvable (nothing is changed)",
)
async def sca_impact_preview(request: Request, feed: str, body: ImpactRequest) -> dict[str, Any]:
    services = _services(request)
    change = sca_impact.ProposedChange(
        ScaSettings(body.vulnerability_policy, body.min_severity, body.hide_blocked, body.license_policy),
        {item.advisory: item.verdict for item in body.assessments},
    )
    await wait_for_feed(services, feed)
    found = await run_in_threadpool(
        lambda: sca_impact.impact(services, feed=feed, change=change, specs=body.specs, subdirs=body.subdirs)
    )
    return found.as_dict()
