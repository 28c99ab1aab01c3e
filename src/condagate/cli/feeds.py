"""``condagate feed ...``"""

from __future__ import annotations

import json
from typing import Annotated, Any

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
    vulnerability_policy: Annotated[
        str | None,
        typer.Option(
            help="off: advisories are only shown; warn: downloads proceed with a warning header; "
            "block: affected versions are not served (403), promoted or uploaded"
        ),
    ] = None,
    min_severity: Annotated[
        str | None,
        typer.Option(
            help="none, low, medium, high or critical: advisories below it are not acted on "
            "(unknown severity counts as reaching it)"
        ),
    ] = None,
    hide_blocked: Annotated[
        bool | None,
        typer.Option(
            "--hide-blocked/--show-blocked",
            help="Leave blocked records out of the repodata (a solver then picks a safe version), or list them",
        ),
    ] = None,
    license_policy: Annotated[
        str | None, typer.Option(help="off, warn or block: what the license rules' verdicts do here")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Change nothing: print what the SCA change would block and make unsolvable",
        ),
    ] = False,
    spec: Annotated[
        list[str] | None,
        typer.Option("--spec", help="With --dry-run: a match spec to solve for (repeat; default: what changes)"),
    ] = None,
    subdir: Annotated[
        list[str] | None, typer.Option("--subdir", help="With --dry-run: a subdir to solve for (repeat)")
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Change a feed's description, connectors (and their order), upstream removals or SCA policies;
    the rest stays. With --dry-run, preview what an SCA change would make unsolvable instead."""
    if connector and no_connectors:
        fail("give --connector or --no-connectors, not both")
    body: dict[str, object] = {}
    if description is not None:
        body["description"] = description
    if connector or no_connectors:
        body["connectors"] = connector or []
    if upstream_removals is not None:
        body["upstream_removals"] = upstream_removals
    sca: dict[str, object] = {
        key: value
        for key, value in (
            ("vulnerability_policy", vulnerability_policy),
            ("min_severity", min_severity),
            ("hide_blocked", hide_blocked),
            ("license_policy", license_policy),
        )
        if value is not None
    }
    client = ApiClient(url, api_key)
    if dry_run:
        if body:
            fail("--dry-run previews SCA changes only: leave out --description, --connector and --upstream-removals")
        preview = client.request(
            "POST", f"/api/feeds/{name}/sca-impact", json={**sca, "specs": spec or [], "subdirs": subdir or []}
        )
        if json_output:
            print(json.dumps(preview))
            return
        _print_impact(preview)
        return
    if spec or subdir:
        fail("--spec and --subdir go with --dry-run")
    body.update(sca)
    if not body:
        fail(
            "nothing to change: give --description, --connector, --no-connectors, --upstream-removals, "
            "--vulnerability-policy, --min-severity, --hide-blocked/--show-blocked or --license-policy"
        )
    feed = client.request("PATCH", f"/api/feeds/{name}", json=body)
    if json_output:
        print(json.dumps(feed))
        return
    upstreams = ", ".join(feed["connectors"]) or "none (hosted)"
    out.print(f"Updated feed [bold]{feed['name']}[/bold]: connectors {upstreams}; {feed['upstream_removals']}")
    if sca:
        out.print(f"  {_policy_line(feed)}")


def _policy_line(policy: dict[str, object]) -> str:
    hide = "hidden from the repodata" if policy["hide_blocked"] else "listed in the repodata"
    return (
        f"vulnerabilities: {policy['vulnerability_policy']} (from {policy['min_severity']}); "
        f"licenses: {policy['license_policy']}; blocked records {hide}"
    )


def _print_impact(preview: dict[str, Any]) -> None:
    out.print(f"Dry run for feed [bold]{preview['feed']}[/bold]: nothing was changed", highlight=False)
    out.print(f"  now:      {_policy_line(preview['current'])}", highlight=False)
    out.print(f"  proposed: {_policy_line(preview['proposed'])}", highlight=False)
    for advisory, verdict in preview["assessments"].items():
        out.print(f"  assessment of {advisory}: {verdict or 'none'}", highlight=False)
    out.print(
        f"Blocked files: {preview['blocked_before']} now, {preview['blocked_after']} after "
        f"(subdirs {', '.join(preview['subdirs'])} and noarch)",
        highlight=False,
    )
    for item in preview["newly_blocked"]:
        out.print(
            f"  newly blocked: {item['subdir']}/{item['filename']}: {'; '.join(item['reasons'])}", highlight=False
        )
    for item in preview["newly_allowed"]:
        out.print(f"  allowed again: {item['subdir']}/{item['filename']}", highlight=False)
    for lost in preview["lost_packages"]:
        out.print(
            f"Loses its only installable version(s): {lost['subdir']}/{lost['name']} ({', '.join(lost['versions'])})",
            highlight=False,
        )
    for item in preview["unsolvable"]:
        out.print(
            f"Becomes unsolvable: {item['spec']} on {item['subdir']}: {' '.join(item['after'].split())[:300]}",
            highlight=False,
        )
    if not preview["unsolvable"] and preview["specs"]:
        out.print(f"Every spec stays solvable: {', '.join(preview['specs'])}", highlight=False)
    for note in preview["notes"]:
        out.print(f"Note: {note}", highlight=False)


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
