"""Promotion with dependencies: the closure of match specs in a feed, solved with py-rattler in-process.

The server runs in its own process; the test opens the same database and blob folder the way
``condagate admin`` does, and calls the service directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rattler

from condagate.errors import BadRequest, FeedNotFound
from condagate.services.closure import ClosureResult, WantedFile, read_environment_file, solve_closure
from condagate.services.context import Services
from condagate.settings import Settings

from conftest import upload
from servers import Server
from upstream_channel import UpstreamChannel

MakePackage = Callable[..., Path]


@pytest.fixture
def services(server: Server) -> Iterator[Services]:
    opened = Services.open(Settings.from_env(server.env))
    yield opened
    opened.close()


@pytest.fixture
def pyfoo_feed(server: Server, feed: str, make_package: MakePackage) -> dict[str, Path]:
    """pyfoo 1.0 for linux-64 (needs glibc 2.17) and win-64, depending on ``pybar >=1``; pybar 1.0 and 2.0."""
    files = {
        "linux-64": make_package("pyfoo", subdir="linux-64", depends=["pybar >=1", "__glibc >=2.17"]),
        "win-64": make_package("pyfoo", subdir="win-64", depends=["pybar >=1"]),
        "pybar-1": make_package("pybar", version="1.0"),
        "pybar-2": make_package("pybar", version="2.0", extension=".tar.bz2"),
    }
    for path in files.values():
        assert upload(server, feed, path).status_code == 201
    return files


def _files(result: ClosureResult) -> list[tuple[str, str]]:
    return sorted((wanted.subdir, wanted.filename) for wanted in result.wanted)


def test_closure_of_pyfoo_per_subdir(services: Services, feed: str, pyfoo_feed: dict[str, Path]) -> None:
    result = solve_closure(services, feed, ["pyfoo"], ["linux-64", "win-64"])
    assert result.unresolved == {}
    assert _files(result) == [
        ("linux-64", "pyfoo-1.0-0.conda"),
        ("noarch", "pybar-2.0-0.tar.bz2"),  # once, though both subdirs need it
        ("win-64", "pyfoo-1.0-0.conda"),
    ]
    pybar = next(wanted for wanted in result.wanted if wanted.name == "pybar")
    assert pybar == WantedFile(
        "noarch",
        "pybar-2.0-0.tar.bz2",
        "pybar",
        "2.0",
        "0",
        hashlib.sha256(pyfoo_feed["pybar-2"].read_bytes()).hexdigest(),
    )
    # Channel-qualified and conda-style specs, as environment.yml files have them.
    pinned = solve_closure(services, feed, ["conda-forge::pyfoo", "pybar=1.0"], ["linux-64"])
    assert _files(pinned) == [("linux-64", "pyfoo-1.0-0.conda"), ("noarch", "pybar-1.0-0.conda")]


def test_what_cannot_be_solved_is_named_per_subdir(services: Services, feed: str, pyfoo_feed: dict[str, Path]) -> None:
    result = solve_closure(services, feed, ["pyfoo", "pybar <1"], ["linux-64", "win-64"])
    assert result.wanted == []
    assert sorted(result.unresolved) == ["linux-64", "win-64"]
    assert "pybar" in result.unresolved["linux-64"]

    # noarch alone has no pyfoo; an old glibc cannot have the linux-64 one.
    result = solve_closure(
        services, feed, ["pyfoo"], ["noarch", "linux-64", "win-64"], virtual_packages={"linux-64": ["__glibc=2.12"]}
    )
    assert sorted(result.unresolved) == ["linux-64", "noarch"]
    assert "__glibc" in result.unresolved["linux-64"]
    assert _files(result) == [("noarch", "pybar-2.0-0.tar.bz2"), ("win-64", "pyfoo-1.0-0.conda")]


def test_bad_specs_and_subdirs_are_refused(services: Services, feed: str, pyfoo_feed: dict[str, Path]) -> None:
    with pytest.raises(BadRequest, match="'pyfoo >=>=1'"):
        solve_closure(services, feed, ["pyfoo", "pyfoo >=>=1"], ["linux-64"])
    with pytest.raises(BadRequest, match="amiga-68k"):
        solve_closure(services, feed, ["pyfoo"], ["linux-64", "amiga-68k"])
    with pytest.raises(BadRequest, match="at most 200"):
        solve_closure(services, feed, [f"p{n}" for n in range(201)], ["linux-64"])
    with pytest.raises(BadRequest):
        solve_closure(services, feed, [], ["linux-64"])
    with pytest.raises(BadRequest):
        solve_closure(services, feed, ["pyfoo"], [])
    with pytest.raises(FeedNotFound):
        solve_closure(services, "no-such-feed-" + uuid.uuid4().hex[:6], ["pyfoo"], ["linux-64"])


def test_closure_matches_a_lock_file_py_rattler_writes_against_the_feed(
    server: Server, services: Services, feed: str, pyfoo_feed: dict[str, Path], tmp_path: Path
) -> None:
    """What a client of the feed locks (pixi's way, over HTTP) is what the closure asks for."""
    channel = f"{server.url}/conda/{feed}"

    async def solve(platform: str) -> list[rattler.RepoDataRecord]:
        gateway = rattler.Gateway(cache_dir=tmp_path / "rattler-cache")
        virtual = [rattler.GenericVirtualPackage(rattler.PackageName("__glibc"), rattler.Version("2.34"),
                                                 rattler.BuildString("0"))]  # fmt: skip
        subdirs = [rattler.Subdir(platform), rattler.Subdir("noarch")]
        return await rattler.solve([channel], ["pyfoo"], gateway=gateway, platforms=subdirs, virtual_packages=virtual)

    platforms = [rattler.LockPlatform("linux-64"), rattler.LockPlatform("win-64")]
    lock = rattler.LockFile(platforms)
    lock.set_channels("default", [rattler.LockChannel(channel)])
    for platform in platforms:
        for record in asyncio.run(solve(platform.name)):
            lock.add_conda_package("default", platform, record)
    lock.to_path(tmp_path / "pixi.lock")

    request = read_environment_file("pixi.lock", (tmp_path / "pixi.lock").read_bytes())
    assert sorted(request.subdirs) == ["linux-64", "win-64"]
    assert sorted(request.files) == _files(solve_closure(services, feed, ["pyfoo"], request.subdirs))


def test_proxy_feed_closure_comes_from_the_upstream(
    server: Server, services: Services, upstream: UpstreamChannel
) -> None:
    connector, feed = f"up-{uuid.uuid4().hex[:8]}", f"proxy-{uuid.uuid4().hex[:8]}"
    with server.admin() as client:
        assert client.post("/api/connectors", json={"name": connector, "url": upstream.url}).status_code == 201
        assert client.post("/api/feeds", json={"name": feed, "connectors": [connector]}).status_code == 201

    # Nothing of the upstream is fetched yet: the closure waits for the first fetch of each subdir.
    result = solve_closure(services, feed, ["numpy", "requests"], ["linux-64"])
    assert result.unresolved == {}
    assert _files(result) == [
        ("linux-64", "numpy-2.0.0-py311h0_0.conda"),
        ("linux-64", "python-3.11.9-h0_0.tar.bz2"),
        ("noarch", "requests-2.32.3-pyhd_0.conda"),
    ]
    numpy = next(wanted for wanted in result.wanted if wanted.name == "numpy")
    assert numpy.sha256 == hashlib.sha256((upstream.root / "linux-64" / numpy.filename).read_bytes()).hexdigest()
    assert "numpy-dbg" in str(solve_closure(services, feed, ["numpy-dbg >=3"], ["linux-64"]).unresolved)
