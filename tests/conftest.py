"""Shared fixtures: a real condagate server per database backend, feeds, package files."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from package_factory import PackageSpec, write_package  # noqa: E402
from servers import Server, postgres_database, start_server, stop_postgres  # noqa: E402
from upstream_channel import UpstreamChannel  # noqa: E402

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session", autouse=True)
def _postgres_cluster() -> Iterator[None]:
    """Stop the throwaway PostgreSQL cluster (started lazily by postgres_database()) when the session ends."""
    yield
    stop_postgres()


def backend_database_url(backend: str) -> str:
    """ "" for SQLite (in the data dir), or a new database in the throwaway PostgreSQL cluster; without
    PostgreSQL the test is skipped here and fails in CI (which installs it)."""
    if backend == "sqlite":
        return ""
    url = postgres_database()
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    return url


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A condagate server on SQLite, and one on PostgreSQL: every end-to-end test runs on both."""
    instance = start_server(
        tmp_path_factory.mktemp(f"server-{request.param}") / "data", backend_database_url(request.param)
    )
    yield instance
    instance.stop()


@pytest.fixture
def feed(server: Server) -> str:
    name = "feed-" + uuid.uuid4().hex[:10]
    with server.admin() as client:
        response = client.post("/api/feeds", json={"name": name})
        assert response.status_code == 201, response.text
    return name


@pytest.fixture
def make_package(tmp_path: Path):  # type: ignore[no-untyped-def]
    counter = iter(range(10**6))

    def make(name: str | None = None, extension: str = ".conda", **fields: object) -> Path:
        spec = PackageSpec(name=name or f"pkg{next(counter)}-{uuid.uuid4().hex[:6]}", **fields)  # type: ignore[arg-type]
        directory = tmp_path / uuid.uuid4().hex[:8]
        directory.mkdir()
        return write_package(directory, spec, extension)

    return make


def upload(server: Server, feed: str, path: Path, **params: object):  # type: ignore[no-untyped-def]
    with server.admin() as client:
        return client.post(f"/api/feeds/{feed}/upload/{path.name}", content=path.read_bytes(), params=params)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamChannel]:
    """A local upstream conda channel (real packages, repodata by py-rattler's indexer) on 127.0.0.1."""
    channel = UpstreamChannel(tmp_path / "upstream")
    channel.add(PackageSpec("python", "3.11.9", "h0_0", subdir="linux-64"), ".tar.bz2")
    channel.add(
        PackageSpec(
            "numpy",
            "1.26.4",
            "py311h0_0",
            subdir="linux-64",
            depends=["python >=3.11"],
            files={"lib/numpy.so": b"\x7fELF" + bytes(4000)},
        )
    )
    channel.add(PackageSpec("numpy", "2.0.0", "py311h0_0", subdir="linux-64", depends=["python >=3.11"]))
    channel.add(PackageSpec("numpy-dbg", "2.0.0", "0", subdir="linux-64"))
    channel.add(PackageSpec("requests", "2.32.3", "pyhd_0", depends=["python"]))
    channel.add(PackageSpec("pure", "1.0", "0"), ".tar.bz2")
    channel.index()
    channel.start()
    yield channel
    channel.stop()
