"""``condagate check``: run on the server's host; compares blobs, rows and repodata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from condagate.cli.admin import fail, host_settings
from condagate.cli.options import JsonOption

if TYPE_CHECKING:
    from rich.progress import Progress

    from condagate.services.consistency_report import Report

err = Console(stderr=True, soft_wrap=True)


class _HashBar:
    """The hashing's progress bar (on a terminal only): hashing every blob can take long."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, total_bytes: int) -> None:
        self._task = self._progress.add_task("hashing blobs", total=total_bytes)

    def advance(self, done_bytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, done_bytes)


def check(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove orphan blobs older than an hour, mark broken package files (no longer served), "
            "restore subdir revisions, forget broken cached copies",
        ),
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Check that blobs exist and have the right size; do not hash them")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="The server's data folder (env CONDAGATE_DATA_DIR)")] = None,
    json_output: JsonOption = False,
) -> None:
    """Check blobs against rows and repodata (on the server's host; the server may keep running).

    Exit status 0 when nothing is wrong (or everything found was repaired), 1 otherwise.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from condagate.errors import CondagateError
    from condagate.services import consistency
    from condagate.services.context import Services

    settings = host_settings(data_dir)
    folder = settings.data_dir
    try:
        services = Services.open(settings)
        try:
            if err.is_terminal and not json_output and not quick:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                columns = (BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn())
                with Progress(TextColumn("{task.description}"), *columns, console=err, transient=True) as bar:
                    report = consistency.check(services, repair=repair, quick=quick, progress=_HashBar(bar))
            else:
                report = consistency.check(services, repair=repair, quick=quick)
        finally:
            services.close()
    except (CondagateError, OSError, SQLAlchemyError, ValueError) as exc:
        fail(f"cannot check {settings.database_url or folder}: {exc}")
    if json_output:
        print(json.dumps(report.as_json()), flush=True)
    else:
        _print_report(report)
    raise typer.Exit(0 if report.clean else 1)


def _print_report(report: Report) -> None:
    from rich.markup import escape

    from condagate.services.consistency_report import kinds_of

    out = Console(soft_wrap=True, highlight=False)
    for problem in report.problems:
        status = "[green]repaired[/green]" if problem.repaired else "[red]problem[/red]"
        line = f"{problem.kind}: {problem.subject}: {problem.message}"
        if problem.action:
            line += f" -> {problem.action}"
        out.print(f"{status} {escape(line)}", markup=True)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    hashed = "sizes only (--quick)" if report.quick else f"{_size(report.hashed_bytes)} hashed"
    checked = (
        f"checked {report.blobs} blob(s) ({hashed}), {report.package_files} package file(s), "
        f"{report.cached_files} cached file(s), {report.subdirs} subdir(s)"
    )
    if not report.problems:
        out.print(f"no problems: {checked}", markup=False)
        return
    kinds = ", ".join(f"{count} {kind}" for kind, count in kinds_of(report.problems).items())
    repaired = len(report.problems) - len(report.unrepaired)
    summary = f"{len(report.problems)} problem(s) ({kinds}); {checked}"
    if report.repair:
        summary += f"; {repaired} repaired, {len(report.unrepaired)} left"
    elif report.problems:
        summary += "; 'condagate check --repair' fixes what is safe to fix"
    out.print(summary, markup=False)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
