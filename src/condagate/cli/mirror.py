"""``condagate mirror FEED SPEC...``: pre-fetch packages into a proxy feed's cache, so that a site
can prepare for going offline. The client resolves the specs with py-rattler against the feed itself
(with ``--with-deps``, a full solve), then downloads each file through the feed, which caches it."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import httpx
import rattler
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

out = Console(stderr=True)


def _channel_url(client: ApiClient, feed: str, api_key: str | None) -> str:
    key = client.http.headers.get("X-API-Key") or api_key
    return f"{client.url}/t/{key}/conda/{feed}" if key else f"{client.url}/conda/{feed}"


async def _resolve(
    channel_url: str, specs: list[str], subdirs: list[str], with_deps: bool
) -> list[rattler.RepoDataRecord]:
    # A cache of its own, removed afterwards: the feed's repodata may be private (the key is in the URL).
    with tempfile.TemporaryDirectory(prefix="condagate-mirror-") as cache:
        return await _resolve_in(rattler.Gateway(cache_dir=Path(cache)), channel_url, specs, subdirs, with_deps)


async def _resolve_in(
    gateway: rattler.Gateway, channel_url: str, specs: list[str], subdirs: list[str], with_deps: bool
) -> list[rattler.RepoDataRecord]:
    channel = rattler.Channel(channel_url)
    found: dict[str, rattler.RepoDataRecord] = {}
    for subdir in subdirs:
        platforms = [rattler.Subdir(name) for name in sorted({subdir, "noarch"})]
        if with_deps:
            # Mirroring may prepare another platform than this machine's: solve without its virtual packages.
            records = await rattler.solve(
                [channel],
                specs,
                gateway=gateway,
                platforms=platforms,
                virtual_packages=[],
                timestamp_policy="allow-missing",
            )
        else:
            groups = await gateway.query([channel], platforms, specs, recursive=False)
            match_specs = [rattler.MatchSpec(spec) for spec in specs]
            records = [r for group in groups for r in group if any(m.matches(r) for m in match_specs)]
        for record in records:
            found[record.url] = record
    return list(found.values())


def mirror(
    feed: str,
    specs: Annotated[list[str], typer.Argument(help="Match specs, e.g. 'numpy>=1.26' 'python 3.11.*'")],
    subdir: Annotated[list[str] | None, typer.Option("--subdir", help="Subdir to mirror (repeat)")] = None,
    with_deps: Annotated[bool, typer.Option("--with-deps", help="Also fetch the solved dependency closure")] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Fetch the packages matching SPECs into FEED's cache."""
    client = ApiClient(url, api_key)
    if client.request("GET", f"/api/feeds/{quote(feed, safe='')}")["kind"] == "hosted":
        message = f"feed {feed!r} is hosted: it has no upstream to mirror from, and its packages are all here"
        if json_output:
            print(json.dumps({"files": 0, "failed": [], "bytes": 0, "packages": [], "message": message}))
        else:
            print(message)
        return
    subdirs = subdir or [str(rattler.Platform.current())]
    try:
        records = asyncio.run(_resolve(_channel_url(client, feed, api_key), specs, subdirs, with_deps))
    except Exception as exc:  # rattler reports unsolvable specs and unreachable channels as exceptions
        fail(f"could not resolve {' '.join(specs)} in feed {feed!r}: {exc}")
    if not records:
        fail(f"nothing in feed {feed!r} matches {' '.join(specs)} for {', '.join(subdirs)}")
    failures: list[str] = []
    fetched_bytes = 0
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=out, transient=json_output
    ) as progress:
        task = progress.add_task("mirroring", total=len(records))
        for record in sorted(records, key=lambda r: r.file_name):
            progress.update(task, description=record.file_name)
            path = f"/conda/{feed}/{record.subdir}/{record.file_name}"
            try:
                with client.http.stream("GET", path, params={"mirror": "1"}) as response:
                    if response.status_code != 200:
                        failures.append(f"{record.file_name}: {response.status_code} {response.read().decode()[:200]}")
                    else:
                        for chunk in response.iter_raw():
                            fetched_bytes += len(chunk)
            except httpx.HTTPError as exc:
                failures.append(f"{record.file_name}: {exc}")
            progress.advance(task)
    summary = {
        "files": len(records),
        "failed": failures,
        "bytes": fetched_bytes,
        "packages": sorted(f"{r.subdir}/{r.file_name}" for r in records),
    }
    if json_output:
        print(json.dumps(summary))
    else:
        out.print(
            f"mirrored {len(records) - len(failures)} of {len(records)} files ({fetched_bytes} bytes) into {feed}"
        )
        for failure in failures:
            out.print(f"[red]failed:[/red] {failure}")
    if failures:
        raise typer.Exit(1)
