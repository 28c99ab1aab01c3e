"""Running it for real: one server per port, clear one-line start-up errors, numbers that are right."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import upload
from servers import Server, condagate_command
from upstream_channel import UpstreamChannel  # noqa: F401  (the fixture's type)


def _serve(env_overrides: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
    env.update({"COLUMNS": "60", **env_overrides})  # a narrow terminal: the message must still be one line
    return subprocess.run(
        [*condagate_command(), "serve"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_a_second_server_on_a_port_in_use_refuses_to_start(server: Server, tmp_path: Path):
    port = server.url.rsplit(":", 1)[1]
    second = _serve({"CONDAGATE_DATA_DIR": str(tmp_path / "other"), "CONDAGATE_PORT": port}, tmp_path)
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"port {port}" in errors[0] and "in use" in errors[0], second.stderr
    assert not (tmp_path / "other").exists()  # nothing created for the server that did not start


def test_a_bad_data_folder_is_one_line_not_a_traceback(tmp_path: Path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    result = _serve({"CONDAGATE_DATA_DIR": str(a_file), "CONDAGATE_PORT": "0"}, tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "is a file" in errors[0], result.stderr


def test_version():
    done = subprocess.run([*condagate_command(), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("condagate ") and done.stdout.split()[1][0].isdigit()


def test_feed_and_connector_numbers_are_right(server: Server, feed: str, make_package):
    for version in ("1.0", "2.0"):
        assert upload(server, feed, make_package("counted-files", version=version)).status_code == 201
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{feed}").json()["package_files"] == 2
        listed = {c["name"]: c for c in admin.get("/api/connectors").json()}
        shown = admin.get("/api/connectors/anaconda").json()
    assert listed["anaconda"]["feeds"] == shown["feeds"]
    assert listed["anaconda"]["cached_files"] == shown["cached_files"]
    assert listed["anaconda"]["health"] == shown["health"]


def test_mirroring_a_hosted_feed_says_there_is_nothing_to_mirror(server: Server, feed: str):
    env = {**os.environ, "CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": server.api_key}
    done = subprocess.run(
        [*condagate_command(), "mirror", feed, "anything"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "is hosted" in done.stdout and "no upstream to mirror" in done.stdout
    assert "mirrored" not in done.stdout


def _cli(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": key or server.api_key}
    return subprocess.run([*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=120)


def test_upload_goes_on_after_a_refused_file_and_reruns_pass(server: Server, feed: str, make_package, tmp_path: Path):
    kept = make_package("kept", version="1.0")
    identical = make_package("same", version="1.0")
    assert upload(server, feed, kept).status_code == 201
    assert upload(server, feed, identical).status_code == 201
    # the same file name with other bytes, a byte-identical file, and a new one
    other = tmp_path / "other"
    other.mkdir()
    clash = make_package("kept", version="1.0", summary="other bytes, same name")
    clash = clash.rename(other / kept.name)
    new = make_package("fresh", version="1.0")
    first = _cli(server, "upload", feed, str(clash), str(identical), str(new), "--json")
    assert first.returncode == 1  # one file failed: reported, and the others still went up
    statuses = {Path(r["file"]).name: r["status"] for r in json.loads(first.stdout)}
    assert statuses == {kept.name: "failed", identical.name: "unchanged", new.name: "uploaded"}
    again = _cli(server, "upload", feed, str(clash), str(identical), str(new), "--skip-existing")
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stderr and "already there" in again.stderr
    with server.client() as client:
        names = {item["name"] for item in client.get(f"/api/feeds/{feed}/packages").json()["items"]}
    assert {"kept", "same", "fresh"} <= names


def test_upload_with_a_wrong_key_stops_before_sending_anything(server: Server, feed: str, make_package):
    package = make_package("never-sent")
    result = _cli(server, "upload", feed, str(package), key="cg-wrong-key-0123456789abcdefghij")
    assert result.returncode == 1 and "401" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    with server.client() as client:
        assert client.get(f"/api/feeds/{feed}/packages").json()["total"] == 0


def test_smaller_things(server: Server, feed: str, make_package, upstream):  # type: ignore[no-untyped-def]
    package = make_package("findable")
    assert upload(server, feed, package).status_code == 201
    with server.admin() as admin:
        # feed names: unique regardless of case, no '..'
        clash = admin.post("/api/feeds", json={"name": feed.upper()})
        assert clash.status_code == 409 and "regardless of case" in clash.json()["error"]["message"]
        assert admin.post("/api/feeds", json={"name": "a..b"}).status_code == 400
        # a connector URL that ends in a subdir is refused with the reason
        refused = admin.post("/api/connectors", json={"name": "ends-in-subdir", "url": upstream.url + "/linux-64"})
        assert refused.status_code == 400 and "ends in the subdir" in refused.json()["error"]["message"]
    with server.client() as client:
        # the API takes the UI's q as well as search
        assert [i["name"] for i in client.get(f"/api/feeds/{feed}/packages", params={"q": "findable"}).json()[
            "items"]] == ["findable"]
        assert client.get(f"/api/feeds/{feed}/packages", params={"q": "nothing-like-it"}).json()["total"] == 0
        # the channel's own URL: a browser lands on the feed page, other clients get a small index
        browser = client.get(f"/conda/{feed}/", headers={"Accept": "text/html"}, follow_redirects=False)
        assert browser.status_code == 303 and browser.headers["location"] == f"/feeds/{feed}"
        index = client.get(f"/conda/{feed}/")
        assert index.status_code == 200 and index.json()["channel_url"].endswith(f"/conda/{feed}")
        # a feed's own file can be replaced (--force): caches must revalidate it (cheap: the ETag is its sha256)
        served = client.get(f"/conda/{feed}/noarch/{package.name}")
        assert served.headers["cache-control"] == "public, no-cache"
        again = client.get(f"/conda/{feed}/noarch/{package.name}", headers={"If-None-Match": served.headers["etag"]})
        assert again.status_code == 304
