"""conda version order, from py-rattler (the same order conda and rattler solve with)."""

from __future__ import annotations

from collections.abc import Iterable

from rattler import Version


def version_key(version: str) -> Version:
    return Version(version)


def sort_versions_descending(versions: Iterable[str]) -> list[str]:
    def key(text: str) -> Version:
        try:
            return Version(text)
        except Exception:  # an unparsable version sorts last rather than breaking a listing
            return Version("0")

    return sorted(set(versions), key=key, reverse=True)


def latest_version(versions: Iterable[str]) -> str | None:
    ordered = sort_versions_descending(versions)
    return ordered[0] if ordered else None
