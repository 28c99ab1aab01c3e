"""Read limits that keep hostile archives (bombs, huge metadata) from exhausting the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from condagate.errors import InvalidPackage


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ArchiveLimits:
    # A decompressed archive may be at most this many times its compressed size, or min_budget.
    max_expansion_ratio: int = 200
    min_budget: int = 256 * 1024 * 1024
    max_metadata_member: int = 16 * 1024 * 1024
    max_members: int = 500_000

    def budget_for(self, compressed_size: int) -> int:
        return max(self.min_budget, compressed_size * self.max_expansion_ratio)


class LimitedReader:
    """Counts decompressed bytes and fails once more than ``limit`` come out of ``raw``."""

    def __init__(self, raw: Readable, limit: int, what: str) -> None:
        self._raw = raw
        self._limit = limit
        self._what = what
        self.consumed = 0

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = self._limit - self.consumed + 1
        data = self._raw.read(size)
        self.consumed += len(data)
        if self.consumed > self._limit:
            raise InvalidPackage(
                f"{self._what} decompresses to more than {self._limit} bytes: refusing a likely compression bomb"
            )
        return data
