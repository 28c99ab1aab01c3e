"""Managing what was created: updating feeds and connectors, deleting a connector in use, checking an
upstream before a connector is saved; through the REST API, the web UI's forms and the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import upload
from package_factory import PackageSpec
from rattler_client import query
from servers import Server, condagate_command, free_port, start_server
from upstream_channel import UpstreamChannel

Channels = Callable[..., UpstreamChannel]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def channels(tmp_path: Path) -> Iterator[Channels]:
    """Local upstream channels with the given noarch packages (``name`` or ``(name, summary)``)."""
    started: list[UpstreamChannel] = []

    def make(*packages: str | tuple[str, str], index: bool = True) -> UpstreamChannel:
        channel = UpstreamChannel(tmp_path / uuid.uuid4().hex[:8])
        for package in packages:
            name, summary = package if isinstance(package, tuple) else (package, "")
            channel.add(PackageSpec(name, "1.0", "0", summary=summary))
        if index:
            channel.index()
        else:
            channel.root.mkdir(parents=True, exist_ok=True)
        channel.start()
        started.append(channel)
        return channel

    yield make
    for channel in started:
        channel.stop()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with two worker processes, whose anonymous callers see nothing (hidden feeds exist)."""
    server = start_server(tmp_path_factory.mktemp("workers") / "data", extra_env={"CONDAGATE_WORKERS": "2"})
    with server.admin() as admin:
        assert admin.delete("/api/grants", params={"principal": "anonymous", "permission": "view"}).status_code == 204
    yield server
    server.stop()


def _connector(admin: httpx.Client, url: str, **fields: Any) -> str:
    name = _name("up")
    created = admin.post("/api/connectors", json={"name": name, "url": url, **fields})
    assert created.status_code == 201, created.text
    return name


def _feed(admin: httpx.Client, connectors: list[str]) -> str:
    name = _name("feed")
    created = admin.post("/api/feeds", json={"name": name, "connectors": connectors})
    assert created.status_code == 201, created.text
    return name


def _listed(client: httpx.Client, feed: str, subdir: str = "noarch") -> dict[str, dict[str, Any]]:
    """The feed's records for the subdir: file name -> record."""
    response = client.get(f"/conda/{feed}/{subdir}/repodata.json")
    assert response.status_code == 200, response.text
    document = response.json()
    return {**document.get("packages", {}), **document.get("packages.conda", {})}


def _sha256(channel: UpstreamChannel, filename: str) -> str:
    return hashlib.sha256((channel.root / "noarch" / filename).read_bytes()).hexdigest()


def _error(response: httpx.Response) -> tuple[str, str]:
    body = response.json()
    return body["error"]["code"], body["error"]["message"]


# --- feeds ----------------------------------------------------------------------------------------


def test_feed_update_changes_description_order_and_the_channel_follows_at_once(
    server: Server, channels: Channels, make_package
):  # type: ignore[no-untyped-def]
    first = channels(("shared", "from A"), "only-a")
    second = channels(("shared", "from B"), "only-b")
    shared = "shared-1.0-0.conda"
    assert _sha256(first, shared) != _sha256(second, shared)
    with server.admin() as admin:
        a, b = _connector(admin, first.url), _connector(admin, second.url)
        feed = _feed(admin, [a])
        assert upload(server, feed, make_package("local-one")).status_code == 201
        before = _listed(admin, feed)
        assert {"only-a-1.0-0.conda", shared} <= set(before) and "only-b-1.0-0.conda" not in before
        assert before[shared]["sha256"] == _sha256(first, shared)

        # B first, then A: B's package appears, and B now wins the file name both list.
        updated = admin.patch(f"/api/feeds/{feed}", json={"description": "two upstreams", "connectors": [b, a]})
        assert updated.status_code == 200, updated.text
        shown = updated.json()
        assert shown["connectors"] == [b, a] and shown["description"] == "two upstreams"
        assert shown["kind"] == "proxy" and shown["upstream_removals"] == "keep-cached"
        after = _listed(admin, feed)
        assert {"only-a-1.0-0.conda", "only-b-1.0-0.conda", shared} <= set(after)
        assert after[shared]["sha256"] == _sha256(second, shared)
        assert any(r["name"] == "local-one" for r in after.values())  # the feed's own packages stay
        download = admin.get(f"/conda/{feed}/noarch/{shared}")
        assert download.status_code == 200 and download.content == (second.root / "noarch" / shared).read_bytes()
        assert admin.get(f"/api/feeds/{feed}").json()["connectors"] == [b, a]
        assert query(f"{server.url}/conda/{feed}", ["only-b"]) == ["only-b=1.0=0"]

        # Only the fields given change; an empty list detaches every connector: the feed hosts only.
        assert admin.patch(f"/api/feeds/{feed}", json={"upstream_removals": "follow-upstream"}).status_code == 200
        hosted = admin.patch(f"/api/feeds/{feed}", json={"connectors": []})
        assert hosted.status_code == 200, hosted.text
        assert hosted.json()["kind"] == "hosted" and hosted.json()["connectors"] == []
        assert hosted.json()["description"] == "two upstreams"
        assert hosted.json()["upstream_removals"] == "follow-upstream"
        assert [r["name"] for r in _listed(admin, feed).values()] == ["local-one"]
        assert admin.get(f"/conda/{feed}/noarch/only-a-1.0-0.conda").status_code == 404

        # Mistakes are refused with the reason, and change nothing.
        for body, status, words in [
            ({"connectors": ["no-such-connector"]}, 404, "no-such-connector"),
            ({"connectors": [a, a]}, 400, "twice"),
            ({"upstream_removals": "sometimes"}, 400, "keep-cached"),
            ({"descripton": "typo"}, 400, "descripton"),
            ({"description": "x" * 5000}, 400, "2000"),
        ]:
            refused = admin.patch(f"/api/feeds/{feed}", json=body)
            assert refused.status_code == status, (body, refused.text)
            assert words in _error(refused)[1], (body, refused.text)
        assert admin.patch("/api/feeds/no-such-feed-x", json={"description": "x"}).status_code == 404
        assert admin.get(f"/api/feeds/{feed}").json()["connectors"] == []


def test_changing_upstream_removals_takes_effect_at_once(server: Server, channels: Channels):
    upstream = channels("stays", "goes")
    gone = "goes-1.0-0.conda"
    with server.admin() as admin:
        connector = _connector(admin, upstream.url)
        feed = _feed(admin, [connector])
        assert admin.get(f"/conda/{feed}/noarch/{gone}").status_code == 200  # cached here now
        (upstream.root / "noarch" / gone).unlink()
        upstream.index()
        refreshed = admin.post(f"/api/connectors/{connector}/refresh", json={"subdirs": ["noarch"]})
        assert refreshed.json()["health"][0]["records"] == 1
        assert gone in _listed(admin, feed)  # keep-cached: the cached file stays listed
        assert admin.patch(f"/api/feeds/{feed}", json={"upstream_removals": "follow-upstream"}).status_code == 200
        assert set(_listed(admin, feed)) == {"stays-1.0-0.conda"}
        assert admin.patch(f"/api/feeds/{feed}", json={"upstream_removals": "keep-cached"}).status_code == 200
        assert gone in _listed(admin, feed)


def test_feed_manager_updates_its_feed_only_and_attaches_nothing_new(two_workers: Server, channels: Channels):
    server = two_workers
    upstream = channels("only-a")
    tag = uuid.uuid4().hex[:8]
    user = f"manager-{tag}@example.com"
    with server.admin() as admin:
        a, b = _connector(admin, upstream.url), _connector(admin, upstream.url)
        mine, other = _feed(admin, [a, b]), _feed(admin, [])
        assert admin.post("/api/users", json={"name": user, "password": "pw-" + tag * 2}).status_code == 201
        grant = {"principal": f"user:{user}", "permission": "manage-feed", "feed": mine}
        assert admin.post("/api/grants", json=grant).status_code == 201
        created = admin.post("/api/apikeys", json={"user": user})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
    time.sleep(1.5)  # the other worker process sees new grants and keys within security_refresh_seconds (1 s)
    with server.client(headers={"X-API-Key": key}) as manager:
        changed = manager.patch(f"/api/feeds/{mine}", json={"description": "managed", "connectors": [b, a]})
        assert changed.status_code == 200, changed.text
        assert changed.json()["connectors"] == [b, a]
        assert manager.patch(f"/api/feeds/{mine}", json={"connectors": [b]}).json()["connectors"] == [b]
        attach = manager.patch(f"/api/feeds/{mine}", json={"connectors": [b, a]})
        assert attach.status_code == 403, attach.text
        code, message = _error(attach)
        assert code == "permission_denied" and a in message and "system-wide" in message
        hidden = manager.patch(f"/api/feeds/{other}", json={"description": "not mine"})
        assert hidden.status_code == 404 and _error(hidden)[0] == "feed_not_found", hidden.text
        for method, path, body in [
            ("PATCH", f"/api/connectors/{a}", {"cache_minutes": 5}),
            ("DELETE", f"/api/connectors/{a}", None),
            ("POST", "/api/connectors", {"name": _name("x"), "url": upstream.url, "check": False}),
        ]:
            refused = manager.request(method, path, json=body)
            assert refused.status_code == 403, (method, path, refused.text)
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{other}").json()["description"] == ""
        assert admin.get(f"/api/connectors/{a}").json()["cache_minutes"] == 30


# --- connectors -----------------------------------------------------------------------------------


def test_connector_create_checks_the_upstream_first(server: Server, channels: Channels):
    live = channels("alpha", "beta", "beta-extra")
    not_a_channel = channels(index=False)
    garbage = channels("alpha")
    garbage.faults.garbage_repodata = True
    closed = f"http://127.0.0.1:{free_port()}"
    with server.admin() as admin:
        name = _name("checked")
        created = admin.post("/api/connectors", json={"name": name, "url": live.url})
        assert created.status_code == 201, created.text
        check = created.json()["check"]
        assert check["subdir"] == "noarch" and check["packages"] == 3 and check["package_files"] == 3
        assert check["message"] == "found 3 packages (3 files) in noarch"
        filtered = admin.post(
            "/api/connectors", json={"name": _name("f"), "url": live.url, "include": ["beta*"], "subdirs": ["noarch"]}
        )
        assert filtered.json()["check"]["message"] == "found 2 packages (2 files) that pass the filters in noarch"
        linux = admin.post("/api/connectors", json={"name": _name("l"), "url": live.url, "subdirs": ["linux-64"]})
        assert linux.status_code == 400 and _error(linux)[0] == "not_a_conda_channel"  # no linux-64 there

        for url, status, code, words in [
            (closed, 502, "upstream_unavailable", "check"),
            (not_a_channel.url, 400, "not_a_conda_channel", "conda channel"),
            (garbage.url, 502, "upstream_unavailable", "repodata.json.zst"),  # not zstd: answered wrongly
        ]:
            refused_name = _name("refused")
            refused = admin.post("/api/connectors", json={"name": refused_name, "url": url, "timeout_seconds": 5})
            assert refused.status_code == status, (url, refused.text)
            assert _error(refused)[0] == code and words in _error(refused)[1], refused.text
            assert "nothing was saved" in _error(refused)[1]
            assert admin.get(f"/api/connectors/{refused_name}").status_code == 404  # nothing created
        unchecked = admin.post("/api/connectors", json={"name": _name("unchecked"), "url": closed, "check": False})
        assert unchecked.status_code == 201 and unchecked.json()["check"] is None
        taken = admin.post("/api/connectors", json={"name": name, "url": closed})
        assert taken.status_code == 409  # before the upstream is asked
    with server.client() as anonymous:
        assert anonymous.get("/api/connectors/anaconda").status_code == 200  # built in: never checked


def test_connector_update_url_filters_credentials_and_refusals(server: Server, channels: Channels):
    old, new = channels("only-old"), channels("only-new", "new-dbg")
    closed = f"http://127.0.0.1:{free_port()}"
    with server.admin() as admin:
        connector = _connector(admin, old.url)
        feed = _feed(admin, [connector])
        assert set(_listed(admin, feed)) == {"only-old-1.0-0.conda"}
        assert [h["subdir"] for h in admin.get(f"/api/connectors/{connector}").json()["health"]] == ["noarch"]

        # A new URL: checked, then the next request fetches from the new upstream (old data and health go).
        fetched_before = new.count("/noarch/repodata.json.zst")
        moved = admin.patch(f"/api/connectors/{connector}", json={"url": new.url + "/"})
        assert moved.status_code == 200, moved.text
        assert moved.json()["url"] == new.url and moved.json()["check"]["packages"] == 2
        assert moved.json()["health"] == []
        assert set(_listed(admin, feed)) == {"only-new-1.0-0.conda", "new-dbg-1.0-0.conda"}
        assert new.count("/noarch/repodata.json.zst") >= fetched_before + 2  # the check, then the feed

        # Filters apply at once to what was fetched; an empty list removes them.
        assert admin.patch(f"/api/connectors/{connector}", json={"exclude": ["*-dbg"]}).status_code == 200
        assert set(_listed(admin, feed)) == {"only-new-1.0-0.conda"}
        assert admin.patch(f"/api/connectors/{connector}", json={"exclude": []}).status_code == 200
        assert set(_listed(admin, feed)) == {"only-new-1.0-0.conda", "new-dbg-1.0-0.conda"}

        # Other settings change alone; the rest stays.
        changed = admin.patch(
            f"/api/connectors/{connector}",
            json={"cache_minutes": 0, "timeout_seconds": 7, "subdirs": ["noarch"], "allow_redirects": "any-public"},
        )
        assert changed.status_code == 200, changed.text
        shown = changed.json()
        assert (shown["cache_minutes"], shown["timeout_seconds"], shown["subdirs"]) == (0, 7, ["noarch"])
        assert shown["allow_redirects"] == "any-public" and shown["url"] == new.url
        assert shown["check"]["packages"] == 2  # a new redirect policy is checked as a new address is
        assert admin.patch(f"/api/connectors/{connector}", json={"cache_minutes": 1}).json()["check"] is None

        # Credentials: wrong ones are refused by the check and change nothing; right ones are kept sealed.
        new.faults.required_authorization = "Basic bWlycm9yOnMzY3JldA=="  # mirror:s3cret
        wrong = admin.patch(f"/api/connectors/{connector}", json={"username": "mirror", "password": "wrong"})
        assert wrong.status_code == 502 and "401" in _error(wrong)[1], wrong.text
        assert admin.get(f"/api/connectors/{connector}").json()["authentication"] == "none"
        right = admin.patch(f"/api/connectors/{connector}", json={"username": "mirror", "password": "s3cret"})
        assert right.status_code == 200 and right.json()["authentication"] == "basic", right.text
        assert "s3cret" not in right.text
        refreshed = admin.post(f"/api/connectors/{connector}/refresh", json={"subdirs": ["noarch"]}).json()
        assert [h["last_error"] for h in refreshed["health"]] == [""]
        # An empty password keeps the stored one; clearing removes them (then the upstream says 401).
        kept = admin.patch(f"/api/connectors/{connector}", json={"password": "", "check": True})
        assert kept.status_code == 200 and kept.json()["authentication"] == "basic"
        cleared = admin.patch(f"/api/connectors/{connector}", json={"clear_credentials": True, "check": False})
        assert cleared.status_code == 200 and cleared.json()["authentication"] == "none"
        refreshed = admin.post(f"/api/connectors/{connector}/refresh", json={"subdirs": ["noarch"]}).json()
        assert "401" in refreshed["health"][0]["last_error"]
        token = admin.patch(f"/api/connectors/{connector}", json={"token": "t0ken", "check": False})
        assert token.json()["authentication"] == "token" and "t0ken" not in token.text
        both = admin.patch(f"/api/connectors/{connector}", json={"token": "t", "username": "u", "password": "p"})
        assert both.status_code == 400 and "not both" in _error(both)[1]

        # A URL nothing answers at is refused by the check, and the connector stays as it was.
        refused = admin.patch(f"/api/connectors/{connector}", json={"url": closed})
        assert refused.status_code == 502 and "nothing was saved" in _error(refused)[1], refused.text
        assert admin.get(f"/api/connectors/{connector}").json()["url"] == new.url
        for body, words in [
            ({"url": "ftp://example.org/x"}, "http(s)"),
            ({"subdirs": ["linux-99"]}, "unknown subdir"),
            ({"allow_redirects": "anywhere"}, "same-origin"),
            ({"name": "renamed"}, "name"),
            ({"include": [""]}, "filter"),
        ]:
            refused = admin.patch(f"/api/connectors/{connector}", json=body)
            assert refused.status_code in (400, 404), (body, refused.text)  # an unknown subdir: 404, as elsewhere
            assert words in _error(refused)[1], (body, refused.text)
        assert admin.patch("/api/connectors/no-such-connector", json={"cache_minutes": 1}).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"cache_minutes": 99999999999999999999},
        {"cache_minutes": -1},
        {"timeout_seconds": -5},
        {"timeout_seconds": 0},
        {"timeout_seconds": 10**30},
    ],
    ids=["huge-cache", "negative-cache", "negative-timeout", "zero-timeout", "huge-timeout"],
)
def test_numbers_out_of_range_are_refused_with_their_bounds(server: Server, body: dict[str, int]):
    with server.admin() as admin:
        name = _name("bounds")
        created = admin.post(
            "/api/connectors", json={"name": name, "url": "http://127.0.0.1:1", "check": False, **body}
        )
        assert created.status_code == 400, created.text
        field = next(iter(body))
        code, message = _error(created)
        assert code == "bad_request" and field in message, message
        assert re.search(r"between (0 and 525600 minutes|1 and 3600 seconds)", message), message
        assert admin.get(f"/api/connectors/{name}").status_code == 404
        existing = _connector(admin, "http://127.0.0.1:1", check=False)
        updated = admin.patch(f"/api/connectors/{existing}", json=body)
        assert updated.status_code == 400 and field in _error(updated)[1], updated.text


def test_connector_in_use_is_deleted_only_with_detach(server: Server, channels: Channels):
    upstream = channels("only-a")
    with server.admin() as admin:
        connector = _connector(admin, upstream.url)
        first, second = _feed(admin, [connector]), _feed(admin, [connector])
        assert admin.get(f"/conda/{first}/noarch/only-a-1.0-0.conda").status_code == 200  # cached now
        refused = admin.delete(f"/api/connectors/{connector}")
        assert refused.status_code == 409, refused.text
        code, message = _error(refused)
        assert code == "conflict" and first in message and second in message and "detach" in message
        assert admin.get(f"/api/connectors/{connector}").status_code == 200

        assert admin.delete(f"/api/connectors/{connector}", params={"detach": "true"}).status_code == 204
        assert admin.get(f"/api/connectors/{connector}").status_code == 404
        for feed in (first, second):
            shown = admin.get(f"/api/feeds/{feed}").json()
            assert shown["connectors"] == [] and shown["kind"] == "hosted"
            assert _listed(admin, feed) == {}
        unused = _connector(admin, upstream.url)
        assert admin.delete(f"/api/connectors/{unused}").status_code == 204
        assert admin.delete("/api/connectors/no-such-connector", params={"detach": "true"}).status_code == 404


# --- several worker processes ---------------------------------------------------------------------


def _every_answer(server: Server, feed: str, times: int = 12) -> list[set[str]]:
    """The feed's noarch file names as answered on fresh connections (which land on either worker)."""
    answers = []
    for _ in range(times):
        with httpx.Client(base_url=server.url, timeout=60, headers=server.admin_headers) as client:
            answers.append(set(_listed(client, feed)))
    return answers


def test_every_worker_process_sees_feed_and_connector_changes_at_once(two_workers: Server, channels: Channels):
    server = two_workers
    first, second = channels("only-a", "a-dbg"), channels("only-b")
    with server.admin() as admin:
        a, b = _connector(admin, first.url), _connector(admin, second.url)
        feed = _feed(admin, [a])
    assert _every_answer(server, feed) == [{"only-a-1.0-0.conda", "a-dbg-1.0-0.conda"}] * 12  # both workers warm

    with server.admin() as admin:
        assert admin.patch(f"/api/feeds/{feed}", json={"connectors": [a, b]}).status_code == 200
    assert _every_answer(server, feed) == [{"only-a-1.0-0.conda", "a-dbg-1.0-0.conda", "only-b-1.0-0.conda"}] * 12

    with server.admin() as admin:
        assert admin.patch(f"/api/connectors/{a}", json={"exclude": ["*-dbg"]}).status_code == 200
    assert _every_answer(server, feed) == [{"only-a-1.0-0.conda", "only-b-1.0-0.conda"}] * 12

    with server.admin() as admin:
        assert admin.patch(f"/api/connectors/{a}", json={"url": second.url}).status_code == 200
    assert _every_answer(server, feed) == [{"only-b-1.0-0.conda"}] * 12

    with server.admin() as admin:
        assert admin.delete(f"/api/connectors/{b}", params={"detach": "true"}).status_code == 204
        assert admin.patch(f"/api/feeds/{feed}", json={"connectors": []}).status_code == 200
    assert _every_answer(server, feed) == [set()] * 12


# --- the web UI's forms ---------------------------------------------------------------------------


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the form carries no CSRF token"
    return match.group(1)


@pytest.fixture
def browser(server: Server) -> Iterator[httpx.Client]:
    """A logged-in web UI session, sending what browsers send with a same-site form."""
    headers = {"Origin": server.url, "Sec-Fetch-Site": "same-origin", "Accept": "text/html"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        assert client.post("/login", data={"api_key": server.api_key, "next": "/"}).status_code == 303
        yield client


def test_ui_wizard_takes_several_connectors_in_order(server: Server, browser: httpx.Client, channels: Channels):
    upstream = channels("only-a")
    with server.admin() as admin:
        a, b = _connector(admin, upstream.url), _connector(admin, upstream.url)
    wizard = browser.get("/feeds/new")
    assert wizard.status_code == 200 and 'data-testid="connector-slot"' in wizard.text
    name = _name("wizard")
    created = browser.post(
        "/feeds/new",
        data={"name": name, "kind": "proxy", "connector": [b, "", a, b], "csrf_token": _csrf(wizard.text)},
    )
    assert created.status_code == 303, created.text
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{name}").json()["connectors"] == [b, a]
    refused = browser.post(
        "/feeds/new",
        data={"name": _name("wizard"), "kind": "proxy", "connector": ["", ""], "csrf_token": _csrf(wizard.text)},
    )
    assert refused.status_code == 400 and "choose the upstream connector" in refused.text


def test_ui_feed_settings_form(server: Server, browser: httpx.Client, channels: Channels):
    upstream = channels("only-a")
    with server.admin() as admin:
        a, b = _connector(admin, upstream.url), _connector(admin, upstream.url)
        feed = _feed(admin, [a])
    page = browser.get(f"/feeds/{feed}")
    assert f'href="/feeds/{feed}/settings"' in page.text
    form = browser.get(f"/feeds/{feed}/settings")
    assert form.status_code == 200 and 'data-testid="feed-settings-form"' in form.text
    assert re.search(rf'<option value="{a}" selected>', form.text)
    token = _csrf(form.text)
    data = {
        "csrf_token": token,
        "connector_slots": "1",
        "description": "set in the browser",
        "connector": ["", b, a],
        "upstream_removals": "follow-upstream",
    }
    saved = browser.post(f"/feeds/{feed}/settings", data=data)
    assert saved.status_code == 303 and saved.headers["location"] == f"/feeds/{feed}"
    with server.admin() as admin:
        shown = admin.get(f"/api/feeds/{feed}").json()
    assert shown["connectors"] == [b, a] and shown["description"] == "set in the browser"
    assert shown["upstream_removals"] == "follow-upstream"

    unknown = browser.post(f"/feeds/{feed}/settings", data={**data, "connector": ["no-such-connector"]})
    assert unknown.status_code == 404 and "no-such-connector" in unknown.text and "feed-settings-form" in unknown.text
    missing_token = browser.post(f"/feeds/{feed}/settings", data={k: v for k, v in data.items() if k != "csrf_token"})
    assert missing_token.status_code == 403
    detached = browser.post(f"/feeds/{feed}/settings", data={**data, "connector": ["", "", ""]})
    assert detached.status_code == 303
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{feed}").json()["kind"] == "hosted"


def test_ui_connector_create_check_edit_and_delete(server: Server, browser: httpx.Client, channels: Channels):
    upstream, moved = channels("alpha", "beta"), channels("gamma")
    closed = f"http://127.0.0.1:{free_port()}"
    listing = browser.get("/connectors")
    token = _csrf(listing.text)
    base = {"csrf_token": token, "cache_minutes": "30", "timeout_seconds": "5"}

    name = _name("ui")
    refused = browser.post("/connectors", data={**base, "name": name, "url": closed})
    assert refused.status_code == 502 and "nothing was saved" in refused.text
    huge = browser.post("/connectors", data={**base, "name": name, "url": upstream.url, "cache_minutes": "9" * 20})
    assert huge.status_code == 400 and "between 0 and 525600" in huge.text
    negative = browser.post("/connectors", data={**base, "name": name, "url": upstream.url, "timeout_seconds": "-1"})
    assert negative.status_code == 400 and "between 1 and 3600" in negative.text
    created = browser.post("/connectors", data={**base, "name": name, "url": upstream.url})
    assert created.status_code == 303 and created.headers["location"] == f"/connectors/{name}"
    page = browser.get(f"/connectors/{name}")
    assert "Upstream checked: found 2 packages (2 files) in noarch." in page.text
    assert "Upstream checked" not in browser.get(f"/connectors/{name}").text  # said once
    unchecked = browser.post("/connectors", data={**base, "name": _name("ui"), "url": closed, "skip_check": "1"})
    assert unchecked.status_code == 303

    with server.admin() as admin:
        feed = _feed(admin, [name])
    edit = {
        "csrf_token": token,
        "url": moved.url,
        "include": "",
        "exclude": "beta, *-dbg",
        "subdirs": "noarch linux-64",
        "cache_minutes": "99999999999999999999",
        "timeout_seconds": "10",
        "allow_redirects": "same-origin",
        "username": "",
        "password": "",
        "token": "",
    }
    out_of_range = browser.post(f"/connectors/{name}/settings", data=edit)
    assert out_of_range.status_code == 400 and "between 0 and 525600" in out_of_range.text
    saved = browser.post(f"/connectors/{name}/settings", data={**edit, "cache_minutes": "5"})
    assert saved.status_code == 303, saved.text
    assert "found 1 package (1 file) that pass the filters in noarch" in browser.get(f"/connectors/{name}").text
    with server.admin() as admin:
        shown = admin.get(f"/api/connectors/{name}").json()
        assert (shown["url"], shown["exclude"], shown["subdirs"]) == (
            moved.url,
            ["beta", "*-dbg"],
            ["noarch", "linux-64"],
        )
        assert (shown["cache_minutes"], shown["timeout_seconds"], shown["authentication"]) == (5, 10, "none")
        assert set(_listed(admin, feed)) == {"gamma-1.0-0.conda"}
    with_token = browser.post(f"/connectors/{name}/settings", data={**edit, "cache_minutes": "5", "token": "tok"})
    assert with_token.status_code == 303
    kept = browser.post(f"/connectors/{name}/settings", data={**edit, "cache_minutes": "5"})
    assert kept.status_code == 303
    with server.admin() as admin:
        assert admin.get(f"/api/connectors/{name}").json()["authentication"] == "token"
    cleared = browser.post(
        f"/connectors/{name}/settings", data={**edit, "cache_minutes": "5", "clear_credentials": "1"}
    )
    assert cleared.status_code == 303
    with server.admin() as admin:
        assert admin.get(f"/api/connectors/{name}").json()["authentication"] == "none"

    in_use = browser.post(f"/connectors/{name}/delete", data={"csrf_token": token})
    assert in_use.status_code == 409 and feed in in_use.text and 'data-testid="delete-error"' in in_use.text
    deleted = browser.post(f"/connectors/{name}/delete", data={"csrf_token": token, "detach": "1"})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/connectors"
    with server.admin() as admin:
        assert admin.get(f"/api/connectors/{name}").status_code == 404
        assert admin.get(f"/api/feeds/{feed}").json()["connectors"] == []


# --- the CLI --------------------------------------------------------------------------------------


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": server.api_key, "COLUMNS": "200"}
    return subprocess.run([*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=120)


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_cli_updates_feeds_and_connectors(server: Server, channels: Channels):
    first, second = channels("only-a"), channels("only-b")
    closed = f"http://127.0.0.1:{free_port()}"
    a, b, feed = _name("cli-a"), _name("cli-b"), _name("cli-feed")

    created = _cli(server, "connector", "create", a, first.url, "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["check"]["message"] == "found 1 package (1 file) in noarch"
    said = _cli(server, "connector", "create", b, second.url)
    assert said.returncode == 0 and "found 1 package (1 file) in noarch" in said.stdout, said.stdout
    _one_line_error(_cli(server, "connector", "create", _name("cli-c"), closed, "--timeout-seconds", "3"), "502")
    unchecked = _cli(server, "connector", "create", _name("cli-c"), closed, "--no-check", "--json")
    assert unchecked.returncode == 0 and json.loads(unchecked.stdout)["check"] is None, unchecked.stderr
    _one_line_error(
        _cli(server, "connector", "create", _name("cli-c"), first.url, "--cache-minutes", "99999999999999999999"),
        "400",
        "525600",
    )
    assert _cli(server, "feed", "create", feed, "--connector", a).returncode == 0

    updated = _cli(
        server, "feed", "update", feed, "--connector", b, "--connector", a, "--description", "both", "--json"
    )
    assert updated.returncode == 0, updated.stderr
    shown = json.loads(updated.stdout)
    assert shown["connectors"] == [b, a] and shown["description"] == "both"
    with server.admin() as admin:
        assert set(_listed(admin, feed)) == {"only-a-1.0-0.conda", "only-b-1.0-0.conda"}
    said = _cli(server, "feed", "update", feed, "--upstream-removals", "follow-upstream")
    assert said.returncode == 0 and "Updated feed" in said.stdout and "follow-upstream" in said.stdout
    _one_line_error(_cli(server, "feed", "update", feed), "nothing to change")
    _one_line_error(_cli(server, "feed", "update", feed, "--connector", a, "--no-connectors"), "not both")
    _one_line_error(
        _cli(server, "feed", "update", feed, "--connector", "no-such-connector"), "404", "no-such-connector"
    )
    _one_line_error(_cli(server, "feed", "update", "no-such-feed-x", "--description", "x"), "404")

    changed = _cli(server, "connector", "update", a, "--exclude", "only-*", "--cache-minutes", "3", "--json")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["exclude"] == ["only-*"] and json.loads(changed.stdout)["cache_minutes"] == 3
    with server.admin() as admin:
        assert set(_listed(admin, feed)) == {"only-b-1.0-0.conda"}
    moved = _cli(server, "connector", "update", a, second.url, "--no-exclude")
    assert moved.returncode == 0 and "found 1 package (1 file) in noarch" in moved.stdout, moved.stdout
    _one_line_error(_cli(server, "connector", "update", a, closed), "502", "nothing was saved")
    _one_line_error(_cli(server, "connector", "update", a, "--timeout-seconds", "-1"), "400", "3600")
    _one_line_error(_cli(server, "connector", "update", a), "nothing to change")
    tokened = _cli(server, "connector", "update", a, "--token", "t0ken", "--no-check", "--json")
    assert json.loads(tokened.stdout)["authentication"] == "token" and "t0ken" not in tokened.stdout
    cleared = _cli(server, "connector", "update", a, "--clear-credentials", "--json")
    assert json.loads(cleared.stdout)["authentication"] == "none"

    _one_line_error(_cli(server, "connector", "delete", a), "409", feed, "--detach")
    deleted = _cli(server, "connector", "delete", a, "--detach", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"deleted": a, "detached_from": [feed]}
    said = _cli(server, "feed", "update", feed, "--no-connectors")
    assert said.returncode == 0 and "none (hosted)" in said.stdout
    gone = _cli(server, "connector", "delete", b)
    assert gone.returncode == 0 and f"Deleted connector {b}" in gone.stdout
    assert json.loads(_cli(server, "feed", "delete", feed, "--yes", "--json").stdout) == {"deleted": feed}
