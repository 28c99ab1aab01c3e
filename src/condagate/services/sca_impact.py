"""What becomes unsolvable: the blast radius of an SCA change before it takes effect.

For a feed and a proposed change (its vulnerability or license policy, threshold, hiding, or
assessments of advisories), compare what can be installed now with what could be installed after:
which files become blocked (or allowed again), which packages lose their only installable versions
(per subdir), and which match specs stop solving -- solved with py-rattler (``services.closure``)
against the feed's repodata less the files blocked before, and less those blocked after. A blocked
file is not installable whether or not the feed hides it (its download answers 403).

Blocking (a worker thread's job): it may wait for a proxy feed's first upstream fetch (bounded) and
runs the solver twice per spec and subdir.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from condagate.conda.repodata import encode_repodata
from condagate.conda.subdirs import require_known_subdir
from condagate.errors import BadRequest, SubdirNotFound
from condagate.services import closure, sca, sca_filter
from condagate.services.channel import FeedSubdir, feed_subdir
from condagate.services.context import Services
from condagate.services.feeds import ScaSettings
from condagate.services.policy import FeedPolicy
from condagate.services.subdir_snapshot import SubdirSnapshot
from condagate.store import feeds as feed_store
from condagate.store import packages as package_store

MAX_SPECS = 50  # each is solved twice per subdir
MAX_LISTED = 500  # files listed as newly blocked or allowed (the counts are exact)
DEFAULT_SUBDIRS = ("linux-64",)  # with noarch: what a feed without own packages is judged by


@dataclass(frozen=True)
class ProposedChange:
    settings: ScaSettings = field(default_factory=ScaSettings)
    assessments: Mapping[str, str | None] = field(default_factory=dict)  # advisory id -> verdict (None: clear)

    def check(self) -> None:
        self.settings.check()
        for advisory_id, verdict in self.assessments.items():
            if verdict is not None and verdict not in sca.ASSESSMENTS:
                raise BadRequest(
                    f"assessment of {advisory_id!r}: {verdict!r} is not one of {', '.join(sca.ASSESSMENTS)} (or null)"
                )


@dataclass(frozen=True)
class ChangedFile:
    subdir: str
    filename: str
    name: str
    version: str
    reasons: list[str]


@dataclass(frozen=True)
class LostPackage:
    """A package with installable versions now and none after the change, in one subdir."""

    subdir: str
    name: str
    versions: list[str]  # the versions installable now
    reasons: list[str]  # why they become blocked


@dataclass(frozen=True)
class SpecImpact:
    spec: str
    subdir: str
    before: str  # "solvable" or the solver's message
    after: str
    installed_before: list[str] = field(default_factory=list)  # name=version of the solution
    installed_after: list[str] = field(default_factory=list)

    @property
    def becomes_unsolvable(self) -> bool:
        return self.before == "solvable" and self.after != "solvable"


@dataclass(frozen=True)
class ScaImpact:
    feed: str
    current: dict[str, Any]
    proposed: dict[str, Any]
    assessments: dict[str, str | None]
    subdirs: list[str]
    specs: list[str]
    blocked_before: int
    blocked_after: int
    newly_blocked: list[ChangedFile]
    newly_allowed: list[ChangedFile]
    lost_packages: list[LostPackage]
    unsolvable: list[SpecImpact]  # solvable now, not after: the blast radius
    solved: list[SpecImpact]  # every spec and subdir, as solved before and after
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def impact(
    services: Services,
    *,
    feed: str,
    change: ProposedChange,
    specs: list[str] | None = None,
    subdirs: list[str] | None = None,
) -> ScaImpact:
    """What ``change`` would make uninstallable in ``feed``; nothing is changed. Without ``specs``, the
    packages that lose files are solved for (each alone); without ``subdirs``, the feed's own."""
    change.check()
    with services.db.read() as session:
        row = feed_store.get_feed(session=session, name=feed)
        current = FeedPolicy.of(row)
        populated = package_store.populated_subdirs(session=session, feed_id=row.id)
    proposed = change.settings.applied_to(current)
    chosen = _subdirs(subdirs, populated)
    located = _locate(services, feed, [*[s for s in chosen if s != "noarch"], "noarch"])
    rev = sca.revision(services)
    before: dict[str, frozenset[str]] = {}
    after: dict[str, frozenset[str]] = {}
    for subdir, found in located.items():
        records = found.snapshot.records
        before[subdir] = sca_filter.blocked_files(services, current, records, rev=rev)
        after[subdir] = sca_filter.blocked_files(
            services, proposed, records, overrides=change.assessments or None, rev=rev
        )
    newly_blocked, newly_allowed, lost = _compare(services, proposed, change, located, before, after, rev)
    wanted = list(dict.fromkeys(specs or [])) or sorted(
        {f.name for f in newly_blocked} | {f.name for f in newly_allowed}
    )
    notes = []
    if len(wanted) > MAX_SPECS:
        if specs:
            raise BadRequest(f"{len(wanted)} match specs; at most {MAX_SPECS} can be checked at once")
        notes.append(f"{len(wanted)} packages change: only the first {MAX_SPECS} were solved for")
        wanted = wanted[:MAX_SPECS]
    solved = _solve(services, feed, wanted, chosen, located, before, after) if wanted else []
    if proposed.active and not proposed.hide_blocked:
        notes.append(
            "blocked records stay in the repodata (show-blocked): clients may still choose them and then fail "
            "at download (403); hiding them lets a solver pick a safe version"
        )
    if not proposed.active:
        notes.append("the proposed policies are off: nothing is blocked")
    return ScaImpact(
        feed=feed,
        current=sca.describe_policy(current),
        proposed=sca.describe_policy(proposed),
        assessments=dict(change.assessments),
        subdirs=chosen,
        specs=wanted,
        blocked_before=sum(len(v) for v in before.values()),
        blocked_after=sum(len(v) for v in after.values()),
        newly_blocked=newly_blocked[:MAX_LISTED],
        newly_allowed=newly_allowed[:MAX_LISTED],
        lost_packages=lost,
        unsolvable=[s for s in solved if s.becomes_unsolvable],
        solved=solved,
        notes=notes,
    )


def _subdirs(subdirs: list[str] | None, populated: list[str]) -> list[str]:
    chosen = list(dict.fromkeys(subdirs or [])) or [s for s in populated if s != "noarch"] or list(DEFAULT_SUBDIRS)
    for subdir in chosen:
        try:
            require_known_subdir(subdir)
        except SubdirNotFound as exc:
            raise BadRequest(exc.message) from None
    return chosen


def _locate(services: Services, feed: str, subdirs: list[str]) -> dict[str, FeedSubdir]:
    """The feed's subdirs as it has them, after waiting (bounded) for a proxy feed's first fetches."""
    located = {subdir: feed_subdir(services, feed, subdir) for subdir in subdirs}
    pending = [item for found in located.values() for item in found.pending]
    if pending:
        wait = min(max(item.wait for item in pending), closure.UPSTREAM_WAIT_SECONDS)
        concurrent.futures.wait([item.future for item in pending], timeout=wait)
        for subdir, found in located.items():
            if found.pending:
                located[subdir] = feed_subdir(services, feed, subdir, refresh=False)
    for found in located.values():
        found.require_data()
    return located


def _changed(
    services: Services,
    policy: FeedPolicy,
    change: ProposedChange,
    snapshot: SubdirSnapshot,
    filename: str,
    rev: int,
) -> ChangedFile:
    name, version, declared = sca.identity(snapshot.records[filename])
    overrides = change.assessments or None
    verdict = sca.judge(services, policy, name, version, declared, overrides=overrides, rev=rev)
    return ChangedFile(snapshot.subdir, filename, name, version, list(verdict.reasons))


def _compare(
    services: Services,
    proposed: FeedPolicy,
    change: ProposedChange,
    located: dict[str, FeedSubdir],
    before: dict[str, frozenset[str]],
    after: dict[str, frozenset[str]],
    rev: int,
) -> tuple[list[ChangedFile], list[ChangedFile], list[LostPackage]]:
    newly_blocked: list[ChangedFile] = []
    newly_allowed: list[ChangedFile] = []
    lost: list[LostPackage] = []
    for subdir, found in sorted(located.items()):
        snapshot = found.snapshot
        gained = sorted(after[subdir] - before[subdir])
        newly_blocked.extend(_changed(services, proposed, change, snapshot, fn, rev) for fn in gained[:MAX_LISTED])
        for filename in sorted(before[subdir] - after[subdir])[:MAX_LISTED]:
            name, version, _ = sca.identity(snapshot.records[filename])
            newly_allowed.append(ChangedFile(subdir, filename, name, version, []))
        touched = {snapshot.names[fn] for fn in gained if fn in snapshot.names}
        by_name = snapshot.by_name()
        for name in sorted(touched):
            files = by_name.get(name, [])
            installable_now = [fn for fn in files if fn not in before[subdir]]
            if installable_now and all(fn in after[subdir] for fn in files):
                versions = sorted({sca.identity(snapshot.records[fn])[1] for fn in installable_now})
                reasons = sorted(
                    {
                        r
                        for fn in installable_now
                        for r in _changed(services, proposed, change, snapshot, fn, rev).reasons
                    }
                )
                lost.append(LostPackage(subdir, name, versions, reasons))
    return newly_blocked, newly_allowed, lost


def _solve(
    services: Services,
    feed: str,
    specs: list[str],
    subdirs: list[str],
    located: dict[str, FeedSubdir],
    before: dict[str, frozenset[str]],
    after: dict[str, frozenset[str]],
) -> list[SpecImpact]:
    def repodata(blocked: dict[str, frozenset[str]]) -> dict[str, bytes]:
        return {
            subdir: encode_repodata(subdir, found.snapshot.records, exclude=blocked[subdir])
            for subdir, found in located.items()
        }

    now, then = repodata(before), repodata(after)
    same = all(before[s] == after[s] for s in located)
    results = []
    for subdir in subdirs:
        for spec in specs:
            first = closure.solve_closure(services, feed, [spec], [subdir], repodata=now)
            second = first if same else closure.solve_closure(services, feed, [spec], [subdir], repodata=then)
            results.append(
                SpecImpact(
                    spec,
                    subdir,
                    first.unresolved.get(subdir, "solvable"),
                    second.unresolved.get(subdir, "solvable"),
                    sorted(f"{w.name}={w.version}" for w in first.wanted),
                    sorted(f"{w.name}={w.version}" for w in second.wanted),
                )
            )
    return results
