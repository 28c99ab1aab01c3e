"""Options every client command shares."""

from __future__ import annotations

from typing import Annotated

import typer

UrlOption = Annotated[str | None, typer.Option("--url", help="Server URL (env CONDAGATE_URL)")]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", help="API key (env CONDAGATE_API_KEY)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
