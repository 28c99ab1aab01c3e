"""``condagate user|group|grant|apikey ...``: users, groups, grants and API keys through the REST API."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.table import Table

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

# soft_wrap: keys, URLs and error messages stay on one line whatever the terminal's width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

users = typer.Typer(help="Users: log in with a password, or use API keys only.", no_args_is_help=True)
groups = typer.Typer(help="Groups of users, to grant permissions to many at once.", no_args_is_help=True)
grants = typer.Typer(
    help="Who may do what, where: permissions of users, groups and anonymous visitors, per feed or system-wide.",
    no_args_is_help=True,
)
apikeys = typer.Typer(help="API keys: personal, feed and system keys; their access logs.", no_args_is_help=True)

PasswordStdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin (one line); prompts on a terminal")
]
FeedOption = Annotated[
    str | None, typer.Option("--feed", metavar="FEED", help="On this feed only (default: all feeds)")
]


def segment(name: str) -> str:
    """A name as one URL path segment (user names may hold '@' and '+', group names spaces)."""
    return quote(name, safe="")


def read_password(prompt: str) -> str:
    """One line from stdin (its line ending removed, spaces kept), or a hidden prompt on a terminal."""
    if sys.stdin.isatty():
        password: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        fail("no password on stdin: pipe one line, e.g. printf '%s\\n' \"$PASSWORD\" | condagate ...")
    return password


def print_json(value: Any) -> None:
    print(json.dumps(value))


def short_time(value: str | None, default: str = "", length: int = 16) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM`` (``length`` 10: the date alone)."""
    return value[:length].replace("T", " ") if value else default


# Users -------------------------------------------------------------------------------------------


@users.command("create")
def user_create(
    name: str,
    password_stdin: PasswordStdinOption = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a user; without --password-stdin the user has no password and uses API keys only."""
    body: dict[str, Any] = {"name": name}
    if password_stdin:
        body["password"] = read_password(f"Password for {name}")
    user = ApiClient(url, api_key).request("POST", "/api/users", json=body)
    if json_output:
        print_json(user)
        return
    how = "with a password" if user["has_password"] else "without a password (API keys only)"
    out.print(f"Created user [bold]{user['name']}[/bold] {how}")


@users.command("list")
def user_list(json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """List users and their groups."""
    found = ApiClient(url, api_key).request("GET", "/api/users")
    if json_output:
        print_json(found)
        return
    table = Table("name", "password", "groups", "created")
    for user in found:
        password = "yes" if user["has_password"] else "no (keys only)"
        table.add_row(user["name"], password, ", ".join(user["groups"]), short_time(user["created_at"]))
    out.print(table)


@users.command("delete")
def user_delete(name: str, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Delete a user with its API keys and grants."""
    ApiClient(url, api_key).request("DELETE", f"/api/users/{segment(name)}")
    out.print(f"Deleted user {name}")


@users.command("set-password")
def user_set_password(
    name: str, password_stdin: PasswordStdinOption = False, url: UrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Set (or replace) a user's password, read from stdin."""
    if not password_stdin and not sys.stdin.isatty():
        fail("give the new password on stdin with --password-stdin")
    password = read_password(f"New password for {name}")
    ApiClient(url, api_key).request("PUT", f"/api/users/{segment(name)}/password", json={"password": password})
    out.print(f"Set the password of {name}")


# Groups ------------------------------------------------------------------------------------------


@groups.command("create")
def group_create(
    name: str, json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Create a group (names may hold spaces: quote them)."""
    group = ApiClient(url, api_key).request("POST", "/api/groups", json={"name": name})
    if json_output:
        print_json(group)
        return
    out.print(f"Created group [bold]{group['name']}[/bold]")


@groups.command("add-member")
def group_add_member(group: str, user: str, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Add a user to a group."""
    ApiClient(url, api_key).request("PUT", f"/api/groups/{segment(group)}/members/{segment(user)}")
    out.print(f"{user} is a member of {group}")


@groups.command("remove-member")
def group_remove_member(group: str, user: str, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Remove a user from a group."""
    ApiClient(url, api_key).request("DELETE", f"/api/groups/{segment(group)}/members/{segment(user)}")
    out.print(f"{user} is not a member of {group}")


@groups.command("list")
def group_list(json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """List groups and their members."""
    found = ApiClient(url, api_key).request("GET", "/api/groups")
    if json_output:
        print_json(found)
        return
    table = Table("name", "members")
    for group in found:
        table.add_row(group["name"], ", ".join(group["members"]))
    out.print(table)


@groups.command("delete")
def group_delete(name: str, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Delete a group and its grants (its members stay)."""
    ApiClient(url, api_key).request("DELETE", f"/api/groups/{segment(name)}")
    out.print(f"Deleted group {name}")


# Grants ------------------------------------------------------------------------------------------

PrincipalArgument = Annotated[str, typer.Argument(metavar="PRINCIPAL", help="user:NAME, group:NAME or anonymous")]
PermissionArgument = Annotated[
    str, typer.Argument(metavar="PERMISSION", help="view, add, promote, delete, manage-feed or admin")
]


def where(feed: str | None) -> str:
    return f"on feed {feed}" if feed else "on all feeds"


@grants.command("add")
def grant_add(
    principal: PrincipalArgument,
    permission: PermissionArgument,
    feed: FeedOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Grant a permission (granting it twice changes nothing)."""
    body = {"principal": principal, "permission": permission, "feed": feed}
    grant = ApiClient(url, api_key).request("POST", "/api/grants", json=body)
    if json_output:
        print_json(grant)
        return
    out.print(f"{grant['principal']} has {grant['permission']!r} {where(grant['feed'])}")


@grants.command("remove")
def grant_remove(
    principal: PrincipalArgument,
    permission: PermissionArgument,
    feed: FeedOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Remove a grant (the one on --feed, or the system-wide one)."""
    params = {"principal": principal, "permission": permission, **({"feed": feed} if feed else {})}
    ApiClient(url, api_key).request("DELETE", "/api/grants", params=params)
    out.print(f"Removed {permission!r} of {principal} {where(feed)}")


@grants.command("list")
def grant_list(
    feed: Annotated[str | None, typer.Option("--feed", metavar="FEED", help="Only the grants on this feed")] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List grants: who may do what, where."""
    found = ApiClient(url, api_key).request("GET", "/api/grants", params={"feed": feed} if feed else None)
    if json_output:
        print_json(found)
        return
    table = Table("principal", "permission", "feed", "granted by", "since")
    for grant in found:
        table.add_row(
            grant["principal"],
            grant["permission"],
            grant["feed"] or "all feeds",
            grant["created_by"],
            short_time(grant["created_at"], length=10),
        )
    out.print(table)


# API keys ----------------------------------------------------------------------------------------


def parse_expiry(value: str) -> datetime:
    """An ISO date (the key stops working at its start, UTC) or date and time (UTC unless an offset is given)."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"invalid --expires {value!r}: write an ISO date or date and time, e.g. 2027-01-31 or 2027-01-31T12:00")
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        fail(f"--expires {value!r} is in the past")
    return when


def channel_urls(server_url: str, key: str, feed: str) -> list[tuple[str, str]]:
    """The channel URL forms conda, mamba, pixi and rattler accept with a key in them."""
    scheme, netloc, path, _, _ = urlsplit(server_url)
    host = netloc.rpartition("@")[2]
    base = path.rstrip("/")
    quoted_key, quoted_feed = quote(key, safe=""), quote(feed, safe="")
    return [
        ("basic auth", urlunsplit((scheme, f"api:{quoted_key}@{host}", f"{base}/conda/{quoted_feed}", "", ""))),
        ("token in the path", urlunsplit((scheme, host, f"{base}/t/{quoted_key}/conda/{quoted_feed}", "", ""))),
    ]


def describe_key(key: dict[str, Any]) -> str:
    parts = [f"{key['kind']} key"]
    if key["user"]:
        parts.append(f"of user {key['user']}")
    parts.append(f"on feeds {', '.join(key['feeds'])}" if key["feeds"] else "on all feeds")
    if key["permissions"]:
        parts.append(f"limited to {', '.join(key['permissions'])}")
    parts.append(f"expires {key['expires_at']}" if key["expires_at"] else "never expires")
    return ", ".join(parts)


@apikeys.command("create")
def apikey_create(
    user: Annotated[
        str | None, typer.Option("--user", metavar="NAME", help="A personal key: acts as this user")
    ] = None,
    feed: Annotated[
        list[str] | None,
        typer.Option("--feed", metavar="FEED", help="Limit the key to this feed (repeat); a feed key if no --user"),
    ] = None,
    permission: Annotated[
        list[str] | None,
        typer.Option(
            "--permission", metavar="P", help="Limit the key to this permission (repeat; a feed key defaults to view)"
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", metavar="VALUE", help="Use this value instead of a generated key (letters, digits, ._~-)"
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", metavar="DATE", help="ISO date or date and time, UTC unless an offset is given"),
    ] = None,
    description: Annotated[str, typer.Option("--description", metavar="TEXT", help="What the key is for")] = "",
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create an API key and print it once (it is stored hashed)."""
    expires_at = parse_expiry(expires).isoformat() if expires else None
    body = {
        "user": user,
        "feeds": feed or [],
        "permissions": permission or [],
        "key": key,
        "expires_at": expires_at,
        "description": description,
    }
    client = ApiClient(url, api_key)
    created = client.request("POST", "/api/apikeys", json=body)
    if json_output:
        print_json(created)
        return
    out.print(f"Created API key {created['id']}: {describe_key(created)}")
    out.print("The key (shown once, stored hashed):", style="bold")
    print(created["key"], flush=True)  # alone on its line, never wrapped or styled
    for name in created["feeds"]:
        out.print(f"Channel URLs of feed {name}:")
        for form, channel in channel_urls(client.url, created["key"], name):
            out.print(f"  {channel}    ({form})", highlight=False)


@apikeys.command("list")
def apikey_list(json_output: JsonOption = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """List API keys: all of them for an administrator, your own otherwise."""
    found = ApiClient(url, api_key).request("GET", "/api/apikeys")
    if json_output:
        print_json(found)
        return
    table = Table("id", "key", "kind", "user", "feeds", "permissions", "status", "expires", "last used", "description")
    for k in found:
        table.add_row(
            str(k["id"]),
            k["hint"],
            k["kind"],
            k["user"] or "",
            ", ".join(k["feeds"]) or "all",
            ", ".join(k["permissions"]) or "all",
            k["status"],
            short_time(k["expires_at"], "never"),
            short_time(k["last_used_at"], "never"),
            k["description"],
        )
    out.print(table)


@apikeys.command("revoke")
def apikey_revoke(
    key_id: Annotated[int, typer.Argument(metavar="ID", help="The key's id (see apikey list)")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Revoke an API key: it stops working at once."""
    ApiClient(url, api_key).request("DELETE", f"/api/apikeys/{key_id}")
    out.print(f"Revoked API key {key_id}")


@apikeys.command("log")
def apikey_log(
    key_id: Annotated[int, typer.Argument(metavar="ID", help="The key's id (see apikey list)")],
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="The newest N requests (at most 5000)")] = 200,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """A key's access log: when, from where, what, and the answer's status."""
    entries = ApiClient(url, api_key).request("GET", f"/api/apikeys/{key_id}/access-log", params={"limit": limit})
    if json_output:
        print_json(entries)
        return
    table = Table("at", "client", "method", "path", "status", "requests")
    for entry in entries:
        table.add_row(
            short_time(entry["at"], length=19),
            entry["client"],
            entry["method"],
            entry["path"],
            str(entry["status"]),
            str(entry.get("count", 1)),
        )
    out.print(table)
