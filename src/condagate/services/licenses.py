"""License rules and compliance: what the rules say about a package's license, setting the rules, and
a feed's compliance report.

``license_state`` is on the hot path (filtering repodata asks it for every record): it reads a
per-process snapshot of the rules, reloaded when the SCA revision moves (checked at most once a second,
at once after a change made in this process), and memoises both the normalisation of declared strings
and the decision per feed and string.
"""

from __future__ import annotations

import csv
import io
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime

from condagate.conda.licenses import (
    ACTIONS,
    ID_VERDICTS,
    UNKNOWN,
    RuleSet,
    evaluate,
    normalize,
    rule_subject,
)
from condagate.errors import BadRequest, CondagateError, LicenseRuleNotFound, UnknownLicenseId
from condagate.services.catalog import DEFAULT_BROWSE_SUBDIRS
from condagate.services.channel import resolve_feed, subdir_snapshot
from condagate.services.context import Services
from condagate.store import feeds as feed_store
from condagate.store import licenses as license_store
from condagate.store import packages as package_store
from condagate.store import sca_state
from condagate.store import security as security_store
from condagate.store.db import Database
from condagate.store.models import LicenseRule

MAX_SUBJECTS = 100  # ids in one request
REFRESH_SECONDS = 1.0
_DECISIONS_LIMIT = 200_000  # memoised (feed, declared) decisions per process, before starting over


@dataclass(frozen=True)
class LicenseState:
    declared: str
    spdx: str | None  # the normalised SPDX expression; None when the string is not one
    recognised: bool  # every license in it is on the SPDX / ScanCode list
    action: str  # "allow" | "warn" | "block": what the rules say, before the feed's license_policy
    reason: str  # e.g. "GPL-3.0-only is blocked on this feed" / "license not recognised: 'Foo'; ..."


# The per-process rule snapshot ---------------------------------------------------------------------


@dataclass
class _Snapshot:
    revisions: tuple[int, int]  # (SCA revision, security revision: feeds created and deleted)
    system: RuleSet
    feeds: dict[int, RuleSet]
    decisions: dict[tuple[int | None, str], LicenseState] = field(default_factory=dict)


class RuleCache:
    """The rules of every scope, in memory; ``state`` decides without touching the database (but for
    the revision check, at most once every ``refresh_seconds``)."""

    def __init__(self, db: Database, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._db = db
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._checked_at = 0.0

    def reload(self) -> None:
        with self._lock, self._db.read() as session:
            revisions = (sca_state.revision(session=session), security_store.revision(session=session))
            rows = license_store.all_rules(session=session)
            self._snapshot = _build(revisions, rows)
            self._checked_at = time.monotonic()

    def _current(self, seen: int | None = None) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None or (seen is not None and seen > snapshot.revisions[0]):
            self.reload()  # a caller saw a newer SCA revision than this snapshot's: never answer older
        elif time.monotonic() - self._checked_at >= self._refresh_seconds and self._lock.acquire(blocking=False):
            try:  # one thread checks; the others go on with the snapshot they have
                self._checked_at = time.monotonic()
                with self._db.read() as session:
                    revisions = (sca_state.revision(session=session), security_store.revision(session=session))
            finally:
                self._lock.release()
            if revisions != snapshot.revisions:
                self.reload()
        assert self._snapshot is not None
        return self._snapshot

    def state(self, feed_id: int | None, declared: str | None, revision: int | None = None) -> LicenseState:
        snapshot = self._current(revision)
        key = (feed_id, declared or "")
        found = snapshot.decisions.get(key)
        if found is not None:
            return found
        normalized = normalize(declared)
        feed_rules = snapshot.feeds.get(feed_id) if feed_id is not None else None
        decision = evaluate(normalized, system=snapshot.system, feed=feed_rules)
        state = LicenseState(
            normalized.declared, normalized.expression, normalized.recognised, decision.action, decision.reason
        )
        if len(snapshot.decisions) >= _DECISIONS_LIMIT:
            snapshot.decisions.clear()
        snapshot.decisions[key] = state
        return state


def _build(revisions: tuple[int, int], rows: list[tuple[int | None, str, str]]) -> _Snapshot:
    verdicts: dict[int | None, dict[str, str]] = {}
    unknown: dict[int | None, str] = {}
    for feed_id, subject, verdict in rows:
        if subject == UNKNOWN:
            unknown[feed_id] = verdict
        else:
            verdicts.setdefault(feed_id, {})[subject] = verdict
    system = RuleSet(verdicts.get(None, {}), unknown.get(None))
    feeds = {
        feed_id: RuleSet(verdicts.get(feed_id, {}), unknown.get(feed_id))
        for feed_id in set(verdicts) | set(unknown)
        if feed_id is not None
    }
    return _Snapshot(revisions, system, feeds)


# One snapshot per database (that is, per Services) in this process.
_RULES: weakref.WeakKeyDictionary[Database, RuleCache] = weakref.WeakKeyDictionary()
_RULES_LOCK = threading.Lock()


def rules_cache(services: Services) -> RuleCache:
    found = _RULES.get(services.db)
    if found is None:
        with _RULES_LOCK:
            found = _RULES.get(services.db)
            if found is None:
                found = _RULES[services.db] = RuleCache(services.db)
    return found


def license_state(
    services: Services, *, feed_id: int | None, declared: str | None, revision: int | None = None
) -> LicenseState:
    """What the rules say about a declared license on a feed (``feed_id`` None: system rules only).

    ``revision``: the SCA revision the caller has seen (when it memoises answers by revision): the
    answer is then from rules at least that new, never from a snapshot that has not caught up yet."""
    return rules_cache(services).state(feed_id, declared, revision)


# Setting and listing rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LicenseRuleInfo:
    feed: str | None  # None: system-wide
    subject: str  # an SPDX id, or "unknown"
    verdict: str
    actor: str
    at: datetime
    given: str = ""  # what the caller wrote, when it was read as another id (GPL-3.0 -> GPL-3.0-only)


@dataclass(frozen=True)
class LicenseRuleList:
    """A scope's rules; for a feed also the system-wide ones it inherits (its own win)."""

    feed: str | None
    rules: list[LicenseRuleInfo]
    inherited: list[LicenseRuleInfo]
    unknown: str  # the action on unrecognised licenses in force here
    license_policy: str | None  # the feed's policy (off, warn, block); None system-wide


def _info(rule: LicenseRule, feed: str | None, given: str = "") -> LicenseRuleInfo:
    return LicenseRuleInfo(feed, rule.subject, rule.verdict, rule.actor, rule.at, given)


def _subjects(subjects: list[str]) -> dict[str, str]:
    """Checked subjects: id -> what the caller wrote."""
    if not subjects:
        raise BadRequest("name at least one license id (or 'unknown')")
    if len(subjects) > MAX_SUBJECTS:
        raise BadRequest(f"at most {MAX_SUBJECTS} license ids at once")
    checked: dict[str, str] = {}
    for given in subjects:
        checked.setdefault(rule_subject(given), given)
    return checked


def set_rule(
    services: Services, *, feed: str | None, subjects: list[str], verdict: str, actor: str
) -> list[LicenseRuleInfo]:
    """Allow or block license ids, or set the action on unknown licenses ("unknown": allow, warn or
    block), system-wide (``feed`` None) or on one feed; a rule replaces the scope's rule for its id."""
    checked = _subjects(subjects)
    allowed = ACTIONS if set(checked) == {UNKNOWN} else ID_VERDICTS
    if verdict not in allowed:
        raise BadRequest(
            f"unknown verdict {verdict!r}: license ids are allowed or blocked; "
            "unknown licenses are allowed, warned about or blocked"
        )
    with services.db.write() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id if feed is not None else None
        rules = [
            _info(
                license_store.set_rule(session=session, feed_id=feed_id, subject=subject, verdict=verdict, actor=actor),
                feed,
                given if given != subject else "",
            )
            for subject, given in checked.items()
        ]
    rules_cache(services).reload()  # this process sees its own change at once
    return rules


def remove_rule(services: Services, *, feed: str | None, subjects: list[str]) -> list[str]:
    """Remove rules (all or none: a subject without a rule in the scope is a 404); returns the ids."""
    if not subjects or len(subjects) > MAX_SUBJECTS:
        raise BadRequest(f"name 1 to {MAX_SUBJECTS} license ids (or 'unknown')")
    removed: list[str] = []
    with services.db.write() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id if feed is not None else None
        missing = []
        for given in dict.fromkeys(subjects):
            try:
                subject = rule_subject(given)
            except UnknownLicenseId:
                subject = given.strip()  # a rule kept from before may name an id the list dropped since
            if license_store.remove_rule(session=session, feed_id=feed_id, subject=subject):
                removed.append(subject)
            else:
                missing.append(given)
        if missing:  # raising rolls the whole transaction back
            where = f"feed {feed!r}" if feed is not None else "system-wide"
            raise LicenseRuleNotFound(f"no license rule for {', '.join(missing)} {where}: nothing was removed")
    rules_cache(services).reload()
    return removed


def list_rules(services: Services, *, feed: str | None) -> LicenseRuleList:
    with services.db.read() as session:
        system = [_info(rule, None) for rule in license_store.rules_of(session=session, feed_id=None)]
        if feed is None:
            return LicenseRuleList(None, system, [], _unknown_in_force(system, []), None)
        row = feed_store.get_feed(session=session, name=feed)
        own = [_info(rule, feed) for rule in license_store.rules_of(session=session, feed_id=row.id)]
        policy = row.license_policy
    shadowed = {rule.subject for rule in own}
    inherited = [rule for rule in system if rule.subject not in shadowed]
    return LicenseRuleList(feed, own, inherited, _unknown_in_force(own, system), policy)


def _unknown_in_force(*scopes: list[LicenseRuleInfo]) -> str:
    for rules in scopes:
        for rule in rules:
            if rule.subject == UNKNOWN:
                return rule.verdict
    return "allow"


# Compliance ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompliancePackage:
    name: str
    version: str
    subdir: str
    filename: str
    declared: str
    spdx: str | None
    recognised: bool
    action: str
    reason: str


@dataclass(frozen=True)
class LicenseGroup:
    license: str  # the SPDX expression; what was declared when there is none
    spdx: str | None
    recognised: bool
    action: str
    reason: str
    packages: list[CompliancePackage]


@dataclass(frozen=True)
class ComplianceReport:
    feed: str
    license_policy: str
    generated_at: datetime
    subdirs: list[str]
    total: int
    by_license: list[LicenseGroup]  # every package file, by normalised license, largest group first
    non_compliant: list[CompliancePackage]  # the rules warn about or block them
    unknown: list[LicenseGroup]  # licenses that are not recognised, by what was declared
    warnings: list[str] = field(default_factory=list)  # subdirs that could not be read


def _feed_subdirs(services: Services, feed: str) -> tuple[int, str, list[str]]:
    ref = resolve_feed(services, feed)
    with services.db.read() as session:
        policy = feed_store.get_feed(session=session, name=feed).license_policy
        subdirs = set(package_store.populated_subdirs(session=session, feed_id=ref.id))
    for connector in ref.connectors:  # what the feed's package pages list, too
        subdirs.update(connector.subdirs or DEFAULT_BROWSE_SUBDIRS)
        subdirs.update(services.upstream.cached_subdirs(connector.id))
    return ref.id, policy, sorted(subdirs)


def _groups(packages: list[CompliancePackage], key_of: str) -> list[LicenseGroup]:
    grouped: dict[str, list[CompliancePackage]] = {}
    for package in packages:
        key = (package.spdx or package.declared) if key_of == "spdx" else package.declared
        grouped.setdefault(key, []).append(package)
    groups = [
        LicenseGroup(key, members[0].spdx, members[0].recognised, members[0].action, members[0].reason, members)
        for key, members in grouped.items()
    ]
    return sorted(groups, key=lambda g: (-len(g.packages), g.license))


def compliance(services: Services, *, feed: str, subdirs: list[str] | None = None) -> ComplianceReport:
    """The licenses of a feed's packages (hosted and proxied, as its channel lists them now)."""
    feed_id, policy, available = _feed_subdirs(services, feed)
    chosen = [s for s in available if s in subdirs] if subdirs else available
    packages: list[CompliancePackage] = []
    warnings: list[str] = []
    rules = rules_cache(services)
    for subdir in chosen:
        try:
            snapshot = subdir_snapshot(services, feed, subdir)
        except CondagateError as exc:
            warnings.append(f"{subdir}: {exc.message}")
            continue
        for filename in snapshot.records:
            record = snapshot.record(filename)
            if record is None:
                continue
            declared = record.get("license")
            state = rules.state(feed_id, declared if isinstance(declared, str) else None)
            packages.append(
                CompliancePackage(
                    str(record.get("name", "")),
                    str(record.get("version", "")),
                    subdir,
                    filename,
                    state.declared,
                    state.spdx,
                    state.recognised,
                    state.action,
                    state.reason,
                )
            )
    packages.sort(key=lambda p: (p.name, p.version, p.subdir, p.filename))
    return ComplianceReport(
        feed=feed,
        license_policy=policy,
        generated_at=datetime.now(UTC),
        subdirs=chosen,
        total=len(packages),
        by_license=_groups(packages, "spdx"),
        non_compliant=[p for p in packages if p.action != "allow"],
        unknown=_groups([p for p in packages if not p.recognised], "declared"),
        warnings=warnings,
    )


CSV_COLUMNS = ("name", "version", "subdir", "filename", "declared", "spdx", "recognised", "action", "reason")


def compliance_csv(report: ComplianceReport) -> str:
    """One row per package file. Cells a spreadsheet would run as a formula get a leading apostrophe:
    declared licenses and names are the packagers' text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for group in report.by_license:
        for package in group.packages:
            values = [
                package.name,
                package.version,
                package.subdir,
                package.filename,
                package.declared,
                package.spdx or "",
                "yes" if package.recognised else "no",
                package.action,
                package.reason,
            ]
            writer.writerow([_cell(value) for value in values])
    return buffer.getvalue()


def _cell(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
