"""The promotion history: who promoted (or revoked) what, when, from which feed to which, and why."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from condagate.services.context import Services
from condagate.store import promotions as promotion_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    request_id: str
    action: str
    source: str
    target: str
    subdir: str
    filename: str
    name: str
    version: str
    build: str
    sha256: str
    actor: str
    comment: str
    at: datetime
    assessment: dict[str, Any]


@dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryEntry]
    total: int
    offset: int
    limit: int | None


def history(
    services: Services,
    *,
    feed: str | None = None,
    name: str | None = None,
    version: str | None = None,
    visible_feeds: set[str] | None = None,
    offset: int = 0,
    limit: int | None = 50,
) -> HistoryPage:
    """Promotions and revocations, newest first: of ``feed`` (as source or target), of package
    ``name`` (and ``version``). With ``visible_feeds``, entries whose feeds the reader may not see are
    left out. Entries outlive their feeds (feeds are kept by name)."""
    with services.db.read() as session:
        rows, total = promotion_store.history(
            session=session,
            feed=feed,
            name=name,
            version=version,
            visible_feeds=visible_feeds,
            offset=offset,
            limit=limit,
        )
        entries = [
            HistoryEntry(
                id=row.id,
                request_id=row.request_id,
                action=row.action,
                source=row.source_feed,
                target=row.target_feed,
                subdir=row.subdir,
                filename=row.filename,
                name=row.name,
                version=row.version,
                build=row.build,
                sha256=row.sha256,
                actor=row.actor,
                comment=row.comment,
                at=row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC),
                assessment=json.loads(row.assessment or "{}"),
            )
            for row in rows
        ]
    return HistoryPage(entries, total, offset, limit)


CSV_COLUMNS = (
    "at",
    "action",
    "source",
    "target",
    "subdir",
    "filename",
    "name",
    "version",
    "build",
    "sha256",
    "actor",
    "comment",
    "request_id",
    "assessment",
)


def history_csv(entries: list[HistoryEntry]) -> str:
    """The history as CSV (one row per file). Cells that a spreadsheet would run as a formula are
    quoted with a leading apostrophe: comments and names are user text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for entry in entries:
        values = {
            **{column: getattr(entry, column) for column in CSV_COLUMNS if hasattr(entry, column)},
            "at": entry.at.isoformat(),
            "assessment": json.dumps(entry.assessment, sort_keys=True),
        }
        writer.writerow([_cell(str(values[column])) for column in CSV_COLUMNS])
    return buffer.getvalue()


def _cell(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
