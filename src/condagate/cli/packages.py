"""``condagate package ...``: manage the packages of a feed through the REST API."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console

from condagate.cli.client import ApiClient, fail
from condagate.cli.options import ApiKeyOption, JsonOption, UrlOption

app = typer.Typer(help="Manage the packages of a feed.", no_args_is_help=True)
out = Console(soft_wrap=True, highlight=False)
PACKAGE_EXTENSIONS = (".conda", ".tar.bz2")


def _segment(value: str) -> str:
    return quote(value, safe="")


@app.command("delete")
def delete(
    feed: Annotated[str, typer.Argument(metavar="FEED", help="The feed to delete from")],
    what: Annotated[
        str,
        typer.Argument(
            metavar="FILENAME|NAME[==VERSION]",
            help="A package file (NAME-VERSION-BUILD.conda or .tar.bz2), one version (NAME==VERSION, every "
            "build), or a package name (every version)",
        ),
    ],
    subdir: Annotated[
        str | None,
        typer.Option(
            "--subdir",
            help="Only this subdir (e.g. linux-64). For a FILENAME it may be left out when the file is in "
            "one subdir only: the feed's package listing says which",
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Delete a package file, a version or a whole package from a feed (needs the delete permission).

    Repodata and listings change at once; storage no other file uses is freed. In a proxy feed the
    cached copies of upstream files are removed; the upstream's records stay listed.
    """
    client = ApiClient(url, api_key)
    if what.endswith(PACKAGE_EXTENSIONS):
        file_subdir = subdir or _subdir_of(client, feed, what, json_output)
        path = f"/api/feeds/{_segment(feed)}/files/{_segment(file_subdir)}/{_segment(what)}"
        params: dict[str, str] = {}
    else:
        name, separator, version = what.partition("==")
        if separator and not version:
            _fail(json_output, f"no version after '==' in {what!r}: write NAME==VERSION")
        path = f"/api/feeds/{_segment(feed)}/packages/{_segment(name)}"
        if version:
            path += f"/versions/{_segment(version)}"
        params = {"subdir": subdir} if subdir else {}
    removal = _request(client, "DELETE", path, json_output, params=params)
    if json_output:
        print(json.dumps(removal))
        return
    _describe(removal)


def _subdir_of(client: ApiClient, feed: str, filename: str, json_output: bool) -> str:
    """The one subdir of the feed that holds ``filename``, from the package's listing."""
    name = filename.removesuffix(".conda").removesuffix(".tar.bz2").rsplit("-", 2)[0]
    detail = _request(client, "GET", f"/api/feeds/{_segment(feed)}/packages/{_segment(name)}", json_output)
    subdirs = sorted(
        {f["subdir"] for version in detail.get("versions", []) for f in version["files"] if f["filename"] == filename}
    )
    if not subdirs:
        _fail(json_output, f"{filename} is not in feed {feed!r}", 404, "package_not_found")
    if len(subdirs) > 1:
        _fail(
            json_output, f"{filename} is in the subdirs {', '.join(subdirs)} of feed {feed!r}: choose one with --subdir"
        )
    return str(subdirs[0])


def _request(client: ApiClient, method: str, path: str, json_output: bool, **kwargs: Any) -> Any:
    if not json_output:
        return client.request(method, path, **kwargs)
    try:
        response = client.http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _fail(json_output, f"cannot reach condagate at {client.url}: {exc}")
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            code, message = str(error.get("code", "")), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            code, message = "", response.text.strip()[:300] or response.reason_phrase
        _fail(json_output, f"{response.status_code}: {message}", response.status_code, code)
    return response.json()


def _fail(json_output: bool, message: str, status: int | None = None, code: str = "") -> NoReturn:
    """With --json the error is also printed as JSON on stdout, for scripts; the one line goes to stderr."""
    if json_output:
        print(json.dumps({"error": {"code": code or "failed", "message": message, "http_status": status}}))
    fail(message)


def _describe(removal: dict[str, Any]) -> None:
    files = removal["files"]
    for f in files:
        what = "cached copy of " if f["origin"] != "local" else ""
        note = " (still listed from its upstream)" if f["still_listed_from_upstream"] else ""
        out.print(f"deleted {what}{f['subdir']}/{f['filename']}{note}")
    blobs = len(removal["blobs_freed"])
    out.print(
        f"{len(files)} file{'' if len(files) == 1 else 's'} deleted from feed {removal['feed']}; "
        f"{blobs} blob{'' if blobs == 1 else 's'} freed ({removal['bytes_freed']} bytes)"
    )
