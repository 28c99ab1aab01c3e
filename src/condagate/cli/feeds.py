"""``condagate feed ...``"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

app = typer.Typer(help="Create, list, show, update and delete feeds.", no_args_is_help=True)
out = Console()


@app.command("create")
def create(
    name: str,
    connector: Annotated[
        list[str] | None, typer.Option("--connector", help="Proxy this connector (repeat; the first wins)")
    ] = None,
    description: Annotated[str, typer.Option(help="What the feed is for")] = "",
    upstream_removals: Annotated[
        str,
        typer.Option(
            help="keep-cached (default): cached files stay installable when the upstream removes them; "
            "follow-upstream: they disappear with it"
        ),
    ] = "keep-cached",
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a conda feed: hosted, or a proxy of one or more connectors (which may host packages too)."""
    body = {
        "name": name,
        "description": description,
        "connectors": connector or [],
        "upstream_removals": upstream_removals,
    }
    feed = ApiClient(url, api_key).request("POST", "/api/feeds", json=body)
    if json_output:
        print(json.dumps(feed))
        return
    out.print(f"Created feed [bold]{feed['name']}[/bold]: {feed['channel_url']}")
    out.print(f"  {feed['conda_config']}")


@app.command("update")
def update(
    name: str,
    description: Annotated[str | None, typer.Option(help="What the feed is for")] = None,
    connector: Annotated[
        list[str] | None,
        typer.Option("--connector", help="Proxy this connector (repeat; the list replaces the old one, in order)"),
    ] = None,
    no_connectors: Annotated[
        bool, typer.Option("--no-connectors", help="Detach every connector: the feed hosts only")
    ] = False,
    upstream_removals: Annotated[
        str | None,
        typer.Option(
            help="keep-cached: cached files stay installable when the upstream removes them; "
            "follow-upstream: they disappear with it"
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Change a feed's description, connectors (and their order) or upstream removals; the rest stays."""
    if connector and no_connectors:
        fail("give --connector or --no-connectors, not both")
    body: dict[str, object] = {}
    if description is not None:
        body["description"] = description
    if connector or no_connectors:
        body["connectors"] = connector or []
    if upstream_removals is not None:
        body["upstream_removals"] = upstream_removals
    if not body:
        fail("nothing to change: give --description, --connector, --no-connectors or --upstream-removals")
    feed = ApiClient(url, api_key).request("PATCH", f"/api/feeds/{name}", json=body)
    if json_output:
        print(json.dumps(feed))
        return
    upstreams = ", ".join(feed["connectors"]) or "none (hosted)"
    out.print(f"Updated feed [bold]{feed['name']}[/bold]: connectors {upstreams}; {feed['upstream_removals']}")


@app.command("list")
def list_feeds(json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """List feeds."""
    feeds = ApiClient(url, api_key).request("GET", "/api/feeds")
    if json_output:
        print(json.dumps(feeds))
        return
    table = Table("name", "kind", "connectors", "package files", "channel URL", "description")
    for feed in feeds:
        table.add_row(
            feed["name"],
            feed["kind"],
            ", ".join(feed["connectors"]),
            str(feed["package_files"]),
            feed["channel_url"],
            feed["description"],
        )
    out.print(table)


@app.command("show")
def show(name: str, json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Show one feed."""
    feed = ApiClient(url, api_key).request("GET", f"/api/feeds/{name}")
    if json_output:
        print(json.dumps(feed))
        return
    for key, value in feed.items():
        out.print(f"{key}: {value}")


@app.command("delete")
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Delete a feed and all its packages."""
    if not yes:
        typer.confirm(f"Delete feed {name!r} and all its packages?", abort=True)
    ApiClient(url, api_key).request("DELETE", f"/api/feeds/{name}")
    if json_output:
        print(json.dumps({"deleted": name}))
        return
    out.print(f"Deleted feed {name}")
