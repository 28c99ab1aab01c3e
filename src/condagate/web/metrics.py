"""The Prometheus ``/metrics`` endpoint: for administrators, or for scrapers at allowed addresses.

The allow list (``CONDAGATE_METRICS_ALLOW``) adds to the route's one authorization decision: the
guard has settled who is asking and from which address (behind a trusted reverse proxy, the client's
own, as the access log records it); an address on the list may read without credentials.
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from condagate import telemetry
from condagate.errors import BadRequest
from condagate.security.permissions import Permission, Principal, Scope
from condagate.web.auth import Requires, current_principal

router = APIRouter(include_in_schema=False)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_list(spec: str) -> tuple[Network, ...]:
    """Comma-separated addresses and CIDR ranges; raise ``BadRequest`` naming an entry that is neither."""
    networks = []
    for part in spec.split(","):
        entry = part.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise BadRequest(f"CONDAGATE_METRICS_ALLOW: {entry!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def allowed(networks: tuple[Network, ...], address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 client of a server listening on "::"
    return any(ip in network for network in networks)


class AdminOrAllowedAddress(Requires):
    """``admin`` system-wide, unless the client's address is on ``CONDAGATE_METRICS_ALLOW``."""

    def __init__(self) -> None:
        super().__init__(Permission.ADMIN, Scope.SYSTEM)
        self._parsed: tuple[str, tuple[Network, ...]] = ("", ())

    async def __call__(self, request: Request) -> Principal:
        spec = request.app.state.services.settings.metrics_allow
        if spec:
            if self._parsed[0] != spec:
                self._parsed = (spec, parse_allow_list(spec))
            if allowed(self._parsed[1], getattr(request.state, "client", "")):
                return current_principal(request)
        return await super().__call__(request)

    def __repr__(self) -> str:
        return f"AdminOrAllowedAddress({self.permission.value}, {self.scope.value})"


@router.get("/metrics", dependencies=[Depends(AdminOrAllowedAddress())])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (OpenMetrics when the scraper asks for it)."""
    body, content_type = await run_in_threadpool(telemetry.exposition, request.headers.get("accept", ""))
    return Response(body, media_type=content_type, headers={"cache-control": "no-store"})
