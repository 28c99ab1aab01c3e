"""``condagate upload FEED FILE...``: streams each file with a progress bar."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

out = Console()
CHUNK = 1024 * 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def upload(
    feed: str,
    files: Annotated[list[Path], typer.Argument(help=".conda or .tar.bz2 package files")],
    force: Annotated[bool, typer.Option("--force", help="Replace a file that already exists")] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload package files to a feed."""
    for path in files:
        if not path.is_file():
            fail(f"{path} is not a file")
    client = ApiClient(url, api_key)
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=json_output,
    ) as progress:
        for path in files:
            task = progress.add_task(path.name, total=path.stat().st_size)

            def body(path: Path = path, task: TaskID = task) -> Iterator[bytes]:
                with path.open("rb") as handle:
                    while chunk := handle.read(CHUNK):
                        progress.advance(task, len(chunk))
                        yield chunk

            try:
                response = client.http.post(
                    f"/api/feeds/{feed}/upload/{path.name}",
                    params={"force": str(force).lower(), "sha256": _sha256(path)},
                    content=body(),
                    headers={"Content-Length": str(path.stat().st_size)},
                )
            except httpx.HTTPError as exc:
                fail(f"cannot reach condagate at {client.url}: {exc}")
            result = ApiClient.check(response)
            results.append(result)
            if not json_output:
                progress.console.print(f"uploaded {result['subdir']}/{result['filename']} ({result['size']} bytes)")
    if json_output:
        print(json.dumps(results))
