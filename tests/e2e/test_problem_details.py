"""Errors are RFC 9457 problem details, and conda's clients print condagate's reason.

conda prints ``detail`` of an ``application/problem+json`` answer (or a top-level ``message``);
py-rattler prints the status only, so the status and a problem body both have to be right.
Earlier clients of condagate read ``error.code`` / ``error.message``: those stay.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import upload
from rattler_client import solve_and_install
from servers import Server
from upstream_channel import UpstreamChannel


def _assert_problem(response: httpx.Response, status: int, code: str, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:condagate:problem:{code}"
    assert body["title"]  # the status's phrase, e.g. "Not Found"
    assert fragment in body["detail"]
    # What conda prints (a top-level message), and what scripts written for earlier versions read.
    assert body["message"] == body["detail"] == body["error"]["message"]
    assert body["error"]["code"] == code


def _conda_reads(response: httpx.Response) -> str:
    """The message conda's CondaHTTPError shows for an answer (conda/exceptions.py): ``detail`` of a
    problem document, else a top-level ``message``."""
    body = response.json()
    if response.headers["content-type"].startswith("application/problem+json") and body.get("detail"):
        return str(body["detail"])
    return str(body.get("message") or "")


def test_errors_of_every_layer_are_problem_details(server: Server, feed: str) -> None:
    with server.client() as client:
        # Routing and the service layer: an unknown feed (answered by a handler).
        missing = client.get(f"/api/feeds/nope-{uuid.uuid4().hex[:6]}")
        _assert_problem(missing, 404, "feed_not_found", "nope-")
        assert missing.json()["title"] == "Not Found"
        # The guard (before any route): an anonymous write.
        refused = client.post("/api/feeds", json={"name": "x"})
        _assert_problem(refused, 401, "authentication_required", "")
        assert refused.headers["www-authenticate"].startswith("Basic")
        # Request validation.
        with server.admin() as admin:
            invalid = admin.post("/api/feeds", content=b"{not json", headers={"content-type": "application/json"})
            _assert_problem(invalid, 400, "invalid_request", "invalid request")
            # A channel miss.
            gone = admin.get(f"/conda/{feed}/linux-64/nothing-1.0-0.conda")
            _assert_problem(gone, 404, "package_not_found", "nothing-1.0-0.conda")


def test_a_wrong_key_is_a_problem_document_that_conda_prints(server: Server, feed: str) -> None:
    response = httpx.get(f"{server.url}/t/cg-{'x' * 40}/conda/{feed}/noarch/repodata.json", timeout=30)
    assert response.status_code == 401
    assert "key" in _conda_reads(response).lower()


def test_an_unreachable_upstream_names_the_connector_and_the_file(
    server: Server, upstream: UpstreamChannel, tmp_path: Path
) -> None:
    """The case the issue names: conda used to show "HTTP 502 ... a simple retry will get you on your
    way"; it now shows which connector is unreachable and which file is not cached."""
    suffix = uuid.uuid4().hex[:6]
    connector, feed = f"up-{suffix}", f"proxy-{suffix}"
    with server.admin() as admin:
        created = admin.post("/api/connectors", json={"name": connector, "url": upstream.url, "check": False})
        assert created.status_code == 201, created.text
        assert admin.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
        listed = admin.get(f"/conda/{feed}/linux-64/repodata.json")
        assert listed.status_code == 200, listed.text
        filename = next(iter(json.loads(listed.content)["packages.conda"] | json.loads(listed.content)["packages"]))
    upstream.stop()
    with server.client() as client:
        response = client.get(f"/conda/{feed}/linux-64/{filename}")
    assert response.status_code in (502, 504), response.text
    shown = _conda_reads(response)
    assert connector in shown and filename in shown, shown
    assert "not cached" in shown


def test_rattler_reports_the_status_of_a_refused_channel(server: Server, feed: str, make_package, tmp_path: Path):  # type: ignore[no-untyped-def]
    """py-rattler prints the status of the answer, not its body: a hidden feed reads as missing (404)
    and a refused key as 401, never as a 500."""
    assert upload(server, feed, make_package(name="probe")).status_code == 201
    url = f"{server.url}/t/cg-{'y' * 40}/conda/{feed}"
    with pytest.raises(Exception) as failure:
        solve_and_install(url, ["probe"], tmp_path / "env")
    assert "401" in str(failure.value), str(failure.value)
