"""OSV range events (``introduced``, ``fixed``, ``last_affected``, ``limit``) walked in a version order:
whether a version is inside a range, and which regions among sorted bounds a range covers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion

from condagate.conda.version_order import Parse

_KIND_ORDER = {"introduced": 0, "fixed": 1, "last_affected": 1, "limit": 2}


@dataclass(frozen=True)
class Walk:
    events: list[tuple[Any, str]]  # (bound, kind) in version order; bound None: introduced "0"
    limits: list[Any]  # finite limits
    unlimited: bool  # no limit event, or a "*" one


def compile_walks(
    version_ranges: Sequence[tuple[str, Sequence[tuple[str, str]]]], parse: Parse, range_type: str
) -> list[Walk | None]:
    """The ranges of ``range_type`` in the order ``parse`` gives; None for one with a bound it cannot place."""
    walks: list[Walk | None] = []
    for kind, events in version_ranges:
        if kind != range_type:
            continue
        try:
            keyed = [
                (None if (k == "introduced" and v == "0") or (k == "limit" and "*" in v) else parse(v), k)
                for k, v in events
            ]
        except (ValueError, InvalidVersion):
            walks.append(None)
            continue
        ordered = sorted(
            ((bound, k) for bound, k in keyed if k != "limit"),
            key=lambda item: (item[0] is not None, item[0] if item[0] is not None else 0, _KIND_ORDER[item[1]]),
        )
        limits = [bound for bound, k in keyed if k == "limit"]
        finite = [b for b in limits if b is not None]
        walks.append(Walk(ordered, finite, len(finite) < len(limits) or not limits))
    return walks


def in_range(version: Any, walk: Walk) -> bool:
    if not walk.unlimited and not any(version < limit for limit in walk.limits):
        return False
    vulnerable = False
    for bound, kind in walk.events:
        if kind == "introduced" and (bound is None or version >= bound):
            vulnerable = True
        elif (kind == "fixed" and version >= bound) or (kind == "last_affected" and version > bound):
            vulnerable = False
    return vulnerable


def covered(walk: Walk, position: dict[Any, int], regions: int) -> list[tuple[int, int]]:
    """The runs of global regions (first, last) a range covers. Regions among the sorted bounds
    b0 < b1 < ...: 2i is the open interval below bi (above b(i-1)), 2i + 1 the point bi. The
    range's own bounds split the line more coarsely; its state is decided once per own region."""
    own = sorted({bound for bound, _ in walk.events if bound is not None} | set(walk.limits))
    at = [position[bound] for bound in own]
    runs: list[tuple[int, int]] = []
    for region in range(2 * len(own) + 1):
        k, point = divmod(region, 2)
        if point:
            inside = holds_at(walk, own[k], point=True) and (walk.unlimited or any(own[k] < x for x in walk.limits))
            span = (2 * at[k] + 1, 2 * at[k] + 1)
        else:
            below = own[k - 1] if k > 0 else None
            above = own[k] if k < len(own) else None
            inside = holds_at(walk, below, point=False) and (
                walk.unlimited or (above is not None and any(above <= x for x in walk.limits))
            )
            span = (2 * at[k - 1] + 2 if k > 0 else 0, 2 * at[k] if k < len(own) else regions - 1)
        if inside:
            if runs and runs[-1][1] + 1 == span[0]:
                runs[-1] = (runs[-1][0], span[1])
            else:
                runs.append(span)
    return runs


def holds_at(walk: Walk, bound: Any, *, point: bool) -> bool:
    """The walk's state at the point ``bound`` (point=True), or just above it (the open interval
    after it; ``bound`` None: below every bound)."""
    vulnerable = False
    for event_bound, kind in walk.events:
        if event_bound is None:
            holds = True
        elif bound is None:
            holds = False
        elif point:
            holds = event_bound < bound or (event_bound == bound and kind != "last_affected")
        else:
            holds = event_bound <= bound
        if holds:
            vulnerable = kind == "introduced"
    return vulnerable
