"""Deleting blobs nothing refers to any more. One lock per blob orders "blob written, row committed"
(uploads, the proxy cache) against "no row uses it, delete it", across threads and processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from condagate.store import packages as package_store

if TYPE_CHECKING:  # services.context builds services.upstream_state, which uses blob_lock_name
    from condagate.services.context import Services


def blob_lock_name(sha256: str) -> str:
    return f"blob/{sha256}"


def delete_if_unused(services: Services, sha256: str) -> None:
    with services.locks.held(blob_lock_name(sha256)):
        delete_unused_locked(services, sha256)


def delete_unused_locked(services: Services, sha256: str) -> None:
    """Delete the blob when no row refers to it; the caller holds the blob's lock."""
    with services.db.read() as session:
        if package_store.sha256_in_use(session=session, sha256=sha256):
            return
    services.blobs.delete(sha256)
