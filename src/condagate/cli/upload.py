"""``condagate upload FEED FILE...``: streams each file with a progress bar."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

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
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="A file that already exists (other bytes) is skipped, not an error")
    ] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload package files to a feed."""
    for path in files:
        if not path.is_file():
            fail(f"{path} is not a file")
    client = ApiClient(url, api_key)
    # A wrong key or an unknown feed is reported before any body is sent.
    client.request("GET", f"/api/feeds/{quote(feed, safe='')}")
    results: list[dict[str, object]] = []
    failed = 0
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
                    f"/api/feeds/{quote(feed, safe='')}/upload/{quote(path.name, safe='')}",
                    params={"force": str(force).lower(), "sha256": _sha256(path)},
                    content=body(),
                    headers={"Content-Length": str(path.stat().st_size)},
                )
            except httpx.HTTPError as exc:
                fail(f"cannot reach condagate at {client.url}: {exc}")
            outcome = _outcome(path, response, skip_existing)
            results.append(outcome)
            failed += outcome["status"] == "failed"
            if not json_output:
                progress.console.print(_describe(outcome), soft_wrap=True, highlight=False)
    if json_output:
        print(json.dumps(results))
    elif len(files) > 1:
        done = {status: sum(r["status"] == status for r in results) for status in _STATUSES}
        Console(stderr=True).print(", ".join(f"{count} {status}" for status, count in done.items() if count))
    if failed:
        raise typer.Exit(1)


_STATUSES = ("uploaded", "replaced", "unchanged", "skipped", "failed")


def _outcome(path: Path, response: httpx.Response, skip_existing: bool) -> dict[str, object]:
    """One file's result; the upload goes on with the next file whatever happened to this one."""
    if response.status_code < 400:
        result = response.json()
        status = "unchanged" if result.get("unchanged") else "replaced" if result.get("replaced") else "uploaded"
        return {"file": str(path), "status": status, **result}
    try:
        error = response.json()["error"]
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", response.text.strip()[:300] or response.reason_phrase
    status = "skipped" if skip_existing and code == "package_exists" else "failed"
    return {"file": str(path), "status": status, "http_status": response.status_code, "code": code, "error": message}


def _describe(outcome: dict[str, object]) -> str:
    status = outcome["status"]
    if status in ("uploaded", "replaced", "unchanged"):
        what = f"{outcome['subdir']}/{outcome['filename']}"
        if status == "unchanged":
            return f"already there: {what} (same sha256)"
        return f"{status} {what} ({outcome['size']} bytes)"
    label = "[yellow]skipped[/yellow]" if status == "skipped" else "[red]failed[/red]"
    return f"{label} {outcome['file']}: {outcome['http_status']}: {outcome['error']}"
