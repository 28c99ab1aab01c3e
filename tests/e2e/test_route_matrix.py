"""Every route × principal × feed: the status the one authorization decision must give.

The rules are written out here, route by route (``RULES``), independently of the server's code: a
route added without a line here fails ``test_every_route_has_a_rule``, and a route whose declaration
differs from its line fails too. The matrix then sends each route one request as each principal
(anonymous, a reader key, a feed key for another feed, an uploader, a promoter, a feed manager, an
administrator) and checks: allowed → not 401/403 and not "feed not found"; denied → 401 for
anonymous callers, 404 (exactly like a missing feed) where the caller may not see the feed, 403
otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from condagate.settings import Settings
from condagate.web.app import create_app
from condagate.web.auth import Requires

from servers import Server, start_server

ALL = {"view", "add", "promote", "delete", "manage-feed", "admin"}

# (method, path) -> (permission, where): "feed" = on the feed in the path, "system" = system-wide,
# "any" = on at least one feed, "public" = everyone.
RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/health"): ("public", "public"),
    ("GET", "/api/docs"): ("public", "public"),
    ("GET", "/metrics"): ("admin", "system"),
    ("GET", "/api/me"): ("public", "public"),
    ("GET", "/login"): ("public", "public"),
    ("POST", "/login"): ("public", "public"),
    ("POST", "/logout"): ("public", "public"),
    ("GET", "/api/feeds"): ("view", "any"),
    ("POST", "/api/feeds"): ("manage-feed", "system"),
    ("GET", "/api/feeds/{feed}"): ("view", "feed"),
    ("DELETE", "/api/feeds/{feed}"): ("manage-feed", "feed"),
    ("GET", "/api/feeds/{feed}/packages"): ("view", "feed"),
    ("GET", "/api/feeds/{feed}/packages/{name}"): ("view", "feed"),
    ("GET", "/api/feeds/{feed}/downloads"): ("view", "feed"),
    ("DELETE", "/api/feeds/{feed}/packages/{name}"): ("delete", "feed"),
    ("DELETE", "/api/feeds/{feed}/packages/{name}/versions/{version}"): ("delete", "feed"),
    ("DELETE", "/api/feeds/{feed}/files/{subdir}/{filename}"): ("delete", "feed"),
    ("POST", "/feeds/{feed}/packages/{name}/delete"): ("delete", "feed"),
    ("POST", "/feeds/{feed}/packages/{name}/versions/{version}/delete"): ("delete", "feed"),
    ("POST", "/feeds/{feed}/files/{subdir}/{filename}/delete"): ("delete", "feed"),
    ("PATCH", "/api/feeds/{feed}"): ("manage-feed", "feed"),
    ("PATCH", "/api/connectors/{connector}"): ("admin", "system"),
    ("GET", "/feeds/{feed}/settings"): ("manage-feed", "feed"),
    ("POST", "/feeds/{feed}/settings"): ("manage-feed", "feed"),
    ("POST", "/connectors/{connector}/settings"): ("admin", "system"),
    ("POST", "/connectors/{connector}/delete"): ("admin", "system"),
    ("POST", "/api/feed-pairs"): ("manage-feed", "system"),
    ("GET", "/api/feeds/{feed}/promotion-targets"): ("view", "feed"),
    ("POST", "/api/feeds/{feed}/promotion-targets"): ("manage-feed", "feed"),
    ("DELETE", "/api/feeds/{feed}/promotion-targets/{target}"): ("manage-feed", "feed"),
    ("POST", "/api/feeds/{feed}/promotions"): ("promote", "feed"),
    ("POST", "/api/feeds/{feed}/promotions/environment"): ("promote", "feed"),
    ("GET", "/api/feeds/{feed}/promotions"): ("view", "feed"),
    ("POST", "/api/feeds/{feed}/revocations"): ("delete", "feed"),
    ("GET", "/feeds/{feed}/promote"): ("promote", "feed"),
    ("POST", "/feeds/{feed}/promote"): ("promote", "feed"),
    ("POST", "/feeds/{feed}/packages/{name}/versions/{version}/revoke"): ("delete", "feed"),
    ("POST", "/feeds/{feed}/promotion-targets"): ("manage-feed", "feed"),
    ("POST", "/feeds/{feed}/promotion-targets/{target}/remove"): ("manage-feed", "feed"),
    ("GET", "/feeds/{feed}/promotions"): ("view", "feed"),
    ("GET", "/api/licenses/rules"): ("admin", "system"),
    ("PUT", "/api/licenses/rules"): ("admin", "system"),
    ("DELETE", "/api/licenses/rules"): ("admin", "system"),
    ("GET", "/api/feeds/{feed}/licenses/rules"): ("view", "feed"),
    ("PUT", "/api/feeds/{feed}/licenses/rules"): ("manage-feed", "feed"),
    ("DELETE", "/api/feeds/{feed}/licenses/rules"): ("manage-feed", "feed"),
    ("GET", "/api/feeds/{feed}/compliance"): ("view", "feed"),
    ("POST", "/api/feeds/{feed}/sca-impact"): ("manage-feed", "feed"),
    ("GET", "/feeds/{feed}/vulnerabilities"): ("view", "feed"),
    ("GET", "/feeds/{feed}/compliance"): ("view", "feed"),
    ("GET", "/advisories"): ("view", "any"),
    ("GET", "/advisories/{advisory_id}"): ("view", "any"),
    ("POST", "/advisories/{advisory_id}/assess"): ("admin", "system"),
    ("GET", "/feeds/{feed}/sca"): ("manage-feed", "feed"),
    ("POST", "/feeds/{feed}/sca"): ("manage-feed", "feed"),
    ("POST", "/api/advisories/import"): ("admin", "system"),
    ("GET", "/api/advisories"): ("view", "any"),
    ("GET", "/api/advisories/{advisory_id}"): ("view", "any"),
    ("POST", "/api/advisories/{advisory_id}/assessments"): ("admin", "system"),
    ("GET", "/api/advisories/{advisory_id}/assessments"): ("admin", "system"),
    ("GET", "/api/assessments"): ("admin", "system"),
    ("GET", "/api/package-names"): ("admin", "system"),
    ("GET", "/api/package-names/{conda_name}"): ("view", "any"),
    ("PUT", "/api/package-names/{conda_name}"): ("admin", "system"),
    ("DELETE", "/api/package-names/{conda_name}"): ("admin", "system"),
    ("GET", "/api/feeds/{feed}/vulnerabilities"): ("view", "feed"),
    ("GET", "/api/connectors"): ("view", "any"),
    ("POST", "/api/connectors"): ("admin", "system"),
    ("GET", "/api/connectors/{connector}"): ("view", "any"),
    ("DELETE", "/api/connectors/{connector}"): ("admin", "system"),
    ("POST", "/api/connectors/{connector}/refresh"): ("admin", "system"),
    ("GET", "/api/users"): ("admin", "system"),
    ("POST", "/api/users"): ("admin", "system"),
    ("DELETE", "/api/users/{user}"): ("admin", "system"),
    ("PUT", "/api/users/{user}/password"): ("admin", "system"),
    ("GET", "/api/groups"): ("admin", "system"),
    ("POST", "/api/groups"): ("admin", "system"),
    ("DELETE", "/api/groups/{group}"): ("admin", "system"),
    ("PUT", "/api/groups/{group}/members/{user}"): ("admin", "system"),
    ("DELETE", "/api/groups/{group}/members/{user}"): ("admin", "system"),
    ("GET", "/api/grants"): ("admin", "system"),
    ("POST", "/api/grants"): ("admin", "system"),
    ("DELETE", "/api/grants"): ("admin", "system"),
    ("DELETE", "/api/grants/{grant_id}"): ("admin", "system"),
    # Keys: reachable by anyone signed in; the service then limits non-administrators to their own.
    ("GET", "/api/apikeys"): ("view", "any"),
    ("POST", "/api/apikeys"): ("view", "any"),
    ("DELETE", "/api/apikeys/{key_id}"): ("view", "any"),
    ("GET", "/api/apikeys/{key_id}/access-log"): ("view", "any"),
    ("GET", "/api/access-log"): ("admin", "system"),
    ("POST", "/api/feeds/{feed}/upload/{filename}"): ("add", "feed"),
    ("POST", "/api/channels/{feed}/upload/{filename}"): ("add", "feed"),
    ("POST", "/api/v1/upload/{feed}"): ("add", "feed"),
    ("GET", "/conda/{feed}/"): ("view", "feed"),
    ("GET", "/conda/{feed}/channeldata.json"): ("view", "feed"),
    ("GET", "/conda/{feed}/notices.json"): ("view", "feed"),
    ("GET", "/conda/{feed}/{subdir}/repodata_shards.msgpack.zst"): ("view", "feed"),
    ("GET", "/conda/{feed}/{subdir}/shards/{shard_name}"): ("view", "feed"),
    ("GET", "/conda/{feed}/{subdir}/{filename}"): ("view", "feed"),
    ("PUT", "/conda/{feed}/{subdir}/{filename}"): ("add", "feed"),
    ("GET", "/"): ("view", "any"),
    ("GET", "/feeds/new"): ("manage-feed", "system"),
    ("POST", "/feeds/new"): ("manage-feed", "system"),
    ("GET", "/feeds/{feed}"): ("view", "feed"),
    ("GET", "/feeds/{feed}/packages/{name}"): ("view", "feed"),
    ("GET", "/connectors"): ("view", "any"),
    ("POST", "/connectors"): ("admin", "system"),
    ("GET", "/connectors/{connector}"): ("view", "any"),
    ("POST", "/connectors/{connector}/refresh"): ("admin", "system"),
    ("GET", "/security"): ("admin", "system"),
    ("POST", "/security/users"): ("admin", "system"),
    ("POST", "/security/users/{user}/password"): ("admin", "system"),
    ("POST", "/security/users/{user}/delete"): ("admin", "system"),
    ("POST", "/security/groups"): ("admin", "system"),
    ("POST", "/security/groups/{group}/delete"): ("admin", "system"),
    ("POST", "/security/groups/{group}/members"): ("admin", "system"),
    ("POST", "/security/groups/{group}/members/{user}/remove"): ("admin", "system"),
    ("POST", "/security/grants"): ("admin", "system"),
    ("POST", "/security/grants/{grant_id}/remove"): ("admin", "system"),
    ("GET", "/apikeys"): ("admin", "system"),
    ("GET", "/access-log"): ("admin", "system"),
    # Keys in the web UI: anyone signed in; the service then limits non-administrators to their own.
    ("GET", "/account"): ("view", "any"),
    ("POST", "/apikeys"): ("view", "any"),
    ("POST", "/apikeys/{key_id}/revoke"): ("view", "any"),
    ("GET", "/apikeys/{key_id}"): ("view", "any"),
}
# Routes where the service makes a second decision after the route's (keys: only your own).
SERVICE_DECIDES = {
    path for (_, path), (perm, where) in RULES.items() if path.startswith(("/api/apikeys", "/apikeys"))
}

PRINCIPALS = ["anonymous", "reader", "other_feed_key", "uploader", "promoter", "feed_manager", "admin"]
# What each principal holds on feed A (the feed in the path), on feed B, and system-wide.
ON_A = {
    "anonymous": set(),
    "reader": {"view"},
    "other_feed_key": set(),
    "uploader": {"view", "add"},
    "promoter": {"view", "promote"},
    "feed_manager": {"view", "add", "delete", "manage-feed"},
    "admin": ALL,
}
ON_B = {"other_feed_key": {"view"}, "admin": ALL}
SYSTEM = {"admin": ALL}


# Callers who may change nothing anywhere are refused any write before its body is read, whatever
# the feed (so a hidden feed still answers like a missing one), except for these.
READ_ONLY = {"anonymous", "reader", "other_feed_key"}
READ_ONLY_WRITES = {
    "/login", "/logout", "/api/apikeys", "/api/apikeys/{key_id}", "/apikeys", "/apikeys/{key_id}/revoke",
}


def expected(principal: str, permission: str, where: str, method: str = "GET", path: str = "") -> str:
    """'allow', '401', '403' or '404'."""
    if method not in ("GET", "HEAD") and principal in READ_ONLY and path not in READ_ONLY_WRITES:
        return "401" if principal == "anonymous" else "403"
    if where == "public":
        return "allow"
    if where == "feed":
        held = ON_A[principal]
    elif where == "any":
        held = ON_A[principal] | ON_B.get(principal, set()) | SYSTEM.get(principal, set())
    else:
        held = SYSTEM.get(principal, set())
    if permission in held:
        return "allow"
    if principal == "anonymous":
        return "401"
    if where == "feed" and "view" not in ON_A[principal]:
        return "404"
    return "403"


def _walk(routes: list) -> list:  # type: ignore[type-arg]
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)
        found.extend(_walk(list(included.routes)) if included is not None else [route])
    return found


def _declared(route: APIRoute) -> Requires:
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if isinstance(dependant.call, Requires):
            return dependant.call
        pending.extend(dependant.dependencies)
    raise AssertionError(f"{route.path} declares no permission")


def _routes(tmp_path: Path) -> list[tuple[str, str]]:
    app = create_app(Settings(data_dir=tmp_path))
    found = []
    for route in _walk(list(app.routes)):
        if isinstance(route, APIRoute):
            found.extend((method, route.path) for method in sorted(route.methods - {"HEAD"}))
    return found


def test_every_route_has_a_rule(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path))
    for route in _walk(list(app.routes)):
        if not isinstance(route, APIRoute):
            continue
        path = route.path.removeprefix("/t/{token}")
        declared = _declared(route)
        where = "public" if declared.permission.value == "public" else (
            "feed" if "{feed}" in path else declared.scope.value
        )
        for method in route.methods - {"HEAD"}:
            assert (method, path) in RULES, f"no rule for {method} {path}: add one to RULES"
            assert RULES[(method, path)] == (declared.permission.value, where), f"{method} {path}"


@dataclass
class World:
    feed: str
    other: str
    keys: dict[str, str]


def _key(admin: httpx.Client, **body: object) -> str:
    response = admin.post("/api/apikeys", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def build_world(server: Server) -> World:
    """Feeds A and B, and one key per principal (users hold personal keys)."""
    tag = uuid.uuid4().hex[:8]
    feed, other = f"matrix-a-{tag}", f"matrix-b-{tag}"
    with server.admin() as admin:
        for name in (feed, other):
            assert admin.post("/api/feeds", json={"name": name}).status_code == 201
        keys = {
            "admin": server.api_key,
            "reader": _key(admin, feeds=[feed], permissions=["view"]),
            "other_feed_key": _key(admin, feeds=[other], permissions=["view"]),
        }
        for principal, permission in (("uploader", "add"), ("promoter", "promote"), ("feed_manager", "manage-feed")):
            user = f"{principal.replace('_', '-')}-{tag}@example.com"
            assert admin.post("/api/users", json={"name": user, "password": "pw-" + tag * 2}).status_code == 201
            grant = {"principal": f"user:{user}", "permission": permission, "feed": feed}
            assert admin.post("/api/grants", json=grant).status_code == 201
            keys[principal] = _key(admin, user=user)
    return World(feed, other, keys)


@pytest.fixture(scope="module")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose anonymous callers have no grant at all (the mission's step 3)."""
    server = start_server(tmp_path_factory.mktemp("matrix") / "data")
    with server.admin() as admin:
        assert admin.delete("/api/grants", params={"principal": "anonymous", "permission": "view"}).status_code == 204
    yield server
    server.stop()


_FILLERS = {
    "subdir": "noarch",
    "filename": "matrix-1.0-0.conda",
    "name": "matrix",
    "version": "1.0",
    "target": "no-such-target",
    "shard_name": "00" * 32 + ".msgpack.zst",
    "connector": "no-such-connector",
    "user": "no-such-user",
    "group": "no-such-group",
    "key_id": "999999",
    "grant_id": "999999",
}


def _request(server: Server, world: World, principal: str, method: str, path: str, token_form: bool) -> httpx.Response:
    url = path.replace("{feed}", world.feed)
    for name, value in _FILLERS.items():
        url = url.replace("{" + name + "}", value)
    headers = {}
    if token_form:
        url = f"/t/{world.keys[principal]}" + url
    elif principal != "anonymous":
        headers["X-API-Key"] = world.keys[principal]
    kwargs: dict[str, object] = {}
    if method in ("POST", "PUT"):
        kwargs["json"] = {}
    with server.client() as client:
        return client.request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]


def _check(response: httpx.Response, outcome: str, label: str, path: str) -> None:
    code = ""
    if response.headers.get("content-type", "").startswith(("application/json", "application/problem+json")):
        body = response.json()
        code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
    if outcome == "allow":
        assert code != "feed_not_found", label
        allowed = {401} if path in SERVICE_DECIDES else {401, 403}
        assert response.status_code not in allowed, f"{label}: {response.status_code} {response.text[:200]}"
    else:
        assert response.status_code == int(outcome), f"{label}: {response.status_code} {response.text[:200]}"
        if outcome == "404":
            assert code == "feed_not_found", label
        if outcome == "401":
            assert response.headers["www-authenticate"].startswith("Basic"), label


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_route_matrix(closed_server: Server, principal: str, tmp_path: Path):
    world = build_world(closed_server)
    checked = 0
    for method, path in _routes(tmp_path):
        token_form = path.startswith("/t/{token}")
        if token_form and principal == "anonymous":
            continue  # a /t/TOKEN/ URL always carries credentials
        base = path.removeprefix("/t/{token}")
        if (method, base) == ("DELETE", "/api/feeds/{feed}"):
            continue  # destructive: checked in test_feed_deletion_matrix on a world of its own
        permission, where = RULES[(method, base)]
        outcome = expected(principal, permission, where, method, base)
        response = _request(closed_server, world, principal, method, base, token_form)
        _check(response, outcome, f"{principal} {method} {path} → expected {outcome}", base)
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_feed_deletion_matrix(closed_server: Server, principal: str):
    world = build_world(closed_server)
    outcome = expected(principal, "manage-feed", "feed", "DELETE", "/api/feeds/{feed}")
    response = _request(closed_server, world, principal, "DELETE", "/api/feeds/{feed}", token_form=False)
    _check(response, outcome, f"{principal} DELETE feed → expected {outcome}", "/api/feeds/{feed}")
    with closed_server.admin() as admin:
        exists = admin.get(f"/api/feeds/{world.feed}").status_code == 200
    assert exists == (outcome != "allow")


def test_hidden_feed_answers_exactly_like_a_missing_one(closed_server: Server):
    world = build_world(closed_server)
    with closed_server.client(headers={"X-API-Key": world.keys["other_feed_key"]}) as client:
        hidden = client.get(f"/conda/{world.feed}/noarch/repodata.json")
        missing = client.get("/conda/no-such-feed-x/noarch/repodata.json")
        listed = [feed["name"] for feed in client.get("/api/feeds").json()]
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["message"].replace(world.feed, "X") == missing.json()["error"]["message"].replace(
        "no-such-feed-x", "X"
    )
    assert listed == [world.other]
    with closed_server.client() as anonymous:
        hidden = anonymous.get(f"/conda/{world.feed}/noarch/repodata.json")
        missing = anonymous.get("/conda/no-such-feed-x/noarch/repodata.json")
    assert hidden.status_code == missing.status_code == 401
    assert hidden.content == missing.content
