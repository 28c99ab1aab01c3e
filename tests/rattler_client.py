"""The real conda client used by the tests: py-rattler fetching, solving and installing."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import rattler
from rattler import Channel, Subdir


def query(channel_url: str, names: list[str], platform: str = "linux-64", sharded: bool = False) -> list[str]:
    """``name=version=build`` of every record the channel offers for ``names`` (and their dependencies)."""

    async def run() -> list[str]:
        gateway = rattler.Gateway(
            cache_dir=tempfile.mkdtemp(prefix="rattler-cache-"),
            default_config=rattler.SourceConfig(sharded_enabled=sharded),
        )
        records = await gateway.query([Channel(channel_url)], [Subdir(platform), Subdir("noarch")], names)
        return sorted(str(record) for group in records for record in group)

    return asyncio.run(run())


def solve_and_install(channel_url: str, specs: list[str], prefix: Path, platform: str = "linux-64",
                      sharded: bool = False) -> list[str]:
    """Solve ``specs`` against the channel and install them into ``prefix``; return ``name=version=build``."""

    async def run() -> list[str]:
        gateway = rattler.Gateway(
            cache_dir=tempfile.mkdtemp(prefix="rattler-cache-"),
            default_config=rattler.SourceConfig(sharded_enabled=sharded),
        )
        records = await rattler.solve([channel_url], specs, platforms=[platform, "noarch"], gateway=gateway)
        await rattler.install(records, target_prefix=prefix, cache_dir=Path(tempfile.mkdtemp(prefix="pkgs-")))
        return sorted(f"{r.name.normalized}={r.version}={r.build}" for r in records)

    return asyncio.run(run())
