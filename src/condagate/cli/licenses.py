"""``condagate licenses ...``: license rules (system-wide or per feed) and a feed's compliance report."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

app = typer.Typer(
    help="License rules: allow or block SPDX license ids, and what happens to unknown licenses; "
    "a feed's rules override the system-wide ones. Compliance reports per feed.",
    no_args_is_help=True,
)
out = Console()

IdsArgument = Annotated[
    list[str],
    typer.Argument(
        metavar="SPDX_ID...", help='SPDX license ids, e.g. GPL-3.0-only AGPL-3.0-only ("unknown": unrecognised ones)'
    ),
]
FeedOption = Annotated[
    str | None, typer.Option("--feed", help="This feed's rules (needs manage-feed on it); default: system-wide")
]


def _rules_path(feed: str | None) -> str:
    return "/api/licenses/rules" if feed is None else f"/api/feeds/{quote(feed, safe='')}/licenses/rules"


def _where(feed: str | None) -> str:
    return f"on feed {feed}" if feed is not None else "system-wide"


def _set(ids: list[str], verdict: str, feed: str | None, json_output: bool, url: str | None, key: str | None) -> None:
    answer = ApiClient(url, key).request("PUT", _rules_path(feed), json={"subjects": ids, "verdict": verdict})
    if json_output:
        print(json.dumps(answer))
        return
    for rule in answer["rules"]:
        given = f" ({rule['given']} is read as {rule['subject']})" if rule.get("given") else ""
        what = "unknown licenses" if rule["subject"] == "unknown" else rule["subject"]
        out.print(f"{what}: {rule['verdict']} {_where(feed)}{given}", highlight=False)


@app.command("allow")
def allow(
    ids: IdsArgument,
    feed: FeedOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Allow licenses (on a feed: even those blocked system-wide)."""
    _set(ids, "allow", feed, json_output, url, api_key)


@app.command("block")
def block(
    ids: IdsArgument,
    feed: FeedOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Block licenses: what a block means on a feed is its license policy's (off, warn, block)."""
    _set(ids, "block", feed, json_output, url, api_key)


@app.command("unknown")
def unknown(
    action: Annotated[str, typer.Argument(metavar="allow|warn|block", help="What happens to unrecognised licenses")],
    feed: FeedOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Set what happens to packages whose license is not recognised (or not declared)."""
    if action not in ("allow", "warn", "block"):
        fail(f"unknown action {action!r}: choose allow, warn or block")
    _set(["unknown"], action, feed, json_output, url, api_key)


@app.command("remove")
def remove(
    ids: IdsArgument,
    feed: FeedOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Remove rules (all or none); on a feed, the system-wide rules apply again."""
    answer = ApiClient(url, api_key).request("DELETE", _rules_path(feed), params={"subject": ids})
    if json_output:
        print(json.dumps(answer))
        return
    out.print(f"Removed the rules for {', '.join(answer['removed'])} {_where(feed)}", highlight=False)


@app.command("list")
def list_rules(
    feed: Annotated[str | None, typer.Option("--feed", help="A feed's rules and those it inherits")] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List license rules: system-wide (administrators), or a feed's with the system-wide ones it inherits."""
    answer = ApiClient(url, api_key).request("GET", _rules_path(feed))
    if json_output:
        print(json.dumps(answer))
        return
    table = Table("license", "verdict", "scope", "by", "at")
    for rule in [*answer["rules"], *answer["inherited"]]:
        scope = f"feed {rule['feed']}" if rule["feed"] else "system"
        table.add_row(rule["subject"], rule["verdict"], scope, rule["actor"], rule["at"][:19].replace("T", " "))
    out.print(table)
    out.print(f"Unknown licenses: {answer['unknown']}", highlight=False)
    if answer["license_policy"] is not None:
        out.print(f"License policy of {answer['feed']}: {answer['license_policy']}", highlight=False)


def _print_report(report: dict[str, Any]) -> None:
    out.print(
        f"Feed [bold]{report['feed']}[/bold]: {report['total']} package files in {', '.join(report['subdirs'])}; "
        f"license policy {report['license_policy']}"
    )
    table = Table("license", "recognised", "rules say", "files", title="By license")
    for group in report["by_license"]:
        recognised = "yes" if group["recognised"] else "no"
        table.add_row(escape(group["license"]), recognised, group["action"], str(group["count"]))
    out.print(table)
    if report["non_compliant"]:
        table = Table("package", "subdir", "license", "rules say", "why", title="Not compliant")
        for package in report["non_compliant"]:
            table.add_row(
                f"{package['name']} {package['version']}",
                package["subdir"],
                escape(package["spdx"] or package["declared"]),
                package["action"],
                escape(package["reason"]),
            )
        out.print(table)
    else:
        out.print("Every package is compliant.")
    if report["unknown"]:
        table = Table("declared", "files", "packages", title="Unknown licenses")
        for group in report["unknown"]:
            names = sorted({p["name"] for p in group["packages"]})
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")
            table.add_row(escape(repr(group["license"])), str(group["count"]), escape(shown))
        out.print(table)
    for warning in report["warnings"]:
        out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@app.command("compliance")
def compliance(
    feed: Annotated[str, typer.Argument(help="The feed to report on")],
    subdir: Annotated[list[str] | None, typer.Option("--subdir", help="Only this subdir (repeat)")] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV, one row per package file")] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """A feed's packages by license, the ones the rules warn about or block, and unknown licenses."""
    if csv_output and json_output:
        fail("give --csv or --json, not both")
    client = ApiClient(url, api_key)
    params: dict[str, Any] = {"format": "csv" if csv_output else "json"}
    if subdir:
        params["subdir"] = subdir
    path = f"/api/feeds/{quote(feed, safe='')}/compliance"
    if csv_output:
        print(client.text(path, params=params), end="")
        return
    report = client.request("GET", path, params=params)
    if json_output:
        print(json.dumps(report))
        return
    _print_report(report)
