"""Which advisories affect a package version in a feed: the question every SCA check asks.

Answered from a per-process index (conda name -> candidate advisories with their ranges, compiled
on first use), rebuilt when the SCA revision moves: the revision is re-read at most once a second
(at once in the process that made the change), and a change is applied incrementally, so that only
the names an import, an override or an assessment touched are evaluated again. Answers are
memoised per (feed, name, version) for the revision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

from sqlalchemy.orm import Session

from condagate.conda.package_names import PYPI, grayskull_table, map_to_pypi
from condagate.services.advisory_index import (
    AdvisoryIndex,
    AffectedEntry,
    NameMemo,
    VulnerabilityState,
    advisory_card,
    evaluate,
    no_candidates,
    with_assessments,
)
from condagate.services.context import Services
from condagate.store import advisories as advisory_store
from condagate.store import sca_state
from condagate.store.db import Database

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
_MAX_MEMO_NAMES = 200_000  # conda names with a memo; beyond, the memo starts over
_MAX_MEMO_VERSIONS = 2_000  # answers kept per name
_MAX_INCREMENTAL = 2_000  # changed advisories beyond which the index is rebuilt whole
_CHANGE_LOG = 64  # revisions whose touched names are remembered (``names_changed_since``)


def vulnerability_state(services: Services, *, feed_id: int | None, name: str, version: str) -> VulnerabilityState:
    """The advisories of ``name`` ``version`` as seen from a feed (``None``: system-wide assessments only)."""
    return matcher(services).state(feed_id, name, version)


def sca_revision(services: Services) -> int:
    """The current SCA revision: cached per process, re-read at most every second."""
    return matcher(services).revision()


def names_changed_since(services: Services, *, revision: int, names: Iterable[str]) -> set[str] | None:
    """Those of ``names`` whose answers may differ from what they were at ``revision``; None when
    this process cannot tell (a rebuild, or too long ago): then every name must be evaluated again."""
    return matcher(services).changed_since(revision, names)


def note_change(services: Services) -> None:
    """This process just changed SCA data: the next question re-reads the revision at once."""
    matcher(services).expire()


_CREATE_LOCK = threading.Lock()


def matcher(services: Services) -> VulnerabilityMatcher:
    """The process's matcher, made on first use and kept on ``services``."""
    found: VulnerabilityMatcher | None = getattr(services, "_vulnerability_matcher", None)
    if found is None:
        with _CREATE_LOCK:
            found = getattr(services, "_vulnerability_matcher", None)
            if found is None:
                found = VulnerabilityMatcher(services.db)
                services._vulnerability_matcher = found  # type: ignore[attr-defined]
    return found


class VulnerabilityMatcher:
    def __init__(self, db: Database, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._db = db
        self._refresh_seconds = refresh_seconds
        self._index: AdvisoryIndex | None = None
        self._lock = threading.Lock()
        self._revision = -1
        self._checked_at = -1e18
        # (revision, touched PyPI names, touched conda names): what moved at each refresh
        self._changes: deque[tuple[int, int, frozenset[str], frozenset[str]]] = deque(maxlen=_CHANGE_LOG)

    # Revision and refresh ----------------------------------------------------------------------

    def revision(self) -> int:
        now = time.monotonic()
        if now - self._checked_at >= self._refresh_seconds:
            with self._db.read() as session:
                self._revision = sca_state.revision(session=session)
            self._checked_at = now
        return self._revision

    def expire(self) -> None:
        self._checked_at = -1e18

    def current(self) -> AdvisoryIndex:
        wanted = self.revision()
        index = self._index
        if index is not None and index.revision >= wanted:
            return index
        # The first build waits; later refreshes run in one thread while the others answer from
        # the index they have (at most one refresh interval behind).
        if not self._lock.acquire(blocking=index is None):
            assert index is not None
            return index
        try:
            index = self._index
            if index is None or index.revision < wanted:
                index = self._build() if index is None else self._refresh(index)
                self._index = index
                # The data read may be newer than the revision checked: no refresh until it moves again.
                self._revision = max(self._revision, index.revision)
            return index
        finally:
            self._lock.release()

    def _build(self) -> AdvisoryIndex:
        started = time.perf_counter()
        with self._db.read() as session:
            revision = sca_state.revision(session=session)  # first: data read after it is at least as new
            states = advisory_store.states(session=session)
            cards = {row[0]: advisory_card(row) for row in advisory_store.cards(session=session)}
            rows = advisory_store.package_rows(session=session)
            overrides = advisory_store.overrides(session=session, ecosystem=PYPI)
            assessments = _assessments(session)
        by_name: dict[str, list[AffectedEntry]] = {}
        names_of: dict[str, list[str]] = {}
        for advisory_id, ecosystem, name, ranges, versions in rows:
            if ecosystem != PYPI:
                continue
            names_of.setdefault(advisory_id, []).append(name)
            card = cards.get(advisory_id)
            if card is not None and not card.withdrawn:
                by_name.setdefault(name, []).append(AffectedEntry(advisory_id, ranges, versions))
        log.info(
            "vulnerability index: %d advisories, %d PyPI names, built in %.0f ms",
            len(cards),
            len(by_name),
            (time.perf_counter() - started) * 1000,
        )
        self._changes.clear()
        return AdvisoryIndex(
            revision,
            states,
            cards,
            by_name,
            {k: tuple(dict.fromkeys(v)) for k, v in names_of.items()},
            overrides,
            assessments,
        )

    def _refresh(self, old: AdvisoryIndex) -> AdvisoryIndex:
        """Apply what changed since ``old``: changed advisories, overrides and assessments."""
        with self._db.read() as session:
            revision = sca_state.revision(session=session)
            states = advisory_store.states(session=session)
            changed = {i for i, state in states.items() if old.states.get(i) != state} | (
                old.states.keys() - states.keys()
            )
            if len(changed) > _MAX_INCREMENTAL:
                return self._build()
            cards = {row[0]: advisory_card(row) for row in advisory_store.cards(session=session, advisory_ids=changed)}
            rows = advisory_store.package_rows(session=session, advisory_ids=changed)
            overrides = advisory_store.overrides(session=session, ecosystem=PYPI)
            assessments = _assessments(session)
        touched: set[str] = set()
        new_cards = dict(old.cards)
        new_names_of = dict(old.names_of)
        by_name = dict(old.by_name)
        for advisory_id in changed:
            touched.update(old.names_of.get(advisory_id, ()))
            new_cards.pop(advisory_id, None)
            new_names_of.pop(advisory_id, None)
        new_cards.update(cards)
        added: dict[str, list[AffectedEntry]] = {}
        for advisory_id, ecosystem, name, ranges, versions in rows:
            if ecosystem != PYPI:
                continue
            new_names_of[advisory_id] = (*new_names_of.get(advisory_id, ()), name)
            touched.add(name)
            if not cards[advisory_id].withdrawn:
                added.setdefault(name, []).append(AffectedEntry(advisory_id, ranges, versions))
        for name in touched:
            kept = [e for e in by_name.get(name, []) if e.advisory_id not in changed] + added.get(name, [])
            if kept:
                by_name[name] = kept
            else:
                by_name.pop(name, None)
        moved_assessments = {key[0] for key in old.assessments.keys() ^ assessments.keys()} | {
            key[0] for key, value in assessments.items() if old.assessments.get(key, value) != value
        }
        for advisory_id in moved_assessments:
            touched.update(new_names_of.get(advisory_id, ()))
        touched_conda = {
            n for n in old.overrides.keys() | overrides.keys() if old.overrides.get(n, 0) != overrides.get(n, 0)
        }
        memo = {
            name: entry
            for name, entry in old.memo.items()
            if name not in touched_conda and not _mapped_to(entry, name, touched)
        }
        self._changes.append((old.revision, revision, frozenset(touched), frozenset(touched_conda)))
        log.info(
            "vulnerability index: revision %d -> %d, %d advisories changed, %d PyPI names touched",
            old.revision,
            revision,
            len(changed),
            len(touched),
        )
        packages = {name: compiled for name, compiled in old.packages.items() if name not in touched}
        return AdvisoryIndex(revision, states, new_cards, by_name, new_names_of, overrides, assessments, memo, packages)

    def changed_since(self, revision: int, names: Iterable[str]) -> set[str] | None:
        index = self.current()
        if revision == index.revision:
            return set()
        steps = [change for change in self._changes if change[0] >= revision and change[1] <= index.revision]
        if not steps or steps[0][0] != revision or steps[-1][1] != index.revision:
            return None
        if any(earlier[1] != later[0] for earlier, later in zip(steps, steps[1:], strict=False)):
            return None
        pypi = frozenset().union(*(step[2] for step in steps))
        conda = frozenset().union(*(step[3] for step in steps))
        if not pypi and not conda:
            return set()  # e.g. a feed's policy changed: no answer of this index moved
        table = grayskull_table()
        changed = set()
        for name in names:
            if name in conda:
                changed.add(name)
                continue
            memo = index.memo.get(name)
            if memo is not None and memo.mapping is not None:
                mapped = memo.mapping.names
            else:
                mapped = map_to_pypi(name, None, overrides=index.overrides, table=table).names
            if any(n in pypi for n in mapped):
                changed.add(name)
        return changed

    # Answers -------------------------------------------------------------------------------------

    def state(self, feed_id: int | None, name: str, version: str) -> VulnerabilityState:
        index = self.current()
        memo = index.memo.get(name)
        if memo is None:
            memo = self._memo_for(index, name)
            if len(index.memo) >= _MAX_MEMO_NAMES:
                index.memo.clear()
            index.memo[name] = memo
        if memo.fixed is not None:
            return memo.fixed
        key = (feed_id, version)
        found = memo.results.get(key)
        if found is not None:
            return found
        base = memo.base.get(version)
        if base is None:
            mapping = memo.mapping or map_to_pypi(name, version, overrides=index.overrides)
            base = evaluate(index, name, version, mapping)
            if len(memo.base) >= _MAX_MEMO_VERSIONS:
                memo.base.clear()
                memo.results.clear()
            memo.base[version] = base
        found = with_assessments(index, base, feed_id)
        if len(memo.results) >= _MAX_MEMO_VERSIONS:
            memo.results.clear()
        memo.results[key] = found
        return found

    def _memo_for(self, index: AdvisoryIndex, name: str) -> NameMemo:
        table = grayskull_table()
        if name not in index.overrides and name in table.by_version:
            return NameMemo(None)  # depends on the version: decided per call
        mapping = map_to_pypi(name, None, overrides=index.overrides, table=table)
        if not any(index.by_name.get(n) for n in mapping.names):
            return NameMemo(mapping, fixed=no_candidates(name, mapping))
        return NameMemo(mapping)


def _mapped_to(memo: NameMemo, name: str, touched: set[str]) -> bool:
    if memo.mapping is None:
        return True
    return any(n in touched for n in memo.mapping.names)


def _assessments(session: Session) -> dict[tuple[str, int | None], tuple[str, str]]:
    rows = advisory_store.assessments_in_force(session=session)
    return {key: (row.verdict, row.comment) for key, row in rows.items() if row.verdict != "clear"}


