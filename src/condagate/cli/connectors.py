"""``condagate connector ...``"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

app = typer.Typer(help="Connectors to upstream channels (built in: anaconda, conda-forge).", no_args_is_help=True)
out = Console()


@app.command("create")
def create(
    name: str,
    channel_url: Annotated[str, typer.Argument(metavar="URL", help="Upstream channel URL")],
    include: Annotated[list[str] | None, typer.Option("--include", help="Package-name glob to include")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Package-name glob to exclude")] = None,
    subdir: Annotated[list[str] | None, typer.Option("--subdir", help="Subdir to proxy (default: all)")] = None,
    cache_minutes: Annotated[int, typer.Option(help="How long fetched repodata counts as fresh")] = 30,
    timeout_seconds: Annotated[int, typer.Option(help="Timeout of each upstream request")] = 30,
    username: Annotated[str, typer.Option(help="Basic-auth user for a private upstream")] = "",
    password: Annotated[str, typer.Option(help="Basic-auth password")] = "",
    token: Annotated[str, typer.Option(help="Bearer token for a private upstream")] = "",
    allow_redirects: Annotated[
        str,
        typer.Option(help="same-origin (default), or any-public to follow redirects to other public hosts (CDNs)"),
    ] = "same-origin",
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a connector to an upstream conda channel."""
    if password and not username:
        fail("--password needs --username")
    body = {
        "name": name,
        "url": channel_url,
        "include": include or [],
        "exclude": exclude or [],
        "subdirs": subdir or [],
        "cache_minutes": cache_minutes,
        "timeout_seconds": timeout_seconds,
        "username": username,
        "password": password,
        "token": token,
        "allow_redirects": allow_redirects,
    }
    connector = ApiClient(url, api_key).request("POST", "/api/connectors", json=body)
    if json_output:
        print(json.dumps(connector))
        return
    out.print(f"Created connector [bold]{connector['name']}[/bold] → {connector['url']}")


@app.command("list")
def list_connectors(json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """List connectors."""
    connectors = ApiClient(url, api_key).request("GET", "/api/connectors")
    if json_output:
        print(json.dumps(connectors))
        return
    table = Table("name", "URL", "subdirs", "filters", "cache minutes")
    for c in connectors:
        filters = " ".join([*c["include"], *("!" + e for e in c["exclude"])])
        table.add_row(c["name"], c["url"], ", ".join(c["subdirs"]) or "all", filters, str(c["cache_minutes"]))
    out.print(table)


@app.command("show")
def show(name: str, json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Show a connector and its health per subdir."""
    connector = ApiClient(url, api_key).request("GET", f"/api/connectors/{name}")
    if json_output:
        print(json.dumps(connector))
        return
    for key in (
        "name",
        "url",
        "subdirs",
        "include",
        "exclude",
        "cache_minutes",
        "timeout_seconds",
        "authentication",
        "feeds",
        "cached_files",
        "cached_bytes",
    ):
        out.print(f"{key}: {connector[key]}")
    table = Table("subdir", "records", "last success", "last error", "response ms")
    for h in connector["health"]:
        error = f"{h['last_error_at']}: {h['last_error']}" if h["last_error"] else ""
        table.add_row(
            h["subdir"], str(h["records"]), str(h["last_success_at"] or "never"), error, str(h["response_ms"])
        )
    out.print(table)


@app.command("delete")
def delete(name: str, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Delete a connector that no feed uses."""
    ApiClient(url, api_key).request("DELETE", f"/api/connectors/{name}")
    out.print(f"Deleted connector {name}")
