"""The dependency closure of match specs in a feed: what ``conda install SPECS`` from that feed would
install, per subdir, solved with py-rattler against the repodata the feed serves (in-process).

Blocking (a worker thread's job): it may wait for a proxy feed's first upstream fetch (bounded) and
runs the solver (bounded by ``SOLVE_TIMEOUT``). The server cannot see the client's machine, so each
platform subdir is solved with typical virtual packages (``default_virtual_packages``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import rattler
from rattler.exceptions import InvalidMatchSpecError, SolverError

from condagate.conda.environment_files import EnvironmentRequest, read_environment_file
from condagate.conda.subdirs import require_known_subdir
from condagate.errors import BadRequest, SubdirNotFound
from condagate.services import channel, sca_filter
from condagate.services.context import Services

__all__ = [
    "ClosureResult",
    "EnvironmentRequest",
    "WantedFile",
    "default_virtual_packages",
    "read_environment_file",
    "solve_closure",
]

MAX_SPECS = 200
SOLVE_TIMEOUT = timedelta(seconds=60)
UPSTREAM_WAIT_SECONDS = 120.0  # at most this long for a proxy feed's first fetch of a subdir
GLIBC_VERSION = "2.34"  # what a linux-* client is assumed to have (a recent distribution)
OSX_VERSION = "13.0"


@dataclass(frozen=True)
class WantedFile:
    subdir: str
    filename: str
    name: str
    version: str
    build: str
    sha256: str | None


@dataclass(frozen=True)
class ClosureResult:
    wanted: list[WantedFile]  # every file of the solved environment(s), per subdir (noarch files included once)
    unresolved: dict[str, str]  # subdir -> the solver's message where the specs could not be solved


def default_virtual_packages(subdir: str) -> list[str]:
    """``name=version`` of the virtual packages a client of ``subdir`` is assumed to have."""
    if subdir.startswith("linux-"):
        return ["__unix=0", "__linux=0", f"__glibc={GLIBC_VERSION}"]
    if subdir.startswith("osx-"):
        return ["__unix=0", f"__osx={OSX_VERSION}"]
    if subdir.startswith("win-"):
        return ["__win=0"]
    if subdir == "noarch":
        return []
    return ["__unix=0"]  # emscripten, wasi, zos: unix-like enough for packages that ask


def solve_closure(
    services: Services,
    feed_name: str,
    specs: list[str],
    subdirs: list[str],
    virtual_packages: Mapping[str, Sequence[str]] | None = None,
    *,
    repodata: Mapping[str, bytes] | None = None,
) -> ClosureResult:
    """Solve ``specs`` for each of ``subdirs`` (with noarch) against the feed's repodata.

    ``virtual_packages`` overrides ``default_virtual_packages`` per subdir (``name=version`` strings).
    A subdir whose specs cannot be solved is named in ``unresolved`` with the solver's message.
    ``repodata``: repodata.json bytes per subdir (each of ``subdirs`` and noarch) to solve against
    instead of what the feed serves (what-if questions: ``services.sca_impact``)."""
    parsed = _parse_specs(specs)
    chosen = _parse_subdirs(subdirs)
    needed = [*[s for s in chosen if s != "noarch"], "noarch"]
    if repodata is None:
        repodata = _feed_repodata(services, feed_name, needed)
    else:
        repodata = {subdir: repodata[subdir] for subdir in needed}
    wanted: dict[tuple[str, str], WantedFile] = {}
    unresolved: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="condagate-closure-") as folder:
        root = Path(folder)
        for subdir, body in repodata.items():
            (root / subdir).mkdir()
            (root / subdir / "repodata.json").write_bytes(body)
        source = rattler.Channel(root.as_uri())
        for subdir in chosen:
            names = [subdir, "noarch"] if subdir != "noarch" else ["noarch"]
            overrides = virtual_packages if virtual_packages is not None else {}
            virtual = overrides.get(subdir, default_virtual_packages(subdir))
            sparse = [rattler.SparseRepoData(source, name, root / name / "repodata.json") for name in names]
            try:
                records = _run(
                    rattler.solve_with_sparse_repodata(
                        parsed, sparse, virtual_packages=_virtual(virtual), timeout=SOLVE_TIMEOUT
                    )
                )
            except SolverError as exc:
                unresolved[subdir] = str(exc).strip()
                continue
            finally:
                for item in sparse:
                    item.close()
            for record in sorted(records, key=lambda r: r.name.normalized):
                found = _wanted(record)
                wanted.setdefault((found.subdir, found.filename), found)
    return ClosureResult(wanted=list(wanted.values()), unresolved=unresolved)


def _parse_specs(specs: list[str]) -> list[str]:
    if not specs:
        raise BadRequest("no match specs to solve")
    if len(specs) > MAX_SPECS:
        raise BadRequest(f"{len(specs)} match specs; at most {MAX_SPECS} can be solved at once")
    parsed = []
    for spec in specs:
        # The feed is the channel: "conda-forge::numpy" asks for numpy from it.
        text = spec.split("::", 1)[1] if "::" in spec.split("[", 1)[0] else spec
        try:
            match = rattler.MatchSpec(text.strip())
        except InvalidMatchSpecError as exc:
            raise BadRequest(f"invalid match spec {spec!r}: {exc}") from None
        if match.channel is not None:
            raise BadRequest(f"match spec {spec!r} names a channel: the feed is the channel, leave it out")
        parsed.append(text.strip())
    return parsed


def _parse_subdirs(subdirs: list[str]) -> list[str]:
    if not subdirs:
        raise BadRequest("no subdirs to solve for: name at least one (e.g. linux-64)")
    for subdir in subdirs:
        try:
            require_known_subdir(subdir)
        except SubdirNotFound as exc:
            raise BadRequest(exc.message) from None
    return list(dict.fromkeys(subdirs))


def _feed_repodata(services: Services, feed_name: str, subdirs: list[str]) -> dict[str, bytes]:
    """The repodata.json bytes the feed serves for each subdir, as ``web.channel`` gets them: first
    fetches of a proxy feed's upstream subdirs are started together and waited for (bounded)."""
    located = {subdir: channel.feed_subdir(services, feed_name, subdir) for subdir in subdirs}
    pending = [item for found in located.values() for item in found.pending]
    if pending:
        wait = min(max(item.wait for item in pending), UPSTREAM_WAIT_SECONDS)
        concurrent.futures.wait([item.future for item in pending], timeout=wait)
        for subdir, found in located.items():
            if found.pending:
                located[subdir] = channel.feed_subdir(services, feed_name, subdir, refresh=False)
    for found in located.values():
        found.require_data()  # nothing at all, because an upstream failed: UpstreamUnavailable/Timeout
    # Less what the feed's SCA policy hides, as its channel serves it.
    return {subdir: sca_filter.served_subdir(services, found).json.body for subdir, found in located.items()}


def _virtual(packages: Sequence[str]) -> list[rattler.GenericVirtualPackage]:
    result = []
    for package in packages:
        name, _, version = package.partition("=")
        result.append(
            rattler.GenericVirtualPackage(
                rattler.PackageName(name), rattler.Version(version or "0"), rattler.BuildString("0")
            )
        )
    return result


def _wanted(record: rattler.RepoDataRecord) -> WantedFile:
    # The record's URL is ROOT/SUBDIR/FILE: the folder it was solved from, whatever its "subdir" field says.
    subdir = str(record.url).rstrip("/").rsplit("/", 2)[-2]
    sha256 = record.sha256
    return WantedFile(
        subdir=subdir,
        filename=record.file_name,
        name=record.name.normalized,
        version=str(record.version),
        build=str(record.build),
        sha256=sha256.hex() if sha256 else None,
    )


def _run(solving: Coroutine[Any, Any, list[rattler.RepoDataRecord]]) -> list[rattler.RepoDataRecord]:
    """``asyncio.run``; on a thread of its own when the caller's thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(solving)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, solving).result()
