"""``condagate advisories ...``: import OSV advisories, list and show them, assess them, map names."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption
from condagate.conda.osv import Document, documents_from_path
from condagate.errors import ImportRefused

app = typer.Typer(help="Vulnerability advisories (OSV): import, list, show, assess, map names.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

# Each request carries a zip of at most this many (compressed) bytes: under the server's default
# body limit for API routes, and a progress step every few hundred documents.
BATCH_BYTES = 768 * 1024
BATCH_DOCUMENTS = 500
_COUNTS = ("new", "updated", "withdrawn", "unchanged", "failed")
_VERDICTS = ("ignore", "caution", "block", "clear")


def _q(value: str) -> str:
    return quote(value, safe="")


# import -------------------------------------------------------------------------------------------


def _batches(documents: Iterator[Document], summary: dict[str, Any]) -> Iterator[tuple[bytes, int]]:
    """(zip bytes, documents in it); documents that cannot be read here count as failures."""
    buffer = io.BytesIO()
    archive = zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED)
    count = 0
    for document in documents:
        if document.data is None:
            summary["failed"] += 1
            summary["failures"].append({"file": document.source, "reason": document.error})
            yield b"", 1
            continue
        archive.writestr(_member_name(document.source), document.data)
        count += 1
        if count >= BATCH_DOCUMENTS or buffer.tell() >= BATCH_BYTES:
            archive.close()
            yield buffer.getvalue(), count
            buffer = io.BytesIO()
            archive = zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED)
            count = 0
    archive.close()
    if count:
        yield buffer.getvalue(), count


def _member_name(source: str) -> str:
    """Failure reports name the file: a zip's members keep their path inside it."""
    return source.split(":", 1)[1] if ":" in source else source


def _count(path: Path) -> int:
    if path.is_dir():
        return sum(1 for p in path.rglob("*.json") if not p.is_symlink())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return sum(1 for i in archive.infolist() if not i.is_dir() and i.filename.endswith(".json"))
    return 1


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="An OSV JSON file, a zip of them, or a folder (searched recursively)")],
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Import OSV advisories. Bad documents are reported with the file and reason; the rest is imported."""
    if not path.exists():
        fail(f"{path} does not exist")
    client = ApiClient(url, api_key)
    summary: dict[str, Any] = {key: 0 for key in _COUNTS} | {"failures": []}
    source = path.name
    try:
        if path.is_file() and not zipfile.is_zipfile(path):
            data = path.read_bytes()
            result = client.request(
                "POST",
                "/api/advisories/import",
                params={"source": source},
                content=data,
                headers={"Content-Type": "application/json"},
            )
            _merge(summary, result)
        else:
            total = _count(path)
            with Progress(
                TextColumn("importing {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=json_output,
            ) as progress:
                task = progress.add_task(source, total=total)
                for body, documents in _batches(documents_from_path(path), summary):
                    if body:
                        result = client.request(
                            "POST",
                            "/api/advisories/import",
                            params={"source": source},
                            content=body,
                            headers={"Content-Type": "application/zip"},
                        )
                        _merge(summary, result)
                    progress.advance(task, documents)
    except (ImportRefused, OSError) as exc:
        fail(f"{path}: {getattr(exc, 'message', None) or exc}")
    summary["documents"] = sum(summary[key] for key in _COUNTS)
    if json_output:
        print(json.dumps(summary))
    else:
        out.print(", ".join(f"{summary[key]} {key}" for key in _COUNTS) + f" ({summary['documents']} documents)")
        for failure in summary["failures"][:20]:
            out.print(f"[red]failed[/red] {failure['file']}: {failure['reason']}", soft_wrap=True, highlight=False)
        if len(summary["failures"]) > 20:
            out.print(f"... and {len(summary['failures']) - 20} more failures (--json lists them all)")
    if summary["failed"]:
        raise typer.Exit(1)


def _merge(summary: dict[str, Any], result: dict[str, Any]) -> None:
    for key in _COUNTS:
        summary[key] += int(result.get(key, 0))
    summary["failures"].extend(result.get("failures", []))
    summary["revision"] = result.get("revision")


# list / show --------------------------------------------------------------------------------------


@app.command("list")
def list_(
    feed: Annotated[str | None, typer.Option(help="The vulnerable package versions of this feed")] = None,
    package: Annotated[str | None, typer.Option(help="Only advisories of this package (conda or PyPI name)")] = None,
    severity: Annotated[str | None, typer.Option(help="critical, high, medium, low, none, unknown (a,b)")] = None,
    withdrawn: Annotated[
        bool | None, typer.Option("--withdrawn/--in-force", help="Only withdrawn, or only advisories in force")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many advisories")] = 100,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List imported advisories, or (--feed) the feed's vulnerable package versions."""
    client = ApiClient(url, api_key)
    if feed:
        _list_feed(client, feed, package or "", json_output)
        return
    params: dict[str, Any] = {"limit": limit}
    if package:
        params["package"] = package
    if severity:
        params["severity"] = severity
    if withdrawn is not None:
        params["withdrawn"] = str(withdrawn).lower()
    page = client.request("GET", "/api/advisories", params=params)
    if json_output:
        print(json.dumps(page))
        return
    if not page["items"]:
        out.print("no advisories match")
        return
    table = Table("id", "severity", "score", "packages", "aliases", "summary", "withdrawn")
    for item in page["items"]:
        table.add_row(
            item["id"],
            item["severity"],
            "" if item["score"] is None else f"{item['score']:.1f}",
            ", ".join(item["packages"]),
            ", ".join(item["aliases"]),
            item["summary"][:80],
            (item["withdrawn"] or "")[:10],
        )
    out.print(table)
    if page["total"] > len(page["items"]):
        out.print(f"{len(page['items'])} of {page['total']} advisories (--limit shows more)")


def _list_feed(client: ApiClient, feed: str, package: str, json_output: bool) -> None:
    params = {"package": package} if package else {}
    found = client.request("GET", f"/api/feeds/{_q(feed)}/vulnerabilities", params=params)
    if json_output:
        print(json.dumps(found))
        return
    if not found["packages"]:
        out.print(f"no vulnerable package versions in {feed}")
    table = Table("package", "version", "status", "advisory", "severity", "fixed in", "assessment")
    for item in found["packages"]:
        state = item["state"]
        for finding in state["findings"]:
            table.add_row(
                item["name"],
                item["version"],
                state["status"],
                finding["advisory_id"],
                finding["severity"],
                ", ".join(finding["fixed_in"]),
                finding["assessment"] or "",
            )
    if found["packages"]:
        out.print(table)
    out.print(
        f"{found['affected']} affected, {found['unknown']} undecided, {found['no_data']} without advisory data, "
        f"of {found['versions']} package versions in {feed}"
    )
    for warning in found["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True, highlight=False)


@app.command("show")
def show(
    advisory_id: str, json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Show one advisory: severity, aliases, affected versions, links, assessments."""
    detail = ApiClient(url, api_key).request("GET", f"/api/advisories/{_q(advisory_id)}")
    if json_output:
        print(json.dumps(detail))
        return
    advisory = detail["advisory"]
    score = "" if advisory["score"] is None else f" {advisory['score']:.1f} {advisory['vector']}"
    out.print(f"[bold]{advisory['id']}[/bold] ({', '.join(advisory['aliases'])}): {advisory['severity']}{score}")
    if advisory["withdrawn"]:
        out.print(f"[yellow]withdrawn[/yellow] {advisory['withdrawn']}")
    out.print(advisory["summary"], highlight=False)
    for affected in detail["affected"]:
        ranges = "; ".join(
            " ".join(f"{kind} {version}" for event in r["events"] for kind, version in event.items())
            for r in affected["ranges"]
            if r["events"]
        )
        out.print(f"  {affected['ecosystem']}:{affected['name']}: {ranges or 'see versions'}", highlight=False)
    for link in advisory["links"]:
        out.print(f"  {link}", highlight=False)
    for assessment in detail["assessments"]:
        where = assessment["feed"] or "system-wide"
        mark = "" if assessment["in_force"] else " (not in force)"
        out.print(
            f"  {assessment['verdict']} {where} by {assessment['actor']} at {assessment['at']}{mark}: "
            f"{assessment['comment']}",
            highlight=False,
        )


# assess -------------------------------------------------------------------------------------------


@app.command("assess")
def assess(
    advisory_id: str,
    verdict: Annotated[str, typer.Argument(help="ignore, caution, block, or clear")],
    feed: Annotated[str | None, typer.Option(help="Only for this feed (default: system-wide)")] = None,
    comment: Annotated[str, typer.Option(help="Why: kept with who and when")] = "",
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Assess an advisory (ignore, caution, block) system-wide or for one feed, or clear the verdict."""
    if verdict not in _VERDICTS:
        fail(f"unknown verdict {verdict!r}: choose one of {', '.join(_VERDICTS)}")
    body = {"verdict": verdict, "feed": feed, "comment": comment}
    info = ApiClient(url, api_key).request("POST", f"/api/advisories/{_q(advisory_id)}/assessments", json=body)
    if json_output:
        print(json.dumps(info))
        return
    out.print(f"{advisory_id}: {verdict} {('for feed ' + feed) if feed else 'system-wide'} by {info['actor']}")


@app.command("assessments")
def assessments(
    advisory_id: Annotated[str | None, typer.Argument(help="Only this advisory's")] = None,
    feed: Annotated[str | None, typer.Option(help="Only this feed's")] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Assessments with their history, newest first."""
    client = ApiClient(url, api_key)
    if advisory_id:
        rows = client.request("GET", f"/api/advisories/{_q(advisory_id)}/assessments")
        rows = [r for r in rows if not feed or r["feed"] == feed]
    else:
        rows = client.request("GET", "/api/assessments", params={"feed": feed} if feed else {})
    if json_output:
        print(json.dumps(rows))
        return
    table = Table("advisory", "feed", "verdict", "in force", "by", "at", "comment")
    for row in rows:
        table.add_row(
            row["advisory_id"],
            row["feed"] or "(system)",
            row["verdict"],
            "yes" if row["in_force"] else "",
            row["actor"],
            row["at"][:19],
            row["comment"],
        )
    out.print(table)


# map ----------------------------------------------------------------------------------------------


@app.command("map")
def map_(
    conda_name: Annotated[str | None, typer.Argument(help="A conda package name (none: list the overrides)")] = None,
    pypi_name: Annotated[str | None, typer.Argument(help="The PyPI project it packages")] = None,
    none: Annotated[bool, typer.Option("--none", help="It has no PyPI counterpart (no advisories apply)")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the override")] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Override how a conda package name maps to PyPI for advisories; with the name alone, show it."""
    if sum((pypi_name is not None, none, clear)) > 1:
        fail("give a PYPI_NAME, --none or --clear, only one")
    client = ApiClient(url, api_key)
    if conda_name is None:
        if pypi_name is not None or none or clear:
            fail("name the conda package")
        rows = client.request("GET", "/api/package-names")
        if json_output:
            print(json.dumps(rows))
            return
        table = Table("conda name", "PyPI name", "by", "at")
        for row in rows:
            table.add_row(
                row["conda_name"], row["ecosystem_name"] or "(none)", row["created_by"], row["created_at"][:19]
            )
        out.print(table)
        return
    path = f"/api/package-names/{_q(conda_name)}"
    if clear:
        info = client.request("DELETE", path)
    elif none or pypi_name is not None:
        info = client.request("PUT", path, json={"pypi_name": None if none else pypi_name})
    else:
        info = client.request("GET", path)
    if json_output:
        print(json.dumps(info))
        return
    out.print(f"{conda_name} -> {info['ecosystem_name'] or 'no PyPI counterpart'} ({info['source']})", highlight=False)
