"""The policy step of publishing: whether a file may enter a feed, and what was found about it.

Every way a file enters a feed (upload, promotion) goes through ``services.publish``, which asks the
feed's policy about each candidate before anything is written. A feed's policy is its vulnerability
and license rules (``services.sca``): a file they block is refused (409 ``policy_refused``, naming the
advisory or the license rule), uploads and promotions alike; a promotion's findings (the advisories
affecting the version, a license a rule does not simply allow) go into the promotion history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from condagate.services.context import Services
from condagate.store.models import Feed

if TYPE_CHECKING:
    from condagate.services.publish import Candidate


SCA_POLICIES = ("off", "warn", "block")
SEVERITY_LEVELS = ("none", "low", "medium", "high", "critical")  # lowest first


@dataclass(frozen=True)
class FeedPolicy:
    """A feed's vulnerability and license policies (SCA), as they were when the feed was read."""

    id: int
    name: str
    vulnerability_policy: str = "off"  # off, warn or block
    min_severity: str = "high"  # advisories below this level are not acted on
    hide_blocked: bool = True  # blocked records are left out of the repodata
    license_policy: str = "off"  # off, warn or block

    @classmethod
    def of(cls, feed: Feed) -> FeedPolicy:
        return cls(
            feed.id, feed.name, feed.vulnerability_policy, feed.min_severity, feed.hide_blocked, feed.license_policy
        )

    @property
    def active(self) -> bool:
        """Whether anything is checked at all (off and off: no per-record work anywhere)."""
        return self.vulnerability_policy != "off" or self.license_policy != "off"

    @property
    def filters_repodata(self) -> bool:
        return self.active and self.hide_blocked


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
    """The policy of ``feed``: its SCA rules (a feed whose policies are off lets every upload in)."""
    from condagate.services import sca  # here, not above: sca builds on this module's types

    return sca.publish_policy(services, feed)
