"""Upstream state is shared by replicas: two ``condagate serve`` processes with data folders of their own,
on one database and one blob store. What A fetched from an upstream (the body as a blob, its ETag, the
note of the records the checks dropped or rewrote) is a database row, so B, never asked before, serves
it while the upstream is down, and revalidates it with a conditional request once the upstream is back.
The blob is referenced: ``condagate check`` finds no orphan; a replaced body's blob is deleted."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from condagate.store.db import make_engine

from conftest import BACKENDS, backend_database_url
from package_factory import PackageSpec
from servers import Server, condagate_command, start_server
from upstream_channel import UpstreamChannel

ZST = "/linux-64/repodata.json.zst"


@dataclass
class Replicas:
    a: Server
    b: Server
    blobs: Path

    def blob(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256[2:4] / sha256

    def kept(self, connector: str) -> dict[str, Any]:
        """The shared state row of the connector's linux-64 repodata."""
        engine = make_engine(self.a.database_url)
        try:
            with engine.connect() as connection:
                row = connection.execute(
                    text(
                        "SELECT s.* FROM upstream_repodata s JOIN connectors c ON c.id = s.connector_id "
                        "WHERE c.name = :name AND s.subdir = 'linux-64'"
                    ),
                    {"name": connector},
                ).one()
        finally:
            engine.dispose()
        return dict(row._mapping)


@pytest.fixture(params=BACKENDS)
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    database_url = backend_database_url(request.param) or f"sqlite:///{tmp_path / 'shared.db'}"
    shared = {
        "CONDAGATE_STORAGE_URL": str(tmp_path / "blobs"),
        "CONDAGATE_SECRET_KEY": Fernet.generate_key().decode(),
        # a failed upstream check may be retried after 0.2 s (the default back-off is 30 s)
        "CONDAGATE_UPSTREAM_BACKOFF_SECONDS": "0.2",
        "CONDAGATE_UPSTREAM_MAX_BACKOFF_SECONDS": "0.2",
    }
    a = start_server(tmp_path / "a", database_url, extra_env=shared)
    try:
        b = start_server(tmp_path / "b", database_url, extra_env=shared)
    except BaseException:
        a.stop()
        raise
    yield Replicas(a, b, tmp_path / "blobs")
    a.stop()
    b.stop()


def _proxy_feed(server: Server, upstream: UpstreamChannel, **fields: object) -> tuple[str, str]:
    connector, feed = "up-" + uuid.uuid4().hex[:8], "proxy-" + uuid.uuid4().hex[:8]
    with server.admin() as client:
        created = client.post("/api/connectors", json={"name": connector, "url": upstream.url, **fields})
        assert created.status_code == 201, created.text
        assert client.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201
    return connector, feed


def _check(server: Server, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [*condagate_command(), "check", "--json", *args], capture_output=True, text=True, env=server.env, timeout=300
    )
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_a_replica_serves_and_revalidates_what_another_fetched(replicas: Replicas, upstream: UpstreamChannel):
    a, b = replicas.a, replicas.b
    # Lifetime 0: every request revalidates, so B's first request checks the upstream (and finds it down).
    connector, feed = _proxy_feed(a, upstream, cache_minutes=0, timeout_seconds=5)
    url = f"/conda/{feed}/linux-64/repodata.json"
    with a.client() as client:
        fresh = client.get(url)
    assert fresh.status_code == 200 and "x-condagate-stale" not in fresh.headers
    assert "numpy-2.0.0-py311h0_0.conda" in fresh.json()["packages.conda"]
    kept = replicas.kept(connector)
    body = (upstream.root / "linux-64" / "repodata.json.zst").read_bytes()
    assert kept["sha256"] == hashlib.sha256(body).hexdigest() and replicas.blob(kept["sha256"]).read_bytes() == body
    assert kept["etag"] and json.loads(kept["not_as_written"]) == []

    upstream.stop()
    assert not (b.data_dir / "upstream").exists()  # B holds nothing of it on its own
    with b.admin() as client:
        stale = client.get(url)
    assert stale.status_code == 200, stale.text
    assert stale.json() == fresh.json()
    assert connector in stale.headers["x-condagate-stale"]

    upstream.start()  # same port
    time.sleep(0.3)  # past the back-off of B's failed check
    requests, not_modified = upstream.count(ZST), upstream.conditional_hits[ZST]
    with b.client() as client:
        for _ in range(50):  # until B's revalidation has answered (it waits at most 0.5 s per request)
            recovered = client.get(url)
            if "x-condagate-stale" not in recovered.headers:
                break
            time.sleep(0.1)
    assert recovered.status_code == 200 and "x-condagate-stale" not in recovered.headers
    assert recovered.json() == fresh.json()
    # B's checks were conditional on the ETag A kept, and each was answered 304: no body fetched again.
    sent = upstream.count(ZST) - requests
    assert sent >= 1 and upstream.conditional_hits[ZST] - not_modified == sent

    report = _check(b)
    assert report["problems"] == [] and report["summary"]["blobs"] >= 1, report

    # A new body replaces the kept one for everybody; the old blob is deleted.
    upstream.add(PackageSpec("numpy", "2.1.0", "py311h0_0", subdir="linux-64"))
    upstream.index()
    with a.client() as client:
        changed = client.get(url)
    assert "numpy-2.1.0-py311h0_0.conda" in changed.json()["packages.conda"]
    replaced = replicas.kept(connector)
    assert replaced["sha256"] != kept["sha256"] and replicas.blob(replaced["sha256"]).is_file()
    assert not replicas.blob(kept["sha256"]).exists()
    assert _check(a)["problems"] == []

    # A kept body whose blob is lost is found; the repair drops the row; the next check of the upstream
    # fetches the whole body (not a 304 that would keep nothing) and keeps it again.
    replicas.blob(replaced["sha256"]).unlink()
    found = _check(a)["problems"]
    assert [problem["kind"] for problem in found] == ["upstream_copy_unreadable"], found
    assert "missing" in found[0]["message"] and found[0]["subdir"] == "linux-64"
    assert _check(a, "--repair")["problems"][0]["repaired"]
    with a.client() as client:
        assert client.get(url).json() == changed.json()
    assert replicas.kept(connector)["sha256"] == replaced["sha256"] and replicas.blob(replaced["sha256"]).is_file()
    assert _check(b)["problems"] == []


def test_a_replica_trusts_another_ones_check_within_the_lifetime(replicas: Replicas, upstream: UpstreamChannel):
    a, b = replicas.a, replicas.b
    connector, feed = _proxy_feed(a, upstream, cache_minutes=30)
    url = f"/conda/{feed}/linux-64/repodata.json"
    with a.client() as client:
        fresh = client.get(url)
    assert fresh.status_code == 200
    requests = dict(upstream.requests)
    with b.client() as client:
        served = client.get(url)
    assert served.status_code == 200 and "x-condagate-stale" not in served.headers
    assert served.json() == fresh.json()
    assert dict(upstream.requests) == requests  # A checked the upstream a moment ago: B asks it nothing
    assert replicas.kept(connector)["sha256"]
