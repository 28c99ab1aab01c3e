"""The approval flow: promoting package files from a source feed into its target feed, over HTTP.

Promotion adds rows that point at the existing blob (never a copy), all files of a request or none,
with a history entry per file; files a proxy source lists only from its upstream are fetched and
verified first. The mission's walk-through (step 4) runs on a server of its own: it changes what
anonymous callers may see.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from condagate.errors import PolicyRefused
from condagate.services import promotion, promotion_plan
from condagate.services.context import Services
from condagate.services.policy import Finding, PolicyDecision
from condagate.services.publish import Candidate
from condagate.settings import Settings

from conftest import upload
from package_factory import PackageSpec
from rattler_client import solve_and_install
from servers import Server, condagate_command, postgres_database, start_server
from upstream_channel import UpstreamChannel

_BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _code(response: httpx.Response) -> str:
    body = response.json()
    return str(body.get("code") or body["error"]["code"])


@pytest.fixture
def pair(server: Server) -> tuple[str, str]:
    """A hosted source feed and its target."""
    source, target = _name("unapproved"), _name("approved")
    with server.admin() as client:
        response = client.post("/api/feed-pairs", json={"source": source, "target": target})
        assert response.status_code == 201, response.text
        assert response.json()["source"]["name"] == source and response.json()["target"]["kind"] == "hosted"
    return source, target


def proxy_pair(server: Server, upstream_url: str) -> tuple[str, str]:
    connector, source, target = _name("up"), _name("unapproved"), _name("approved")
    with server.admin() as client:
        assert client.post("/api/connectors", json={"name": connector, "url": upstream_url}).status_code == 201
        response = client.post("/api/feed-pairs", json={"source": source, "target": target, "connectors": [connector]})
        assert response.status_code == 201, response.text
        assert response.json()["source"]["kind"] == "proxy"
    return source, target


def promote(client: httpx.Client, source: str, target: str, **body: Any) -> httpx.Response:
    return client.post(f"/api/feeds/{source}/promotions", json={"target": target, **body})


def records(server: Server, feed: str, subdir: str = "noarch") -> dict[str, dict[str, Any]]:
    with server.admin() as client:
        response = client.get(f"/conda/{feed}/{subdir}/repodata.json")
    assert response.status_code == 200, response.text
    document = response.json()
    return {**document["packages"], **document["packages.conda"]}


def blob_names(server: Server) -> set[str]:
    return {path.name for path in (server.data_dir / "blobs").rglob("*") if _BLOB_NAME.match(path.name)}


def history(server: Server, feed: str, **params: Any) -> list[dict[str, Any]]:
    with server.admin() as client:
        response = client.get(f"/api/feeds/{feed}/promotions", params=params)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def user_key(server: Server, grants: list[tuple[str, str]]) -> str:
    """A user holding ``grants`` ((permission, feed) pairs) and a personal key."""
    user = _name("user") + "@example.com"
    with server.admin() as admin:
        assert admin.post("/api/users", json={"name": user}).status_code == 201
        for permission, feed in grants:
            grant = {"principal": f"user:{user}", "permission": permission, "feed": feed}
            assert admin.post("/api/grants", json=grant).status_code == 201
        response = admin.post("/api/apikeys", json={"user": user})
        assert response.status_code == 201, response.text
    return str(response.json()["key"])


def test_one_file_is_promoted_as_a_row_pointing_at_the_same_blob(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    path = make_package(summary="approved soon")
    assert upload(server, source, path).status_code == 201
    blobs_before = blob_names(server)
    with server.admin() as client:
        response = promote(client, source, target, files=[{"subdir": "noarch", "filename": path.name}], comment="ok")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [f["filename"] for f in answer["added"]] == [path.name] and answer["already"] == []
    assert answer["dry_run"] is False and answer["comment"] == "ok" and answer["actor"] == "admin (key 1)"
    promoted = records(server, target)[path.name]  # the target's repodata lists it at once
    assert promoted == records(server, source)[path.name]  # the same record: same sha256, md5, size
    assert blob_names(server) == blobs_before  # no second copy of the bytes
    with server.client() as client:
        downloaded = client.get(f"/conda/{target}/noarch/{path.name}")
    assert downloaded.status_code == 200 and downloaded.content == path.read_bytes()
    with server.admin() as client:
        detail = client.get(f"/api/feeds/{target}/packages/{promoted['name']}").json()
    assert detail["about"]["summary"] == "approved soon"  # about.json came along

    with server.admin() as client:
        again = promote(client, source, target, files=[{"subdir": "noarch", "filename": path.name}])
    assert again.status_code == 200 and again.json()["added"] == []
    assert [f["filename"] for f in again.json()["already"]] == [path.name]
    assert len(history(server, target)) == 1  # "already there" is not a promotion


def test_a_version_is_promoted_across_subdirs_or_in_chosen_ones(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    name = _name("multi")
    for subdir in ("linux-64", "osx-arm64"):
        assert upload(server, source, make_package(name, version="1.0", subdir=subdir)).status_code == 201
    assert upload(server, source, make_package(name, version="2.0", subdir="linux-64")).status_code == 201
    with server.admin() as client:
        only_osx = promote(client, source, target, versions=[{"name": name, "version": "1.0"}], subdirs=["osx-arm64"])
        assert only_osx.status_code == 200, only_osx.text
        assert [(f["subdir"], f["version"]) for f in only_osx.json()["added"]] == [("osx-arm64", "1.0")]
        everywhere = promote(client, source, target, versions=[{"name": name, "version": "1.0"}])
        assert everywhere.status_code == 200, everywhere.text
        assert [f["subdir"] for f in everywhere.json()["added"]] == ["linux-64"]
        assert [f["subdir"] for f in everywhere.json()["already"]] == ["osx-arm64"]
        newest = promote(client, source, target, specs=[name])  # a name alone: its newest version
        assert [(f["subdir"], f["version"]) for f in newest.json()["added"]] == [("linux-64", "2.0")]
    assert {r["version"] for r in records(server, target, "linux-64").values()} == {"1.0", "2.0"}
    assert [r["version"] for r in records(server, target, "osx-arm64").values()] == ["1.0"]


def test_a_request_with_one_missing_file_promotes_nothing(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    present = make_package()
    assert upload(server, source, present).status_code == 201
    files = [{"subdir": "noarch", "filename": present.name}, {"subdir": "noarch", "filename": "ghost-1.0-0.conda"}]
    with server.admin() as client:
        response = promote(client, source, target, files=files)
    assert response.status_code == 404 and _code(response) == "not_in_source"
    assert "noarch/ghost-1.0-0.conda" in response.json()["detail"]
    assert records(server, target) == {} and history(server, target) == []


def test_dry_run_reports_and_changes_nothing(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    first, second = make_package(), make_package()
    for path in (first, second):
        assert upload(server, source, path).status_code == 201
    with server.admin() as client:
        assert promote(client, source, target, files=[{"subdir": "noarch", "filename": first.name}]).status_code == 200
        files = [{"subdir": "noarch", "filename": name} for name in (first.name, second.name, "ghost-1.0-0.conda")]
        preview = promote(client, source, target, files=files, dry_run=True)
    assert preview.status_code == 200, preview.text
    answer = preview.json()
    assert answer["dry_run"] is True
    assert [f["filename"] for f in answer["added"]] == [second.name]
    assert [f["filename"] for f in answer["already"]] == [first.name]
    assert [m["what"] for m in answer["missing"]] == ["noarch/ghost-1.0-0.conda"]
    assert set(records(server, target)) == {first.name}
    assert len(history(server, target)) == 1


def test_promote_permission_on_the_source_and_targets_only(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    path = make_package()
    assert upload(server, source, path).status_code == 201
    files = [{"subdir": "noarch", "filename": path.name}]
    viewer = user_key(server, [("view", source)])
    with server.client(headers={"X-API-Key": viewer}) as client:
        refused = promote(client, source, target, files=files)
    assert refused.status_code == 403 and _code(refused) == "permission_denied"
    assert records(server, target) == {}

    other = _name("elsewhere")
    with server.admin() as client:
        assert client.post("/api/feeds", json={"name": other}).status_code == 201
        wrong = promote(client, source, other, files=files)
    assert wrong.status_code == 409 and _code(wrong) == "not_a_promotion_target"
    assert repr(target) in wrong.json()["detail"] and records(server, other) == {}

    promoter = user_key(server, [("promote", source)])
    with server.client(headers={"X-API-Key": promoter}) as client:
        allowed = promote(client, source, target, files=files, comment="reviewed")
    assert allowed.status_code == 200, allowed.text
    assert set(records(server, target)) == {path.name}
    [entry] = history(server, target)
    assert entry["actor"].startswith("user-") and entry["comment"] == "reviewed"


def test_concurrent_promotions_of_one_version_add_each_file_once(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    name = _name("race")
    for subdir in ("noarch", "linux-64", "win-64"):
        assert upload(server, source, make_package(name, version="3.1", subdir=subdir)).status_code == 201

    def attempt(_: int) -> httpx.Response:
        with server.admin() as client:
            return promote(client, source, target, versions=[{"name": name, "version": "3.1"}])

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(attempt, range(6)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses if r.status_code != 200]
    assert sum(len(r.json()["added"]) for r in responses) == 3  # each file added by exactly one request
    with server.admin() as client:
        detail = client.get(f"/api/feeds/{target}/packages/{name}").json()
    assert sorted(f["subdir"] for v in detail["versions"] for f in v["files"]) == ["linux-64", "noarch", "win-64"]
    assert sorted(e["subdir"] for e in history(server, target, package=name)) == ["linux-64", "noarch", "win-64"]


def test_history_csv_and_revocation(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    name = _name("audited")
    path = make_package(name, version="1.2")
    assert upload(server, source, path).status_code == 201
    comment = "=HYPERLINK(1) licenses checked, no advisories"
    with server.admin() as client:
        response = promote(client, source, target, specs=[f"{name}==1.2"], comment=comment)
        assert response.status_code == 200, response.text
    [entry] = history(server, source)  # the source's history shows it too
    assert entry["action"] == "promote" and entry["source"] == source and entry["target"] == target
    assert entry["actor"] == "admin (key 1)" and entry["comment"] == comment and entry["at"]
    assert entry["sha256"] == records(server, target)[path.name]["sha256"] and entry["assessment"] == {}

    with server.admin() as client:
        exported = client.get(f"/api/feeds/{target}/promotions", params={"format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert f'filename="promotions-{target}.csv"' in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["action"], r["filename"], r["source"], r["target"]) for r in rows] == [
        ("promote", path.name, source, target)
    ]
    assert rows[0]["comment"] == "'" + comment  # a spreadsheet must not run it as a formula

    promoter = user_key(server, [("promote", source), ("view", target)])
    with server.client(headers={"X-API-Key": promoter}) as client:
        refused = client.post(f"/api/feeds/{target}/revocations", json={"name": name, "version": "1.2"})
    assert refused.status_code == 403  # revoking needs delete on the target
    with server.admin() as client:
        never = client.post(f"/api/feeds/{target}/revocations", json={"name": name, "version": "9.9"})
        assert never.status_code == 404 and _code(never) == "not_promoted"
        revoked = client.post(
            f"/api/feeds/{target}/revocations", json={"name": name, "version": "1.2", "comment": "CVE found"}
        )
    assert revoked.status_code == 200, revoked.text
    assert [f["filename"] for f in revoked.json()["files"]] == [path.name]
    assert records(server, target) == {} and path.name in records(server, source)
    latest, first = history(server, target)
    assert (latest["action"], latest["source"], latest["comment"]) == ("revoke", source, "CVE found")
    assert first["action"] == "promote"
    assert [e["action"] for e in history(server, target, package=name, limit=1)] == ["revoke"]


def test_targets_are_linked_by_managers_of_both_feeds(server: Server, pair: tuple[str, str]):
    source, target = pair
    extra = _name("extra")
    with server.admin() as client:
        assert client.post("/api/feeds", json={"name": extra}).status_code == 201
    manager = user_key(server, [("manage-feed", source), ("view", extra)])
    with server.client(headers={"X-API-Key": manager}) as client:
        refused = client.post(f"/api/feeds/{source}/promotion-targets", json={"target": extra})
    assert refused.status_code == 403  # the target's managers must agree
    with server.admin() as client:
        linked = client.post(f"/api/feeds/{source}/promotion-targets", json={"target": extra})
        assert linked.status_code == 201 and linked.json()["added"] is True
        assert client.get(f"/api/feeds/{source}/promotion-targets").json()["targets"] == sorted([target, extra])
        assert client.get(f"/api/feeds/{extra}/promotion-targets").json()["sources"] == [source]
        assert client.delete(f"/api/feeds/{source}/promotion-targets/{extra}").status_code == 204
        gone = client.delete(f"/api/feeds/{source}/promotion-targets/{extra}")
        assert gone.status_code == 404 and _code(gone) == "promotion_link_not_found"
        assert client.get(f"/api/feeds/{source}/promotion-targets").json()["targets"] == [target]
        clash = client.post("/api/feed-pairs", json={"source": _name("fresh"), "target": target})
        assert clash.status_code == 409 and _code(clash) == "feed_exists"
        assert clash.json()["detail"]  # and the source it would have created is gone again:
        assert [f["name"] for f in client.get("/api/feeds").json() if f["name"].startswith("fresh-")] == []


def test_proxy_source_fetches_and_verifies_an_uncached_file_first(
    server: Server, upstream: UpstreamChannel, tmp_path: Path
):
    source, target = proxy_pair(server, upstream.url)
    assert upstream.count("/noarch/pure-1.0-0.tar.bz2") == 0
    with server.admin() as client:
        preview = promote(client, source, target, specs=["pure"], dry_run=True)
        assert preview.status_code == 200, preview.text
        assert [(f["filename"], f["cached"]) for f in preview.json()["to_fetch"]] == [("pure-1.0-0.tar.bz2", False)]
        assert upstream.count("/noarch/pure-1.0-0.tar.bz2") == 0  # a dry run fetches nothing
        response = promote(client, source, target, specs=["pure"], comment="from upstream")
    assert response.status_code == 200, response.text
    assert [f["filename"] for f in response.json()["fetched"]] == ["pure-1.0-0.tar.bz2"]
    assert upstream.count("/noarch/pure-1.0-0.tar.bz2") == 1
    upstream_sha256 = records(server, source)["pure-1.0-0.tar.bz2"]["sha256"]
    assert records(server, target)["pure-1.0-0.tar.bz2"]["sha256"] == upstream_sha256
    assert upstream_sha256 in blob_names(server)
    installed = solve_and_install(f"{server.url}/conda/{target}", ["pure"], tmp_path / "env")
    assert installed == ["pure=1.0=0"]


def test_upstream_bytes_that_do_not_match_their_record_are_not_promoted(server: Server, upstream: UpstreamChannel):
    source, target = proxy_pair(server, upstream.url)
    upstream.faults.wrong_bytes = True
    upstream.faults.paths = ("numpy-1.26.4",)
    with server.admin() as client:
        response = promote(
            client,
            source,
            target,
            versions=[{"name": "numpy", "version": "1.26.4"}, {"name": "pure", "version": "1.0"}],
        )
    assert response.status_code == 502 and _code(response) == "upstream_mismatch"
    assert records(server, target, "linux-64") == {} and records(server, target) == {}
    assert history(server, target) == []


def test_large_upstream_files_are_streamed_into_the_cache_and_verified(upstream: UpstreamChannel, tmp_path: Path):
    """Files above ``proxy_verify_before_send_bytes`` are streamed (here: all of them) and still
    verified before they are promoted."""
    streaming = start_server(tmp_path / "data", extra_env={"CONDAGATE_PROXY_VERIFY_BEFORE_SEND_BYTES": "0"})
    try:
        source, target = proxy_pair(streaming, upstream.url)
        with streaming.admin() as client:
            response = promote(client, source, target, versions=[{"name": "numpy", "version": "1.26.4"}])
            assert response.status_code == 200, response.text
            assert [f["filename"] for f in response.json()["fetched"]] == ["numpy-1.26.4-py311h0_0.conda"]
            upstream.faults.wrong_bytes = True
            upstream.faults.paths = ("numpy-2.0.0",)
            refused = promote(client, source, target, versions=[{"name": "numpy", "version": "2.0.0"}])
        assert refused.status_code == 502 and _code(refused) == "upstream_mismatch"
        assert set(records(streaming, target, "linux-64")) == {"numpy-1.26.4-py311h0_0.conda"}
    finally:
        streaming.stop()


class _Refuse:
    def check(self, *, feed: str, candidate: Candidate, action: str) -> PolicyDecision:
        return PolicyDecision(allowed=False, reason="CVE-2099-0001 (critical) is blocked in this feed")


class _Warn:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []

    def check(self, *, feed: str, candidate: Candidate, action: str) -> PolicyDecision:
        self.asked.append((feed, candidate.filename, action))
        return PolicyDecision(findings=(Finding("vulnerability", "CVE-2099-0002", "high"),))


def test_the_policy_step_decides_and_its_findings_are_kept(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    name = _name("assessed")
    for subdir in ("noarch", "linux-64"):
        assert upload(server, source, make_package(name, version="1.0", subdir=subdir)).status_code == 201
    services = Services.open(Settings.from_env(server.env))  # the service, in this process
    request = promotion_plan.PromotionRequest(versions=[(name, "1.0")])
    try:
        with pytest.raises(PolicyRefused, match="CVE-2099-0001") as refused:
            asyncio.run(
                promotion.promote(services, source=source, target=target, request=request, actor="t", policy=_Refuse())
            )
        assert refused.value.status_code == 409
        assert records(server, target) == {} and history(server, target) == []
        warn = _Warn()
        result = asyncio.run(
            promotion.promote(services, source=source, target=target, request=request, actor="t", policy=warn)
        )
    finally:
        services.close()
    assert len(result.promoted) == 2 and sorted(warn.asked) == [
        (target, f"{name}-1.0-0.conda", "promote"),
        (target, f"{name}-1.0-0.conda", "promote"),
    ]
    assessments = [e["assessment"] for e in history(server, target)]
    assert (
        assessments == [{"findings": [{"kind": "vulnerability", "message": "CVE-2099-0002", "severity": "high"}]}] * 2
    )


def test_environment_files_are_promoted_by_what_they_pin(server: Server, pair: tuple[str, str], make_package):
    source, target = pair
    name = _name("pinned")
    path = make_package(name, version="0.5")
    assert upload(server, source, path).status_code == 201
    explicit = f"@EXPLICIT\n{server.url}/conda/{source}/noarch/{path.name}\n".encode()
    with server.admin() as client:
        response = client.post(
            f"/api/feeds/{source}/promotions/environment",
            params={"target": target, "filename": "explicit.txt", "comment": "lock file"},
            content=explicit,
        )
    assert response.status_code == 200, response.text
    assert [f["filename"] for f in response.json()["added"]] == [path.name]


# -- the CLI --------------------------------------------------------------------------------------


def cli(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
    env.update({"CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": key or server.api_key, "COLUMNS": "200"})
    return subprocess.run(
        [*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_cli_create_pair_promote_and_history(server: Server, upstream: UpstreamChannel):
    connector, source, target = _name("up"), _name("unapproved"), _name("approved")
    with server.admin() as client:
        assert client.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 201
    created = cli(server, "feed", "create-pair", source, target, "--connector", connector)
    assert created.returncode == 0, created.stderr
    assert f"/conda/{target}" in created.stdout

    preview = cli(server, "promote", source, target, "requests==2.32.3", "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr
    assert [f["filename"] for f in json.loads(preview.stdout)["added"]] == ["requests-2.32.3-pyhd_0.conda"]
    assert records(server, target) == {}

    done = cli(server, "promote", source, target, "requests==2.32.3", "--comment", "needed by the web team")
    assert done.returncode == 0, done.stderr
    assert "requests-2.32.3-pyhd_0.conda" in done.stdout and "Promoted 1 file(s)" in done.stdout
    assert "requests-2.32.3-pyhd_0.conda" in records(server, target)

    exported = cli(server, "promotions", target, "--csv")
    assert exported.returncode == 0, exported.stderr
    [row] = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert (row["name"], row["comment"], row["source"]) == ("requests", "needed by the web team", source)
    shown = cli(server, "promotions", source, "--package", "requests")
    assert shown.returncode == 0 and "needed by the web team" in shown.stdout

    wrong = cli(server, "promote", source, source, "requests")
    assert wrong.returncode == 1 and "is not a promotion target" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


# -- the mission: step 4, the package approval flow -----------------------------------------------


@pytest.fixture
def mission_server(server: Server, tmp_path: Path) -> Iterator[Server]:
    """A server of its own (same backend): the walk-through takes anonymous access away."""
    database_url = (postgres_database() or "") if server.database_url else ""
    instance = start_server(tmp_path / "mission" / "data", database_url)
    yield instance
    instance.stop()


@pytest.fixture
def pyfoo_upstream(tmp_path: Path) -> Iterator[UpstreamChannel]:
    channel = UpstreamChannel(tmp_path / "pyfoo-upstream")
    channel.add(PackageSpec("pyfoo", "1.0", "0", depends=["pybar >=1"], license="BSD-3-Clause"))
    channel.add(PackageSpec("pybar", "1.1", "0", license="MIT"), ".tar.bz2")
    channel.add(PackageSpec("unrelated", "1.0", "0"))
    channel.index()
    channel.start()
    yield channel
    channel.stop()


def test_mission_approval_flow(mission_server: Server, pyfoo_upstream: UpstreamChannel, tmp_path: Path):
    server, unapproved, approved = mission_server, "unapproved-conda", "approved-conda"
    lead, group = "lead@example.com", "Lead Developers"
    with server.admin() as admin:
        assert admin.post("/api/connectors", json={"name": "public", "url": pyfoo_upstream.url}).status_code == 201
        pair_created = admin.post(
            "/api/feed-pairs", json={"source": unapproved, "target": approved, "connectors": ["public"]}
        )
        assert pair_created.status_code == 201, pair_created.text
        # Security: no anonymous access anywhere; Lead Developers view and promote unapproved packages;
        # everyone may install what was approved.
        removed = admin.delete("/api/grants", params={"principal": "anonymous", "permission": "view"})
        assert removed.status_code == 204
        assert admin.post("/api/groups", json={"name": group}).status_code == 201
        assert admin.post("/api/users", json={"name": lead, "password": "correct horse battery"}).status_code == 201
        assert admin.put(f"/api/groups/{quote(group)}/members/{quote(lead)}").status_code == 204
        for principal, permission, feed in (
            (f"group:{group}", "view", unapproved),
            (f"group:{group}", "promote", unapproved),
            ("anonymous", "view", approved),
        ):
            grant = {"principal": principal, "permission": permission, "feed": feed}
            assert admin.post("/api/grants", json=grant).status_code == 201
        grants = {(g["principal"], g["permission"], g["feed"]) for g in admin.get("/api/grants").json()}
        assert grants == {
            ("user:admin", "admin", None),  # the first administrator
            (f"group:{group}", "view", unapproved),
            (f"group:{group}", "promote", unapproved),
            ("anonymous", "view", approved),
        }
        key = admin.post("/api/apikeys", json={"user": lead, "description": "lead's key"}).json()["key"]

    approved_url, unapproved_url = f"{server.url}/conda/{approved}", f"{server.url}/conda/{unapproved}"
    developer = user_key(server, [("add", approved)])  # uploads to approved-conda, cannot see the other
    with server.client(headers={"X-API-Key": developer}) as client:
        hidden = promote(client, unapproved, approved, specs=["pyfoo"])
    assert hidden.status_code == 404 and _code(hidden) == "feed_not_found"  # exactly like a missing feed
    with pytest.raises(Exception, match="pyfoo"):  # noqa: B017 - rattler's own solver error
        solve_and_install(approved_url, ["pyfoo"], tmp_path / "before")

    promoted = cli(
        server,
        "promote",
        unapproved,
        approved,
        "pyfoo",
        "--with-deps",
        "--subdir",
        "linux-64",
        "--comment",
        "licenses BSD-3-Clause and MIT, no advisories",
        key=key,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert "pyfoo-1.0-0.conda" in promoted.stdout and "pybar-1.1-0.tar.bz2" in promoted.stdout

    installed = solve_and_install(approved_url, ["pyfoo"], tmp_path / "after")  # anonymous
    assert installed == ["pybar=1.1=0", "pyfoo=1.0=0"]
    with httpx.Client(timeout=30) as anonymous:
        assert anonymous.get(f"{unapproved_url}/noarch/repodata.json").status_code == 401
        assert anonymous.get(f"{approved_url}/noarch/repodata.json").status_code == 200
    assert "unrelated-1.0-0.conda" not in records(server, approved)
    entries = history(server, approved)
    assert sorted(e["name"] for e in entries) == ["pybar", "pyfoo"]
    assert {(e["source"], e["target"], e["comment"]) for e in entries} == {
        (unapproved, approved, "licenses BSD-3-Clause and MIT, no advisories")
    }
    assert all(e["actor"].startswith(lead) for e in entries) and len({e["request_id"] for e in entries}) == 1
