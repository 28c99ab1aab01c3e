"""The web UI of proxy feeds in a real headless Chromium: the wizard, connectors, cache marks, health."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import test_ui
from playwright.sync_api import Locator, Page, expect
from test_proxy_feed import make_proxy_feed
from test_ui import Visit

from package_factory import PackageSpec
from servers import Server
from upstream_channel import UpstreamChannel

# The fixtures shared with test_ui.py: a headless Chromium, a tab that records every request and
# fails the test on any request outside the server and on any failed request or script error.
browser = test_ui.browser
visit = test_ui.visit


UPSTREAM_NAMES = ["numpy", "numpy-dbg", "pure", "python", "requests"]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _create_connector(server: Server, url: str, **fields: object) -> str:
    name = _name("up")
    with server.admin() as client:
        response = client.post("/api/connectors", json={"name": name, "url": url, **fields})
        assert response.status_code == 201, response.text
    return name


def _names(rows: Locator) -> list[str | None]:
    return [row.get_attribute("data-name") for row in rows.all()]


def _package_row(page: Page, name: str) -> Locator:
    return page.locator(f'[data-testid="package"][data-name="{name}"]')


def _reload_until(page: Page, ready: Callable[[], bool], seconds: float = 15) -> None:
    """Download counts reach the database in batches (every 0.2 s in tests): reload until they show."""
    deadline = time.monotonic() + seconds
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.2)
        page.reload()


def test_wizard_creates_a_proxy_feed_of_a_connector(server: Server, visit: Visit, upstream: UpstreamChannel) -> None:
    connector = _create_connector(server, upstream.url)
    page = visit.page
    visit.log_in(server.api_key)
    page.get_by_test_id("create-feed").click()
    expect(page).to_have_url(f"{server.url}/feeds/new")

    # Hosted or an upstream; the built-in connectors and the one just created are offered by name.
    expect(page.get_by_role("radio", name="Hosted")).to_be_checked()
    choices = page.get_by_test_id("connector-choices")
    for offered in ("anaconda", "conda-forge", connector):
        expect(choices.get_by_role("radio", name=offered, exact=False).first).to_be_visible()
    expect(choices).to_contain_text("https://repo.anaconda.com/pkgs/main")
    expect(choices).to_contain_text("https://conda.anaconda.org/conda-forge")
    expect(choices).to_contain_text(upstream.url)

    page.screenshot(path="/tmp/ui-feed-wizard.png", full_page=True)
    name_field = page.get_by_label("Name", exact=True)
    name = _name("public-conda")
    # An upstream without a connector, then a bad name: clear errors, what was typed and picked stays.
    page.get_by_role("radio", name="Connect to an upstream").check()
    name_field.fill(name)
    page.get_by_role("button", name="Create feed").click()
    expect(page.get_by_test_id("error")).to_contain_text("choose the upstream connector")
    expect(name_field).to_have_value(name)
    expect(page.get_by_role("radio", name="Connect to an upstream")).to_be_checked()

    page.get_by_role("radio", name="Hosted").check()
    connector_radio = choices.locator(f'input[value="{connector}"]')
    connector_radio.check()  # picking a connector switches the kind to a proxy feed
    expect(page.get_by_role("radio", name="Connect to an upstream")).to_be_checked()
    name_field.fill("bad name")
    page.get_by_role("button", name="Create feed").click()
    expect(page.get_by_test_id("error")).to_contain_text("invalid feed name")
    expect(name_field).to_have_value("bad name")
    expect(connector_radio).to_be_checked()
    expect(page.get_by_role("radio", name="Connect to an upstream")).to_be_checked()

    name_field.fill(name)
    page.get_by_label("Description").fill("public packages, cached")
    page.get_by_role("button", name="Create feed").click()

    # The new feed's page lists the upstream's packages at once, none of them cached yet.
    expect(page).to_have_url(f"{server.url}/feeds/{name}")
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    expect(page.get_by_test_id("kind")).to_have_text("Proxy")
    expect(page.get_by_test_id("upstream").get_by_role("link")).to_have_attribute("href", f"/connectors/{connector}")
    expect(page.get_by_test_id("package-count")).to_have_text("5 packages")
    assert _names(page.get_by_test_id("package")) == UPSTREAM_NAMES
    expect(page.get_by_test_id("cached")).to_have_text(["not cached"] * 5)
    expect(page.get_by_test_id("stale")).to_have_count(0)
    expect(page.get_by_test_id("downloads-total")).to_contain_text("No downloads")
    with server.client() as client:
        shown = client.get(f"/api/feeds/{name}").json()
    assert shown["kind"] == "proxy" and shown["connectors"] == [connector]
    assert shown["description"] == "public packages, cached"

    page.goto("/feeds/new")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_test_id("connector-choices").locator(f'input[value="{connector}"]').check()
    page.get_by_role("button", name="Create feed").click()
    expect(page.get_by_test_id("error")).to_contain_text(name)  # taken

    page.goto("/")
    row = page.locator(f'[data-testid="feed"][data-name="{name}"]')
    expect(row.get_by_test_id("kind")).to_have_text("Proxy")
    expect(row).to_contain_text(connector)
    page.screenshot(path="/tmp/ui-feeds-with-proxy.png", full_page=True)


def test_proxy_feed_page_cache_marks_downloads_and_package_chart(
    server: Server, visit: Visit, upstream: UpstreamChannel
) -> None:
    connector, feed = make_proxy_feed(server, upstream.url)
    numpy_file = "numpy-2.0.0-py311h0_0.conda"
    with server.client() as client:
        for _ in range(2):
            assert client.get(f"/conda/{feed}/linux-64/{numpy_file}").status_code == 200
        assert client.get(f"/conda/{feed}/noarch/requests-2.32.3-pyhd_0.conda").status_code == 200

    page = visit.page
    page.goto(f"/feeds/{feed}")
    top = page.get_by_test_id("top-package")
    # The counts are flushed in batches: one page may read the rows just before a flush and the ranking
    # just after it, so wait for a page where both are complete.
    _reload_until(
        page,
        lambda: top.count() == 2
        and top.first.get_attribute("data-count") == "2"
        and _package_row(page, "numpy").locator("td").last.inner_text() == "2"
        and _package_row(page, "requests").locator("td").last.inner_text() == "1",
    )
    assert _names(top) == ["numpy", "requests"]
    assert [item.get_attribute("data-count") for item in top.all()] == ["2", "1"]
    expect(page.get_by_test_id("downloads-total")).to_have_text("3 downloads in the last 30 days")
    today = datetime.now(UTC).date().isoformat()
    expect(page.locator(f'[data-testid="feed-downloads-chart"] [data-day="{today}"]')).to_have_attribute(
        "data-count", "3"
    )

    expect(page.get_by_test_id("package-count")).to_have_text("5 packages")
    expect(page.get_by_test_id("listed-subdirs")).to_contain_text("linux-64, noarch")
    for name, cached, downloads in [
        ("numpy", "cached 1/2", "2"),
        ("numpy-dbg", "not cached", "0"),
        ("pure", "not cached", "0"),
        ("python", "not cached", "0"),
        ("requests", "cached 1/1", "1"),
    ]:
        row = _package_row(page, name)
        expect(row.get_by_test_id("cached")).to_have_text(cached)
        expect(row.locator("td").last).to_have_text(downloads)
    expect(_package_row(page, "numpy").locator("td").nth(1)).to_have_text("2.0.0")
    page.screenshot(path="/tmp/ui-proxy-feed.png", full_page=True)

    search = page.get_by_test_id("search")
    search.fill("numpy")
    search.press("Enter")
    expect(page.get_by_test_id("package-count")).to_have_text("2 packages matching “numpy”")
    assert _names(page.get_by_test_id("package")) == ["numpy", "numpy-dbg"]

    _package_row(page, "numpy").get_by_role("link", name="numpy", exact=True).click()
    expect(page).to_have_url(f"{server.url}/feeds/{feed}/packages/numpy")
    expect(page.get_by_test_id("latest")).to_have_text("2.0.0")
    expect(page.get_by_test_id("origins").get_by_role("link", name=connector)).to_have_attribute(
        "href", f"/connectors/{connector}"
    )
    expect(page.get_by_test_id("origins")).to_contain_text("1 of 2 upstream files cached")
    newest = page.locator(f'[data-testid="file"][data-filename="{numpy_file}"]')
    older = page.locator('[data-testid="file"][data-filename="numpy-1.26.4-py311h0_0.conda"]')
    expect(newest.get_by_test_id("origin")).to_have_text(connector)
    expect(newest.get_by_test_id("cached")).to_have_text("cached")
    expect(newest.get_by_test_id("downloads")).to_have_text("2")
    expect(older.get_by_test_id("origin")).to_have_text(connector)
    expect(older.get_by_test_id("cached")).to_have_text("not cached")
    expect(older.get_by_test_id("downloads")).to_have_text("0")
    expect(page.get_by_test_id("total-downloads")).to_have_text("2")

    # The chart: 30 days up to today, drawn by the server as inline SVG, one bar (today's).
    chart = page.get_by_test_id("downloads-chart")
    expect(chart).to_be_visible()
    assert chart.evaluate("e => e.tagName") == "svg"
    expect(chart.get_by_test_id("day")).to_have_count(30)
    today_bar = chart.locator(f'[data-day="{today}"]')
    expect(today_bar).to_have_attribute("data-count", "2")
    expect(chart.get_by_test_id("bar")).to_have_count(1)
    bar = today_bar.get_by_test_id("bar")
    assert float(bar.get_attribute("height") or 0) > 50
    assert bar.bounding_box() is not None and bar.bounding_box()["height"] > 20  # type: ignore[index]
    expect(today_bar.locator("title")).to_have_text(f"{today}: 2 downloads")
    page.screenshot(path="/tmp/ui-proxy-package.png", full_page=True)

    # Downloading the other version through the UI's own link caches it.
    with page.expect_download() as download:
        older.get_by_role("link", name="numpy-1.26.4-py311h0_0.conda").click()
    assert download.value.failure() is None
    page.reload()
    expect(older.get_by_test_id("cached")).to_have_text("cached")
    page.goto(f"/feeds/{feed}")
    expect(_package_row(page, "numpy").get_by_test_id("cached")).to_have_text("cached 2/2")


def test_stale_banner_when_the_upstream_is_down(server: Server, visit: Visit, upstream: UpstreamChannel) -> None:
    connector, feed = make_proxy_feed(server, upstream.url, cache_minutes=0)
    page = visit.page
    page.goto(f"/feeds/{feed}")
    expect(page.get_by_test_id("package-count")).to_have_text("5 packages")
    expect(page.get_by_test_id("stale")).to_have_count(0)

    upstream.stop()
    page.reload()
    banner = page.get_by_test_id("stale")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("last good listing")
    stale = banner.get_by_test_id("stale-upstream")
    assert sorted((s.get_attribute("data-connector"), s.get_attribute("data-subdir")) for s in stale.all()) == [
        (connector, "linux-64"),
        (connector, "noarch"),
    ]
    expect(stale.first).to_contain_text("unreachable")
    expect(stale.first.locator("time")).to_have_count(2)  # when it failed, when it last worked
    expect(banner.get_by_role("link", name=connector).first).to_have_attribute("href", f"/connectors/{connector}")
    # The last good listing is still shown.
    expect(page.get_by_test_id("package-count")).to_have_text("5 packages")
    assert _names(page.get_by_test_id("package")) == UPSTREAM_NAMES
    page.screenshot(path="/tmp/ui-proxy-stale.png")

    banner.get_by_role("link", name=connector).first.click()
    expect(page).to_have_url(f"{server.url}/connectors/{connector}")
    expect(page.get_by_test_id("health-summary")).to_have_text("failing")
    linux = page.locator('[data-testid="subdir-health"][data-subdir="linux-64"]')
    expect(linux.get_by_test_id("status")).to_have_text("failing")
    expect(linux.get_by_test_id("records")).to_have_text("4")
    expect(linux.get_by_test_id("last-error")).to_contain_text("unreachable")
    expect(linux.get_by_test_id("last-error").locator("time")).to_have_count(1)
    expect(linux.get_by_test_id("last-success").locator("time")).to_have_count(1)

    # Failing: the page says since when, and when the next check is due (the back-off).
    expect(linux.get_by_test_id("failing-since").locator("time")).to_have_count(1)
    expect(linux.get_by_test_id("next-try").locator("time")).to_have_count(1)

    upstream.start()
    # A failure is remembered for a back-off; "refresh now" checks at once.
    with server.admin() as admin:
        refreshed = admin.post(f"/api/connectors/{connector}/refresh", json={"subdirs": ["linux-64", "noarch"]})
        assert refreshed.status_code == 200, refreshed.text
    page.goto(f"/feeds/{feed}")
    expect(page.get_by_test_id("stale")).to_have_count(0)
    page.goto(f"/connectors/{connector}")
    expect(linux.get_by_test_id("status")).to_have_text("OK")
    expect(linux.get_by_test_id("last-error")).to_contain_text("it last failed")


def test_connector_pages_create_health_and_refresh_now(server: Server, visit: Visit, upstream: UpstreamChannel) -> None:
    password = "s3cret-" + uuid.uuid4().hex[:6]
    upstream.faults.required_authorization = "Basic " + base64.b64encode(f"mirror:{password}".encode()).decode()
    page = visit.page

    # Anonymous users see connectors, but neither the create form nor "Refresh now".
    page.goto("/")
    page.get_by_test_id("nav-connectors").click()
    expect(page).to_have_url(f"{server.url}/connectors")
    for built_in, url in [
        ("anaconda", "https://repo.anaconda.com/pkgs/main"),
        ("conda-forge", "https://conda.anaconda.org/conda-forge"),
    ]:
        expect(page.locator(f'[data-testid="connector"][data-name="{built_in}"]')).to_contain_text(url)
    expect(page.get_by_test_id("connector-form")).to_have_count(0)
    page.goto("/connectors/anaconda")
    expect(page.get_by_test_id("url")).to_have_text("https://repo.anaconda.com/pkgs/main")
    expect(page.get_by_test_id("refresh")).to_have_count(0)
    with server.client() as client:
        assert client.post("/connectors/anaconda/refresh").status_code == 401

    visit.log_in(server.api_key)
    page.goto("/connectors")
    form = page.get_by_test_id("connector-form")
    name = _name("mirror")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Upstream URL").fill("ftp://example.org/channel")
    form.get_by_label("Exclude packages").fill("*-dbg")
    form.get_by_label("Subdirs").fill("linux-64, noarch")
    form.get_by_label("Cache lifetime (minutes)").fill("5")
    form.get_by_label("Timeout (seconds)").fill("10")
    form.get_by_label("Username").fill("mirror")
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Create connector").click()
    expect(page.get_by_test_id("error")).to_contain_text("http(s)")
    expect(form.get_by_label("Name", exact=True)).to_have_value(name)
    expect(form.get_by_label("Subdirs")).to_have_value("linux-64, noarch")
    expect(form.get_by_label("Password")).to_have_value("")  # secrets are never sent back
    assert password not in page.content()

    form.get_by_label("Upstream URL").fill(upstream.url)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Create connector").click()
    expect(page).to_have_url(f"{server.url}/connectors/{name}")
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    expect(page.get_by_test_id("url")).to_have_text(upstream.url)
    expect(page.get_by_test_id("include")).to_have_text("all packages")
    expect(page.get_by_test_id("exclude")).to_have_text("*-dbg")
    expect(page.get_by_test_id("subdirs")).to_have_text("linux-64, noarch")
    expect(page.get_by_test_id("cache")).to_have_text("5 minutes")
    expect(page.get_by_test_id("timeout")).to_have_text("10 s")
    expect(page.get_by_test_id("authentication")).to_have_text("username and password (basic)")
    expect(page.get_by_test_id("feeds")).to_contain_text("no feed")
    expect(page.get_by_test_id("cached")).to_have_text("0 package files, 0 Bytes")
    expect(page.get_by_test_id("no-health")).to_be_visible()
    assert password not in page.content()

    page.get_by_test_id("refresh").click()
    expect(page).to_have_url(f"{server.url}/connectors/{name}?refreshed=ok")
    expect(page.get_by_test_id("refresh-result")).to_contain_text("Refreshed")
    health = page.get_by_test_id("subdir-health")
    assert [row.get_attribute("data-subdir") for row in health.all()] == ["linux-64", "noarch"]
    linux = page.locator('[data-testid="subdir-health"][data-subdir="linux-64"]')
    expect(linux.get_by_test_id("records")).to_have_text("3")  # numpy-dbg excluded
    expect(page.locator('[data-testid="subdir-health"] [data-testid="records"]').last).to_have_text("2")
    expect(health.get_by_test_id("status")).to_have_text(["OK", "OK"])
    expect(linux.get_by_test_id("last-success").locator("time")).to_have_count(1)
    expect(linux.get_by_test_id("last-error")).to_have_text("none")
    expect(linux.get_by_test_id("response-time")).to_have_text(re.compile(r"^\d+ ms$"))

    # A proxy feed straight from the connector's page; "Refresh now" picks up an upstream change.
    page.get_by_role("link", name="create a proxy feed").click()
    expect(page.get_by_role("radio", name="Connect to an upstream")).to_be_checked()
    expect(page.get_by_test_id("connector-choices").locator(f'input[value="{name}"]')).to_be_checked()
    feed = _name("mirrored")
    page.get_by_label("Name", exact=True).fill(feed)
    page.get_by_role("button", name="Create feed").click()
    expect(page).to_have_url(f"{server.url}/feeds/{feed}")
    assert _names(page.get_by_test_id("package")) == ["numpy", "pure", "python", "requests"]
    expect(_package_row(page, "numpy").locator("td").nth(1)).to_have_text("2.0.0")

    upstream.add(PackageSpec("numpy", "2.1.0", "py311h0_0", subdir="linux-64"))
    upstream.index()
    page.reload()
    expect(_package_row(page, "numpy").locator("td").nth(1)).to_have_text("2.0.0")  # within its cache lifetime
    page.get_by_test_id("upstream").get_by_role("link", name=name).click()
    expect(page.get_by_test_id("feeds").get_by_role("link", name=feed)).to_have_attribute("href", f"/feeds/{feed}")
    page.get_by_test_id("refresh").click()
    expect(page.get_by_test_id("refresh-result")).to_contain_text("Refreshed")
    expect(linux.get_by_test_id("records")).to_have_text("4")
    page.goto(f"/feeds/{feed}")
    expect(_package_row(page, "numpy").locator("td").nth(1)).to_have_text("2.1.0")

    with server.client() as client:
        assert client.get(f"/conda/{feed}/noarch/pure-1.0-0.tar.bz2").status_code == 200
    page.goto(f"/connectors/{name}")
    expect(page.get_by_test_id("cached")).to_contain_text("1 package file,")

    # The upstream fails: "Refresh now" says so, and the health table shows the error and when.
    upstream.faults.status = 500
    page.get_by_test_id("refresh").click()
    expect(page).to_have_url(f"{server.url}/connectors/{name}?refreshed=failed")
    expect(page.get_by_test_id("refresh-result")).to_contain_text("failed")
    expect(linux.get_by_test_id("status")).to_have_text("failing")
    expect(linux.get_by_test_id("last-error")).to_contain_text("500")
    expect(linux.get_by_test_id("last-error").locator("time")).to_have_count(1)
    expect(linux.get_by_test_id("records")).to_have_text("4")
    page.screenshot(path="/tmp/ui-connector.png", full_page=True)
    assert password not in page.content()

    page.goto("/connectors")
    row = page.locator(f'[data-testid="connector"][data-name="{name}"]')
    expect(row.get_by_test_id("connector-health")).to_contain_text("failing")
    page.screenshot(path="/tmp/ui-connectors.png", full_page=True)
    expect(row).to_contain_text(feed)
    expect(row).to_contain_text("basic")
    assert password not in page.content()
    with server.admin() as client:
        assert password not in client.get(f"/connectors/{name}").text


def test_proxy_pages_load_only_from_the_server(server: Server, visit: Visit, upstream: UpstreamChannel) -> None:
    connector, feed = make_proxy_feed(server, upstream.url)
    page = visit.page
    visit.log_in(server.api_key)
    for path in [
        "/connectors",
        f"/connectors/{connector}",
        f"/feeds/{feed}",
        f"/feeds/{feed}/packages/numpy",
        "/feeds/new",
    ]:
        visit.requests.clear()
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        assert visit.requests[0] == server.url + path
        assert {f"{server.url}/static/style.css", f"{server.url}/static/app.js"} <= set(visit.requests)
        assert all(url.startswith(server.url + "/") for url in visit.requests), visit.requests
        assert page.eval_on_selector("header.top", "e => getComputedStyle(e).backgroundColor") == "rgb(29, 36, 48)"
    missing = page.goto("/connectors/no-such-connector")
    assert missing is not None and missing.status == 404
    expect(page.get_by_test_id("error")).to_contain_text("no-such-connector")
