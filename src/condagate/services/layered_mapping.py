"""A large mapping with a small one laid over it: how a subdir's merged records take a few local
uploads without copying the hundreds of thousands of upstream entries under them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar, overload

V = TypeVar("V")
T = TypeVar("T")

# The overlay is folded into a new base (one copy) once it holds this many entries, or a sixteenth of
# the base: lookups of overlaid keys, iteration and memory stay close to those of one dict.
_FOLD_AT = 4096


class Layered(Mapping[str, V]):
    """``base`` with ``overlay`` laid over it (the overlay wins); neither is changed once given here."""

    __slots__ = ("_base", "_length", "_overlay")

    def __init__(self, base: Mapping[str, V], overlay: dict[str, V]) -> None:
        self._base = base
        self._overlay = overlay
        self._length = len(base) + sum(1 for key in overlay if key not in base)

    def __getitem__(self, key: str) -> V:
        overlay = self._overlay
        if key in overlay:
            return overlay[key]
        return self._base[key]

    @overload
    def get(self, key: str, /) -> V | None: ...
    @overload
    def get(self, key: str, default: V | T, /) -> V | T: ...
    def get(self, key: str, default: object = None, /) -> object:
        found = self._overlay.get(key, _MISSING)
        return self._base.get(key, default) if found is _MISSING else found

    def __contains__(self, key: object) -> bool:
        return key in self._overlay or key in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        base = self._base
        yield from (key for key in self._overlay if key not in base)

    def __len__(self) -> int:
        return self._length


_MISSING = object()


def overlaid(mapping: Mapping[str, V], changes: Mapping[str, V]) -> Mapping[str, V]:
    """``mapping`` with ``changes`` laid over it, without copying ``mapping`` (a new ``Layered``, or one
    dict once the overlay has grown large). ``mapping`` itself is left as it is."""
    if isinstance(mapping, Layered):
        base, overlay = mapping._base, {**mapping._overlay, **changes}
    else:
        base, overlay = mapping, dict(changes)
    if len(overlay) > max(_FOLD_AT, len(base) // 16):
        return {**base, **overlay}
    return Layered(base, overlay)
