"""Deleting a package file, a version or a whole package from a feed, through the REST API, the CLI and
the web UI: repodata (json, zst, bz2, shards), channeldata, listings and counts follow at once, real
clients (py-rattler) stop seeing what was deleted, and blobs no row uses any more leave the disk."""

from __future__ import annotations

import bz2
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import test_ui
import zstandard
from playwright.sync_api import Browser, expect, sync_playwright
from test_ui import Visit

from conftest import upload
from rattler_client import query, solve_and_install
from servers import Server, condagate_command
from upstream_channel import UpstreamChannel

visit = test_ui.visit


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A browser of this test's own: Playwright's event loop must not outlive it, or py-rattler's
    ``asyncio.run`` in the tests that follow would find a loop running in this thread."""
    if not Path(test_ui.CHROMIUM).exists():
        pytest.skip("Chromium is not installed here (apt-get install chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=test_ui.CHROMIUM, args=test_ui.CHROMIUM_ARGS)
        yield instance
        instance.close()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _blob(server: Server, sha256: str) -> Path:
    return server.data_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256


def _uploaded(server: Server, feed: str, path: Path) -> dict[str, Any]:
    response = upload(server, feed, path)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _key(server: Server, feeds: list[str], permissions: list[str]) -> str:
    with server.admin() as admin:
        response = admin.post("/api/apikeys", json={"feeds": feeds, "permissions": permissions})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


def _listed(server: Server, feed: str, subdir: str) -> dict[str, set[str]]:
    """File names in each encoding of the subdir's repodata; all three must agree."""
    found = {}
    with server.client() as client:
        for variant in ("repodata.json", "repodata.json.zst", "repodata.json.bz2"):
            response = client.get(f"/conda/{feed}/{subdir}/{variant}")
            assert response.status_code == 200, response.text
            body = response.content
            if variant.endswith(".zst"):
                body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
            elif variant.endswith(".bz2"):
                body = bz2.decompress(body)
            document = json.loads(body)
            found[variant] = set(document["packages"]) | set(document["packages.conda"])
    assert found["repodata.json"] == found["repodata.json.zst"] == found["repodata.json.bz2"], found
    return found


def _files(server: Server, feed: str, subdir: str) -> set[str]:
    return _listed(server, feed, subdir)["repodata.json"]


def _shard(server: Server, feed: str, subdir: str, name: str) -> set[str] | None:
    """The file names in the package's CEP-16 shard, or None when the shard index does not list it."""
    with server.client() as client:
        response = client.get(f"/conda/{feed}/{subdir}/repodata_shards.msgpack.zst")
        assert response.status_code == 200, response.text
        index = msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(response.content))
        digest = index["shards"].get(name)
        if digest is None:
            return None
        shard_response = client.get(f"/conda/{feed}/{subdir}/shards/{digest.hex()}.msgpack.zst")
        assert shard_response.status_code == 200
    shard = msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(shard_response.content))
    return set(shard["packages"]) | set(shard["packages.conda"])


def _channeldata(server: Server, feed: str) -> dict[str, Any]:
    with server.client() as client:
        response = client.get(f"/conda/{feed}/channeldata.json")
        assert response.status_code == 200, response.text
        packages: dict[str, Any] = response.json()["packages"]
        return packages


def _package_files(server: Server, feed: str) -> int:
    with server.admin() as admin:
        return int(admin.get(f"/api/feeds/{feed}").json()["package_files"])


def _delete(server: Server, path: str, key: str | None = None, **params: str) -> httpx.Response:
    headers = {"X-API-Key": server.api_key if key is None else key}
    with server.client(headers=headers) as client:
        return client.delete(path, params=params)


def test_deleting_a_version_leaves_the_other_installable(server: Server, feed: str, make_package, tmp_path: Path):
    name = _unique("tool")
    old = _uploaded(server, feed, make_package(name, version="1.0"))
    new_noarch = _uploaded(server, feed, make_package(name, version="1.1"))
    new_linux = _uploaded(server, feed, make_package(name, ".tar.bz2", version="1.1", subdir="linux-64"))
    assert _files(server, feed, "noarch") == {old["filename"], new_noarch["filename"]}
    assert _shard(server, feed, "linux-64", name) == {new_linux["filename"]}  # built before the removal
    assert _channeldata(server, feed)[name]["version"] == "1.1"
    assert _package_files(server, feed) == 3

    response = _delete(server, f"/api/feeds/{feed}/packages/{name}/versions/1.1")
    assert response.status_code == 200, response.text
    removal = response.json()
    assert {(f["subdir"], f["filename"], f["origin"]) for f in removal["files"]} == {
        ("noarch", new_noarch["filename"], "local"),
        ("linux-64", new_linux["filename"], "local"),
    }
    assert sorted(removal["blobs_freed"]) == sorted([new_noarch["sha256"], new_linux["sha256"]])
    assert removal["bytes_freed"] == new_noarch["size"] + new_linux["size"]
    assert removal["still_listed_from_upstream"] is False
    assert removal["removed_by"]

    # Every encoding and the shards follow at once; the blobs are gone, the other version's is not.
    assert _files(server, feed, "noarch") == {old["filename"]}
    assert _files(server, feed, "linux-64") == set()
    assert _shard(server, feed, "noarch", name) == {old["filename"]}
    assert _shard(server, feed, "linux-64", name) is None
    assert _channeldata(server, feed)[name]["version"] == "1.0"
    assert not _blob(server, new_noarch["sha256"]).exists() and not _blob(server, new_linux["sha256"]).exists()
    assert _blob(server, old["sha256"]).is_file()
    assert _package_files(server, feed) == 1
    with server.client() as client:
        assert client.get(f"/conda/{feed}/noarch/{new_noarch['filename']}").status_code == 404
        assert client.get(f"/conda/{feed}/noarch/{old['filename']}").status_code == 200
        listing = client.get(f"/api/feeds/{feed}/packages", params={"search": name}).json()
        detail = client.get(f"/api/feeds/{feed}/packages/{name}").json()
    assert [(item["latest_version"], item["files"]) for item in listing["items"]] == [("1.0", 1)]
    assert [version["version"] for version in detail["versions"]] == ["1.0"]

    # A real client: the solver would take 1.1; only 1.0 is left, from repodata and from shards alike.
    channel = f"{server.url}/conda/{feed}"
    assert query(channel, [name]) == query(channel, [name], sharded=True) == [f"{name}=1.0=0"]
    assert solve_and_install(channel, [name], tmp_path / "env") == [f"{name}=1.0=0"]

    again = _delete(server, f"/api/feeds/{feed}/packages/{name}/versions/1.1")
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "package_not_found"
    assert "nothing to delete" in again.json()["error"]["message"]


def test_deleting_one_file_of_a_version(server: Server, feed: str, make_package):
    name = _unique("pair")
    conda = _uploaded(server, feed, make_package(name))
    tarball = _uploaded(server, feed, make_package(name, ".tar.bz2"))
    assert _files(server, feed, "noarch") == {conda["filename"], tarball["filename"]}

    wrong_subdir = _delete(server, f"/api/feeds/{feed}/files/linux-64/{tarball['filename']}")
    assert wrong_subdir.status_code == 404, wrong_subdir.text
    assert wrong_subdir.json()["error"]["code"] == "package_not_found"
    bad_name = _delete(server, f"/api/feeds/{feed}/files/noarch/not-a-package.zip")
    assert bad_name.status_code == 400
    unknown_subdir = _delete(server, f"/api/feeds/{feed}/files/amiga-68k/{tarball['filename']}")
    assert unknown_subdir.status_code == 404
    assert unknown_subdir.json()["error"]["code"] == "subdir_not_found"
    assert _files(server, feed, "noarch") == {conda["filename"], tarball["filename"]}

    response = _delete(server, f"/api/feeds/{feed}/files/noarch/{tarball['filename']}")
    assert response.status_code == 200, response.text
    removal = response.json()
    assert [(f["filename"], f["version"], f["build"], f["sha256"]) for f in removal["files"]] == [
        (tarball["filename"], "1.0", "0", tarball["sha256"])
    ]
    assert removal["blobs_freed"] == [tarball["sha256"]] and removal["bytes_freed"] == tarball["size"]
    assert _files(server, feed, "noarch") == {conda["filename"]}
    assert _shard(server, feed, "noarch", name) == {conda["filename"]}
    assert not _blob(server, tarball["sha256"]).exists()
    with server.client() as client:
        assert client.get(f"/conda/{feed}/noarch/{tarball['filename']}").status_code == 404
        assert client.get(f"/conda/{feed}/noarch/{conda['filename']}").status_code == 200


def test_deleting_every_version_of_a_package(server: Server, feed: str, make_package):
    name, other = _unique("gone"), _unique("stays")
    first = _uploaded(server, feed, make_package(name, version="1.0"))
    second = _uploaded(server, feed, make_package(name, ".tar.bz2", version="2.0", subdir="linux-64"))
    kept = _uploaded(server, feed, make_package(other))

    response = _delete(server, f"/api/feeds/{feed}/packages/{name}")
    assert response.status_code == 200, response.text
    assert {f["filename"] for f in response.json()["files"]} == {first["filename"], second["filename"]}
    assert _files(server, feed, "noarch") == {kept["filename"]}
    assert _files(server, feed, "linux-64") == set()
    assert _shard(server, feed, "noarch", name) is None and _shard(server, feed, "noarch", other) is not None
    assert set(_channeldata(server, feed)) == {other}
    assert _package_files(server, feed) == 1
    with server.client() as client:
        assert client.get(f"/api/feeds/{feed}/packages/{name}").status_code == 404
        names = [item["name"] for item in client.get(f"/api/feeds/{feed}/packages").json()["items"]]
    assert names == [other]
    assert query(f"{server.url}/conda/{feed}", [name]) == []
    assert not _blob(server, first["sha256"]).exists() and not _blob(server, second["sha256"]).exists()

    unknown = _delete(server, f"/api/feeds/{feed}/packages/{name}")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "package_not_found"
    assert _delete(server, f"/api/feeds/{feed}/packages/Not%20A%20Name").status_code == 400
    assert _delete(server, f"/api/feeds/{feed}/packages/{other}/versions/1-0").status_code == 400
    missing_feed = _delete(server, f"/api/feeds/no-such-feed-{uuid.uuid4().hex[:6]}/packages/{other}")
    assert missing_feed.status_code == 404 and missing_feed.json()["error"]["code"] == "feed_not_found"


def test_a_version_in_one_subdir_only(server: Server, feed: str, make_package):
    name = _unique("multi")
    noarch = _uploaded(server, feed, make_package(name, version="3.0"))
    linux = _uploaded(server, feed, make_package(name, ".tar.bz2", version="3.0", subdir="linux-64"))
    response = _delete(server, f"/api/feeds/{feed}/packages/{name}/versions/3.0", subdir="linux-64")
    assert response.status_code == 200, response.text
    assert [f["filename"] for f in response.json()["files"]] == [linux["filename"]]
    assert _files(server, feed, "noarch") == {noarch["filename"]}
    assert _files(server, feed, "linux-64") == set()


def test_a_blob_stays_while_another_feed_has_the_same_bytes(server: Server, feed: str, make_package):
    other_feed = _unique("twin-")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": other_feed}).status_code == 201
    path = make_package(_unique("shared"))
    first = _uploaded(server, feed, path)
    second = _uploaded(server, other_feed, path)
    assert first["sha256"] == second["sha256"]

    response = _delete(server, f"/api/feeds/{feed}/files/noarch/{path.name}")
    assert response.status_code == 200, response.text
    assert response.json()["blobs_freed"] == [] and response.json()["bytes_freed"] == 0
    assert _blob(server, first["sha256"]).is_file()
    assert _files(server, feed, "noarch") == set()
    with server.client() as client:
        kept = client.get(f"/conda/{other_feed}/noarch/{path.name}")
    assert kept.status_code == 200 and kept.content == path.read_bytes()

    response = _delete(server, f"/api/feeds/{other_feed}/files/noarch/{path.name}")
    assert response.status_code == 200, response.text
    assert response.json()["blobs_freed"] == [first["sha256"]]
    assert not _blob(server, first["sha256"]).exists()


def test_only_callers_with_delete_on_the_feed_may_delete(server: Server, feed: str, make_package):
    name = _unique("guarded")
    uploaded = _uploaded(server, feed, make_package(name))
    paths = [
        f"/api/feeds/{feed}/packages/{name}",
        f"/api/feeds/{feed}/packages/{name}/versions/1.0",
        f"/api/feeds/{feed}/files/noarch/{uploaded['filename']}",
    ]
    uploader = _key(server, [feed], ["view", "add"])
    elsewhere = _key(server, [_unique_feed(server)], ["view", "add", "delete"])
    for path in paths:
        refused = _delete(server, path, key=uploader)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "permission_denied"
        # Anonymous callers view every feed of the shared server: a key for another feed sees this one too.
        other_feed = _delete(server, path, key=elsewhere)
        assert other_feed.status_code == 403 and other_feed.json()["error"]["code"] == "permission_denied"
        with server.client() as anonymous:
            response = anonymous.delete(path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")
    assert _files(server, feed, "noarch") == {uploaded["filename"]}
    assert _blob(server, uploaded["sha256"]).is_file()

    deleter = _key(server, [feed], ["view", "delete"])
    assert _delete(server, paths[2], key=deleter).status_code == 200
    assert _files(server, feed, "noarch") == set()


def _unique_feed(server: Server) -> str:
    name = _unique("elsewhere-")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": name}).status_code == 201
    return name


# Proxy feeds -------------------------------------------------------------------------------------


def _proxy_feed(server: Server, upstream_url: str) -> tuple[str, str]:
    connector, feed = _unique("up-"), _unique("proxy-")
    with server.admin() as admin:
        assert admin.post("/api/connectors", json={"name": connector, "url": upstream_url}).status_code == 201
        assert admin.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
    return connector, feed


def test_a_cached_upstream_file_loses_its_copy_but_stays_listed(
    server: Server, upstream: UpstreamChannel, make_package
):
    connector, feed = _proxy_feed(server, upstream.url)
    filename = "pure-1.0-0.tar.bz2"
    with server.client() as client:
        not_cached = _delete(server, f"/api/feeds/{feed}/files/noarch/{filename}")
        assert not_cached.status_code == 404
        assert "nothing to delete" in not_cached.json()["error"]["message"]
        downloaded = client.get(f"/conda/{feed}/noarch/{filename}")
        assert downloaded.status_code == 200
    sha256 = json.loads((upstream.root / "noarch" / "repodata.json").read_bytes())["packages"][filename]["sha256"]
    assert _blob(server, sha256).is_file()

    response = _delete(server, f"/api/feeds/{feed}/files/noarch/{filename}")
    assert response.status_code == 200, response.text
    removal = response.json()
    assert [(f["filename"], f["origin"], f["still_listed_from_upstream"]) for f in removal["files"]] == [
        (filename, connector, True)
    ]
    assert removal["still_listed_from_upstream"] is True
    assert removal["blobs_freed"] == [sha256]
    assert not _blob(server, sha256).exists()
    assert filename in _files(server, feed, "noarch")
    with server.client() as client:
        detail = client.get(f"/api/feeds/{feed}/packages/pure").json()
        assert [f["cached"] for version in detail["versions"] for f in version["files"]] == [False]
        again = client.get(f"/conda/{feed}/noarch/{filename}")  # fetched from the upstream once more
    assert again.status_code == 200
    assert upstream.count(f"/noarch/{filename}") == 2

    # The feed's own package in a proxy feed: gone from the repodata, nothing upstream lists it.
    own = _uploaded(server, feed, make_package(_unique("own"), version="1.0"))
    response = _delete(server, f"/api/feeds/{feed}/packages/{own['filename'].rsplit('-', 2)[0]}")
    assert response.status_code == 200, response.text
    assert response.json()["still_listed_from_upstream"] is False
    assert own["filename"] not in _files(server, feed, "noarch")


def test_a_copy_kept_after_the_upstream_removed_it_leaves_every_feed_of_its_connector(
    server: Server, upstream: UpstreamChannel
):
    connector, feed = _proxy_feed(server, upstream.url)
    sibling = _unique("sibling-")
    with server.admin() as admin:
        assert admin.post("/api/feeds", json={"name": sibling, "connectors": [connector]}).status_code == 201
    filename = "pure-1.0-0.tar.bz2"
    with server.client() as client:
        assert client.get(f"/conda/{feed}/noarch/{filename}").status_code == 200  # cached now
    (upstream.root / "noarch" / filename).unlink()
    upstream.index()
    with server.admin() as admin:
        refreshed = admin.post(f"/api/connectors/{connector}/refresh", json={"subdirs": ["noarch"]})
        assert refreshed.status_code == 200, refreshed.text
    assert filename in _files(server, feed, "noarch") and filename in _files(server, sibling, "noarch")

    response = _delete(server, f"/api/feeds/{feed}/files/noarch/{filename}")
    assert response.status_code == 200, response.text
    assert response.json()["still_listed_from_upstream"] is False
    # The copy was the connector's: neither feed proxying it lists the file any more.
    assert filename not in _files(server, feed, "noarch")
    assert filename not in _files(server, sibling, "noarch")
    assert _shard(server, sibling, "noarch", "pure") is None
    with server.client() as client:
        assert client.get(f"/conda/{sibling}/noarch/{filename}").status_code == 404


# The CLI -----------------------------------------------------------------------------------------


def _cli(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": server.api_key if key is None else key}
    env.pop("COLUMNS", None)
    return subprocess.run([*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=120)


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_deletes_files_versions_and_packages(server: Server, feed: str, make_package):
    name = _unique("clitool")
    one = _uploaded(server, feed, make_package(name, version="1.0"))
    two = _uploaded(server, feed, make_package(name, version="2.0"))
    linux = _uploaded(server, feed, make_package(name, ".tar.bz2", version="2.0", subdir="linux-64"))

    # A file name without --subdir: the feed's listing says where it is.
    result = _cli(server, "package", "delete", feed, one["filename"], "--json")
    assert result.returncode == 0, result.stderr
    removal = json.loads(result.stdout)
    assert [(f["subdir"], f["filename"]) for f in removal["files"]] == [("noarch", one["filename"])]
    assert removal["blobs_freed"] == [one["sha256"]]

    result = _cli(server, "package", "delete", feed, f"{name}==2.0", "--subdir", "linux-64")
    assert result.returncode == 0, result.stderr
    assert f"linux-64/{linux['filename']}" in result.stdout and "1 file deleted" in result.stdout

    result = _cli(server, "package", "delete", feed, name)
    assert result.returncode == 0, result.stderr
    assert f"noarch/{two['filename']}" in result.stdout
    assert _files(server, feed, "noarch") == set() and _files(server, feed, "linux-64") == set()


def test_cli_failures_are_one_line(server: Server, feed: str, make_package):
    name = _unique("clifail")
    uploaded = _uploaded(server, feed, make_package(name))
    unknown = _one_line_failure(_cli(server, "package", "delete", feed, f"{name}==9.9"))
    assert "404" in unknown and "nothing to delete" in unknown
    as_json = _cli(server, "package", "delete", feed, f"{name}==9.9", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "package_not_found"
    missing_file = _one_line_failure(_cli(server, "package", "delete", feed, f"{name}-7.0-0.conda"))
    assert "not in feed" in missing_file
    assert "NAME==VERSION" in _one_line_failure(_cli(server, "package", "delete", feed, f"{name}=="))
    uploader = _key(server, [feed], ["view", "add"])
    refused = _one_line_failure(_cli(server, "package", "delete", feed, name, key=uploader))
    assert "403" in refused and "delete" in refused
    assert _files(server, feed, "noarch") == {uploaded["filename"]}
    help_text = _cli(server, "package", "delete", "--help").stdout
    assert "--subdir" in help_text and "--json" in help_text


# The web UI --------------------------------------------------------------------------------------


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


def test_ui_delete_buttons_for_those_who_may_delete(server: Server, feed: str, make_package):
    name = _unique("uitool")
    old = _uploaded(server, feed, make_package(name, version="1.0"))
    new = _uploaded(server, feed, make_package(name, version="2.0"))
    page_url = f"/feeds/{feed}/packages/{name}"
    buttons = ('data-testid="delete-package"', 'data-testid="delete-version"', 'data-testid="delete-file"')

    with _session(server, _key(server, [feed], ["view"])) as reader:
        page = reader.get(page_url)
        assert page.status_code == 200
        assert not any(button in page.text for button in buttons)
        refused = reader.post(
            f"/feeds/{feed}/files/noarch/{old['filename']}/delete", data={"csrf_token": _csrf(page.text)}
        )
        assert refused.status_code == 403
    with server.client() as anonymous:
        assert not any(button in anonymous.get(page_url).text for button in buttons)

    with _session(server, _key(server, [feed], ["view", "add", "delete", "manage-feed"])) as manager:
        page = manager.get(page_url)
        assert all(button in page.text for button in buttons)
        assert page.text.count('data-testid="delete-version"') == 2
        assert "data-confirm=" in page.text
        token = _csrf(page.text)

        without_token = manager.post(f"/feeds/{feed}/packages/{name}/versions/2.0/delete")
        assert without_token.status_code == 403
        wrong_token = manager.post(f"/feeds/{feed}/packages/{name}/versions/2.0/delete", data={"csrf_token": "x" * 40})
        assert wrong_token.status_code == 403
        assert _files(server, feed, "noarch") == {old["filename"], new["filename"]}

        deleted = manager.post(f"/feeds/{feed}/packages/{name}/versions/2.0/delete", data={"csrf_token": token})
        assert deleted.status_code == 303, deleted.text
        assert deleted.headers["location"].startswith(page_url + "?removed=1")
        assert _files(server, feed, "noarch") == {old["filename"]}
        after = manager.get(deleted.headers["location"])
        assert 'data-testid="removed-notice"' in after.text and "Removed 1 file" in after.text
        assert new["filename"] not in after.text

        last = manager.post(f"/feeds/{feed}/files/noarch/{old['filename']}/delete", data={"csrf_token": token})
        assert last.status_code == 303, last.text
        assert last.headers["location"].startswith(f"/feeds/{feed}?")  # nothing left: back to the feed
        assert _files(server, feed, "noarch") == set()
        assert manager.get(page_url).status_code == 404


def test_ui_asks_before_deleting_in_a_browser(server: Server, visit: Visit, feed: str, make_package) -> None:
    name = _unique("clicked")
    old = _uploaded(server, feed, make_package(name, version="1.0"))
    new = _uploaded(server, feed, make_package(name, version="2.0"))
    page = visit.page
    visit.log_in(_key(server, [feed], ["view", "delete"]))
    page.goto(f"/feeds/{feed}/packages/{name}")
    version = page.locator('[data-testid="version"][data-version="2.0"]')

    page.once("dialog", lambda dialog: dialog.dismiss())  # "Cancel": nothing happens
    version.get_by_role("button", name="Delete version 2.0").click()
    expect(page.locator('[data-testid="version"]')).to_have_count(2)
    assert _files(server, feed, "noarch") == {old["filename"], new["filename"]}

    messages: list[str] = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    version.get_by_role("button", name="Delete version 2.0").click()
    expect(page.get_by_test_id("removed-notice")).to_contain_text("Removed 1 file; ")
    expect(page.locator('[data-testid="version"]')).to_have_count(1)
    assert messages and "2.0" in messages[0] and name in messages[0]
    assert _files(server, feed, "noarch") == {old["filename"]}
