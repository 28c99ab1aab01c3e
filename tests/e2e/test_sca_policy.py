"""Vulnerability and license policies (SCA) enforced on every path that serves bytes, over HTTP.

Real OSV advisories (tests/data/osv) are imported; feeds get a policy; py-rattler solves against what
the feed serves. The tests share a server of their own: other tests import advisories for the same
packages (with assessments of their own), which would otherwise decide what these tests see.
PYSEC-2023-74 (requests >=2.3.0,<2.31.0) has no CVSS rating: its severity is unknown, which counts as
reaching any threshold; PYSEC-2023-192 (urllib3 <1.26.17, >=2.0.0,<2.0.6) is rated high.
"""

from __future__ import annotations

import bz2
import contextlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from conftest import backend_database_url, upload
from package_factory import PackageSpec
from rattler_client import query, solve_and_install
from servers import Server, condagate_command, start_server
from upstream_channel import UpstreamChannel

OSV = Path(__file__).parent.parent / "data" / "osv"
REQUESTS_ADVISORY = "PYSEC-2023-74"
URLLIB3_ADVISORY = "PYSEC-2023-192"
VULNERABLE = "requests-2.30.0-0.conda"
FIXED = "requests-2.31.0-0.conda"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _code(response: httpx.Response) -> str:
    return str(response.json()["code"])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sca_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    database_url = backend_database_url(request.param)
    instance = start_server(tmp_path_factory.mktemp(f"sca-{request.param}") / "data", database_url)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def advisories_imported(sca_server: Server) -> Server:
    """The requests and urllib3 advisories, imported once per server (an import of the same document
    again changes nothing)."""
    server = sca_server
    with server.admin() as admin:
        for path in (OSV / "requests" / f"{REQUESTS_ADVISORY}.json", OSV / "urllib3" / f"{URLLIB3_ADVISORY}.json"):
            response = admin.post(
                "/api/advisories/import",
                params={"source": path.name},
                content=path.read_bytes(),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 200, response.text
            assert not response.json().get("failures"), response.text
    return server


def set_policy(server: Server, feed: str, **fields: Any) -> dict[str, Any]:
    with server.admin() as admin:
        response = admin.patch(f"/api/feeds/{feed}", json=fields)
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


def assess(server: Server, feed: str, advisory: str, verdict: str, comment: str = "") -> None:
    with server.admin() as admin:
        response = admin.post(
            f"/api/advisories/{advisory}/assessments", json={"verdict": verdict, "feed": feed, "comment": comment}
        )
    assert response.status_code == 201, response.text


def repodata_files(server: Server, feed: str, subdir: str = "noarch", variant: str = "repodata.json") -> set[str]:
    with server.admin() as admin:
        response = admin.get(f"/conda/{feed}/{subdir}/{variant}")
    assert response.status_code == 200, response.text
    if variant.endswith(".zst"):
        document = json.loads(zstandard.ZstdDecompressor().decompress(response.content))
    elif variant.endswith(".bz2"):
        document = json.loads(bz2.decompress(response.content))
    else:
        document = response.json()
    return {*document["packages"], *document["packages.conda"]}


def until(check: Any, seconds: float = 5.0) -> float:
    """Poll ``check`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "did not happen in time"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def requests_feed(advisories_imported: Server, make_package) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A hosted feed with requests 2.30.0 (vulnerable) and 2.31.0 (fixed), and webapp 1.0 (any requests)
    and 2.0 (requests 2.30.*): a solver prefers webapp 2.0 and so the vulnerable requests."""
    server = advisories_imported
    feed = _name("sca")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
    for spec in (
        dict(name="requests", version="2.30.0", license="Apache-2.0"),
        dict(name="requests", version="2.31.0", license="Apache-2.0"),
        dict(name="webapp", version="1.0", depends=["requests"]),
        dict(name="webapp", version="2.0", depends=["requests 2.30.*"]),
    ):
        assert upload(server, feed, make_package(**spec)).status_code == 201
    yield feed


# --- blocking -----------------------------------------------------------------------------------


def test_a_blocking_advisory_hides_the_vulnerable_version_so_the_solver_picks_the_fixed_one(
    advisories_imported: Server, requests_feed: str, tmp_path: Path, make_package
) -> None:
    server, feed = advisories_imported, requests_feed
    channel = f"{server.url}/t/{server.api_key}/conda/{feed}"
    before = solve_and_install(channel, ["webapp"], tmp_path / "before", platform="linux-64")
    assert "requests=2.30.0=0" in before and "webapp=2.0=0" in before

    shown = set_policy(server, feed, vulnerability_policy="block")
    assert shown["vulnerability_policy"] == "block" and shown["min_severity"] == "high" and shown["hide_blocked"]
    for variant in ("repodata.json", "repodata.json.zst", "repodata.json.bz2", "current_repodata.json"):
        files = repodata_files(server, feed, variant=variant)
        assert VULNERABLE not in files and FIXED in files, variant
    after = solve_and_install(channel, ["webapp"], tmp_path / "after", platform="linux-64")
    assert "requests=2.31.0=0" in after and "webapp=1.0=0" in after
    sharded = query(channel, ["requests"], sharded=True)
    assert sharded == ["requests=2.31.0=0"]
    with server.admin() as admin:
        channeldata = admin.get(f"/conda/{feed}/channeldata.json").json()
    assert channeldata["packages"]["requests"]["version"] == "2.31.0"

    # The vulnerable file itself: 403 naming the advisory and how to get it assessed, for GET, HEAD and mirroring.
    with server.admin() as admin:
        refused = admin.get(f"/conda/{feed}/noarch/{VULNERABLE}")
        head = admin.head(f"/conda/{feed}/noarch/{VULNERABLE}")
        mirrored = admin.get(f"/conda/{feed}/noarch/{VULNERABLE}", params={"mirror": "1"})
        fixed = admin.get(f"/conda/{feed}/noarch/{FIXED}")
    assert refused.status_code == 403 and _code(refused) == "package_blocked", refused.text
    detail = refused.json()["detail"]
    assert REQUESTS_ADVISORY in detail and "CVE-2023-32681" in detail and "2.31.0" in detail
    assert f"condagate advisories assess {REQUESTS_ADVISORY} ignore --feed {feed}" in detail
    assert head.status_code == 403 and mirrored.status_code == 403 and _code(mirrored) == "package_blocked"
    assert fixed.status_code == 200 and "x-condagate-warning" not in fixed.headers

    # Later uploads: a safe one is listed at once; a vulnerable one may not enter the feed (409).
    assert upload(server, feed, make_package("requests", version="2.32.0")).status_code == 201
    assert "requests-2.32.0-0.conda" in repodata_files(server, feed)
    refused_upload = upload(server, feed, make_package("requests", version="2.29.0"))
    assert refused_upload.status_code == 409 and _code(refused_upload) == "policy_refused"
    assert REQUESTS_ADVISORY in refused_upload.json()["detail"]

    # Shown, not hidden: the record is listed again, its download still refused.
    set_policy(server, feed, hide_blocked=False)
    assert VULNERABLE in repodata_files(server, feed)
    with server.admin() as admin:
        assert admin.get(f"/conda/{feed}/noarch/{VULNERABLE}").status_code == 403
    set_policy(server, feed, vulnerability_policy="off", hide_blocked=True)
    assert VULNERABLE in repodata_files(server, feed)
    with server.admin() as admin:
        assert admin.get(f"/conda/{feed}/noarch/{VULNERABLE}").status_code == 200


def test_warn_serves_the_file_with_a_warning_header(advisories_imported: Server, requests_feed: str) -> None:
    server, feed = advisories_imported, requests_feed
    set_policy(server, feed, vulnerability_policy="warn")
    assert VULNERABLE in repodata_files(server, feed)
    with server.admin() as admin:
        served = admin.get(f"/conda/{feed}/noarch/{VULNERABLE}")
        head = admin.head(f"/conda/{feed}/noarch/{VULNERABLE}")
        fixed = admin.get(f"/conda/{feed}/noarch/{FIXED}")
    assert served.status_code == 200 and served.content[:2] == b"PK"
    assert REQUESTS_ADVISORY in served.headers["x-condagate-warning"]
    assert head.status_code == 200 and REQUESTS_ADVISORY in head.headers["x-condagate-warning"]
    assert "x-condagate-warning" not in fixed.headers


def test_assessments_take_effect_within_a_second(advisories_imported: Server, requests_feed: str) -> None:
    server, feed = advisories_imported, requests_feed
    set_policy(server, feed, vulnerability_policy="block")
    url = f"/conda/{feed}/noarch/{VULNERABLE}"
    with server.admin() as admin:
        assert admin.get(url).status_code == 403
        assess(server, feed, REQUESTS_ADVISORY, "ignore", "not reachable in our use")
        took = until(lambda: admin.get(url).status_code == 200 and VULNERABLE in repodata_files(server, feed))
        assert took < 1.5
        assert "x-condagate-warning" not in admin.get(url).headers

        assess(server, feed, REQUESTS_ADVISORY, "caution")  # a warning at most, under a block policy too
        until(lambda: "x-condagate-warning" in admin.get(url).headers)
        assert VULNERABLE in repodata_files(server, feed)

        set_policy(server, feed, vulnerability_policy="warn")
        assess(server, feed, REQUESTS_ADVISORY, "block")  # an explicit block blocks under warn too
        until(lambda: admin.get(url).status_code == 403)
        assert VULNERABLE not in repodata_files(server, feed)

        assess(server, feed, REQUESTS_ADVISORY, "clear")  # back to the policy: warn
        until(lambda: admin.get(url).status_code == 200)
        assert REQUESTS_ADVISORY in admin.get(url).headers["x-condagate-warning"]


def test_the_severity_threshold_and_unknown_severity(advisories_imported: Server, make_package) -> None:  # type: ignore[no-untyped-def]
    server = advisories_imported
    feed = _name("threshold")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
    for name, version in (("urllib3", "1.26.16"), ("urllib3", "1.26.17"), ("requests", "2.30.0")):
        assert upload(server, feed, make_package(name, version=version)).status_code == 201
    set_policy(server, feed, vulnerability_policy="block", min_severity="critical")
    files = repodata_files(server, feed)
    assert "urllib3-1.26.16-0.conda" in files  # high: below critical
    assert VULNERABLE not in files  # unknown severity counts as reaching the threshold
    set_policy(server, feed, min_severity="high")
    files = repodata_files(server, feed)
    assert "urllib3-1.26.16-0.conda" not in files and "urllib3-1.26.17-0.conda" in files
    with server.admin() as admin:
        refused = admin.get(f"/conda/{feed}/noarch/urllib3-1.26.16-0.conda")
    assert refused.status_code == 403 and URLLIB3_ADVISORY in refused.json()["detail"]
    assert "high 8.1" in refused.json()["detail"]


def test_a_license_block_works_the_same_way(advisories_imported: Server, make_package) -> None:  # type: ignore[no-untyped-def]
    server = advisories_imported
    feed = _name("licenses")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
    gpl = make_package("copyleft", version="1.0", license="GPL-3.0-only")
    mit = make_package("copyleft", version="0.9", license="MIT")
    for path in (gpl, mit):
        assert upload(server, feed, path).status_code == 201
    with server.admin() as admin:
        rule = admin.put(f"/api/feeds/{feed}/licenses/rules", json={"subjects": ["GPL-3.0-only"], "verdict": "block"})
        assert rule.status_code == 200, rule.text
    assert gpl.name in repodata_files(server, feed)  # the license policy is off: rules are not applied
    set_policy(server, feed, license_policy="block")
    until(lambda: gpl.name not in repodata_files(server, feed))
    with server.admin() as admin:
        refused = admin.get(f"/conda/{feed}/noarch/{gpl.name}")
        assert refused.status_code == 403 and _code(refused) == "package_blocked"
        assert "GPL-3.0-only" in refused.json()["detail"]
        assert f"condagate licenses allow GPL-3.0-only --feed {feed}" in refused.json()["detail"]
        assert admin.get(f"/conda/{feed}/noarch/{mit.name}").status_code == 200
    # Uploads of a blocked license are refused, naming the rule.
    another = make_package("copyleft2", version="1.0", license="GPL-3.0-only")
    refused_upload = upload(server, feed, another)
    assert refused_upload.status_code == 409 and _code(refused_upload) == "policy_refused"
    assert "GPL-3.0-only" in refused_upload.json()["detail"]

    set_policy(server, feed, license_policy="warn")
    with server.admin() as admin:
        warned = admin.get(f"/conda/{feed}/noarch/{gpl.name}")
    assert warned.status_code == 200 and "GPL-3.0-only" in warned.headers["x-condagate-warning"]
    assert gpl.name in repodata_files(server, feed)


# --- promotion and proxied files ------------------------------------------------------------------


def test_promotion_of_a_blocked_package_is_refused_until_assessed(advisories_imported: Server, make_package) -> None:  # type: ignore[no-untyped-def]
    server = advisories_imported
    source, target = _name("unapproved"), _name("approved")
    with server.admin() as admin:
        assert admin.post("/api/feed-pairs", json={"source": source, "target": target}).status_code == 201
    assert upload(server, source, make_package("requests", version="2.30.0")).status_code == 201
    set_policy(server, target, vulnerability_policy="block")
    body = {"target": target, "files": [{"subdir": "noarch", "filename": VULNERABLE}]}
    with server.admin() as admin:
        refused = admin.post(f"/api/feeds/{source}/promotions", json=body)
        assert refused.status_code == 409 and _code(refused) == "policy_refused", refused.text
        assert REQUESTS_ADVISORY in refused.json()["detail"] and target in refused.json()["detail"]
        assert admin.get(f"/api/feeds/{target}/promotions").json()["entries"] == []
        assess(server, target, REQUESTS_ADVISORY, "ignore", "accepted risk")
        promoted = admin.post(f"/api/feeds/{source}/promotions", json=body)
        assert promoted.status_code == 200, promoted.text
        entries = admin.get(f"/api/feeds/{target}/promotions").json()["entries"]
    findings = entries[0]["assessment"]["findings"]
    assert [(f["kind"], f["advisory"], f["assessment"], f["action"]) for f in findings] == [
        ("vulnerability", REQUESTS_ADVISORY, "ignore", "allow")
    ]


@pytest.fixture
def vulnerable_upstream(tmp_path: Path) -> Iterator[UpstreamChannel]:
    channel = UpstreamChannel(tmp_path / "upstream")
    channel.add(PackageSpec("requests", "2.30.0", "0"))
    channel.add(PackageSpec("requests", "2.31.0", "0"))
    channel.index()
    channel.start()
    yield channel
    channel.stop()


def test_proxied_files_are_blocked_too(advisories_imported: Server, vulnerable_upstream: UpstreamChannel) -> None:
    server = advisories_imported
    connector, feed = _name("up"), _name("proxy")
    with server.admin() as admin:
        assert (
            admin.post("/api/connectors", json={"name": connector, "url": vulnerable_upstream.url}).status_code == 201
        )
        assert admin.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
        assert admin.get(f"/conda/{feed}/noarch/{FIXED}").status_code == 200  # cached now
    set_policy(server, feed, vulnerability_policy="block")
    assert repodata_files(server, feed) == {FIXED}
    with server.admin() as admin:
        for method, params in (("GET", {}), ("HEAD", {}), ("GET", {"mirror": "1"})):
            refused = admin.request(method, f"/conda/{feed}/noarch/{VULNERABLE}", params=params)
            assert refused.status_code == 403, (method, params, refused.text)
        assert not [r for r in vulnerable_upstream.requests if VULNERABLE in r]  # never fetched
        assert admin.get(f"/conda/{feed}/noarch/{FIXED}").status_code == 200
        set_policy(server, feed, vulnerability_policy="warn")
        relayed = admin.get(f"/conda/{feed}/noarch/{VULNERABLE}")  # fetched from the upstream while relayed
        assert relayed.status_code == 200 and REQUESTS_ADVISORY in relayed.headers["x-condagate-warning"]
        set_policy(server, feed, vulnerability_policy="block")
        cached = admin.get(f"/conda/{feed}/noarch/{VULNERABLE}")  # now a cached copy: blocked all the same
        assert cached.status_code == 403


# --- what becomes unsolvable -----------------------------------------------------------------------


@pytest.fixture
def fragile_feed(advisories_imported: Server, make_package) -> str:  # type: ignore[no-untyped-def]
    """requests only in its vulnerable version, and legacy, which needs it."""
    server = advisories_imported
    feed = _name("fragile")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": feed}).status_code == 201
    assert upload(server, feed, make_package("requests", version="2.30.0")).status_code == 201
    assert upload(server, feed, make_package("legacy", version="1.0", depends=["requests"])).status_code == 201
    assert upload(server, feed, make_package("standalone", version="1.0")).status_code == 201
    return feed


def test_the_impact_preview_names_what_becomes_unsolvable(advisories_imported: Server, fragile_feed: str) -> None:
    server, feed = advisories_imported, fragile_feed
    body = {"vulnerability_policy": "block", "specs": ["legacy", "standalone"], "subdirs": ["linux-64"]}
    with server.admin() as admin:
        response = admin.post(f"/api/feeds/{feed}/sca-impact", json=body)
        assert response.status_code == 200, response.text
        preview = response.json()
        assert admin.get(f"/api/feeds/{feed}").json()["vulnerability_policy"] == "off"  # nothing changed
    assert preview["blocked_before"] == 0 and preview["blocked_after"] == 1
    assert [f["filename"] for f in preview["newly_blocked"]] == [VULNERABLE]
    assert REQUESTS_ADVISORY in preview["newly_blocked"][0]["reasons"][0]
    assert [(p["subdir"], p["name"], p["versions"]) for p in preview["lost_packages"]] == [
        ("noarch", "requests", ["2.30.0"])
    ]
    assert [(s["spec"], s["subdir"]) for s in preview["unsolvable"]] == [("legacy", "linux-64")]
    standalone = next(s for s in preview["solved"] if s["spec"] == "standalone")
    assert standalone["before"] == standalone["after"] == "solvable"

    # A proposed assessment: ignoring the advisory under the block policy blocks nothing.
    with server.admin() as admin:
        what_if = admin.post(
            f"/api/feeds/{feed}/sca-impact",
            json={**body, "assessments": [{"advisory": REQUESTS_ADVISORY, "verdict": "ignore"}]},
        ).json()
        assert what_if["blocked_after"] == 0 and what_if["unsolvable"] == [] and what_if["lost_packages"] == []
        bad = admin.post(f"/api/feeds/{feed}/sca-impact", json={"vulnerability_policy": "sometimes"})
        assert bad.status_code == 400 and "vulnerability_policy" in bad.text

    # And the other way: with the block in force, an ignore assessment's preview lists what comes back.
    set_policy(server, feed, vulnerability_policy="block")
    with server.admin() as admin:
        lifted = admin.post(
            f"/api/feeds/{feed}/sca-impact",
            json={"assessments": [{"advisory": REQUESTS_ADVISORY, "verdict": "ignore"}], "specs": ["legacy"]},
        ).json()
    assert [f["filename"] for f in lifted["newly_allowed"]] == [VULNERABLE]
    legacy = lifted["solved"][0]
    assert legacy["before"] != "solvable" and legacy["after"] == "solvable"


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": server.api_key, "COLUMNS": "250"}
    return subprocess.run([*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=180)


def test_feed_update_cli_sets_the_policies_and_previews_with_dry_run(
    advisories_imported: Server, fragile_feed: str
) -> None:
    server, feed = advisories_imported, fragile_feed
    dry = _cli(server, "feed", "update", feed, "--vulnerability-policy", "block", "--dry-run", "--spec", "legacy")
    assert dry.returncode == 0, dry.stderr
    assert "nothing was changed" in dry.stdout
    assert "Becomes unsolvable: legacy on linux-64" in dry.stdout
    assert "Loses its only installable version(s): noarch/requests (2.30.0)" in dry.stdout
    assert f"newly blocked: noarch/{VULNERABLE}" in dry.stdout and REQUESTS_ADVISORY in dry.stdout
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{feed}").json()["vulnerability_policy"] == "off"

    updated = _cli(
        server,
        "feed",
        "update",
        feed,
        "--vulnerability-policy",
        "warn",
        "--min-severity",
        "medium",
        "--show-blocked",
        "--license-policy",
        "block",
        "--json",
    )
    assert updated.returncode == 0, updated.stderr
    shown = json.loads(updated.stdout)
    assert (shown["vulnerability_policy"], shown["min_severity"], shown["hide_blocked"], shown["license_policy"]) == (
        "warn",
        "medium",
        False,
        "block",
    )
    said = _cli(server, "feed", "update", feed, "--hide-blocked", "--vulnerability-policy", "block")
    assert said.returncode == 0 and "vulnerabilities: block (from medium)" in said.stdout, said.stdout
    assert VULNERABLE not in repodata_files(server, feed)
    wrong = _cli(server, "feed", "update", feed, "--min-severity", "severe")
    assert wrong.returncode == 1 and "min_severity" in wrong.stderr and "critical" in wrong.stderr
    mixed = _cli(server, "feed", "update", feed, "--description", "x", "--dry-run")
    assert mixed.returncode == 1 and "--dry-run" in mixed.stderr


# --- the web pages -------------------------------------------------------------------------------


def _csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


@contextlib.contextmanager
def _browser(server: Server, key: str) -> Iterator[httpx.Client]:
    """A browser-like client logged in with ``key``: a session cookie, no API key header."""
    with server.client() as client:
        response = client.post("/login", data={"api_key": key, "next": "/"})
        assert response.status_code == 303, response.text
        yield client


def test_pages_render_and_the_assessment_form_needs_an_administrator_and_csrf(
    advisories_imported: Server, requests_feed: str
) -> None:
    server, feed = advisories_imported, requests_feed
    set_policy(server, feed, vulnerability_policy="block")
    html = {"accept": "text/html"}
    with server.admin() as admin:
        vulnerable = admin.get(f"/feeds/{feed}/vulnerabilities", headers=html)
        assert vulnerable.status_code == 200, vulnerable.text
        assert 'data-testid="vulnerable-package" data-name="requests" data-version="2.30.0" data-action="block"' in (
            vulnerable.text
        )
        assert REQUESTS_ADVISORY in vulnerable.text and 'data-version="2.31.0"' not in vulnerable.text
        compliance = admin.get(f"/feeds/{feed}/compliance", headers=html)
        assert compliance.status_code == 200 and 'data-license="Apache-2.0"' in compliance.text
        listing = admin.get("/advisories", params={"package": "requests"}, headers=html)
        assert listing.status_code == 200 and f'data-id="{REQUESTS_ADVISORY}"' in listing.text
        page = admin.get(f"/advisories/{REQUESTS_ADVISORY}", headers=html)
        assert page.status_code == 200 and "CVE-2023-32681" in page.text and 'data-testid="assess-form"' in page.text
        assert 'data-testid="link" ' in page.text or 'data-testid="link">' in page.text
        assert 'href="javascript:' not in page.text
        settings = admin.get(f"/feeds/{feed}/sca", headers=html)
        assert settings.status_code == 200 and 'data-testid="sca-form"' in settings.text

    reader = _name("reader") + "@example.com"
    with server.admin() as admin:
        assert admin.post("/api/users", json={"name": reader}).status_code == 201
        grant = {"principal": f"user:{reader}", "permission": "view", "feed": feed}
        assert admin.post("/api/grants", json=grant).status_code == 201
        reader_key = admin.post("/api/apikeys", json={"user": reader}).json()["key"]

    with _browser(server, server.api_key) as browser:
        token = _csrf_of(browser.get(f"/advisories/{REQUESTS_ADVISORY}").text)
        form = {"verdict": "ignore", "feed": feed, "comment": "from the form"}
        assert browser.post(f"/advisories/{REQUESTS_ADVISORY}/assess", data=form).status_code == 403  # no token
        done = browser.post(f"/advisories/{REQUESTS_ADVISORY}/assess", data={**form, "csrf_token": token})
        assert done.status_code == 303, done.text
        shown = browser.get(done.headers["location"]).text
        assert 'data-verdict="ignore" data-in-force="true"' in shown and "from the form" in shown
        # The settings form: a preview shows the blast radius and changes nothing; save applies.
        token = _csrf_of(browser.get(f"/feeds/{feed}/sca").text)
        preview = browser.post(
            f"/feeds/{feed}/sca",
            data={
                "vulnerability_policy": "off",
                "min_severity": "high",
                "hide_blocked": "1",
                "license_policy": "off",
                "action": "preview",
                "csrf_token": token,
            },
        )
        assert preview.status_code == 200 and 'data-testid="sca-impact"' in preview.text
        saved = browser.post(
            f"/feeds/{feed}/sca",
            data={
                "vulnerability_policy": "warn",
                "min_severity": "low",
                "hide_blocked": "1",
                "license_policy": "off",
                "action": "save",
                "csrf_token": token,
            },
        )
        assert saved.status_code == 303
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{feed}").json()["min_severity"] == "low"
    with _browser(server, reader_key) as browser:
        assert browser.get(f"/feeds/{feed}/vulnerabilities").status_code == 200
        token = _csrf_of(browser.get(f"/advisories/{REQUESTS_ADVISORY}").text)
        assert 'data-testid="assess-form"' not in browser.get(f"/advisories/{REQUESTS_ADVISORY}").text
        refused = browser.post(
            f"/advisories/{REQUESTS_ADVISORY}/assess", data={"verdict": "block", "feed": feed, "csrf_token": token}
        )
        assert refused.status_code == 403
        assert browser.get(f"/feeds/{feed}/sca").status_code == 403
