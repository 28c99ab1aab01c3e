"""A feed subdir's records merged from its connectors' snapshots, the files it keeps cached that they no
longer list, and its own packages (``services.repodata_cache``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from condagate.conda.repodata import RepodataParts
from condagate.services.layered_mapping import overlaid
from condagate.store import connectors as connector_store
from condagate.store.db import Database
from condagate.upstream.repodata_cache import UpstreamSnapshot

# (records, names, sticky files: file name -> (connector id, removed upstream at), blocks or None)
Merged = tuple[Mapping[str, bytes], Mapping[str, str], dict[str, tuple[int, datetime | None]], RepodataParts | None]


def merge_upstreams(
    db: Database,
    subdir: str,
    upstreams: list[UpstreamSnapshot],
    local_records: Mapping[str, bytes],
    local_names: Mapping[str, str],
    keep_cached: bool,
) -> Merged:
    """(records, names, sticky files, blocks): the connectors' records, the first connector winning a
    file name over later ones; with ``keep_cached``, files this server cached that the upstreams no
    longer list (their records as listed when cached: they stay installable); the feed's own packages
    over all. One connector: its own records, names and blocks, not copies (never changed: what is
    added is laid over them, and put into a copy of the blocks: only the blocks it falls in are
    encoded again); else the blocks are None."""
    order = {u.connector_id: position for position, u in enumerate(upstreams)}
    rows = []
    if keep_cached:
        with db.read() as session:
            rows = connector_store.sticky_records(session=session, connector_ids=list(order), subdir=subdir)
    if len(upstreams) == 1 and upstreams[0].parts is not None:
        return _laid_over(upstreams[0], upstreams[0].parts, rows, local_records, local_names)
    records: dict[str, bytes] = {}
    names: dict[str, str] = {}
    for upstream in reversed(upstreams):
        records.update(upstream.records.items())  # a large subdir's: block by block
        names.update(upstream.names)
    sticky: dict[str, tuple[int, datetime | None]] = {}
    for row in sorted(rows, key=lambda r: order[r.connector_id]):
        if row.filename in records:
            continue
        records[row.filename] = row.record
        names[row.filename] = row.name
        sticky[row.filename] = (row.connector_id, row.removed_upstream_at)
    records.update(local_records)
    names.update(local_names)
    return records, names, sticky, None


def _laid_over(
    upstream: UpstreamSnapshot,
    parts: RepodataParts,
    sticky_rows: Sequence[Any],
    local_records: Mapping[str, bytes],
    local_names: Mapping[str, str],
) -> Merged:
    """``merge_upstreams`` of one connector: the sticky files it no longer lists, then the feed's own, laid
    over its records and put into a copy of its blocks."""
    records: dict[str, bytes] = {}
    names: dict[str, str] = {}
    sticky: dict[str, tuple[int, datetime | None]] = {}
    for row in sticky_rows:
        if row.filename not in upstream.records:
            records[row.filename] = row.record
            names[row.filename] = row.name
            sticky[row.filename] = (row.connector_id, row.removed_upstream_at)
    records.update(local_records)
    names.update(local_names)
    if not records:
        return upstream.records, upstream.names, sticky, parts
    merged = parts.copy()
    merged.put(records.items())
    return overlaid(upstream.records, records), overlaid(upstream.names, names), sticky, merged
