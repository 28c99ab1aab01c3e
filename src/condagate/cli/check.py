"""``condagate check``: run on the server's host; compares blobs, rows and repodata."""

from __future__ import annotations


def check() -> None:
    """Check blobs against rows and repodata (on the server's host)."""
