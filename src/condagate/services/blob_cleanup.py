"""Deleting blobs nothing refers to any more. One lock per blob orders "blob written, row committed"
(uploads, the proxy cache) against "no row uses it, delete it", across threads and processes."""

from __future__ import annotations

from condagate.services.context import Services
from condagate.store import packages as package_store
from condagate.store.locks import held


def blob_lock_name(sha256: str) -> str:
    return f"blob/{sha256}"


def delete_if_unused(services: Services, sha256: str) -> None:
    with held(services.locks_dir, blob_lock_name(sha256)):
        delete_unused_locked(services, sha256)


def delete_unused_locked(services: Services, sha256: str) -> None:
    """Delete the blob when no row refers to it; the caller holds the blob's lock."""
    with services.db.read() as session:
        if package_store.sha256_in_use(session=session, sha256=sha256):
            return
    services.blobs.delete(sha256)
