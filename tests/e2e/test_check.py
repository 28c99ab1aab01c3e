"""``condagate check`` on a real server's data dir: a crash between "blob stored" and "row committed"
leaves an orphan that check finds and (once it is old) removes; rows whose blob is gone or altered are
reported, marked broken by ``--repair`` and no longer served; repodata that disagrees with its rows is
found and set right. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
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
from sqlalchemy import text

from condagate.store.blobs import FAULT_AFTER_BLOB_STORED
from condagate.store.db import make_engine

from conftest import backend_database_url
from servers import Server, condagate_command, start_server

MakePackage = Callable[..., Path]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A fresh database URL per call: "" (SQLite in the data dir) or a new PostgreSQL database."""
    backend_database_url(request.param)  # skips (or fails in CI) without PostgreSQL
    return lambda: backend_database_url(request.param)


@pytest.fixture
def own_server(database: Callable[[], str], tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "data", database())
    yield server
    server.stop()


def run_check(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``condagate check`` as an operator runs it on the host: only the data dir (and database URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_") and k != "COLUMNS"}
    if server.database_url:
        env["CONDAGATE_DATABASE_URL"] = server.database_url
    return subprocess.run(
        [*condagate_command(), "check", "--data-dir", str(server.data_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def check_json(server: Server, *args: str, status: int) -> dict[str, Any]:
    result = run_check(server, "--json", *args)
    assert result.returncode == status, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def problems_by_kind(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for problem in report["problems"]:
        found.setdefault(problem["kind"], []).append(problem)
    return found


def create_feed(server: Server) -> str:
    name = "check-" + uuid.uuid4().hex[:8]
    with server.admin() as client:
        assert client.post("/api/feeds", json={"name": name}).status_code == 201
    return name


def upload(server: Server, feed: str, path: Path, **params: object) -> httpx.Response:
    with server.admin() as client:
        return client.post(f"/api/feeds/{feed}/upload/{path.name}", content=path.read_bytes(), params=params)


def blob_path(server: Server, data: bytes) -> Path:
    sha256 = hashlib.sha256(data).hexdigest()
    return server.data_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256


def listed(server: Server, feed: str, subdir: str = "noarch") -> set[str]:
    with server.admin() as client:
        response = client.get(f"/conda/{feed}/{subdir}/repodata.json")
        assert response.status_code == 200, response.text
        body = response.json()
    return set(body["packages"]) | set(body["packages.conda"])


def test_a_clean_data_dir_has_no_problems(own_server: Server, make_package: MakePackage) -> None:
    feed = create_feed(own_server)
    assert upload(own_server, feed, make_package()).status_code == 201
    result = run_check(own_server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("no problems: checked 1 blob(s)"), result.stdout
    report = check_json(own_server, "--quick", status=0)
    assert report["clean"] and report["problems"] == [] and report["summary"]["package_files"] == 1


def test_check_needs_a_data_dir_with_a_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
    result = subprocess.run(
        [*condagate_command(), "check", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "no condagate database in" in line
    assert not (tmp_path / "none").exists()


def test_a_crash_between_blob_and_row_leaves_an_orphan_that_check_removes(
    database: Callable[[], str], tmp_path: Path, make_package: MakePackage
) -> None:
    server = start_server(tmp_path / "data", database(), extra_env={FAULT_AFTER_BLOB_STORED: "exit"})
    try:
        feed = create_feed(server)
        package = make_package()
        with pytest.raises(httpx.TransportError):  # the server died before it could answer
            upload(server, feed, package)
    finally:
        server.stop()
    blob = blob_path(server, package.read_bytes())
    assert blob.is_file()  # in place, and no row uses it

    report = check_json(server, status=1)
    [orphan] = report["problems"]
    assert orphan["kind"] == "orphan_blob" and orphan["sha256"] == blob.name and not orphan["repaired"]
    assert report["summary"]["package_files"] == 0

    young = run_check(server, "--repair")  # young: an upload in flight looks just like this
    assert young.returncode == 1, young.stdout + young.stderr
    assert "younger than an hour" in young.stdout and "1 left" in young.stdout
    assert blob.is_file()

    two_hours_ago = time.time() - 7200
    os.utime(blob, (two_hours_ago, two_hours_ago))
    repaired = run_check(server, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "removed" in repaired.stdout and "1 repaired, 0 left" in repaired.stdout
    assert not blob.exists()
    again = run_check(server)
    assert again.returncode == 0 and "no problems" in again.stdout, again.stdout + again.stderr

    # The same data dir serves again, and the file can be uploaded now.
    restarted = start_server(server.data_dir, server.database_url)
    try:
        assert upload(restarted, feed, package).status_code == 201
        assert listed(restarted, feed) == {package.name}
        assert run_check(restarted).returncode == 0
    finally:
        restarted.stop()


def test_rows_whose_blob_is_gone_or_altered_are_marked_and_no_longer_served(
    own_server: Server, make_package: MakePackage
) -> None:
    server = own_server
    feed = create_feed(server)
    packages = {what: make_package(f"{what}-{uuid.uuid4().hex[:6]}") for what in ("gone", "altered", "cut", "fine")}
    for package in packages.values():
        assert upload(server, feed, package).status_code == 201
    blobs = {what: blob_path(server, package.read_bytes()) for what, package in packages.items()}
    blobs["gone"].unlink()
    altered = bytearray(blobs["altered"].read_bytes())
    altered[len(altered) // 2] ^= 0xFF  # same size, other bytes
    blobs["altered"].write_bytes(bytes(altered))
    blobs["cut"].write_bytes(blobs["cut"].read_bytes()[:-10])

    found = problems_by_kind(check_json(server, status=1))
    assert sorted(found) == ["missing_blob", "wrong_sha256", "wrong_size"]
    assert found["missing_blob"][0]["subject"] == f"{feed}/noarch/{packages['gone'].name}"
    assert found["wrong_sha256"][0]["subject"] == f"{feed}/noarch/{packages['altered'].name}"
    assert found["wrong_sha256"][0]["actual_sha256"] == hashlib.sha256(altered).hexdigest()
    assert found["wrong_size"][0]["actual_size"] == packages["cut"].stat().st_size - 10
    quick = problems_by_kind(check_json(server, "--quick", status=1))
    assert sorted(quick) == ["missing_blob", "wrong_size"]  # sizes only: the altered bytes go unseen

    text_report = run_check(server)
    assert text_report.returncode == 1
    assert f"missing_blob: {feed}/noarch/{packages['gone'].name}: its blob" in text_report.stdout
    assert "3 problem(s)" in text_report.stdout and "--repair" in text_report.stdout

    repaired = check_json(server, "--repair", status=0)
    assert all(problem["repaired"] for problem in repaired["problems"]), repaired
    assert all("marked broken" in problem["action"] for problem in repaired["problems"])
    assert not blobs["altered"].exists() and not blobs["cut"].exists()  # moved aside, other bytes than named
    assert (server.data_dir / "blobs" / "quarantine" / blobs["altered"].name).is_file()

    assert listed(server, feed) == {packages["fine"].name}
    with server.admin() as client:
        assert client.get(f"/conda/{feed}/noarch/{packages['fine'].name}").status_code == 200
        for what in ("gone", "altered", "cut"):
            response = client.get(f"/conda/{feed}/noarch/{packages[what].name}")
            assert response.status_code in (404, 410), response.text
            assert "broken" in response.text and "condagate check" in response.text, response.text

    after = check_json(server, status=0)  # marked: known and not served, no longer a problem
    assert after["problems"] == [] and "3 package file(s) marked broken earlier" in after["notes"][0]

    # Uploading the file again stores its bytes again and serves it.
    assert upload(server, feed, packages["gone"]).status_code == 201  # the same bytes: no --force needed
    assert listed(server, feed) == {packages["fine"].name, packages["gone"].name}
    # So does putting the right bytes back (from a backup): check finds the file intact, repair serves it.
    blobs["cut"].write_bytes(packages["cut"].read_bytes())
    restored = check_json(server, status=1)
    assert [(p["kind"], p["subject"]) for p in restored["problems"]] == [
        ("broken_but_intact", f"{feed}/noarch/{packages['cut'].name}")
    ]
    assert "1 package file(s) marked broken earlier" in restored["notes"][0]
    assert check_json(server, "--repair", status=0)["problems"][0]["action"] == "served again"
    assert listed(server, feed) == {packages["fine"].name, packages["gone"].name, packages["cut"].name}
    assert check_json(server, status=0)["problems"] == []


def test_repodata_that_disagrees_with_its_rows_is_found_and_set_right(
    own_server: Server, make_package: MakePackage
) -> None:
    server = own_server
    feed = create_feed(server)
    good, lying = make_package(), make_package()
    for package in (good, lying):
        assert upload(server, feed, package).status_code == 201
    assert listed(server, feed) == {good.name, lying.name}
    url = server.database_url or f"sqlite:///{server.data_dir / 'condagate.db'}"
    engine = make_engine(url)
    try:
        with engine.execution_options(write=True).begin() as connection:  # the lock up front, as the server does
            feed_id = connection.execute(text("SELECT id FROM feeds WHERE name = :n"), {"n": feed}).scalar_one()
            record = json.loads(
                connection.execute(
                    text("SELECT record FROM package_files WHERE filename = :f"), {"f": lying.name}
                ).scalar_one()
            )
            record["version"] = "9.9"
            connection.execute(
                text("UPDATE package_files SET record = :r WHERE filename = :f"),
                {"r": json.dumps(record), "f": lying.name},
            )
            connection.execute(text("DELETE FROM subdir_states WHERE feed_id = :id"), {"id": feed_id})
    finally:
        engine.dispose()
    leftover = server.data_dir / "upstream" / "999999" / "noarch"  # kept for a connector that is gone
    leftover.mkdir(parents=True)
    (leftover / "meta.json").write_text("{}")

    found = problems_by_kind(check_json(server, status=1))
    assert sorted(found) == ["record_mismatch", "subdir_state_missing", "upstream_copy_without_connector"]
    assert "version is '9.9' in the record but '1.0' in the row" in found["record_mismatch"][0]["message"]
    assert found["subdir_state_missing"][0]["subject"] == f"{feed}/noarch"

    repaired = check_json(server, "--repair", status=0)
    assert all(problem["repaired"] for problem in repaired["problems"]), repaired
    assert not leftover.parent.exists()
    assert listed(server, feed) == {good.name}
    # The restored revision is newer than every row: a new upload is listed at once.
    newer = make_package()
    assert upload(server, feed, newer).status_code == 201
    assert listed(server, feed) == {good.name, newer.name}
    assert check_json(server, status=0)["problems"] == []
