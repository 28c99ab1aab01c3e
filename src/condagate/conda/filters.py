"""Package-name filters of a connector: include and exclude globs, e.g. ``numpy*`` and ``*-dbg``."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class NameFilter:
    """A name passes when it matches an include glob (or there are none) and no exclude glob."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Iterable[str]) -> NameFilter:
        """``!glob`` in a single pattern list means exclude, as on the command line of the mission."""
        include = tuple(p for p in patterns if p and not p.startswith("!"))
        exclude = tuple(p[1:] for p in patterns if p.startswith("!") and len(p) > 1)
        return cls(include, exclude)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include_re", _compile(self.include))
        object.__setattr__(self, "_exclude_re", _compile(self.exclude))

    @property
    def is_open(self) -> bool:
        return not self.include and not self.exclude

    def allows(self, name: str) -> bool:
        include: re.Pattern[str] | None = getattr(self, "_include_re")  # noqa: B009
        exclude: re.Pattern[str] | None = getattr(self, "_exclude_re")  # noqa: B009
        if include is not None and not include.match(name):
            return False
        return exclude is None or not exclude.match(name)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p.lower())})" for p in patterns))
