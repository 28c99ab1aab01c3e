"""Every route declares the permission it needs; PUBLIC is an explicit declaration too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from condagate.settings import Settings
from condagate.web.app import create_app
from condagate.web.auth import Requires

# Routes FastAPI itself adds for the API documentation: public by design.
FRAMEWORK_ROUTES = {"/api/openapi.json"}
STATIC_MOUNTS = {"/static", "/api/docs-assets"}


def _walk(routes: list[Any]) -> list[Any]:
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps included routers nested
        if included is not None:
            found.extend(_walk(list(included.routes)))
        else:
            found.append(route)
    return found


def _declarations(route: APIRoute) -> list[Requires]:
    pending = [route.dependant]
    declared = []
    while pending:
        dependant = pending.pop()
        if isinstance(dependant.call, Requires):
            declared.append(dependant.call)
        pending.extend(dependant.dependencies)
    return declared


def test_every_route_declares_a_permission(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path))
    routes = _walk(list(app.routes))
    api_routes = [route for route in routes if isinstance(route, APIRoute)]
    assert len(api_routes) > 15
    undeclared = [
        f"{sorted(route.methods)} {route.path}" for route in api_routes if not _declarations(route)
    ]
    assert undeclared == []
    others = [route for route in routes if not isinstance(route, APIRoute)]
    for route in others:
        if isinstance(route, Mount):
            assert route.path in STATIC_MOUNTS
        else:
            assert isinstance(route, Route) and route.path in FRAMEWORK_ROUTES, route.path
