"""``condagate admin ...``: run on the server's host; they open the database directly, no server needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from condagate.cli.options import JsonOption

if TYPE_CHECKING:
    from condagate.settings import Settings

app = typer.Typer(
    help="On the server's host: work on the database directly (no running server needed).", no_args_is_help=True
)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {' '.join(message.split())}", highlight=False)
    raise typer.Exit(1)


def host_settings(data_dir: Path | None) -> Settings:
    """The settings of the server whose data folder is ``data_dir`` (or ``CONDAGATE_*``), refusing a
    folder that holds no condagate database: a mistyped folder would otherwise get a new, empty one."""
    from condagate.settings import Settings

    try:
        settings = Settings.from_env(data_dir=data_dir)
    except ValueError as exc:
        fail(f"invalid CONDAGATE_* setting: {exc}")
    folder = settings.data_dir
    if folder.exists() and not folder.is_dir():
        fail(f"the data dir {folder} is not a folder")
    if not settings.database_url and not (folder / "condagate.db").is_file():
        fail(f"no condagate database in {folder}: pass the server's --data-dir (or set CONDAGATE_DATA_DIR)")
    return settings


@app.command("create-key")
def create_key(
    data_dir: Annotated[Path | None, typer.Option(help="The server's data folder (env CONDAGATE_DATA_DIR)")] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a new administrator API key (user 'admin') and print it once: for a lost first key."""
    from sqlalchemy.exc import SQLAlchemyError

    from condagate.errors import CondagateError
    from condagate.services.bootstrap import ADMIN_USER, create_admin_key
    from condagate.services.context import Services

    settings = host_settings(data_dir)
    folder = settings.data_dir
    try:
        services = Services.open(settings)
        try:
            key = create_admin_key(services)
        finally:
            services.close()
    except (CondagateError, OSError, SQLAlchemyError, ValueError) as exc:
        fail(f"cannot create the key in {settings.database_url or folder}: {exc}")
    if json_output:
        print(json.dumps({"user": ADMIN_USER, "key": key}), flush=True)
    else:
        print(f"CONDAGATE_API_KEY={key}", flush=True)
    err.print(
        f"Created a new administrator API key for user '{ADMIN_USER}' (shown once, stored hashed). Use it with the "
        "CLI (export CONDAGATE_API_KEY=...), the REST API (X-API-Key header) or a channel URL "
        "http://api:KEY@HOST:PORT/conda/FEED. A running server accepts it within seconds; other keys keep working "
        "(list them with 'condagate apikey list', revoke a lost one with 'condagate apikey revoke ID').",
        highlight=False,
    )
