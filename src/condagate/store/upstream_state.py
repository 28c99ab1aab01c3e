"""The last good upstream repodata of each connector subdir, shared by replicas: one row per
(connector, subdir) naming the kept body's blob, the upstream's validators and the checked note."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session

from condagate.store.models import Connector, UpstreamRepodata


@dataclass(frozen=True)
class StateRow:
    connector_id: int
    subdir: str
    url: str
    sha256: str
    size: int
    etag: str
    last_modified: str
    fetched_at: float  # time.time()
    validated_at: float
    checks: str
    not_as_written: frozenset[str] | None


def _row(state: UpstreamRepodata) -> StateRow:
    return StateRow(
        state.connector_id,
        state.subdir,
        state.url,
        state.sha256,
        state.size,
        state.etag,
        state.last_modified,
        _seconds(state.fetched_at),
        _seconds(state.validated_at),
        state.checks,
        _names(state.not_as_written),
    )


def _seconds(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _names(text: str | None) -> frozenset[str] | None:
    """The note's file names, or None when there is none or it is not a list of names."""
    if text is None:
        return None
    try:
        listed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
        return None
    return frozenset(listed)


def _text(names: frozenset[str] | None) -> str | None:
    # ensure_ascii: any file name, lone surrogates included, is stored and read back the same
    return None if names is None else json.dumps(sorted(names))


def get(*, session: Session, connector_id: int, subdir: str) -> StateRow | None:
    state = session.get(UpstreamRepodata, (connector_id, subdir))
    return None if state is None else _row(state)


def save(
    *,
    session: Session,
    connector_id: int,
    subdir: str,
    url: str,
    sha256: str,
    size: int,
    etag: str,
    last_modified: str,
    fetched_at: float,
    checks: str,
    not_as_written: frozenset[str] | None,
) -> str | None:
    """Insert or replace the row (the caller holds the subdir's lock); returns the blob it named before
    when that is another one (for clean-up), else None. Nothing is written for a connector deleted meanwhile."""
    if session.get(Connector, connector_id) is None:
        return None
    state = session.get(UpstreamRepodata, (connector_id, subdir))
    previous = None
    if state is None:
        state = UpstreamRepodata(connector_id=connector_id, subdir=subdir)
        session.add(state)
    elif state.sha256 != sha256:
        previous = state.sha256
    state.url, state.sha256, state.size = url, sha256, size
    state.etag, state.last_modified = etag, last_modified
    state.fetched_at = state.validated_at = _moment(fetched_at)
    state.checks, state.not_as_written = checks, _text(not_as_written)
    return previous


def _naming(connector_id: int, subdir: str, sha256: str) -> tuple[ColumnElement[bool], ...]:
    """The subdir's row, while it still names the body ``sha256`` (another may have replaced it)."""
    return (
        UpstreamRepodata.connector_id == connector_id,
        UpstreamRepodata.subdir == subdir,
        UpstreamRepodata.sha256 == sha256,
    )


def mark_validated(*, session: Session, connector_id: int, subdir: str, sha256: str, at: float) -> None:
    """The upstream answered 304 for the body ``sha256``: it is still current (a row that names another
    body meanwhile is left alone)."""
    session.execute(
        update(UpstreamRepodata)
        .where(*_naming(connector_id, subdir, sha256), UpstreamRepodata.validated_at < _moment(at))
        .values(validated_at=_moment(at))
    )


def set_note(
    *, session: Session, connector_id: int, subdir: str, sha256: str, checks: str, not_as_written: frozenset[str] | None
) -> None:
    """Replace the checked note of the body ``sha256`` (read again with other checks)."""
    session.execute(
        update(UpstreamRepodata)
        .where(*_naming(connector_id, subdir, sha256))
        .values(checks=checks, not_as_written=_text(not_as_written))
    )


def subdirs(*, session: Session, connector_id: int) -> list[str]:
    return list(
        session.scalars(
            select(UpstreamRepodata.subdir)
            .where(UpstreamRepodata.connector_id == connector_id)
            .order_by(UpstreamRepodata.subdir)
        )
    )


def remove(*, session: Session, connector_id: int, subdir: str | None = None, sha256: str | None = None) -> list[str]:
    """Delete the connector's rows (one subdir's; only if it still names ``sha256``); returns their blobs."""
    conditions = [UpstreamRepodata.connector_id == connector_id]
    if subdir is not None:
        conditions.append(UpstreamRepodata.subdir == subdir)
    if sha256 is not None:
        conditions.append(UpstreamRepodata.sha256 == sha256)
    digests = list(session.scalars(select(UpstreamRepodata.sha256).where(*conditions)))
    session.execute(delete(UpstreamRepodata).where(*conditions))
    return digests


def all_rows(*, session: Session) -> list[StateRow]:
    return [
        _row(state)
        for state in session.scalars(
            select(UpstreamRepodata).order_by(UpstreamRepodata.connector_id, UpstreamRepodata.subdir)
        )
    ]


def sha256_in_use(*, session: Session, sha256: str) -> bool:
    return session.scalar(select(UpstreamRepodata.size).where(UpstreamRepodata.sha256 == sha256).limit(1)) is not None
