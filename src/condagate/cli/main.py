"""The ``condagate`` command."""

from __future__ import annotations

import typer

from condagate.cli import admin, connectors, feeds, security
from condagate.cli.mirror import mirror
from condagate.cli.serve import serve
from condagate.cli.upload import upload

app = typer.Typer(
    help="condagate: a self-hosted conda package repository.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command("serve")(serve)
app.command("upload")(upload)
app.command("mirror")(mirror)
app.add_typer(feeds.app, name="feed")
app.add_typer(connectors.app, name="connector")
app.add_typer(security.users, name="user")
app.add_typer(security.groups, name="group")
app.add_typer(security.grants, name="grant")
app.add_typer(security.apikeys, name="apikey")
app.add_typer(admin.app, name="admin")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
