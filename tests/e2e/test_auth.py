"""Write operations need the administrator key in any of the forms clients send; reads are anonymous."""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from condagate.security.apikeys import hash_key

from servers import Server, condagate_command, start_server


def _feed_name() -> str:
    return "auth-" + uuid.uuid4().hex[:8]


@pytest.mark.parametrize(
    "headers",
    [
        lambda key: {"X-API-Key": key},
        lambda key: {"X-ApiKey": key},
        lambda key: {"Authorization": f"Bearer {key}"},
        lambda key: {"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()},
    ],
    ids=["x-api-key", "x-apikey", "bearer", "basic"],
)
def test_every_credential_form_is_accepted(server: Server, headers):  # type: ignore[no-untyped-def]
    with server.client() as client:
        response = client.post("/api/feeds", json={"name": _feed_name()}, headers=headers(server.api_key))
    assert response.status_code == 201, response.text


def test_writes_without_or_with_a_wrong_key_are_refused(server: Server, feed: str, make_package):
    package = make_package("secret")
    with server.client() as client:
        anonymous = client.post("/api/feeds", json={"name": _feed_name()})
        wrong = client.post("/api/feeds", json={"name": _feed_name()}, headers={"X-API-Key": "not-the-key"})
        bad_basic = client.post("/api/feeds", json={"name": _feed_name()},
                                headers={"Authorization": "Basic !!!not-base64"})
        upload = client.post(f"/api/feeds/{feed}/upload/{package.name}", content=package.read_bytes())
        put = client.put(f"/conda/{feed}/noarch/{package.name}", content=package.read_bytes())
        delete = client.delete(f"/api/feeds/{feed}")
    for response in (anonymous, wrong, bad_basic, upload, put, delete):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Basic realm="condagate"'
        assert response.json()["error"]["code"] == "authentication_required"
    assert "not valid" in wrong.json()["error"]["message"]
    with server.client() as client:
        assert client.get(f"/api/feeds/{feed}").status_code == 200
        assert client.get(f"/api/feeds/{feed}/packages").json()["total"] == 0


def test_feed_names_are_validated(server: Server):
    with server.admin() as client:
        for name, message in [
            ("has space", "invalid feed name"),
            ("../etc", "invalid feed name"),
            ("-leading", "invalid feed name"),
            ("api", "reserved"),
            ("health", "reserved"),
            ("x" * 101, "invalid feed name"),
        ]:
            response = client.post("/api/feeds", json={"name": name})
            assert response.status_code == 400, name
            assert message in response.json()["error"]["message"]
        name = _feed_name()
        assert client.post("/api/feeds", json={"name": name}).status_code == 201
        duplicate = client.post("/api/feeds", json={"name": name})
        assert duplicate.status_code == 409 and "already exists" in duplicate.json()["error"]["message"]
        malformed = client.post("/api/feeds", content=b"{not json", headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_request"


def test_first_start_generates_a_key_prints_it_once_and_stores_it_hashed(tmp_path: Path):
    data = tmp_path / "fresh"
    server = start_server(data, admin_key=None)
    try:
        server.stop()
        output = server.log()
        printed = [line for line in output.splitlines() if line.startswith("CONDAGATE_API_KEY=")]
        assert len(printed) == 1
        key = printed[0].split("=", 1)[1]
        assert len(key) > 30
        database = sqlite3.connect(data / "condagate.db")
        stored = [row[0] for row in database.execute("SELECT key_hash FROM api_keys")]
        database.close()
        assert stored == [hash_key(key)]
        assert key.encode() not in (data / "condagate.db").read_bytes()
        again = start_server(data, admin_key=None)
        try:
            with again.client(headers={"X-API-Key": key}) as client:
                assert client.post("/api/feeds", json={"name": "after-restart"}).status_code == 201
        finally:
            again.stop()
        assert "CONDAGATE_API_KEY=" not in again.log()
    finally:
        server.stop()


def test_serve_defaults_to_port_8624_and_sqlite_in_the_data_dir(tmp_path: Path):
    env = {**os.environ, "COLUMNS": "200", "CONDAGATE_DATA_DIR": str(tmp_path / "data")}
    help_text = subprocess.run([*condagate_command(), "serve", "--help"], capture_output=True, text=True,
                               check=True, env=env).stdout
    assert "8624" in help_text and "--data-dir" in help_text
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8624)) == 0:
            pytest.skip("something already listens on 8624 here")
    process = subprocess.Popen([*condagate_command(), "serve"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get("http://127.0.0.1:8624/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("condagate serve did not answer on 127.0.0.1:8624")
        assert (tmp_path / "data" / "condagate.db").is_file()
        assert (tmp_path / "data" / "blobs").is_dir()
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode()
    assert "CONDAGATE_API_KEY=" in output


def test_writes_from_another_sites_page_are_refused(server: Server):
    """A browser that cached Basic credentials attaches them to another site's form: refuse it."""
    host = server.url.removeprefix("http://")
    with server.admin() as client:
        forged = client.post("/api/feeds", json={"name": _feed_name()}, headers={"Origin": "http://evil.example"})
        fetched = client.post("/api/feeds", json={"name": _feed_name()}, headers={"Sec-Fetch-Site": "cross-site"})
        same = client.post("/api/feeds", json={"name": _feed_name()}, headers={"Origin": f"http://{host}"})
        reading = client.get("/api/feeds", headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403 and "another site" in forged.json()["error"]["message"]
    assert fetched.status_code == 403
    assert same.status_code == 201
    assert reading.status_code == 200
