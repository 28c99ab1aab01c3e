"""``condagate package ...``: manage the packages of a feed through the REST API."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage the packages of a feed.", no_args_is_help=True)
