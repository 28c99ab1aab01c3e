"""The approval flow in the web UI: the wizard's "Yes, create two feeds", promoting from a package page
(preview first), revoking, the promotion history and a feed's promotion targets.

Plain HTTP with a logged-in session (the form posts a browser makes, CSRF tokens included), and one
walk through the mission's step 4 in a real headless Chromium.
"""

from __future__ import annotations

import csv
import html
import io
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import test_ui
from playwright.sync_api import expect
from test_ui import Visit

from conftest import upload
from servers import Server
from upstream_channel import UpstreamChannel

browser = test_ui.browser
visit = test_ui.visit


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def _session(server: Server, key: str) -> Iterator[httpx.Client]:
    """A browser-like client logged in to the web UI with an API key (a session cookie)."""
    with server.client() as client:
        response = client.post("/login", data={"api_key": key, "next": "/"})
        assert response.status_code == 303, response.text
        yield client


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def _key(server: Server, feeds: list[str], permissions: list[str]) -> str:
    with server.admin() as admin:
        response = admin.post("/api/apikeys", json={"feeds": feeds, "permissions": permissions})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


def _pair(server: Server) -> tuple[str, str]:
    source, target = _name("unapproved"), _name("approved")
    with server.admin() as admin:
        response = admin.post("/api/feed-pairs", json={"source": source, "target": target})
        assert response.status_code == 201, response.text
    return source, target


def _files(server: Server, feed: str, subdir: str = "noarch") -> set[str]:
    with server.admin() as client:
        response = client.get(f"/conda/{feed}/{subdir}/repodata.json")
    assert response.status_code == 200, response.text
    document = response.json()
    return set(document["packages"]) | set(document["packages.conda"])


def _history(server: Server, feed: str) -> list[dict[str, Any]]:
    with server.admin() as client:
        response = client.get(f"/api/feeds/{feed}/promotions")
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def _uploaded(server: Server, feed: str, path: Path) -> str:
    response = upload(server, feed, path)
    assert response.status_code == 201, response.text
    return path.name


def _promote_form(client: httpx.Client, source: str, target: str, **fields: Any) -> dict[str, Any]:
    """The promote page's form fields, as the browser would send them."""
    page = client.get(f"/feeds/{source}/promote", params={k: v for k, v in fields.items() if k in ("name", "version")})
    assert page.status_code == 200, page.text
    return {"csrf_token": _csrf(page.text), "target": target, **fields}


def _testids(page: str, testid: str) -> int:
    return page.count(f'data-testid="{testid}"')


# The wizard ---------------------------------------------------------------------------------------------


def test_wizard_creates_the_pair_linked(server: Server, upstream: UpstreamChannel) -> None:
    connector = _name("up")
    with server.admin() as admin:
        assert admin.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 201
    source, target = _name("unapproved"), _name("approved")
    with _session(server, server.api_key) as browser_like:
        wizard = browser_like.get("/feeds/new")
        assert wizard.status_code == 200
        assert "Yes, create two feeds" in wizard.text and 'name="feeds" value="two"' in wizard.text
        prefilled = re.search(r'name="source_name" value="([^"]*)"', wizard.text)
        assert prefilled and prefilled.group(1).startswith("unapproved-conda")
        assert re.search(r'name="target_name" value="approved-conda', wizard.text)
        form = {
            "csrf_token": _csrf(wizard.text),
            "kind": "proxy",
            "connector": connector,
            "feeds": "two",
            "name": "",  # the single feed's field, hidden when two are created
            "source_name": source,
            "target_name": "bad name",
        }

        bad = browser_like.post("/feeds/new", data=form)
        assert bad.status_code == 400
        assert "Approved feed: invalid feed name" in html.unescape(bad.text)
        assert re.search(r'name="target_name" value="bad name"[^>]*\s+aria-invalid="true"', bad.text)
        assert 'value="two" checked' in bad.text  # what was chosen and typed stays
        same = browser_like.post("/feeds/new", data={**form, "target_name": source})
        assert same.status_code == 400 and "two different names" in same.text
        empty = browser_like.post("/feeds/new", data={**form, "target_name": ""})
        assert empty.status_code == 400 and "Approved feed: enter a name" in empty.text
        no_connector = browser_like.post("/feeds/new", data={**form, "connector": "", "target_name": target})
        assert no_connector.status_code == 400 and "choose the upstream connector" in no_connector.text
        assert browser_like.get(f"/api/feeds/{source}").status_code == 404  # nothing half-made

        created = browser_like.post("/feeds/new", data={**form, "target_name": target})
        assert created.status_code == 303, created.text
        assert created.headers["location"] == f"/feeds/{source}"  # the source feed's page opens
        again = browser_like.post("/feeds/new", data={**form, "source_name": _name("other"), "target_name": target})
        assert again.status_code == 409 and "exists already" in again.text

        shown = browser_like.get(created.headers["location"])
        assert shown.status_code == 200
        assert f'data-testid="promotion-target" data-name="{target}"' in shown.text
        target_page = browser_like.get(f"/feeds/{target}")
        assert f'data-testid="promotion-source" data-name="{source}"' in target_page.text

    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{source}").json()["connectors"] == [connector]
        assert admin.get(f"/api/feeds/{target}").json()["kind"] == "hosted"
        links = admin.get(f"/api/feeds/{source}/promotion-targets").json()
    assert links["targets"] == [target]


# Promote ------------------------------------------------------------------------------------------------


def test_promote_actions_for_promoters_only(server: Server, make_package) -> None:
    source, target = _pair(server)
    name = _name("tool")
    filename = _uploaded(server, source, make_package(name, version="1.0"))
    package_url = f"/feeds/{source}/packages/{name}"

    with _session(server, _key(server, [source], ["view", "promote"])) as promoter:
        page = promoter.get(package_url)
        assert _testids(page.text, "promote-version") == 1 and _testids(page.text, "promote-file") == 1
        assert f"/feeds/{source}/promote?name={name}&amp;version=1.0" in page.text
        assert 'data-testid="delete-version"' not in page.text and 'data-testid="revoke-version"' not in page.text
        promote_page = promoter.get(f"/feeds/{source}/promote", params={"name": name, "version": "1.0"})
        assert promote_page.status_code == 200
        assert f'<option value="{target}" selected>' in promote_page.text
        assert re.search(r'value="noarch" checked data-testid="subdir-noarch"', promote_page.text)
        assert (
            'enctype="multipart/form-data"' in promote_page.text
            and 'type="file" name="environment"' in promote_page.text
        )

    with _session(server, _key(server, [source, target], ["view"])) as reader:
        page = reader.get(package_url)
        assert page.status_code == 200
        assert "promote-version" not in page.text and "promote-file" not in page.text
        assert reader.get(f"/feeds/{source}/promote", params={"name": name, "version": "1.0"}).status_code == 403
        token = _csrf(page.text)
        refused = reader.post(
            f"/feeds/{source}/promote",
            data={"csrf_token": token, "target": target, "name": name, "version": "1.0", "action": "promote"},
        )
        assert refused.status_code == 403
    with server.client() as anonymous:
        assert "promote-version" not in anonymous.get(package_url).text
    assert _files(server, target) == set() and _history(server, target) == []
    assert filename in _files(server, source)


def test_preview_lists_the_plan_and_changes_nothing(server: Server, make_package) -> None:
    source, target = _pair(server)
    name = _name("planned")
    conda = _uploaded(server, source, make_package(name, version="2.0"))
    linux = _uploaded(server, source, make_package(name, version="2.0", subdir="linux-64"))
    clash = _name("clash")
    clashing = _uploaded(server, source, make_package(clash, summary="the source's bytes"))
    _uploaded(server, target, make_package(clash, summary="other bytes, same file name"))

    with _session(server, _key(server, [source], ["view", "promote"])) as promoter:
        form = _promote_form(promoter, source, target, name=name, version="2.0")
        preview = promoter.post(
            f"/feeds/{source}/promote", data={**form, "subdir": ["noarch", "linux-64"], "action": "preview"}
        )
        assert preview.status_code == 200, preview.text
        assert 'data-testid="plan"' in preview.text and "nothing was changed" in preview.text
        add = preview.text.split('data-testid="plan-add"')[1].split("</table>")[0]
        assert f'data-filename="{conda}" data-subdir="noarch"' in add
        assert f'data-filename="{linux}" data-subdir="linux-64"' in add
        assert "plan-missing" not in preview.text and "plan-conflicts" not in preview.text

        only_linux = promoter.post(f"/feeds/{source}/promote", data={**form, "subdir": "linux-64", "action": "preview"})
        add = only_linux.text.split('data-testid="plan-add"')[1].split("</table>")[0]
        assert f'data-filename="{linux}" data-subdir="linux-64"' in add and 'data-subdir="noarch"' not in add

        with_problems = promoter.post(
            f"/feeds/{source}/promote",
            data={**_promote_form(promoter, source, target), "specs": f"{clash}\nghost-package\n", "action": "preview"},
        )
        assert with_problems.status_code == 200, with_problems.text
        conflicts = with_problems.text.split('data-testid="plan-conflicts"')[1].split("</table>")[0]
        assert clashing in conflicts
        missing = with_problems.text.split('data-testid="plan-missing"')[1].split("</table>")[0]
        assert "ghost-package" in missing
        assert 'data-testid="plan-incomplete"' in with_problems.text

        refused = promoter.post(
            f"/feeds/{source}/promote",
            data={**_promote_form(promoter, source, target), "specs": clash, "action": "promote"},
        )
        assert refused.status_code == 409
        assert "nothing was promoted" in html.unescape(refused.text) and 'data-testid="error"' in refused.text
    assert _files(server, target) == {clashing}  # only the file uploaded there
    assert _files(server, target, "linux-64") == set()
    assert _history(server, target) == []


def test_promote_adds_the_files_with_the_comment_in_the_history(server: Server, make_package) -> None:
    source, target = _pair(server)
    name = _name("approved-soon")
    conda = _uploaded(server, source, make_package(name, version="3.1"))
    linux = _uploaded(server, source, make_package(name, version="3.1", subdir="linux-64"))
    comment = 'Reviewed: licenses OK <script>alert("x")</script> see https://evil.example/x'

    with _session(server, _key(server, [source], ["view", "promote"])) as promoter:
        form = _promote_form(promoter, source, target, name=name, version="3.1")
        without_token = promoter.post(
            f"/feeds/{source}/promote",
            data={k: v for k, v in form.items() if k != "csrf_token"} | {"action": "promote"},
        )
        assert without_token.status_code == 403
        wrong_token = promoter.post(
            f"/feeds/{source}/promote", data={**form, "csrf_token": "x" * 40, "action": "promote"}
        )
        assert wrong_token.status_code == 403
        assert _files(server, target) == set()

        done = promoter.post(
            f"/feeds/{source}/promote",
            data={**form, "subdir": ["noarch", "linux-64"], "comment": comment, "action": "promote"},
        )
        assert done.status_code == 200, done.text
        assert 'data-testid="promoted-notice"' in done.text and "Promoted 2 files" in done.text
        assert f'href="/feeds/{target}/packages/{name}"' in done.text  # the target's package page

    assert _files(server, target) == {conda} and _files(server, target, "linux-64") == {linux}
    entries = _history(server, target)
    assert {(e["action"], e["filename"], e["comment"], e["source"]) for e in entries} == {
        ("promote", conda, comment, source),
        ("promote", linux, comment, source),
    }

    with _session(server, server.api_key) as admin:
        target_page = admin.get(f"/feeds/{target}")
        rows = target_page.text.split('data-testid="feed-promotions"')[1].split("</table>")[0]
        assert conda in rows and linux in rows
        assert rows.count('data-testid="promotion"') == 1  # one request, one row
        # The comment is text: escaped, and its URL is not a link.
        assert "&lt;script&gt;alert(" in rows and "<script>" not in target_page.text
        assert 'href="https://evil.example' not in target_page.text
        source_package = admin.get(f"/feeds/{source}/packages/{name}")
        assert 'data-testid="package-promotion-history"' in source_package.text
        assert "&lt;script&gt;" in source_package.text
        result = admin.post(
            f"/feeds/{source}/promote",
            data={**_promote_form(admin, source, target, name=name, version="3.1"), "action": "promote"},
        )
        assert "Nothing new" in result.text  # already there: not promoted again, not recorded again
        assert f'href="/feeds/{target}/packages/{name}"' in result.text
    assert len(_history(server, target)) == 2


def test_environment_file_upload_previews_and_promotes(server: Server, make_package) -> None:
    source, target = _pair(server)
    pinned = _uploaded(server, source, make_package(_name("pinned"), version="0.5"))
    explicit = f"@EXPLICIT\n{server.url}/conda/{source}/noarch/{pinned}\n".encode()
    with _session(server, _key(server, [source], ["view", "promote"])) as promoter:
        form = _promote_form(promoter, source, target)
        preview = promoter.post(
            f"/feeds/{source}/promote",
            data={**form, "action": "preview"},
            files={"environment": ("explicit.txt", explicit, "text/plain")},
        )
        assert preview.status_code == 200, preview.text
        assert pinned in preview.text.split('data-testid="plan-add"')[1]
        assert 'data-testid="environment-carried"' in preview.text  # the preview keeps the file for "Promote"
        carried = dict(re.findall(r'name="(environment_name|environment_data)" value="([^"]*)"', preview.text))
        assert carried["environment_name"] == "explicit.txt"
        assert _files(server, target) == set()
        done = promoter.post(
            f"/feeds/{source}/promote",
            data={**form, **carried, "comment": "from a lock file", "action": "promote"},
            files={"environment": ("", b"", "application/octet-stream")},  # no new file chosen
        )
        assert done.status_code == 200, done.text
        broken = promoter.post(
            f"/feeds/{source}/promote",
            data={**form, "action": "preview"},
            files={"environment": ("environment.yml", b"name: x\n", "text/plain")},
        )
        assert broken.status_code == 400 and "not an environment file" in html.unescape(broken.text)
    assert _files(server, target) == {pinned}
    assert [e["comment"] for e in _history(server, target)] == ["from a lock file"]


def test_no_target_yet_and_forms_that_name_nothing(server: Server, feed: str) -> None:
    with _session(server, server.api_key) as admin:
        page = admin.get(f"/feeds/{feed}/promote")
        assert page.status_code == 200 and 'data-testid="no-targets"' in page.text
        assert 'data-testid="promote-form"' not in page.text
        empty = admin.post(f"/feeds/{feed}/promote", data={"csrf_token": _csrf(page.text), "action": "promote"})
        assert empty.status_code == 400 and "choose the feed to promote into" in empty.text
        assert admin.get(f"/feeds/{_name('missing')}/promote").status_code == 404


# Revoke -------------------------------------------------------------------------------------------------


def test_revoke_removes_the_version_and_is_recorded(server: Server, make_package) -> None:
    source, target = _pair(server)
    name = _name("revoked")
    first = _uploaded(server, source, make_package(name, version="1.0"))
    second = _uploaded(server, source, make_package(name, version="1.1"))
    with server.admin() as admin:
        for version in ("1.0", "1.1"):
            body = {"target": target, "versions": [{"name": name, "version": version}], "comment": "ok"}
            assert admin.post(f"/api/feeds/{source}/promotions", json=body).status_code == 200
        own = _name("own")
        assert upload(server, target, make_package(own)).status_code == 201  # uploaded, never promoted
    package_url = f"/feeds/{target}/packages/{name}"

    with _session(server, _key(server, [target], ["view"])) as viewer:
        page = viewer.get(package_url)
        assert 'data-testid="revoke-version"' not in page.text
        refused = viewer.post(f"{package_url}/versions/1.1/revoke", data={"csrf_token": _csrf(page.text)})
        assert refused.status_code == 403

    with _session(server, _key(server, [target], ["view", "delete"])) as deleter:
        page = deleter.get(package_url)
        assert _testids(page.text, "revoke-version") == 2
        assert "data-confirm=" in page.text.split('data-testid="revoke-version"')[1]
        assert 'data-testid="revoke-version"' not in deleter.get(f"/feeds/{target}/packages/{own}").text
        assert "promote-version" not in page.text  # the target has no promotion target itself
        token = _csrf(page.text)
        assert deleter.post(f"{package_url}/versions/1.1/revoke", data={"comment": "no"}).status_code == 403
        assert _files(server, target) == {first, second, f"{own}-1.0-0.conda"}

        revoked = deleter.post(
            f"{package_url}/versions/1.1/revoke", data={"csrf_token": token, "comment": "CVE found in 1.1"}
        )
        assert revoked.status_code == 303, revoked.text
        assert revoked.headers["location"] == f"{package_url}?revoked=1"
        after = deleter.get(revoked.headers["location"])
        assert 'data-testid="revoked-notice"' in after.text and _testids(after.text, "revoke-version") == 1
        assert 'data-action="revoke"' in after.text and "CVE found in 1.1" in after.text
        never = deleter.post(f"/feeds/{target}/packages/{own}/versions/1.0/revoke", data={"csrf_token": token})
        assert never.status_code == 404 and "never promoted" in html.unescape(never.text)
        last = deleter.post(f"{package_url}/versions/1.0/revoke", data={"csrf_token": token, "comment": "all"})
        assert last.status_code == 303 and last.headers["location"] == f"/feeds/{target}?revoked=1"

    assert _files(server, target) == {f"{own}-1.0-0.conda"}
    assert {first, second} <= _files(server, source)  # the source keeps its files
    revocations = [e for e in _history(server, target) if e["action"] == "revoke"]
    assert [(e["version"], e["comment"], e["source"]) for e in revocations] == [
        ("1.0", "all", source),
        ("1.1", "CVE found in 1.1", source),
    ]


# The history, targets and sources --------------------------------------------------------------------


def test_history_page_and_its_exports(server: Server, make_package) -> None:
    source, target = _pair(server)
    names = [_name("hist") for _ in range(3)]
    with server.admin() as admin:
        for index, name in enumerate(names):
            assert upload(server, source, make_package(name)).status_code == 201
            body = {"target": target, "specs": [name], "comment": f"=cmd|'/c calc'!A{index}"}
            assert admin.post(f"/api/feeds/{source}/promotions", json=body).status_code == 200

    with _session(server, _key(server, [source, target], ["view"])) as reader:
        page = reader.get(f"/feeds/{source}/promotions")
        assert page.status_code == 200
        assert _testids(page.text, "promotion") == 3 and "3 files promoted or revoked" in page.text
        assert page.text.index(names[2]) < page.text.index(names[0])  # newest first
        assert 'data-testid="pager"' not in page.text
        feed_page = reader.get(f"/feeds/{source}")
        assert f'href="/feeds/{source}/promotions"' in feed_page.text
        filtered = reader.get(f"/feeds/{source}/promotions", params={"package": names[1]})
        assert _testids(filtered.text, "promotion") == 1 and names[1] in filtered.text
        csv_url = html.unescape(re.search(r'href="([^"]+)" data-testid="export-csv"', filtered.text).group(1))  # type: ignore[union-attr]
        assert csv_url == f"/api/feeds/{source}/promotions?package={names[1]}&format=csv"
        exported = reader.get(csv_url)
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [(r["name"], r["target"], r["comment"]) for r in rows] == [(names[1], target, "'=cmd|'/c calc'!A1")]
        json_url = html.unescape(re.search(r'href="([^"]+)" data-testid="export-json"', page.text).group(1))  # type: ignore[union-attr]
        assert len(reader.get(json_url).json()["entries"]) == 3
        assert reader.get(f"/feeds/{source}/promotions", params={"page": 7}).status_code == 200
        assert reader.get(f"/feeds/{_name('missing')}/promotions").status_code == 404


def test_linking_and_unlinking_targets_needs_manage_feed_on_both(server: Server) -> None:
    first, second = _name("src"), _name("dst")
    with server.admin() as admin:
        for name in (first, second):
            assert admin.post("/api/feeds", json={"name": name}).status_code == 201

    with _session(server, _key(server, [first, second], ["view", "manage-feed"])) as manager:
        page = manager.get(f"/feeds/{first}")
        assert 'data-testid="link-target-form"' in page.text and f'<option value="{second}">' in page.text
        token = _csrf(page.text)
        assert manager.post(f"/feeds/{first}/promotion-targets", data={"target": second}).status_code == 403
        linked = manager.post(f"/feeds/{first}/promotion-targets", data={"target": second, "csrf_token": token})
        assert linked.status_code == 303 and linked.headers["location"] == f"/feeds/{first}?promotion_target=linked"
        page = manager.get(linked.headers["location"])
        assert f'data-testid="promotion-target" data-name="{second}"' in page.text
        assert 'data-testid="link-notice"' in page.text and 'data-testid="unlink-target"' in page.text
        unlinked = manager.post(f"/feeds/{first}/promotion-targets/{second}/remove", data={"csrf_token": token})
        assert unlinked.status_code == 303
        with server.admin() as admin:
            assert admin.get(f"/api/feeds/{first}/promotion-targets").json()["targets"] == []

    # Managing the source is not enough: the target's managers must agree too.
    with _session(server, _manager_of(server, first, second)) as half:
        page = half.get(f"/feeds/{first}")
        assert f'<option value="{second}">' not in page.text  # offered only where the manager may link
        refused = half.post(
            f"/feeds/{first}/promotion-targets", data={"target": second, "csrf_token": _csrf(page.text)}
        )
        assert refused.status_code == 403
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{first}/promotion-targets").json()["targets"] == []


def _manager_of(server: Server, managed: str, viewed: str) -> str:
    """A user who manages ``managed`` and may only view ``viewed`` (a personal key)."""
    user = _name("manager") + "@example.com"
    with server.admin() as admin:
        assert admin.post("/api/users", json={"name": user}).status_code == 201
        for permission, feed in (("manage-feed", managed), ("view", viewed)):
            grant = {"principal": f"user:{user}", "permission": permission, "feed": feed}
            assert admin.post("/api/grants", json=grant).status_code == 201
        response = admin.post("/api/apikeys", json={"user": user})
        assert response.status_code == 201, response.text
    return str(response.json()["key"])


# The mission in a browser -------------------------------------------------------------------------------

_OVERFLOW = "() => document.documentElement.scrollWidth"


def test_mission_pair_promote_in_the_browser(server: Server, visit: Visit, upstream: UpstreamChannel) -> None:
    """Wizard "Yes, create two feeds" → a package of the unapproved feed → Promote with a comment →
    the approved feed lists it; every page of the flow fits a phone's width."""
    connector = _name("anaconda")
    with server.admin() as admin:
        assert admin.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 201
    source, target = _name("unapproved-conda"), _name("approved-conda")
    page = visit.page
    visit.log_in(server.api_key)
    page.goto("/feeds/new")
    expect(page.get_by_test_id("pair-fields")).to_be_hidden()
    page.get_by_test_id("connector-choices").locator(f'input[value="{connector}"]').check()
    page.get_by_role("radio", name="Yes, create two feeds").check()
    expect(page.get_by_label("Name", exact=True)).to_be_hidden()
    expect(page.get_by_label("Unapproved feed", exact=True)).to_have_value(re.compile(r"^unapproved-conda"))
    expect(page.get_by_label("Approved feed", exact=True)).to_have_value(re.compile(r"^approved-conda"))
    page.screenshot(path="/tmp/ui-pair-wizard.png", full_page=True)
    page.get_by_label("Unapproved feed", exact=True).fill(source)
    page.get_by_label("Approved feed", exact=True).fill("approved conda")
    page.get_by_role("button", name="Create two feeds").click()
    expect(page.get_by_test_id("error")).to_contain_text("Approved feed: invalid feed name")
    expect(page.get_by_label("Approved feed", exact=True)).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Approved feed", exact=True).fill(target)
    page.get_by_role("button", name="Create two feeds").click()
    expect(page).to_have_url(f"{server.url}/feeds/{source}")
    expect(page.get_by_test_id("kind")).to_have_text("Proxy")
    expect(page.get_by_test_id("promotion-target")).to_contain_text(target)

    page.get_by_role("link", name="requests", exact=True).click()
    expect(page).to_have_url(f"{server.url}/feeds/{source}/packages/requests")
    page.screenshot(path="/tmp/ui-promotion-source-package.png", full_page=True)
    page.get_by_role("link", name="Promote version 2.32.3").click()
    expect(page.get_by_test_id("promote-what")).to_have_text("requests 2.32.3")
    page.get_by_test_id("comment").fill("Checked licenses and advisories: fine")
    page.get_by_test_id("preview").click()
    plan = page.get_by_test_id("plan-add").get_by_test_id("plan-file")
    expect(plan).to_have_count(1)
    expect(plan.get_by_test_id("to-fetch")).to_be_visible()  # only the upstream has it so far
    expect(page.get_by_test_id("comment")).to_have_value("Checked licenses and advisories: fine")
    page.screenshot(path="/tmp/ui-promotion-preview.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate(_OVERFLOW) <= 390, "the preview overflows a phone's width"
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_test_id("promote").click()
    expect(page.get_by_test_id("promoted-notice")).to_contain_text(f"Promoted 1 file from {source} into {target}")
    expect(page.get_by_test_id("promoted-notice")).to_contain_text("fetched from the upstream first")
    page.screenshot(path="/tmp/ui-promotion-result.png", full_page=True)

    page.get_by_test_id("target-package").click()
    expect(page).to_have_url(f"{server.url}/feeds/{target}/packages/requests")
    expect(page.get_by_test_id("version")).to_have_attribute("data-version", "2.32.3")
    page.goto(f"/feeds/{target}")
    expect(page.locator('[data-testid="package"][data-name="requests"]')).to_be_visible()
    history = page.get_by_test_id("feed-promotions").get_by_test_id("promotion")
    expect(history).to_have_count(1)
    expect(history.get_by_test_id("promotion-comment")).to_have_text("Checked licenses and advisories: fine")
    expect(history.get_by_test_id("promotion-feeds")).to_contain_text(source)
    page.screenshot(path="/tmp/ui-promotion-target.png", full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    for path in [
        f"/feeds/{target}",
        f"/feeds/{target}/packages/requests",
        f"/feeds/{source}/packages/requests",
        f"/feeds/{source}/promote?name=requests&version=2.32.3",
        f"/feeds/{target}/promotions",
        "/feeds/new",
    ]:
        page.goto(path)
        assert page.evaluate(_OVERFLOW) <= 390, path
    page.goto(f"/feeds/{target}/promotions")
    page.screenshot(path="/tmp/ui-promotion-history-phone.png", full_page=True)
