"""The ``condagate`` command."""

from __future__ import annotations

from typing import Annotated

import typer

from condagate import __version__
from condagate.cli import admin, advisories, connectors, feeds, licenses, packages, promote, security
from condagate.cli.check import check
from condagate.cli.mirror import mirror
from condagate.cli.serve import serve
from condagate.cli.upload import upload

app = typer.Typer(
    help="condagate: a self-hosted conda package repository.", no_args_is_help=True, pretty_exceptions_enable=False
)


def _print_version(value: bool) -> None:
    if value:
        print(f"condagate {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    """condagate: a self-hosted conda package repository."""


app.command("serve")(serve)
app.command("upload")(upload)
app.command("mirror")(mirror)
app.command("check")(check)
app.command("promote")(promote.promote)
app.command("promotions")(promote.promotions)
feeds.app.command("create-pair")(promote.create_pair)
app.add_typer(feeds.app, name="feed")
app.add_typer(connectors.app, name="connector")
app.add_typer(packages.app, name="package")
app.add_typer(security.users, name="user")
app.add_typer(security.groups, name="group")
app.add_typer(security.grants, name="grant")
app.add_typer(security.apikeys, name="apikey")
app.add_typer(admin.app, name="admin")
app.add_typer(licenses.app, name="licenses")
app.add_typer(advisories.app, name="advisories")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
