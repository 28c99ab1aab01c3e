"""``condagate promote``, ``condagate promotions`` and ``condagate feed create-pair``: the approval flow.

``promote`` first asks the server for a preview (a dry run), fetches the files that only the source's
upstream has through the source feed (with a progress bar: the server caches and verifies them), then
promotes: all files land in the target, or none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True)
PACKAGE_EXTENSIONS = (".conda", ".tar.bz2")


def _segment(value: str) -> str:
    return quote(value, safe="")


def _split_specs(specs: list[str]) -> tuple[list[dict[str, str]], list[str]]:
    """SUBDIR/FILENAME arguments are files; everything else is a spec."""
    files, rest = [], []
    for spec in specs:
        subdir, slash, filename = spec.rpartition("/")
        if slash and filename.endswith(PACKAGE_EXTENSIONS):
            files.append({"subdir": subdir, "filename": filename})
        elif spec.endswith(PACKAGE_EXTENSIONS):
            fail(f"{spec}: name a package file with its subdir, e.g. noarch/{spec}")
        else:
            rest.append(spec)
    return files, rest


def _ask(
    client: ApiClient,
    source: str,
    body: dict[str, Any],
    environment: tuple[str, bytes] | None,
    dry_run: bool,
) -> dict[str, Any]:
    if environment is None:
        answer: dict[str, Any] = client.request(
            "POST", f"/api/feeds/{_segment(source)}/promotions", json={**body, "dry_run": dry_run}
        )
        return answer
    params: dict[str, Any] = {
        "target": body["target"],
        "filename": environment[0],
        "comment": body["comment"],
        "dry_run": str(dry_run).lower(),
        "subdir": body["subdirs"],
    }
    answer = client.request(
        "POST", f"/api/feeds/{_segment(source)}/promotions/environment", params=params, content=environment[1]
    )
    return answer


def _prefetch(client: ApiClient, source: str, files: list[dict[str, Any]], quiet: bool) -> None:
    """Download the files only the upstream has through the source feed, which fetches, verifies and
    caches them: the promotion then finds them cached. A failure here is the server's to report."""
    if not files:
        return
    total = sum(int(f.get("size") or 0) for f in files)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=quiet) as progress:
        task = progress.add_task("fetching from the upstream", total=total or None)
        for item in files:
            progress.update(task, description=item["filename"])
            path = f"/conda/{_segment(source)}/{_segment(item['subdir'])}/{_segment(item['filename'])}"
            try:
                with client.http.stream("GET", path) as response:
                    if response.status_code != 200:
                        response.read()
                        client.check(response)
                    for chunk in response.iter_raw():
                        progress.advance(task, len(chunk))
            except httpx.HTTPError as exc:
                fail(f"cannot fetch {item['subdir']}/{item['filename']} through feed {source!r}: {exc}")


def _size(value: object) -> str:
    size = float(value) if isinstance(value, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _print_answer(answer: dict[str, Any]) -> None:
    dry_run = bool(answer.get("dry_run"))
    table = Table("", "subdir", "file", "version", "size", "from")
    rows = [
        ("would promote" if dry_run else "promoted", "green", answer.get("added", [])),
        ("already there", "dim", answer.get("already", [])),
        ("conflict", "red", answer.get("conflicts", [])),
    ]
    for label, style, files in rows:
        for f in files:
            fetch = " (fetched first)" if not f.get("cached", True) else ""
            table.add_row(
                f"[{style}]{label}[/{style}]",
                f["subdir"],
                f["filename"],
                f["version"],
                _size(f.get("size")),
                f"{f.get('origin', '')}{fetch}",
            )
    for item in answer.get("missing", []):
        reason = f" ({item['reason']})" if item.get("reason") else ""
        table.add_row("[red]missing[/red]", item.get("subdir", ""), item["what"] + reason, "", "", "")
    out.print(table)
    added, already = len(answer.get("added", [])), len(answer.get("already", []))
    target = f"{answer['source']} → {answer['target']}"
    if dry_run:
        problems = len(answer.get("missing", [])) + len(answer.get("conflicts", []))
        verdict = " (nothing would be promoted: resolve the missing and conflicting files)" if problems else ""
        out.print(f"Dry run {target}: {added} file(s) would be promoted, {already} already there{verdict}")
    else:
        out.print(f"Promoted {added} file(s) {target} ({already} already there), request {answer['request_id']}")


def promote(
    source: Annotated[str, typer.Argument(help="The feed to promote from (e.g. unapproved-conda)")],
    target: Annotated[str, typer.Argument(help="One of its promotion targets (e.g. approved-conda)")],
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SPEC...",
            help="NAME (newest version), NAME==VERSION (all its builds), a match spec with --with-deps, "
            "or SUBDIR/FILENAME (one file)",
        ),
    ] = None,
    subdir: Annotated[
        list[str] | None, typer.Option("--subdir", help="Only these subdirs; solve for them (repeat)")
    ] = None,
    with_deps: Annotated[
        bool, typer.Option("--with-deps", help="Also promote the dependency closure the target lacks")
    ] = False,
    comment: Annotated[str, typer.Option(help="Why: kept in the promotion history")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be promoted")] = False,
    environment: Annotated[
        Path | None,
        typer.Option(
            "--environment",
            help="Promote what an environment.yml, explicit list, conda-lock.yml or pixi.lock pins or needs",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Promote package files from SOURCE into TARGET (needs the promote permission on SOURCE)."""
    files, rest = _split_specs(specs or [])
    if not files and not rest and environment is None:
        fail("name at least one SPEC or --environment FILE")
    if environment is not None and (files or rest):
        fail("give either SPECs or --environment, not both")
    client = ApiClient(url, api_key)
    body = {
        "target": target,
        "files": files,
        "specs": rest,
        "subdirs": subdir or [],
        "with_dependencies": with_deps,
        "comment": comment,
    }
    env = (environment.name, environment.read_bytes()) if environment is not None else None
    preview = _ask(client, source, body, env, dry_run=True)
    answer = preview
    if not dry_run:
        if preview["missing"] or preview["conflicts"]:
            if not json_output:
                _print_answer(preview)
        else:
            _prefetch(client, source, preview.get("to_fetch", []), quiet=json_output)
        answer = _ask(client, source, body, env, dry_run=False)  # the server refuses what is incomplete
    if json_output:
        print(json.dumps(answer))
    else:
        _print_answer(answer)


def promotions(
    feed: Annotated[str, typer.Argument(metavar="SOURCE_OR_TARGET", help="A feed promoted from or into")],
    package: Annotated[str | None, typer.Option("--package", help="Only this package")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many entries (newest first)")] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV, one row per file")] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The promotion history of a feed: who promoted or revoked what, when, from where to where, and why."""
    client = ApiClient(url, api_key)
    params: dict[str, Any] = {"format": "csv" if csv_output else "json"}
    if package:
        params["package"] = package
    if limit is not None:
        params["limit"] = limit
    elif not csv_output:
        params["limit"] = 100_000
    path = f"/api/feeds/{_segment(feed)}/promotions"
    if csv_output:
        print(client.text(path, params=params), end="")
        return
    page = client.request("GET", path, params=params)
    if json_output:
        print(json.dumps(page["entries"]))
        return
    table = Table("at", "action", "package", "subdir", "from → to", "by", "comment")
    for entry in page["entries"]:
        table.add_row(
            entry["at"][:19].replace("T", " "),
            entry["action"],
            f"{entry['name']} {entry['version']} {entry['build']}",
            entry["subdir"],
            f"{entry['source']} → {entry['target']}",
            entry["actor"],
            entry["comment"],
        )
    out.print(table)


def create_pair(
    source: Annotated[str, typer.Argument(help="The feed packages wait in, e.g. unapproved-conda")],
    target: Annotated[str, typer.Argument(help="The hosted feed approved packages go to, e.g. approved-conda")],
    connector: Annotated[
        list[str] | None, typer.Option("--connector", help="A connector SOURCE proxies (repeat; the first wins)")
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create the approval flow's two feeds in one step: SOURCE proxies the connectors, TARGET is hosted
    and receives what is promoted from SOURCE."""
    body = {"source": source, "target": target, "connectors": connector or []}
    pair = ApiClient(url, api_key).request("POST", "/api/feed-pairs", json=body)
    if json_output:
        print(json.dumps(pair))
        return
    out.print(f"Created feed [bold]{pair['source']['name']}[/bold]: {pair['source']['channel_url']}")
    out.print(f"Created feed [bold]{pair['target']['name']}[/bold]: {pair['target']['channel_url']}")
    out.print(f"Packages promoted from {source} land in {target}:")
    out.print(f"  condagate promote {source} {target} NAME==VERSION --comment 'why'")
    out.print(f"  {pair['target']['conda_config']}")
