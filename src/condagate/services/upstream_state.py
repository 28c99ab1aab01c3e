"""The kept upstream repodata of every connector subdir, shared by replicas: rows in the database
(``store.upstream_state``), bodies in the blob store. ``upstream.kept_copies`` uses it through its
``SharedState`` protocol.

A replaced body's blob is deleted when nothing else uses it, under the blob's lock
(``blob_cleanup.blob_lock_name``), as package files' blobs are; a new body's blob is stored (or found)
under its lock and its row committed before the lock is released, so a clean-up never deletes it in
between. One lock per connector subdir orders replicas replacing the same row.
"""

from __future__ import annotations

import contextlib

from condagate.services.blob_cleanup import blob_lock_name
from condagate.store import packages as package_store
from condagate.store import upstream_state as state_store
from condagate.store.blobs import BlobStore
from condagate.store.db import Database
from condagate.store.locks import Locks
from condagate.upstream.kept_copies import KeptState


def state_lock_name(connector_id: int, subdir: str) -> str:
    return f"upstream-repodata/{connector_id}/{subdir}"


def fetch_lock_name(connector_id: int, subdir: str) -> str:
    return f"upstream-fetch/{connector_id}/{subdir}"


class SharedUpstreamState:
    def __init__(self, db: Database, blobs: BlobStore, locks: Locks) -> None:
        self._db = db
        self._blobs = blobs
        self._locks = locks

    def read(self, connector_id: int, subdir: str) -> KeptState | None:
        with self._db.read() as session:
            row = state_store.get(session=session, connector_id=connector_id, subdir=subdir)
        if row is None:
            return None
        return KeptState(
            url=row.url,
            sha256=row.sha256,
            size=row.size,
            etag=row.etag,
            last_modified=row.last_modified,
            fetched_at=row.fetched_at,
            validated_at=row.validated_at,
            checks=row.checks,
            not_as_written=row.not_as_written,
        )

    def fetching(self, connector_id: int, subdir: str) -> contextlib.AbstractContextManager[None]:
        # Taken before, and never while holding, the subdir's state lock (``save`` takes that inside).
        return self._locks.held(fetch_lock_name(connector_id, subdir))

    def read_body(self, sha256: str) -> bytes | None:
        return self._blobs.read_bytes(sha256)

    def store_body(self, compressed: bytes) -> str:
        return self._blobs.put_bytes(compressed)

    def save(self, connector_id: int, subdir: str, state: KeptState, compressed: bytes) -> None:
        # The subdir's lock first, the blob's second (nothing takes them the other way round).
        with self._locks.held(state_lock_name(connector_id, subdir)), self._locks.held(blob_lock_name(state.sha256)):
            if not self._blobs.exists(state.sha256):  # not stored early, or deleted since
                self._blobs.put_bytes(compressed)
            with self._db.write(quiet=True) as session:
                replaced = state_store.save(
                    session=session,
                    connector_id=connector_id,
                    subdir=subdir,
                    url=state.url,
                    sha256=state.sha256,
                    size=state.size,
                    etag=state.etag,
                    last_modified=state.last_modified,
                    fetched_at=state.fetched_at,
                    checks=state.checks,
                    not_as_written=state.not_as_written,
                )
        if replaced is not None:
            self._delete_if_unused(replaced)

    def validated(self, connector_id: int, subdir: str, sha256: str, at: float) -> None:
        with self._db.write(quiet=True) as session:
            state_store.mark_validated(session=session, connector_id=connector_id, subdir=subdir, sha256=sha256, at=at)

    def note(
        self, connector_id: int, subdir: str, sha256: str, checks: str, not_as_written: frozenset[str] | None
    ) -> None:
        with self._db.write(quiet=True) as session:
            state_store.set_note(
                session=session,
                connector_id=connector_id,
                subdir=subdir,
                sha256=sha256,
                checks=checks,
                not_as_written=not_as_written,
            )

    def subdirs(self, connector_id: int) -> list[str]:
        with self._db.read() as session:
            return state_store.subdirs(session=session, connector_id=connector_id)

    def remove(self, connector_id: int) -> None:
        with self._db.write(quiet=True) as session:
            digests = state_store.remove(session=session, connector_id=connector_id)
        for sha256 in set(digests):
            self._delete_if_unused(sha256)

    def _delete_if_unused(self, sha256: str) -> None:
        with self._locks.held(blob_lock_name(sha256)):
            with self._db.read() as session:
                if package_store.sha256_in_use(session=session, sha256=sha256):
                    return
            self._blobs.delete(sha256)
