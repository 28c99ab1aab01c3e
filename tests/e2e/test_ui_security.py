"""The security pages in a real headless Chromium: the mission's steps 3 and 4 from the web UI.

"Manage Security" (users, groups, the grants overview, removing anonymous access with one click),
"API Keys & Access Logs" (a feed key shown once, used by a client, its access log, revoking it),
"My account" for a user who logs in with a password, CSRF tokens on every form, package metadata
URLs that become links only when they are http(s), and a header that fits a phone.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import test_ui
from playwright.sync_api import Browser, Locator, Page, expect
from test_ui import Visit

from conftest import BACKENDS, backend_database_url, upload
from package_factory import PackageSpec, write_with_metadata
from servers import Server, start_server

browser = test_ui.browser
visit = test_ui.visit

LEAD = "lead@example.com"
GROUP = "Lead Developers"


@pytest.fixture(params=BACKENDS)
def own_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: these tests change system-wide grants, which the shared server must keep."""
    database_url = backend_database_url(request.param)
    instance = start_server(tmp_path_factory.mktemp(f"ui-security-{request.param}") / "data", database_url)
    yield instance
    instance.stop()


@contextmanager
def tab(browser: Browser, server: Server) -> Iterator[Visit]:
    """A browser context of its own (its own cookies): another person at another desk."""
    opened = Visit(browser, server)
    try:
        yield opened
    finally:
        opened.close()
    assert not [url for url in opened.requests if not url.startswith(server.url + "/")], opened.requests
    assert not opened.failures, opened.failures


def _grant_lines(page: Page) -> set[tuple[str | None, str | None, str | None]]:
    rows = page.get_by_test_id("grant")
    return {
        (row.get_attribute("data-principal"), row.get_attribute("data-permission"), row.get_attribute("data-feed"))
        for row in rows.all()
    }


def _key_row(page: Page, key_id: str) -> Locator:
    return page.locator(f'[data-testid="key"][data-id="{key_id}"]')


def _reload_until(page: Page, locator: Locator, seconds: float = 15) -> None:
    """The access log and last-used times reach the database in batches (every 0.2 s in tests)."""
    deadline = time.monotonic() + seconds
    while locator.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        page.reload()
    expect(locator.first).to_be_visible()


def _csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def _session_cookie(opened: Visit) -> dict[str, str]:
    return {c["name"]: c["value"] for c in opened.context.cookies() if c["name"] == "condagate_session"}


def test_admin_secures_feeds_and_hands_out_a_feed_key(own_server: Server, browser: Browser) -> None:
    server = own_server
    with server.admin() as admin:
        for name in ("unapproved-conda", "approved-conda", "public-conda"):
            assert admin.post("/api/feeds", json={"name": name}).status_code == 201
        hidden = admin.post("/api/feeds", json={"name": "hidden-proxy", "connectors": ["conda-forge"]})
        assert hidden.status_code == 201, hidden.text

    with tab(browser, server) as admin_tab:
        page = admin_tab.page
        admin_tab.log_in(server.api_key)
        expect(page.get_by_test_id("who")).to_have_text("admin (key 1)")
        expect(page.get_by_test_id("nav-account")).to_have_text("My account")
        expect(page.get_by_test_id("logout")).to_be_visible()
        page.get_by_test_id("nav-security").click()
        expect(page).to_have_url(f"{server.url}/security")
        expect(page.get_by_role("heading", level=1)).to_have_text("Manage Security")
        assert _grant_lines(page) == {("anonymous", "view", ""), ("user:admin", "admin", "")}
        anonymous_line = page.locator('[data-testid="grant"][data-principal="anonymous"]')
        expect(anonymous_line.locator("td").nth(0)).to_have_text("Anonymous")
        expect(anonymous_line.locator("td").nth(1)).to_have_text("View/Download")
        expect(anonymous_line.locator("td").nth(2)).to_have_text("all feeds")

        # Users: create one with a password, then change it; a second one is deleted again.
        users = page.get_by_test_id("user-form")
        users.get_by_label("User name").fill(LEAD)
        users.get_by_label("Password").fill("first-password-1")
        page.get_by_test_id("create-user").click()
        expect(page).to_have_url(f"{server.url}/security#users")
        lead_row = page.locator(f'[data-testid="user"][data-name="{LEAD}"]')
        expect(lead_row).to_contain_text("set")
        users.get_by_label("User name").fill(LEAD)
        page.get_by_test_id("create-user").click()
        expect(page.locator("#users").get_by_test_id("error")).to_contain_text(LEAD)
        expect(users.get_by_label("User name")).to_have_value(LEAD)
        lead_row.get_by_label(f"New password for {LEAD}").fill("lead-password-2")
        lead_row.get_by_role("button", name="Set").click()
        expect(page).to_have_url(f"{server.url}/security#users")
        users.get_by_label("User name").fill("temp@example.com")
        page.get_by_test_id("create-user").click()
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete user temp@example.com").click()
        expect(page.locator('[data-testid="user"][data-name="temp@example.com"]')).to_have_count(0)

        # Groups: "Lead Developers" with the lead in it (and the admin, added and removed again).
        page.get_by_test_id("group-form").get_by_label("Group name").fill(GROUP)
        page.get_by_test_id("create-group").click()
        group_row = page.locator(f'[data-testid="group"][data-name="{GROUP}"]')
        group_row.get_by_test_id("member-choice").select_option(LEAD)
        group_row.get_by_test_id("add-member").click()
        group_row.get_by_test_id("member-choice").select_option("admin")
        group_row.get_by_test_id("add-member").click()
        expect(group_row.get_by_test_id("member")).to_have_count(2)
        group_row.get_by_role("button", name=f"Remove admin from {GROUP}").click()
        assert [m.get_attribute("data-name") for m in group_row.get_by_test_id("member").all()] == [LEAD]
        expect(lead_row.locator("td").nth(1)).to_have_text(GROUP)

        # Grants: the group views and promotes on unapproved-conda; anonymous callers view approved-conda.
        form = page.get_by_test_id("grant-form")
        for principal, permission, label, feed in [
            (f"group:{GROUP}", "view", "View/Download", "unapproved-conda"),
            (f"group:{GROUP}", "promote", "Promote Packages", "unapproved-conda"),
            ("anonymous", "view", "View/Download", "approved-conda"),
        ]:
            form.get_by_test_id("grant-principal-choice").select_option(principal)
            form.get_by_test_id("grant-permission-choice").select_option(label=label)
            form.get_by_test_id("grant-feed-choice").select_option(feed)
            page.get_by_test_id("add-grant").click()
            expect(
                page.locator(
                    f'[data-testid="grant"][data-principal="{principal}"][data-permission="{permission}"]'
                    f'[data-feed="{feed}"]'
                )
            ).to_have_count(1)

        # The mission's "remove the Anonymous entry": one click.
        page.get_by_test_id("remove-anonymous").click()
        expect(page.get_by_test_id("anonymous-notice")).to_have_count(0)
        assert _grant_lines(page) == {
            ("user:admin", "admin", ""),
            (f"group:{GROUP}", "view", "unapproved-conda"),
            (f"group:{GROUP}", "promote", "unapproved-conda"),
            ("anonymous", "view", "approved-conda"),
        }
        promote = page.locator(f'[data-testid="grant"][data-principal="group:{GROUP}"][data-permission="promote"]')
        assert [cell.inner_text().strip() for cell in promote.locator("td").all()[:3]] == [
            f"group {GROUP}",
            "Promote Packages",
            "unapproved-conda",
        ]
        page.screenshot(path="/tmp/ui-security.png", full_page=True)

        with tab(browser, server) as stranger:
            answer = stranger.page.goto("/feeds/unapproved-conda")
            assert answer is not None and answer.status == 401
            expect(stranger.page.get_by_test_id("error-login")).to_be_visible()
            stranger.page.goto("/")
            assert [r.get_attribute("data-name") for r in stranger.page.get_by_test_id("feed").all()] == [
                "approved-conda"
            ]
        with server.client() as anonymous:
            assert anonymous.get("/conda/public-conda/noarch/repodata.json").status_code == 401

        # A feed key: View/Download on public-conda, shown once, with ready-to-use channel commands.
        page.get_by_test_id("nav-apikeys").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("API Keys & Access Logs")
        page.get_by_test_id("kind-feed").check()
        expect(page.get_by_test_id("key-user")).to_be_hidden()
        page.get_by_test_id("key-feeds-choice").select_option(["public-conda"])
        expect(page.get_by_test_id("key-permissions-choice").get_by_label("View/Download")).to_be_checked()
        page.get_by_test_id("key-description").fill("public-conda readers")
        page.get_by_test_id("create-key").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("created")
        key = page.get_by_test_id("new-key").inner_text()
        assert key.startswith("cg-") and len(key) == 43
        host = server.url.removeprefix("http://")
        expect(page.get_by_test_id("snippet-basic")).to_have_text(
            f"conda config --add channels http://api:{key}@{host}/conda/public-conda/"
        )
        expect(page.get_by_test_id("snippet-token")).to_have_text(
            f"conda config --add channels http://{host}/t/{key}/conda/public-conda/"
        )
        page.get_by_test_id("copy-key").click()
        expect(page.get_by_test_id("copy-key")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == key
        page.screenshot(path="/tmp/ui-key-created.png", full_page=True)
        page.get_by_test_id("done").click()
        expect(page).to_have_url(f"{server.url}/apikeys")
        assert key not in page.content()  # shown once: never again
        rows = page.get_by_test_id("key")
        key_id = next(
            r.get_attribute("data-id") for r in rows.all() if r.get_by_test_id("key-hint").inner_text() == key[:7] + "…"
        )
        assert key_id is not None
        row = _key_row(page, key_id)
        expect(row.get_by_test_id("key-feeds")).to_have_text("public-conda")
        expect(row.get_by_test_id("key-permissions")).to_have_text("View/Download")
        expect(row.get_by_test_id("key-status")).to_have_text("active")
        expect(row.get_by_test_id("key-last-used")).to_have_text("never")
        expect(row).to_contain_text("public-conda readers")

        # A client without the key gets 401; with it (Basic auth, user "api"), the feed.
        repodata = "/conda/public-conda/noarch/repodata.json"
        with server.client() as client:
            assert client.get(repodata).status_code == 401
            assert client.get(repodata, auth=("api", key)).status_code == 200
            assert client.get("/conda/unapproved-conda/noarch/repodata.json", auth=("api", key)).status_code == 404

        row.get_by_test_id("key-log").click()
        expect(page).to_have_url(f"{server.url}/apikeys/{key_id}")
        used = page.locator('[data-testid="access"]', has=page.get_by_test_id("access-path").filter(has_text=repodata))
        _reload_until(page, used)
        first = used.first
        expect(first.get_by_test_id("access-method")).to_have_text("GET")
        expect(first.get_by_test_id("access-status")).to_have_text("200")
        expect(first.get_by_test_id("access-client")).to_have_text("127.0.0.1")
        denied = page.locator('[data-testid="access"][data-status="404"]')
        _reload_until(page, denied)
        expect(denied.get_by_test_id("access-path")).to_have_text("/conda/unapproved-conda/noarch/repodata.json")
        page.screenshot(path="/tmp/ui-access-log.png", full_page=True)

        page.goto("/apikeys")
        expect(row.get_by_test_id("key-last-used")).not_to_have_text("never")
        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_test_id("revoke").click()
        expect(row.get_by_test_id("key-status")).to_have_text("revoked")
        expect(row.get_by_test_id("revoke")).to_have_count(0)
        with server.client() as client:
            assert client.get(repodata, auth=("api", key)).status_code == 401

        # The connector list shows the proxy feed to the administrator (and, below, not to the lead).
        page.goto("/connectors")
        forge = page.locator('[data-testid="connector"][data-name="conda-forge"]')
        expect(forge).to_contain_text("hidden-proxy")

    with tab(browser, server) as lead_tab:
        page = lead_tab.page
        page.goto("/login")
        page.get_by_label("User name").fill(LEAD)
        page.get_by_label("Password").fill("first-password-1")  # the old one no longer works
        page.get_by_test_id("login-with-password").click()
        expect(page.get_by_test_id("error")).to_contain_text("user name or password is wrong")
        lead_tab.log_in_with_password(LEAD, "lead-password-2")
        expect(page.get_by_test_id("nav-security")).to_have_count(0)
        expect(page.get_by_test_id("nav-apikeys")).to_have_count(0)
        expect(page.get_by_test_id("nav-account")).to_be_visible()
        assert [r.get_attribute("data-name") for r in page.get_by_test_id("feed").all()] == [
            "approved-conda",
            "unapproved-conda",
        ]
        for path, status in [("/feeds/public-conda", 404), ("/security", 403), ("/apikeys", 403)]:
            answer = page.goto(path)
            assert answer is not None and answer.status == status, path
        page.goto("/connectors")
        forge = page.locator('[data-testid="connector"][data-name="conda-forge"]')
        expect(forge).to_be_visible()
        expect(forge).not_to_contain_text("hidden-proxy")
        page.goto("/connectors/conda-forge")
        expect(page.get_by_test_id("feeds")).not_to_contain_text("hidden-proxy")

        page.get_by_test_id("nav-account").click()
        expect(page).to_have_url(f"{server.url}/account")
        expect(page.get_by_test_id("account-method")).to_have_text("user name and password")
        expect(page.locator('[data-testid="feed-permissions"][data-feed="unapproved-conda"]')).to_have_text(
            "unapproved-conda: View/Download, Promote Packages"
        )
        expect(page.get_by_test_id("key")).to_have_count(0)  # the administrator's keys are not listed here
        page.get_by_test_id("key-permissions-choice").get_by_label("View/Download").check()
        page.get_by_test_id("create-key").click()
        personal = page.get_by_test_id("new-key").inner_text()
        page.get_by_test_id("done").click()
        expect(page).to_have_url(f"{server.url}/account")
        keys = page.get_by_test_id("key")
        expect(keys).to_have_count(1)
        expect(keys.first).to_contain_text(LEAD)
        expect(keys.first.get_by_test_id("key-permissions")).to_have_text("View/Download")
        with server.client() as client:
            assert client.get("/conda/unapproved-conda/noarch/repodata.json", auth=("api", personal)).status_code == 200
            assert client.get("/conda/public-conda/noarch/repodata.json", auth=("api", personal)).status_code == 404

        # A write with the session cookie but without the form's CSRF token is refused.
        cookies = _session_cookie(lead_tab)
        assert cookies and personal not in json.dumps(cookies)
        with httpx.Client(base_url=server.url, cookies=cookies) as browser_like:
            refused = browser_like.post("/apikeys", data={"kind": "personal", "back": "account"})
            assert refused.status_code == 403, refused.text
            assert "CSRF" in refused.text
            wrong = browser_like.post("/apikeys", data={"kind": "personal", "csrf_token": "x" * 40})
            assert wrong.status_code == 403
            token = _csrf_of(browser_like.get("/account").text)
            accepted = browser_like.post("/apikeys", data={"kind": "personal", "csrf_token": token})
            assert accepted.status_code == 201, accepted.text
        with server.admin() as admin:
            assert len([k for k in admin.get("/api/apikeys").json() if k["user"] == LEAD]) == 2

    # Logged in with a key instead of a password, the lead may not create keys: the service says why.
    with tab(browser, server) as key_tab:
        page = key_tab.page
        key_tab.log_in(personal)
        expect(page.get_by_test_id("who")).to_contain_text(LEAD)
        page.get_by_test_id("nav-account").click()
        expect(page.get_by_test_id("account-method")).to_contain_text("API key")
        expect(page.get_by_test_id("key-session-hint")).to_be_visible()
        with page.expect_response(lambda r: r.url.endswith("/apikeys") and r.request.method == "POST") as created:
            page.get_by_test_id("create-key").click()
        assert created.value.status == 403
        expect(page.get_by_test_id("error")).to_contain_text("log in with your user name and password")


def test_every_form_carries_the_sessions_csrf_token(server: Server, visit: Visit) -> None:
    page = visit.page
    visit.log_in(server.api_key)
    tokens: set[str | None] = set()
    for path in [
        "/",
        "/feeds/new",
        "/connectors",
        "/connectors/conda-forge",
        "/security",
        "/apikeys",
        "/account",
        "/login",
    ]:
        page.goto(path)
        posting = page.locator('form[method="post"]')
        assert posting.count() > 0, path
        for form in posting.all():
            field = form.locator('input[type="hidden"][name="csrf_token"]')
            expect(field).to_have_count(1)
            tokens.add(field.get_attribute("value"))
        # Never in a GET form: the token would end up in URLs, histories and logs.
        expect(page.locator('form:not([method="post"]) input[name="csrf_token"]')).to_have_count(0)
    assert len(tokens) == 1 and all(token and len(token) >= 20 for token in tokens), tokens

    name = "csrf-" + uuid.uuid4().hex[:8]
    with httpx.Client(base_url=server.url, cookies=_session_cookie(visit)) as browser_like:
        refused = browser_like.post("/feeds/new", data={"name": name, "kind": "hosted"})
        assert refused.status_code == 403
        assert browser_like.get(f"/api/feeds/{name}").status_code == 404
        created = browser_like.post("/feeds/new", data={"name": name, "kind": "hosted", "csrf_token": tokens.pop()})
        assert created.status_code == 303, created.text

    # Logging out ends the session on the server: the old cookie is worth nothing afterwards.
    cookies = _session_cookie(visit)
    page.goto("/")
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-link")).to_be_visible()
    with httpx.Client(base_url=server.url, cookies=cookies) as browser_like:
        assert browser_like.get("/api/me").json()["authenticated"] is False


def test_package_metadata_urls_link_only_when_http(server: Server, visit: Visit, feed: str, tmp_path: Path) -> None:
    spec = PackageSpec("linky", summary="links in about.json")
    about = {
        "summary": "links in about.json",
        "license": "MIT",
        "home": "javascript:alert(1)",
        "dev_url": "https://example.org/linky/dev",
        "doc_url": " JavaScript:alert(document.domain)",
    }
    path = write_with_metadata(tmp_path, ".conda", spec, about=json.dumps(about).encode())
    assert upload(server, feed, path).status_code == 201

    page = visit.page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"/feeds/{feed}/packages/linky")
    expect(page.get_by_test_id("about-home")).to_have_text("javascript:alert(1)")
    expect(page.get_by_test_id("about-home").locator("a")).to_have_count(0)
    expect(page.get_by_test_id("about-doc_url").locator("a")).to_have_count(0)
    expect(page.get_by_test_id("about-dev_url").get_by_role("link")).to_have_attribute(
        "href", "https://example.org/linky/dev"
    )
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
    assert not [h for h in hrefs if not h.startswith(("/", "#", "http://", "https://"))], hrefs
    page.get_by_test_id("about-home").click()
    page.get_by_test_id("about-doc_url").click()
    assert dialogs == []
    expect(page).to_have_url(f"{server.url}/feeds/{feed}/packages/linky")


def test_header_fits_a_phone(server: Server, visit: Visit) -> None:
    page = visit.page
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    overflow = "() => [document.documentElement.scrollWidth, document.querySelector('header.top').scrollWidth]"
    assert max(page.evaluate(overflow)) <= 390
    visit.log_in(server.api_key)  # the longest header: every link, the user's name, My account, Log out
    for path in ["/", "/security", "/apikeys", "/account", "/login", "/connectors"]:
        page.goto(path)
        header = page.locator("header.top")
        assert max(page.evaluate(overflow)) <= 390, path
        for element in header.locator("a, button, .name").all():
            box = element.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (path, element.inner_text())
    page.goto("/")
    page.screenshot(path="/tmp/ui-phone.png")


def test_a_user_who_may_only_view_manages_own_keys(server: Server, visit: Visit) -> None:
    """The most common user: View/Download only. "My account" still creates and revokes their own keys."""
    user, password = f"viewer-{uuid.uuid4().hex[:8]}@example.com", "viewer-" + uuid.uuid4().hex
    with server.admin() as admin:
        assert admin.post("/api/users", json={"name": user, "password": password}).status_code == 201
    page = visit.page
    visit.log_in_with_password(user, password)
    page.get_by_test_id("nav-account").click()
    expect(page.get_by_test_id("system-permissions")).to_have_text("On all feeds: View/Download")
    page.get_by_test_id("key-description").fill("my laptop")
    page.get_by_test_id("create-key").click()
    key = page.get_by_test_id("new-key").inner_text()
    expect(page.get_by_test_id("snippet-basic")).to_contain_text(f"http://api:{key}@")
    page.get_by_test_id("done").click()
    row = page.get_by_test_id("key")
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("key-note")).to_have_text("my laptop")
    with server.client() as client:
        assert client.get("/api/me", headers={"X-API-Key": key}).json()["user"] == user
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_test_id("revoke").click()
    expect(row.get_by_test_id("key-status")).to_have_text("revoked")
    with server.client() as client:
        assert client.get("/api/me", headers={"X-API-Key": key}).status_code == 401
