"""The hosted-feed walk-through: create a feed, upload every way clients do, install with py-rattler."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from rattler_build import upload as rattler_build_upload

from conftest import upload
from rattler_client import query, solve_and_install
from servers import Server, condagate_command


def cli(server: Server, *args: str, key: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": server.api_key if key is None else key}
    result = subprocess.run([*condagate_command(), *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_create_feed_with_cli_upload_with_cli_and_install_with_rattler(server: Server, make_package, tmp_path: Path):
    name = "private-" + uuid.uuid4().hex[:8]
    created = json.loads(cli(server, "feed", "create", name, "--description", "team packages", "--json").stdout)
    assert created["channel_url"].endswith(f"/conda/{name}")
    assert created["conda_config"] == f"conda config --add channels {created['channel_url']}"

    lib = make_package("libgreet", ".tar.bz2", version="2.1", build="h0_0", subdir="linux-64")
    app = make_package("greeter", ".conda", version="1.0", build="py_0", depends=["libgreet >=2"])
    uploaded = json.loads(cli(server, "upload", name, str(lib), str(app), "--json").stdout)
    assert [(u["subdir"], u["filename"]) for u in uploaded] == [
        ("linux-64", lib.name),
        ("noarch", app.name),
    ]

    listed = json.loads(cli(server, "feed", "list", "--json").stdout)
    assert {"name": name, "package_files": 2}.items() <= next(f for f in listed if f["name"] == name).items()

    channel = f"{server.url}/conda/{name}"
    installed = solve_and_install(channel, ["greeter"], tmp_path / "env")
    assert installed == ["greeter=1.0=py_0", "libgreet=2.1=h0_0"]
    assert (tmp_path / "env" / "share" / "libgreet" / "README.txt").read_text() == "libgreet 2.1\n"
    assert (tmp_path / "env" / "conda-meta" / "greeter-1.0-py_0.json").is_file()


@pytest.mark.parametrize("sharded", [False, True], ids=["repodata", "sharded"])
def test_rattler_sees_uploads_at_once(server: Server, feed: str, make_package, sharded: bool):
    channel = f"{server.url}/conda/{feed}"
    assert query(channel, ["tool"], sharded=sharded) == []
    first = make_package("tool", version="1.0")
    assert upload(server, feed, first).status_code == 201
    assert query(channel, ["tool"], sharded=sharded) == ["tool=1.0=0"]
    second = make_package("tool", ".tar.bz2", version="1.1", subdir="linux-64")
    assert upload(server, feed, second).status_code == 201
    assert query(channel, ["tool"], sharded=sharded) == ["tool=1.0=0", "tool=1.1=0"]


def test_rattler_build_upload_protocols(server: Server, feed: str, make_package, tmp_path: Path):
    """quetz, prefix.dev and Artifactory uploads from rattler-build's own uploaders (what pixi upload uses)."""
    quetz = make_package("via-quetz", subdir="linux-64")
    prefix = make_package("via-prefix", ".tar.bz2", subdir="osx-arm64")
    artifactory = make_package("via-artifactory", subdir="win-64")
    rattler_build_upload.upload_package_to_quetz([str(quetz)], server.url, feed, api_key=server.api_key)
    rattler_build_upload.upload_package_to_prefix([str(prefix)], server.url, feed, api_key=server.api_key)
    rattler_build_upload.upload_package_to_artifactory(
        [str(artifactory)], f"{server.url}/conda", feed, token=server.api_key
    )
    channel = f"{server.url}/conda/{feed}"
    assert query(channel, ["via-quetz"], platform="linux-64") == ["via-quetz=1.0=0"]
    assert query(channel, ["via-prefix"], platform="osx-arm64") == ["via-prefix=1.0=0"]
    assert query(channel, ["via-artifactory"], platform="win-64") == ["via-artifactory=1.0=0"]
    installed = solve_and_install(channel, ["via-prefix"], tmp_path / "env", platform="osx-arm64")
    assert installed == ["via-prefix=1.0=0"]


def test_rattler_build_uploads_refuse_duplicates_and_bad_keys(server: Server, feed: str, make_package):
    package = make_package("dup")
    rattler_build_upload.upload_package_to_quetz([str(package)], server.url, feed, api_key=server.api_key)
    # the same bytes again: success (a CI re-run), nothing changes
    rattler_build_upload.upload_package_to_quetz([str(package)], server.url, feed, api_key=server.api_key)
    other_bytes = make_package("dup", summary="another build under the same file name")
    assert other_bytes.name == package.name and other_bytes.read_bytes() != package.read_bytes()
    with pytest.raises(Exception, match="(?i)error"):
        rattler_build_upload.upload_package_to_quetz([str(other_bytes)], server.url, feed, api_key=server.api_key)
    with pytest.raises(Exception, match="(?i)error"):
        rattler_build_upload.upload_package_to_quetz([str(make_package("other"))], server.url, feed, api_key="wrong")
    with server.client() as client:
        names = client.get(f"/api/feeds/{feed}/packages").json()["items"]
    assert [item["name"] for item in names] == ["dup"]


def test_cli_errors_are_one_line_and_non_zero(server: Server, make_package):
    missing = cli(server, "upload", "no-such-feed", str(make_package("x")), check=False)
    assert missing.returncode == 1
    assert "404" in missing.stderr and "no-such-feed" in missing.stderr
    bad = cli(server, "feed", "create", "bad name!", check=False)
    assert bad.returncode == 1 and "invalid feed name" in bad.stderr
    unauthorised = cli(server, "feed", "create", "x-" + uuid.uuid4().hex[:6], key="wrong-key", check=False)
    assert unauthorised.returncode == 1 and "401" in unauthorised.stderr
