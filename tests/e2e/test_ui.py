"""The web UI in a real headless Chromium: feeds, creating one, a feed's page, a package's page."""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, Response, expect, sync_playwright

from conftest import upload
from servers import Server

MakePackage = Callable[..., Path]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed here (apt-get install chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Visit:
    """A browser tab on the server that records every request it makes and every script error."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.server = server
        self.context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.failures: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("requestfailed", self._check_failure)
        self.page.on("pageerror", lambda error: self.failures.append(f"script error: {error}"))
        self.page.on("response", self._check_asset)

    def _check_failure(self, request: Request) -> None:
        # A request the browser itself abandons (the next navigation started first) is not a failure.
        if request.failure != "net::ERR_ABORTED":
            self.failures.append(f"{request.url}: {request.failure}")

    def _check_asset(self, response: Response) -> None:
        if response.request.resource_type != "document" and response.status >= 400:
            self.failures.append(f"{response.url}: HTTP {response.status}")

    def log_in(self, key: str) -> None:
        """Log in with an API key (the log-in page's second form)."""
        self.page.goto("/login")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_test_id("login-with-key").click()
        expect(self.page.get_by_test_id("who")).to_be_visible()

    def log_in_with_password(self, user: str, password: str) -> None:
        self.page.goto("/login")
        self.page.get_by_label("User name").fill(user)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_test_id("login-with-password").click()
        expect(self.page.get_by_test_id("who")).to_have_text(user)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser: Browser, server: Server) -> Iterator[Visit]:
    tab = Visit(browser, server)
    yield tab
    tab.close()
    # Every page of every test loads only from the server itself: no CDN, no web fonts, no trackers.
    elsewhere = [url for url in tab.requests if not url.startswith(server.url + "/")]
    assert not elsewhere, f"requests outside the server: {elsewhere}"
    assert not tab.failures, tab.failures


def _create_feed(server: Server, description: str = "") -> str:
    name = "ui-" + uuid.uuid4().hex[:8]
    with server.admin() as client:
        response = client.post("/api/feeds", json={"name": name, "description": description})
        assert response.status_code == 201, response.text
    return name


def test_feeds_list_shows_feeds_with_links(server: Server, visit: Visit) -> None:
    first = _create_feed(server, "first team feed")
    second = _create_feed(server, "second team feed")
    page = visit.page
    page.goto("/")
    expect(page).to_have_title("Feeds · condagate")
    for name, description in [(first, "first team feed"), (second, "second team feed")]:
        row = page.locator(f'[data-testid="feed"][data-name="{name}"]')
        expect(row).to_contain_text(description)
        expect(row.get_by_role("link", name=name)).to_have_attribute("href", f"/feeds/{name}")
    page.get_by_role("link", name=second).click()
    expect(page).to_have_url(f"{server.url}/feeds/{second}")
    expect(page.get_by_role("heading", level=1)).to_have_text(second)


def test_anonymous_users_cannot_create_feeds_and_are_sent_to_log_in(server: Server, visit: Visit) -> None:
    page = visit.page
    page.goto("/")
    expect(page.get_by_test_id("login-link")).to_be_visible()
    expect(page.get_by_test_id("create-feed")).to_have_count(0)
    expect(page.get_by_text("Create new feed")).to_have_count(0)

    response = page.goto("/feeds/new")
    assert response is not None and response.status == 401
    assert response.headers["content-type"].startswith("text/html")
    # No Basic challenge on pages: it would open the browser's password dialog instead of this page.
    assert "www-authenticate" not in response.headers
    expect(page.get_by_test_id("error")).to_contain_text("needs credentials")
    expect(page.locator("form.form")).to_have_count(0)
    login = page.get_by_test_id("error-login")
    expect(login).to_have_attribute("href", "/login?next=/feeds/new")

    login.click()
    expect(page).to_have_url(f"{server.url}/login?next=/feeds/new")
    # Two ways in, on one page: a user name and password, or an API key.
    expect(page.get_by_test_id("login-password").get_by_label("User name")).to_be_visible()
    expect(page.get_by_test_id("login-password").get_by_label("Password")).to_be_visible()
    expect(page.get_by_test_id("login-key").get_by_label("API key")).to_be_visible()
    page.get_by_label("User name").fill("nobody@example.com")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_test_id("login-with-password").click()
    expect(page.get_by_test_id("error")).to_contain_text("user name or password is wrong")
    expect(page.get_by_label("User name")).to_have_value("nobody@example.com")  # kept; the password is not
    expect(page.get_by_label("Password")).to_have_value("")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_test_id("login-with-key").click()
    expect(page.get_by_test_id("error")).to_contain_text("not valid")
    page.get_by_label("API key").fill(server.api_key)
    page.get_by_test_id("login-with-key").click()
    expect(page).to_have_url(f"{server.url}/feeds/new")
    expect(page.get_by_role("heading", name="Create new feed")).to_be_visible()
    # The browser holds a session id, never the key itself.
    cookies = visit.context.cookies()
    assert [c["name"] for c in cookies] == ["condagate_session"]
    assert server.api_key not in cookies[0]["value"] and cookies[0]["httpOnly"]


def test_admin_creates_a_feed_in_the_browser(server: Server, visit: Visit) -> None:
    page = visit.page
    visit.log_in(server.api_key)
    expect(page).to_have_url(f"{server.url}/")
    page.get_by_test_id("create-feed").click()
    expect(page).to_have_url(f"{server.url}/feeds/new")

    name_field = page.get_by_label("Name")
    for bad, message in [("has space", "invalid feed name"), ("api", "reserved"), ("-dash", "invalid feed name")]:
        name_field.fill(bad)
        page.get_by_role("button", name="Create feed").click()
        error = page.get_by_test_id("error")
        expect(error).to_be_visible()
        expect(error).to_contain_text(message)
        expect(name_field).to_have_value(bad)

    name = "team-" + uuid.uuid4().hex[:8]
    name_field.fill(name)
    page.get_by_label("Description").fill("made in the browser")
    page.get_by_role("button", name="Create feed").click()
    expect(page).to_have_url(f"{server.url}/feeds/{name}")
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    expect(page.get_by_text("made in the browser")).to_be_visible()
    expect(page.get_by_test_id("package-count")).to_have_text("0 packages")

    page.goto("/feeds/new")
    name_field.fill(name)
    page.get_by_role("button", name="Create feed").click()
    expect(page.get_by_test_id("error")).to_contain_text(name)

    with server.client() as client:
        assert client.get(f"/api/feeds/{name}").json()["description"] == "made in the browser"
    page.goto("/")
    expect(page.locator(f'[data-testid="feed"][data-name="{name}"]')).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_test_id("login-link")).to_be_visible()
    expect(page.get_by_test_id("create-feed")).to_have_count(0)


def test_feed_page_snippet_search_and_paging(server: Server, visit: Visit, make_package: MakePackage) -> None:
    feed = _create_feed(server, "feed page walk-through")
    names = [f"bulk{i:02d}" for i in range(27)] + ["needle-one", "needle-two", "haystack"]
    for name in names:
        assert upload(server, feed, make_package(name, summary=f"{name} does things")).status_code == 201

    page = visit.page
    page.goto(f"/feeds/{feed}")
    channel = f"{server.url}/conda/{feed}"
    expect(page.get_by_test_id("feed-url")).to_have_text(channel)
    expect(page.get_by_test_id("conda-snippet")).to_have_text(f"conda config --add channels {channel}")
    page.get_by_test_id("copy-snippet").click()
    expect(page.get_by_test_id("copy-snippet")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == f"conda config --add channels {channel}"

    expect(page.get_by_test_id("package-count")).to_have_text("30 packages")
    rows = page.get_by_test_id("package")
    expect(rows).to_have_count(25)
    expect(rows.first).to_have_attribute("data-name", "bulk00")
    expect(page.get_by_test_id("page")).to_have_text("Page 1 of 2")
    page.screenshot(path="/tmp/ui-feed.png", full_page=True)
    page.get_by_role("link", name="Next →").click()
    expect(page.get_by_test_id("page")).to_have_text("Page 2 of 2")
    assert [row.get_attribute("data-name") for row in rows.all()] == [
        "bulk25", "bulk26", "haystack", "needle-one", "needle-two",
    ]
    expect(page.get_by_role("link", name="Next →")).to_have_count(0)
    page.get_by_role("link", name="← Previous").click()
    expect(page.get_by_test_id("page")).to_have_text("Page 1 of 2")

    search = page.get_by_test_id("search")
    search.fill("NEEDLE")
    search.press("Enter")
    expect(page).to_have_url(f"{server.url}/feeds/{feed}?q=NEEDLE")
    expect(page.get_by_test_id("package-count")).to_have_text("2 packages matching “NEEDLE”")
    expect(rows).to_have_count(2)
    assert [row.get_attribute("data-name") for row in rows.all()] == ["needle-one", "needle-two"]
    expect(page.get_by_test_id("pager")).to_have_count(0)
    expect(search).to_have_value("NEEDLE")
    expect(rows.first).to_contain_text("needle-one does things")

    search.fill("bulk")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_test_id("package-count")).to_have_text("27 packages matching “bulk”")
    page.get_by_role("link", name="Next →").click()
    expect(page).to_have_url(f"{server.url}/feeds/{feed}?q=bulk&page=2")
    assert [row.get_attribute("data-name") for row in rows.all()] == ["bulk25", "bulk26"]

    search.fill("no-such-thing")
    search.press("Enter")
    expect(page.get_by_test_id("package-count")).to_have_text("0 packages matching “no-such-thing”")
    expect(page.get_by_text("No package matches “no-such-thing”.")).to_be_visible()

    page.get_by_role("link", name="Clear").click()
    expect(page).to_have_url(f"{server.url}/feeds/{feed}")
    expect(page.get_by_test_id("package-count")).to_have_text("30 packages")
    page.get_by_role("link", name="bulk03").click()
    expect(page).to_have_url(f"{server.url}/feeds/{feed}/packages/bulk03")


def test_package_page_versions_files_checksums_and_downloads(
    server: Server, visit: Visit, make_package: MakePackage
) -> None:
    feed = _create_feed(server)
    old = make_package("widget", version="1.9", build="h1_0", subdir="linux-64", license="BSD-3-Clause",
                       depends=["python >=3.9", "libzlib >=1.2.13,<2.0a0"], summary="Widgets for everyone")
    new_linux = make_package("widget", version="1.10", build="h2_0", subdir="linux-64", license="BSD-3-Clause",
                             depends=["python >=3.10", "libzlib >=1.3,<2.0a0"], constrains=["gadget <2"],
                             summary="Widgets for everyone")
    new_noarch = make_package("widget", ".tar.bz2", version="1.10", build="pyh_0", subdir="noarch",
                              license="BSD-3-Clause", depends=["python >=3.10"], summary="Widgets for everyone")
    for path in (new_noarch, old, new_linux):  # upload order must not decide the version order
        assert upload(server, feed, path).status_code == 201

    with server.client() as client:
        for _ in range(2):
            response = client.get(f"/conda/{feed}/linux-64/{new_linux.name}")
            assert response.status_code == 200 and response.content == new_linux.read_bytes()

    page = visit.page
    page.goto(f"/feeds/{feed}")
    page.get_by_role("link", name="widget").click()
    expect(page).to_have_url(f"{server.url}/feeds/{feed}/packages/widget")
    expect(page.get_by_role("heading", level=1)).to_have_text("widget")
    expect(page.get_by_test_id("latest")).to_have_text("1.10")
    expect(page.get_by_test_id("summary")).to_have_text("Widgets for everyone")
    expect(page.get_by_test_id("license")).to_have_text("BSD-3-Clause")
    expect(page.get_by_test_id("install")).to_have_text(f"conda install -c {server.url}/conda/{feed} widget")

    versions = page.get_by_test_id("version")
    expect(versions).to_have_count(2)
    assert [v.get_attribute("data-version") for v in versions.all()] == ["1.10", "1.9"]
    newest = versions.nth(0).get_by_test_id("file")
    assert [(f.get_attribute("data-subdir"), f.get_attribute("data-filename")) for f in newest.all()] == [
        ("linux-64", new_linux.name),
        ("noarch", new_noarch.name),
    ]

    for path, subdir, depends in [
        (new_linux, "linux-64", ["python >=3.10", "libzlib >=1.3,<2.0a0"]),
        (new_noarch, "noarch", ["python >=3.10"]),
        (old, "linux-64", ["python >=3.9", "libzlib >=1.2.13,<2.0a0"]),
    ]:
        row = page.locator(f'[data-testid="file"][data-filename="{path.name}"]')
        data = path.read_bytes()
        expect(row.get_by_test_id("subdir")).to_have_text(subdir)
        expect(row.get_by_role("link", name=path.name)).to_have_attribute("href", f"/conda/{feed}/{subdir}/{path.name}")
        expect(row.get_by_test_id("size")).to_have_attribute("title", f"{len(data)} bytes")
        expect(row.get_by_test_id("sha256")).to_have_text(hashlib.sha256(data).hexdigest())
        expect(row.get_by_test_id("md5")).to_have_text(hashlib.md5(data).hexdigest())  # noqa: S324
        expect(row.get_by_test_id("depends").locator("li")).to_have_text(depends)
    expect(page.locator(f'[data-testid="file"][data-filename="{new_linux.name}"]')).to_contain_text("gadget <2")
    expect(page.locator(f'[data-testid="file"][data-filename="{new_linux.name}"]')).to_contain_text("1.0 kB")

    # Download counts reach the database in batches (every 0.2 s in tests): reload until they show.
    downloads = page.locator(f'[data-testid="file"][data-filename="{new_linux.name}"] [data-testid="downloads"]')
    deadline = time.monotonic() + 15
    while downloads.inner_text() != "2" and time.monotonic() < deadline:
        time.sleep(0.2)
        page.reload()
    expect(downloads).to_have_text("2")
    expect(page.get_by_test_id("total-downloads")).to_have_text("2")
    old_downloads = page.locator(f'[data-testid="file"][data-filename="{old.name}"] [data-testid="downloads"]')
    expect(old_downloads).to_have_text("0")
    page.screenshot(path="/tmp/ui-package.png", full_page=True)

    page.goto(f"/feeds/{feed}")
    expect(page.locator('[data-testid="package"][data-name="widget"] td').last).to_have_text("2")
    missing = page.goto(f"/feeds/{feed}/packages/no-such-package")
    assert missing is not None and missing.status == 404
    expect(page.get_by_test_id("error")).to_contain_text("no-such-package")


def test_pages_load_assets_only_from_the_server(server: Server, visit: Visit, make_package: MakePackage) -> None:
    feed = _create_feed(server)
    assert upload(server, feed, make_package("local-only")).status_code == 201
    page = visit.page
    for path in ["/", f"/feeds/{feed}", f"/feeds/{feed}/packages/local-only", "/login", "/feeds/new"]:
        visit.requests.clear()
        page.goto(path)
        assert visit.requests[0] == server.url + path
        assert {f"{server.url}/static/style.css", f"{server.url}/static/app.js"} <= set(visit.requests), visit.requests
        assert all(url.startswith(server.url + "/") for url in visit.requests), visit.requests
        # The stylesheet really applied: the header bar is dark, not the browser's default.
        assert page.eval_on_selector("header.top", "e => getComputedStyle(e).backgroundColor") == "rgb(29, 36, 48)"


def test_api_docs_render_from_local_assets(server: Server, visit: Visit) -> None:
    page = visit.page
    page.goto("/api/docs")
    expect(page.locator(".swagger-ui .title").first).to_contain_text("condagate")
    expect(page.get_by_text("/api/feeds/{feed}/upload/{filename}").first).to_be_visible()
    assert f"{server.url}/api/docs-assets/swagger-ui-bundle.js" in visit.requests
    assert all(url.startswith(server.url + "/") for url in visit.requests), visit.requests
