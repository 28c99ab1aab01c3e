"""SCA verdicts: what a feed's vulnerability and license policies make of one package record.

``verdict`` answers allow, warn or block, with the reasons (advisories, license rule). The channel
leaves blocked records out of the repodata it serves (``services.sca_filter``) and refuses their
downloads (``check_download``: 403 naming the advisory); the publish path (``services.policy``)
refuses them entering a feed (409).

The rules:
- Advisories count only under a vulnerability policy (warn or block), when their severity reaches the
  feed's ``min_severity``. An advisory of *unknown* severity (no CVSS vector, no rating) counts as if
  it were at the threshold: unknown is not safe, and an assessment settles it.
- Assessments (a feed's own beats the global one): *ignore*: the advisory does not count; *caution*:
  a warning at most, whatever the severity and the policy; *block*: blocked whatever the severity,
  under a warn policy too (an administrator's explicit word beats the feed's default). Under policy
  off nothing is acted on, assessments included.
- Licenses: policy off: not looked at; warn: a rule that blocks or warns gives a warning; block: the
  rule's own action.
- A version without advisory data (no name mapping, a version the ecosystem does not know) is allowed;
  the pages say "no advisory data", never "clean".

Verdicts are memoised per SCA revision (``RepodataCache.verdicts``) by policy, name, version and
license.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from condagate.conda.records import decode_record
from condagate.errors import PackageBlocked
from condagate.services import licenses, vulnerabilities
from condagate.services.advisory_index import AdvisoryFinding, VulnerabilityState
from condagate.services.channel import PackageBlob, UpstreamPackage
from condagate.services.context import Services
from condagate.services.licenses import LicenseState
from condagate.services.policy import ALLOWED, SEVERITY_LEVELS, FeedPolicy, Finding, PolicyDecision
from condagate.store import feeds as feed_store

ALLOW, WARN, BLOCK = "allow", "warn", "block"
RANK = {ALLOW: 0, WARN: 1, BLOCK: 2}  # how strict an action is: max(..., key=RANK.__getitem__) is the strictest
ASSESSMENTS = ("ignore", "caution", "block")
WARNING_HEADER = "X-Condagate-Warning"


@dataclass(frozen=True)
class AdvisoryVerdict:
    """One advisory affecting a version, and what the feed's policy makes of it."""

    advisory_id: str
    aliases: tuple[str, ...]
    summary: str
    severity: str
    score: float | None
    fixed_in: tuple[str, ...]
    assessment: str | None
    assessment_comment: str
    action: str
    why: str

    def describe(self) -> str:
        aliases = [a for a in self.aliases if a != self.advisory_id][:2]
        rating = self.severity + (f" {self.score:g}" if self.score is not None else "")
        text = f"advisory {self.advisory_id}" + (f" ({', '.join(aliases)}, {rating})" if aliases else f" ({rating})")
        if self.summary:
            text += f": {_short(self.summary, 120)}"
        if self.assessment:
            text += f" [assessed {self.assessment}]"
        if self.fixed_in:
            text += f"; fixed in {', '.join(self.fixed_in[:3])}"
        return text


@dataclass(frozen=True)
class LicenseVerdict:
    declared: str | None
    spdx: str | None
    recognised: bool
    rule_action: str  # what the license rules say
    action: str  # what the feed's license policy makes of it
    reason: str

    def describe(self) -> str:
        shown = self.spdx or (self.declared if self.declared else "none declared")
        return f"license {shown}" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class ScaVerdict:
    action: str  # allow, warn or block
    reasons: tuple[str, ...] = ()  # what made the action, blocking ones first
    advisories: tuple[str, ...] = ()  # the advisories behind a warn or block
    license: LicenseVerdict | None = None
    status: str = "not checked"  # the version's vulnerability status (affected, clean, no-data, ...)
    details: tuple[AdvisoryVerdict, ...] = ()  # every advisory affecting the version
    note: str = ""

    @property
    def blocked(self) -> bool:
        return self.action == BLOCK

    @property
    def license_blocks(self) -> bool:
        return self.license is not None and self.license.action == BLOCK

    def explanation(self, feed: str) -> str:
        """Why, and how to get it allowed: for 403 and 409 messages."""
        text = "; ".join(self.reasons) or "refused by the feed's policy"
        hints = []
        blocking = [d for d in self.details if d.action == BLOCK]
        if blocking:
            first = blocking[0].advisory_id
            hints.append(
                f"an administrator can assess the advisory to allow it: condagate advisories assess {first} "
                f"ignore --feed {feed} (or caution), or on the page /advisories/{first}"
            )
        if self.license_blocks and self.license is not None:
            if self.license.spdx and self.license.recognised:
                hints.append(f"or allow the license: condagate licenses allow {self.license.spdx} --feed {feed}")
            else:
                hints.append(f"or allow unknown licenses: condagate licenses unknown allow --feed {feed}")
        fixed = sorted({v for d in blocking for v in d.fixed_in})
        if fixed:
            hints.append(f"a fixed version: {', '.join(fixed[:3])}")
        return text + (". " + "; ".join(hints) if hints else "")

    def warning(self, what: str) -> str:
        """The ``X-Condagate-Warning`` header: one line of printable ASCII."""
        text = f"{what}: " + "; ".join(self.reasons)
        return "".join(c if " " <= c <= "~" else "?" for c in text)[:1000]

    def findings(self) -> tuple[Finding, ...]:
        """What the promotion history keeps: every advisory affecting the version, and a license that
        a rule does not simply allow."""
        found = [
            Finding(
                "vulnerability",
                f"{d.advisory_id}: {_short(d.summary, 200)}" if d.summary else d.advisory_id,
                d.severity,
                {
                    "advisory": d.advisory_id,
                    "aliases": list(d.aliases),
                    "score": d.score,
                    "fixed_in": list(d.fixed_in),
                    "assessment": d.assessment,
                    "action": d.action,
                },
            )
            for d in self.details
        ]
        if self.license is not None and (self.license.rule_action != ALLOW or self.license.action != ALLOW):
            found.append(
                Finding(
                    "license",
                    self.license.describe(),
                    "",
                    {
                        "declared": self.license.declared,
                        "spdx": self.license.spdx,
                        "rule": self.license.rule_action,
                        "action": self.license.action,
                    },
                )
            )
        return tuple(found)


ALLOWED_VERDICT = ScaVerdict(ALLOW)
Overrides = Mapping[str, str | None]  # advisory id -> a proposed assessment (None: none at all)


def _short(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def revision(services: Services) -> int:
    """The SCA revision the answers reflect now: the vulnerability index's, which follows the stored
    revision within about a second (at once in the process that made a change). On a revision new to
    this process the license rules are reloaded first, so that no answer older than the revision is
    memoised under it."""
    rev = vulnerabilities.matcher(services).current().revision
    if services.repodata.verdicts.first_sight(rev):
        licenses.rules_cache(services).reload()
    return rev


def severity_reaches(severity: str, threshold: str) -> bool:
    """Whether an advisory's severity reaches the feed's threshold; unknown counts as reaching it."""
    if severity not in SEVERITY_LEVELS or threshold not in SEVERITY_LEVELS:
        return True
    return SEVERITY_LEVELS.index(severity) >= SEVERITY_LEVELS.index(threshold)


def _finding_action(
    policy: FeedPolicy, finding: AdvisoryFinding, overrides: Overrides | None
) -> tuple[str, str, str | None]:
    """(action, why, the assessment that counted) of one advisory affecting a version."""
    assessment = finding.assessment
    if overrides is not None and finding.advisory_id in overrides:
        assessment = overrides[finding.advisory_id]
    severity = str(finding.severity or "unknown")
    if policy.vulnerability_policy == "off":
        return ALLOW, "the feed's vulnerability policy is off", assessment
    if assessment == "ignore":
        return ALLOW, "assessed: ignore", assessment
    if assessment == "block":
        return BLOCK, "assessed: block", assessment
    if assessment == "caution":
        return WARN, "assessed: caution", assessment
    if severity_reaches(severity, policy.min_severity):
        if severity not in SEVERITY_LEVELS:
            return (
                policy.vulnerability_policy,
                f"severity unknown: counted as at the threshold ({policy.min_severity})",
                assessment,
            )
        return (
            policy.vulnerability_policy,
            f"{severity} reaches the feed's threshold ({policy.min_severity})",
            assessment,
        )
    return ALLOW, f"{severity} is below the feed's threshold ({policy.min_severity})", assessment


def _judge(policy: FeedPolicy, finding: AdvisoryFinding, overrides: Overrides | None) -> AdvisoryVerdict:
    action, why, assessment = _finding_action(policy, finding, overrides)
    return AdvisoryVerdict(
        advisory_id=str(finding.advisory_id),
        aliases=tuple(finding.aliases or ()),
        summary=str(finding.summary or ""),
        severity=str(finding.severity or "unknown"),
        score=finding.score,
        fixed_in=tuple(str(v) for v in (finding.fixed_in or ())),
        assessment=assessment,
        assessment_comment=finding.assessment_comment if assessment else "",
        action=action,
        why=why,
    )


def license_action(policy: FeedPolicy, rule: str) -> str:
    """What the feed's license policy makes of the rules' action."""
    if policy.license_policy == "off":
        return ALLOW
    if policy.license_policy == WARN:
        return WARN if rule in (WARN, BLOCK) else ALLOW
    return rule if rule in RANK else ALLOW


def _license_verdict(policy: FeedPolicy, state: LicenseState) -> LicenseVerdict:
    rule = str(state.action)
    action = license_action(policy, rule)
    return LicenseVerdict(state.declared, state.spdx, bool(state.recognised), rule, action, str(state.reason or ""))


def judge(
    services: Services,
    policy: FeedPolicy,
    name: str,
    version: str,
    declared: str | None,
    *,
    overrides: Overrides | None = None,
    inspect: bool = False,
    rev: int | None = None,
) -> ScaVerdict:
    """The verdict on one version (``verdict`` for a record). ``inspect``: look even where the feed's
    policies are off (the promotion history and the pages show what is known); ``overrides``: proposed
    assessments (what-if)."""
    check_vulnerabilities = policy.vulnerability_policy != "off" or inspect
    check_license = policy.license_policy != "off" or inspect
    if not check_vulnerabilities and not check_license:
        return ALLOWED_VERDICT
    rev = revision(services) if rev is None else rev
    frozen = tuple(sorted(overrides.items(), key=lambda item: item[0])) if overrides else None
    key = ("verdict", policy, name, version, declared, frozen, inspect)
    found: ScaVerdict | None = services.repodata.verdicts.get(rev, key)
    if found is not None:
        return found
    details: tuple[AdvisoryVerdict, ...] = ()
    status, note = "not checked", ""
    if check_vulnerabilities:
        state = vulnerabilities.vulnerability_state(services, feed_id=policy.id, name=name, version=version)
        status, note = str(state.status), str(state.note or "")
        details = tuple(_judge(policy, finding, overrides) for finding in state.findings)
    license_verdict = (
        _license_verdict(policy, licenses.license_state(services, feed_id=policy.id, declared=declared, revision=rev))
        if check_license
        else None
    )
    acting = sorted((d for d in details if d.action != ALLOW), key=lambda d: (-RANK[d.action], d.advisory_id))
    reasons = [d.describe() for d in acting]
    action = max([ALLOW, *(d.action for d in acting)], key=RANK.__getitem__)
    if license_verdict is not None and license_verdict.action != ALLOW:
        action = max(action, license_verdict.action, key=RANK.__getitem__)
        reasons.insert(0 if license_verdict.action == BLOCK else len(reasons), license_verdict.describe())
    result = ScaVerdict(
        action=action,
        reasons=tuple(reasons),
        advisories=tuple(d.advisory_id for d in acting),
        license=license_verdict,
        status=status,
        details=details,
        note=note,
    )
    services.repodata.verdicts.put(rev, key, result)
    return result


def verdict(
    services: Services,
    *,
    feed: FeedPolicy,
    record: Mapping[str, Any],
    overrides: Overrides | None = None,
    inspect: bool = False,
) -> ScaVerdict:
    """What ``feed``'s policies make of a repodata record (its name, version and license)."""
    declared = record.get("license")
    return judge(
        services,
        feed,
        str(record.get("name") or ""),
        str(record.get("version") or ""),
        declared if isinstance(declared, str) else None,
        overrides=overrides,
        inspect=inspect,
    )


class _Identity(msgspec.Struct):
    """The fields of a record a verdict needs: decoded without the rest."""

    name: Any = ""
    version: Any = ""
    license: Any = None


_decode_identity = msgspec.json.Decoder(_Identity).decode


def identity(raw: bytes) -> tuple[str, str, str | None]:
    """(name, version, license) of a record's bytes."""
    try:
        found = _decode_identity(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", "", None
    declared = found.license if isinstance(found.license, str) else None
    return str(found.name or ""), str(found.version or ""), declared


def vulnerability_action(
    services: Services, policy: FeedPolicy, name: str, version: str, overrides: Overrides | None
) -> str:
    """What ``policy`` makes of one version's advisories alone (with proposed ``overrides``): the
    strictest action of any of them."""
    state = vulnerabilities.vulnerability_state(services, feed_id=policy.id, name=name, version=version)
    action = ALLOW
    for finding in state.findings:
        found = _finding_action(policy, finding, overrides)[0]
        if RANK[found] > RANK[action]:
            action = found
    return action


def check_download(services: Services, found: PackageBlob | UpstreamPackage) -> ScaVerdict | None:
    """Raise ``PackageBlocked`` for a file the feed blocks; the verdict when it warns; None otherwise
    (and at once when the feed's policies are off)."""
    policy = found.policy
    if policy is None or not policy.active:
        return None
    if isinstance(found, UpstreamPackage):
        name, version, declared = (
            str(found.record.get("name") or ""),
            str(found.record.get("version") or ""),
            found.record.get("license") if isinstance(found.record.get("license"), str) else None,
        )
    elif found.record is not None:
        name, version, declared = identity(found.record)
    else:
        return None
    result = judge(services, policy, name, version, declared)
    if result.action == BLOCK:
        raise PackageBlocked(
            f"{found.subdir}/{found.filename} is blocked in feed {policy.name!r}: {result.explanation(policy.name)}"
        )
    return result if result.action == WARN else None


def feed_policy_of(services: Services, feed_name: str) -> FeedPolicy:
    with services.db.read() as session:
        return FeedPolicy.of(feed_store.get_feed(session=session, name=feed_name))


@dataclass
class ScaPublishPolicy:
    """The publish step's policy (``services.policy``): a blocked file does not enter the feed (409);
    a promotion records the version's vulnerability and license state in the history."""

    services: Services
    policy: FeedPolicy

    def check(self, *, feed: str, candidate: Any, action: str) -> PolicyDecision:
        inspect = action != "upload"  # uploads: nothing to look at while the policies are off
        if not inspect and not self.policy.active:
            return ALLOWED
        record = decode_record(candidate.record)
        result = verdict(self.services, feed=self.policy, record=record, inspect=inspect)
        findings = result.findings()
        if result.blocked:
            return PolicyDecision(allowed=False, reason=result.explanation(feed), findings=findings)
        return PolicyDecision(findings=findings) if findings else ALLOWED


def publish_policy(services: Services, feed_name: str) -> ScaPublishPolicy:
    return ScaPublishPolicy(services, feed_policy_of(services, feed_name))


def describe_policy(policy: FeedPolicy) -> dict[str, Any]:
    """A feed's SCA settings as the REST API shows them."""
    return {
        "vulnerability_policy": policy.vulnerability_policy,
        "min_severity": policy.min_severity,
        "hide_blocked": policy.hide_blocked,
        "license_policy": policy.license_policy,
    }


def vulnerability_verdict(
    policy: FeedPolicy, state: VulnerabilityState, overrides: Overrides | None = None
) -> tuple[str, tuple[AdvisoryVerdict, ...]]:
    """What ``policy`` makes of a version's vulnerability state alone (the pages' vulnerability
    column): the action and each advisory's part in it."""
    details = tuple(_judge(policy, finding, overrides) for finding in state.findings)
    action = max([ALLOW, *(d.action for d in details)], key=RANK.__getitem__)
    return action, details


def license_verdict(services: Services, policy: FeedPolicy, declared: str | None) -> LicenseVerdict:
    """What ``policy`` makes of a declared license (the pages' license column)."""
    return _license_verdict(policy, licenses.license_state(services, feed_id=policy.id, declared=declared))
