"""License rules and compliance against a real server: rules set through the REST API and the CLI,
the compliance report of a feed of real packages, who may set which rules, and ``license_state``
in-process on the server's own database (as a filter of repodata calls it)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from condagate.services.context import Services
from condagate.services.licenses import license_state
from condagate.settings import Settings
from condagate.store import feeds as feed_store
from condagate.store import sca_state

from conftest import upload
from servers import Server, condagate_command

MakePackage = Callable[..., Path]

# The feed's packages: name -> declared license.
LICENSES = {
    "alpha": "MIT License",
    "beta": "MIT",
    "gamma": "GPL-3.0-only",
    "delta": "GPLv2+",
    "epsilon": "Apache 2.0 OR GPL-3.0-only",
    "zeta": "BSD",
    "eta": "Foo Corp EULA",
    "theta": "AGPL-3.0-or-later AND MIT",
}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _error(response: httpx.Response) -> tuple[str, str]:
    error = response.json()["error"]
    return error["code"], error["message"]


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


@pytest.fixture
def licensed_feed(server: Server, feed: str, make_package: MakePackage) -> str:
    for name, declared in LICENSES.items():
        assert upload(server, feed, make_package(name, license=declared)).status_code == 201
    # one more version of alpha, for linux-64: a package file per subdir and version
    assert (
        upload(server, feed, make_package("alpha", version="2.0", subdir="linux-64", license="MIT")).status_code == 201
    )
    return feed


@pytest.fixture
def system_rules(server: Server) -> Iterator[None]:
    """Leaves the system-wide rules as it found them (the server is shared by the session's tests)."""
    with server.admin() as admin:
        before = admin.get("/api/licenses/rules").json()["rules"]
    yield
    with server.admin() as admin:
        now = [rule["subject"] for rule in admin.get("/api/licenses/rules").json()["rules"]]
        if now:
            assert admin.delete("/api/licenses/rules", params={"subject": now}).status_code == 200
        for rule in before:
            body = {"subjects": [rule["subject"]], "verdict": rule["verdict"]}
            assert admin.put("/api/licenses/rules", json=body).status_code == 200


def compliance(client: httpx.Client, feed: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/feeds/{feed}/compliance", params=params)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def _by_license(report: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {
        group["license"]: (group["action"], sorted(f"{p['name']}-{p['version']}" for p in group["packages"]))
        for group in report["by_license"]
    }


def test_compliance_report_groups_packages_by_license(server: Server, licensed_feed: str) -> None:
    feed = licensed_feed
    with server.admin() as admin:
        body = {"subjects": ["GPL-3.0-only", "AGPL-3.0-or-later"], "verdict": "block"}
        response = admin.put(f"/api/feeds/{feed}/licenses/rules", json=body)
        assert response.status_code == 200, response.text
        assert [r["subject"] for r in response.json()["rules"]] == ["GPL-3.0-only", "AGPL-3.0-or-later"]
        assert (
            admin.put(
                f"/api/feeds/{feed}/licenses/rules", json={"subjects": ["unknown"], "verdict": "warn"}
            ).status_code
            == 200
        )
        report = compliance(admin, feed)

    assert report["feed"] == feed and report["total"] == 9
    assert report["subdirs"] == ["linux-64", "noarch"]
    assert report["license_policy"] == "off"
    assert _by_license(report) == {
        "MIT": ("allow", ["alpha-1.0", "alpha-2.0", "beta-1.0"]),  # "MIT License" and "MIT" together
        "GPL-3.0-only": ("block", ["gamma-1.0"]),
        "GPL-2.0-or-later": ("allow", ["delta-1.0"]),
        "Apache-2.0 OR GPL-3.0-only": ("allow", ["epsilon-1.0"]),  # one alternative is allowed
        "LicenseRef-BSD-ambiguous": ("warn", ["zeta-1.0"]),
        "Foo Corp EULA": ("warn", ["eta-1.0"]),
        "AGPL-3.0-or-later AND MIT": ("block", ["theta-1.0"]),
    }
    assert report["by_license"][0]["license"] == "MIT" and report["by_license"][0]["count"] == 3
    non_compliant = {p["name"]: (p["action"], p["reason"]) for p in report["non_compliant"]}
    assert non_compliant == {
        "gamma": ("block", "GPL-3.0-only is blocked on this feed"),
        "theta": ("block", "AGPL-3.0-or-later is blocked on this feed"),
        "zeta": (
            "warn",
            "license not recognised: 'BSD' (LicenseRef-BSD-ambiguous); unknown licenses: warn on this feed",
        ),
        "eta": ("warn", "license not recognised: 'Foo Corp EULA'; unknown licenses: warn on this feed"),
    }
    gamma = next(p for p in report["non_compliant"] if p["name"] == "gamma")
    assert gamma == {
        "name": "gamma",
        "version": "1.0",
        "subdir": "noarch",
        "filename": "gamma-1.0-0.conda",
        "declared": "GPL-3.0-only",
        "spdx": "GPL-3.0-only",
        "recognised": True,
        "action": "block",
        "reason": "GPL-3.0-only is blocked on this feed",
    }
    unknown = {g["license"]: [p["name"] for p in g["packages"]] for g in report["unknown"]}
    assert unknown == {"BSD": ["zeta"], "Foo Corp EULA": ["eta"]}

    # one subdir only
    with server.admin() as admin:
        only = compliance(admin, feed, subdir="linux-64")
    assert only["subdirs"] == ["linux-64"] and _by_license(only) == {"MIT": ("allow", ["alpha-2.0"])}


def test_compliance_lists_what_the_feeds_policy_blocks(server: Server, licensed_feed: str) -> None:
    """Blocked records may be left out of the served repodata: the report still lists them."""
    feed = licensed_feed
    with server.admin() as admin:
        response = admin.patch(f"/api/feeds/{feed}", json={"license_policy": "block"})
        assert response.status_code == 200, response.text
        body = {"subjects": ["GPL-3.0-only"], "verdict": "block"}
        assert admin.put(f"/api/feeds/{feed}/licenses/rules", json=body).status_code == 200
        report = compliance(admin, feed)
    assert report["license_policy"] == "block" and report["total"] == 9
    assert [(p["name"], p["action"]) for p in report["non_compliant"]] == [("gamma", "block")]


def test_compliance_as_csv(server: Server, licensed_feed: str) -> None:
    with server.admin() as admin:
        response = admin.get(f"/api/feeds/{licensed_feed}/compliance", params={"format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="licenses-{licensed_feed}.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 9
    assert list(rows[0]) == [
        "name",
        "version",
        "subdir",
        "filename",
        "declared",
        "spdx",
        "recognised",
        "action",
        "reason",
    ]
    by_name = {(r["name"], r["version"]): r for r in rows}
    assert by_name[("delta", "1.0")]["declared"] == "GPLv2+"
    assert by_name[("delta", "1.0")]["spdx"] == "GPL-2.0-or-later"
    assert by_name[("eta", "1.0")]["recognised"] == "no" and by_name[("eta", "1.0")]["spdx"] == ""


def test_a_feeds_rules_override_the_system_rules(
    server: Server, licensed_feed: str, system_rules: None, make_package: MakePackage
) -> None:
    other = _name("feed")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": other}).status_code == 201
        assert upload(server, other, make_package("gamma", license="GPL-3.0")).status_code == 201
        body = {"subjects": ["GPL-3.0-only", "unknown"], "verdict": "block"}
        assert admin.put("/api/licenses/rules", json=body).status_code == 200
        assert (
            admin.put(
                f"/api/feeds/{licensed_feed}/licenses/rules", json={"subjects": ["GPL-3.0-only"], "verdict": "allow"}
            ).status_code
            == 200
        )
        here, there = compliance(admin, licensed_feed), compliance(admin, other)
        listed = admin.get(f"/api/feeds/{licensed_feed}/licenses/rules").json()

    assert _by_license(here)["GPL-3.0-only"] == ("allow", ["gamma-1.0"])
    assert _by_license(here)["Foo Corp EULA"][0] == "block"  # the system's unknown action
    assert _by_license(there)["GPL-3.0-only"] == ("block", ["gamma-1.0"])
    assert there["non_compliant"][0]["reason"] == "GPL-3.0-only is blocked system-wide"
    assert [(r["subject"], r["verdict"], r["scope"]) for r in listed["rules"]] == [("GPL-3.0-only", "allow", "feed")]
    # the system's rule for the same id is shadowed: only the unknown action is inherited
    assert [(r["subject"], r["verdict"], r["scope"]) for r in listed["inherited"]] == [("unknown", "block", "system")]
    assert listed["unknown"] == "block" and listed["license_policy"] == "off"

    # removing the feed's rule lets the system's apply again
    with server.admin() as admin:
        removed = admin.delete(f"/api/feeds/{licensed_feed}/licenses/rules", params={"subject": "GPL-3.0-only"})
        assert removed.status_code == 200 and removed.json()["removed"] == ["GPL-3.0-only"]
        assert _by_license(compliance(admin, licensed_feed))["GPL-3.0-only"][0] == "block"


def test_rule_ids_are_checked(server: Server, feed: str) -> None:
    rules = f"/api/feeds/{feed}/licenses/rules"
    with server.admin() as admin:
        response = admin.put(rules, json={"subjects": ["Apache 2.0"], "verdict": "block"})
        assert response.status_code == 400
        assert _error(response) == (
            "unknown_license",
            "'Apache 2.0' is not an SPDX license id: did you mean Apache-2.0?",
        )
        response = admin.put(rules, json={"subjects": ["GPL-3.0-onyl"], "verdict": "block"})
        assert response.status_code == 400 and "did you mean GPL-3.0-only" in _error(response)[1]
        response = admin.put(rules, json={"subjects": ["MIT"], "verdict": "warn"})
        assert response.status_code == 400 and "allowed or blocked" in _error(response)[1]
        response = admin.put(rules, json={"subjects": ["unknown"], "verdict": "maybe"})
        assert response.status_code == 400
        assert admin.put(rules, json={"subjects": [], "verdict": "block"}).status_code == 400
        # an alias is read as its id, and the answer says so
        response = admin.put(rules, json={"subjects": ["GPL-3.0", "mit"], "verdict": "block"})
        assert response.status_code == 200
        assert [(r["subject"], r.get("given")) for r in response.json()["rules"]] == [
            ("GPL-3.0-only", "GPL-3.0"),
            ("MIT", "mit"),
        ]
        # setting again replaces; removing one that is not there removes nothing
        assert admin.put(rules, json={"subjects": ["MIT"], "verdict": "allow"}).status_code == 200
        response = admin.delete(rules, params={"subject": ["MIT", "ISC"]})
        assert response.status_code == 404
        assert _error(response)[0] == "license_rule_not_found" and "ISC" in _error(response)[1]
        listed = admin.get(rules).json()["rules"]
        assert [(r["subject"], r["verdict"]) for r in listed] == [("GPL-3.0-only", "block"), ("MIT", "allow")]
        assert admin.get("/api/feeds/no-such-feed/licenses/rules").status_code == 404


def test_who_may_set_which_rules(server: Server, feed: str) -> None:
    reader = user_key(server, [("view", feed)])
    manager = user_key(server, [("manage-feed", feed)])
    body = {"subjects": ["GPL-3.0-only"], "verdict": "block"}
    feed_rules = f"/api/feeds/{feed}/licenses/rules"
    with server.client() as anonymous:
        assert anonymous.put(feed_rules, json=body).status_code == 401
        assert anonymous.put("/api/licenses/rules", json=body).status_code == 401
        assert anonymous.get("/api/licenses/rules").status_code == 401
        assert anonymous.delete(feed_rules, params={"subject": "MIT"}).status_code == 401
    with server.client(headers={"X-API-Key": reader}) as client:
        assert client.put(feed_rules, json=body).status_code == 403
        assert client.delete(feed_rules, params={"subject": "MIT"}).status_code == 403
        assert client.put("/api/licenses/rules", json=body).status_code == 403
        assert client.get("/api/licenses/rules").status_code == 403
        assert client.get(feed_rules).status_code == 200  # who sees the feed sees its rules
        assert client.get(f"/api/feeds/{feed}/compliance").status_code == 200
    with server.client(headers={"X-API-Key": manager}) as client:
        assert client.put(feed_rules, json=body).status_code == 200
        assert client.put("/api/licenses/rules", json=body).status_code == 403
        assert client.delete("/api/licenses/rules", params={"subject": "GPL-3.0-only"}).status_code == 403
        assert client.get("/api/licenses/rules").status_code == 403
        rules = client.get(feed_rules).json()["rules"]
        assert [(r["subject"], r["actor"]) for r in rules] == [("GPL-3.0-only", rules[0]["actor"])]
        assert rules[0]["actor"].startswith("user-")
        assert client.delete(feed_rules, params={"subject": "GPL-3.0-only"}).status_code == 200


# -- license_state in-process ----------------------------------------------------------------------


@pytest.fixture
def services(server: Server) -> Iterator[Services]:
    opened = Services.open(Settings.from_env(server.env))
    yield opened
    opened.close()


def _eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the refresh interval"
        time.sleep(0.1)


def test_license_state_follows_rule_changes_made_by_the_server(
    server: Server, services: Services, feed: str, system_rules: None
) -> None:
    with services.db.read() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id
    state = license_state(services, feed_id=feed_id, declared="GPL v3")
    assert (state.spdx, state.recognised, state.action) == ("GPL-3.0-only", True, "allow")
    assert license_state(services, feed_id=feed_id, declared="Foo").action == "allow"

    with server.admin() as admin:
        body = {"subjects": ["GPL-3.0-only"], "verdict": "block"}
        assert admin.put(f"/api/feeds/{feed}/licenses/rules", json=body).status_code == 200
    # a caller that saw the new SCA revision gets an answer at least that new, at once
    with services.db.read() as session:
        seen = sca_state.revision(session=session)
    state = license_state(services, feed_id=feed_id, declared="GPL v3", revision=seen)
    assert (state.action, state.reason) == ("block", "GPL-3.0-only is blocked on this feed")
    assert state.declared == "GPL v3"

    with server.admin() as admin:
        assert admin.put("/api/licenses/rules", json={"subjects": ["unknown"], "verdict": "warn"}).status_code == 200
    # otherwise another process's change arrives within the refresh interval (a second)
    _eventually(lambda: license_state(services, feed_id=feed_id, declared="Foo").action == "warn")
    unknown = license_state(services, feed_id=feed_id, declared="Foo")
    assert (unknown.spdx, unknown.recognised) == (None, False)
    assert unknown.reason == "license not recognised: 'Foo'; unknown licenses: warn system-wide"
    assert license_state(services, feed_id=None, declared="GPL v3").action == "allow"  # system rules only
    assert license_state(services, feed_id=feed_id, declared=None).reason.startswith("no license declared")

    # the hot path: memoised, no database round trip but the revision check once a second
    declared = [f"LicenseRef-Vendor-{i % 500}" for i in range(20_000)] + ["MIT License", "GPLv2+"] * 10_000
    started = time.perf_counter()
    for text in declared:
        license_state(services, feed_id=feed_id, declared=text)
    assert time.perf_counter() - started < 5.0


def test_a_change_in_this_process_applies_at_once(server: Server, services: Services, feed: str) -> None:
    from condagate.services.licenses import remove_rule, set_rule

    with services.db.read() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id
    assert license_state(services, feed_id=feed_id, declared="MIT").action == "allow"
    rules = set_rule(services, feed=feed, subjects=["MIT"], verdict="block", actor="test")
    assert [(r.subject, r.verdict, r.feed) for r in rules] == [("MIT", "block", feed)]
    assert license_state(services, feed_id=feed_id, declared="MIT License").action == "block"
    assert remove_rule(services, feed=feed, subjects=["MIT"]) == ["MIT"]
    assert license_state(services, feed_id=feed_id, declared="MIT License").action == "allow"


# -- the CLI ---------------------------------------------------------------------------------------


def cli(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
    env.update({"CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": key or server.api_key, "COLUMNS": "200"})
    return subprocess.run(
        [*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def ok(server: Server, *args: str, key: str | None = None) -> str:
    result = cli(server, *args, key=key)
    assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_sets_rules_and_reports_compliance(server: Server, licensed_feed: str) -> None:
    feed = licensed_feed
    out = ok(server, "licenses", "block", "GPL-3.0", "AGPL-3.0-or-later", "--feed", feed)
    assert f"GPL-3.0-only: block on feed {feed} (GPL-3.0 is read as GPL-3.0-only)" in out
    assert f"AGPL-3.0-or-later: block on feed {feed}" in out
    assert f"unknown licenses: warn on feed {feed}" in ok(server, "licenses", "unknown", "warn", "--feed", feed)
    allowed = json.loads(ok(server, "licenses", "allow", "LicenseRef-BSD-ambiguous", "--feed", feed, "--json"))
    assert [(r["subject"], r["verdict"]) for r in allowed["rules"]] == [("LicenseRef-BSD-ambiguous", "allow")]

    listed = json.loads(ok(server, "licenses", "list", "--feed", feed, "--json"))
    assert sorted((r["subject"], r["verdict"]) for r in listed["rules"]) == [
        ("AGPL-3.0-or-later", "block"),
        ("GPL-3.0-only", "block"),
        ("LicenseRef-BSD-ambiguous", "allow"),
        ("unknown", "warn"),
    ]
    table = ok(server, "licenses", "list", "--feed", feed)
    assert "GPL-3.0-only" in table and "Unknown licenses: warn" in table and f"License policy of {feed}: off" in table

    report = json.loads(ok(server, "licenses", "compliance", feed, "--json"))
    assert {p["name"]: p["action"] for p in report["non_compliant"]} == {
        "gamma": "block",
        "theta": "block",
        "eta": "warn",
    }
    human = ok(server, "licenses", "compliance", feed)
    assert "By license" in human and "Not compliant" in human and "Unknown licenses" in human
    assert "GPL-3.0-only is blocked on this feed" in human and "'Foo Corp EULA'" in human
    rows = list(csv.DictReader(io.StringIO(ok(server, "licenses", "compliance", feed, "--csv"))))
    assert len(rows) == 9 and {r["action"] for r in rows} == {"allow", "warn", "block"}

    removed = ok(server, "licenses", "remove", "GPL-3.0-only", "unknown", "--feed", feed)
    assert f"Removed the rules for GPL-3.0-only, unknown on feed {feed}" in removed
    report = json.loads(ok(server, "licenses", "compliance", feed, "--json"))
    assert {p["name"]: p["action"] for p in report["non_compliant"]} == {"theta": "block"}


def test_cli_failures_are_one_line(server: Server, feed: str) -> None:
    line = one_line_failure(cli(server, "licenses", "block", "Apache 2.0", "--feed", feed))
    assert line == "error: 400: 'Apache 2.0' is not an SPDX license id: did you mean Apache-2.0?"
    assert "choose allow, warn or block" in one_line_failure(cli(server, "licenses", "unknown", "sometimes"))
    assert "404" in one_line_failure(cli(server, "licenses", "remove", "ISC", "--feed", feed))
    assert "404" in one_line_failure(cli(server, "licenses", "compliance", "no-such-feed"))
    reader = user_key(server, [("view", feed)])
    assert "403" in one_line_failure(cli(server, "licenses", "block", "MIT", "--feed", feed, key=reader))
    assert "403" in one_line_failure(cli(server, "licenses", "list", key=reader))
