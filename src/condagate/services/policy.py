"""The policy step of publishing: whether a file may enter a feed, and what was found about it.

Every way a file enters a feed (upload, promotion) goes through ``services.publish``, which asks the
feed's policy about each candidate before anything is written. The default allows everything and
finds nothing; vulnerability and license rules (SCA) plug in here by returning their own policy from
``feed_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from condagate.services.context import Services

if TYPE_CHECKING:
    from condagate.services.publish import Candidate


@dataclass(frozen=True)
class Finding:
    """One thing a policy found about a package (an advisory, a license), shown with the decision."""

    kind: str  # e.g. "vulnerability", "license"
    message: str
    severity: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool = True
    reason: str = ""  # why it is refused: the user-facing message
    findings: tuple[Finding, ...] = ()

    def assessment(self) -> dict[str, Any]:
        """What the promotion history keeps of the decision ({} when nothing was found)."""
        if not self.findings:
            return {}
        return {
            "findings": [
                {"kind": f.kind, "message": f.message, "severity": f.severity, **f.details} for f in self.findings
            ]
        }


ALLOWED = PolicyDecision()


class PublishPolicy(Protocol):
    def check(self, *, feed: str, candidate: Candidate, action: str) -> PolicyDecision:
        """Decide about one candidate; ``action`` is how it enters the feed ("upload", "promote")."""
        ...


class AllowEverything:
    """The policy of a feed without rules."""

    def check(self, *, feed: str, candidate: Candidate, action: str) -> PolicyDecision:
        return ALLOWED


def feed_policy(services: Services, feed: str) -> PublishPolicy:
    """The policy of ``feed``: for now every feed allows everything (SCA adds its rules here)."""
    return AllowEverything()
