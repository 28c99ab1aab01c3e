"""``condagate check``'s findings: the problem kinds, a problem, the report, and the hashing's progress."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Problem kinds (stable: ``--json`` output and scripts use them).
ORPHAN_BLOB = "orphan_blob"
MISSING_BLOB = "missing_blob"
WRONG_SHA256 = "wrong_sha256"
WRONG_SIZE = "wrong_size"
RECORD_MISMATCH = "record_mismatch"
BROKEN_BUT_INTACT = "broken_but_intact"
SUBDIR_STATE_MISSING = "subdir_state_missing"
SUBDIR_STATE_BEHIND = "subdir_state_behind"
CACHED_MISSING_BLOB = "cached_missing_blob"
CACHED_WRONG_SHA256 = "cached_wrong_sha256"
CACHED_WRONG_SIZE = "cached_wrong_size"
CACHED_RECORD_MISMATCH = "cached_record_mismatch"
UPSTREAM_COPY_UNREADABLE = "upstream_copy_unreadable"
UPSTREAM_COPY_WITHOUT_CONNECTOR = "upstream_copy_without_connector"


class HashProgress(Protocol):
    """Told how many bytes will be hashed, then each chunk hashed (a progress bar on a terminal)."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, done_bytes: int) -> None: ...


@dataclass
class Problem:
    kind: str
    subject: str  # what is wrong: "FEED/SUBDIR/FILENAME", "blob SHA256", "connector NAME: SUBDIR/FILENAME"
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    action: str = ""  # what --repair did, or why it did not
    repaired: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "message": self.message,
            "repaired": self.repaired,
            "action": self.action,
            **self.details,
        }


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem
    blobs: int = 0
    package_files: int = 0
    cached_files: int = 0
    subdirs: int = 0
    hashed_bytes: int = 0
    quick: bool = False
    repair: bool = False

    @property
    def unrepaired(self) -> list[Problem]:
        return [problem for problem in self.problems if not problem.repaired]

    @property
    def clean(self) -> bool:
        return not self.unrepaired

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "problems": [problem.as_json() for problem in self.problems],
            "notes": self.notes,
            "summary": {
                "blobs": self.blobs,
                "package_files": self.package_files,
                "cached_files": self.cached_files,
                "subdirs": self.subdirs,
                "hashed_bytes": self.hashed_bytes,
                "quick": self.quick,
                "problems": len(self.problems),
                "repaired": len(self.problems) - len(self.unrepaired),
            },
        }


def kinds_of(problems: Iterable[Problem]) -> dict[str, int]:
    """How many problems of each kind, in the order first seen (for the summary)."""
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    return counts
