"""``condagate connector ...``"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

app = typer.Typer(help="Connectors to upstream channels (built in: anaconda, conda-forge).", no_args_is_help=True)
out = Console()


_REDIRECTS_HELP = "same-origin (default), or any-public to follow redirects to other public hosts (CDNs)"


def _check_line(connector: dict[str, Any]) -> str:
    check = connector.get("check")
    return f"; upstream checked: {check['message']}" if check else ""


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
    allow_redirects: Annotated[str, typer.Option(help=_REDIRECTS_HELP)] = "same-origin",
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Fetch the upstream's repodata for one subdir first and refuse it when it is unreachable "
            "or not a conda channel (default), or save it unchecked",
        ),
    ] = True,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a connector to an upstream conda channel (checked first, unless --no-check)."""
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
        "check": check,
    }
    connector = ApiClient(url, api_key).request("POST", "/api/connectors", json=body)
    if json_output:
        print(json.dumps(connector))
        return
    out.print(f"Created connector [bold]{connector['name']}[/bold] → {connector['url']}{_check_line(connector)}")


@app.command("update")
def update(
    name: str,
    channel_url: Annotated[
        str | None, typer.Argument(metavar="[URL]", help="A new upstream channel URL", show_default=False)
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Package-name glob to include (replaces the list)")
    ] = None,
    no_include: Annotated[bool, typer.Option("--no-include", help="Include every package")] = False,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Package-name glob to exclude (replaces the list)")
    ] = None,
    no_exclude: Annotated[bool, typer.Option("--no-exclude", help="Exclude nothing")] = False,
    subdir: Annotated[list[str] | None, typer.Option("--subdir", help="Subdir to proxy (replaces the list)")] = None,
    all_subdirs: Annotated[bool, typer.Option("--all-subdirs", help="Proxy every subdir the upstream has")] = False,
    cache_minutes: Annotated[int | None, typer.Option(help="How long fetched repodata counts as fresh")] = None,
    timeout_seconds: Annotated[int | None, typer.Option(help="Timeout of each upstream request")] = None,
    username: Annotated[str | None, typer.Option(help="Basic-auth user (replaces a token)")] = None,
    password: Annotated[str | None, typer.Option(help="Basic-auth password")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (replaces a username and password)")] = None,
    clear_credentials: Annotated[
        bool, typer.Option("--clear-credentials", help="Remove the stored username, password and token")
    ] = False,
    allow_redirects: Annotated[str | None, typer.Option(help=_REDIRECTS_HELP)] = None,
    check: Annotated[
        bool,
        typer.Option("--check/--no-check", help="Check the upstream first when its URL or credentials change"),
    ] = True,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Change a connector: only the options given change. A new URL or credentials drop what was
    fetched from the old upstream; new filters apply at once."""
    for given, cleared, option in (
        (include, no_include, "include"),
        (exclude, no_exclude, "exclude"),
        (subdir, all_subdirs, "subdir"),
    ):
        if given and cleared:
            fail(f"give --{option} or its clearing option, not both")
    body: dict[str, Any] = {
        "url": channel_url,
        "include": [] if no_include else include,
        "exclude": [] if no_exclude else exclude,
        "subdirs": [] if all_subdirs else subdir,
        "cache_minutes": cache_minutes,
        "timeout_seconds": timeout_seconds,
        "username": username,
        "password": password,
        "token": token,
        "allow_redirects": allow_redirects,
    }
    body = {key: value for key, value in body.items() if value is not None}
    if clear_credentials:
        body["clear_credentials"] = True
    if not body:
        fail("nothing to change: give a URL or an option (see --help)")
    body["check"] = check
    connector = ApiClient(url, api_key).request("PATCH", f"/api/connectors/{name}", json=body)
    if json_output:
        print(json.dumps(connector))
        return
    out.print(f"Updated connector [bold]{connector['name']}[/bold] → {connector['url']}{_check_line(connector)}")


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
        "allow_redirects",
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
def delete(
    name: str,
    detach: Annotated[
        bool, typer.Option("--detach", help="First detach it from the feeds that use it (else they keep it)")
    ] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Delete a connector. One that feeds use is refused, naming them, unless --detach."""
    client = ApiClient(url, api_key)
    feeds = client.request("GET", f"/api/connectors/{name}")["feeds"] if detach else []
    client.request("DELETE", f"/api/connectors/{name}", params={"detach": "true"} if detach else {})
    if json_output:
        print(json.dumps({"deleted": name, "detached_from": feeds}))
        return
    out.print(f"Deleted connector {name}" + (f" (detached from {', '.join(feeds)})" if feeds else ""))
