"""Package licenses: a declared ``license`` string read as an SPDX expression, and license rules.

The license list is the one ``license-expression`` ships (the ScanCode LicenseDB index: every SPDX id
with its aliases and deprecated forms, plus ScanCode's own keys such as ``public-domain`` and
``bsd-new``). The common non-SPDX spellings of conda channels ("MIT License", "Apache 2.0",
"GPLv2+", "BSD 3-Clause", "Public Domain") are found there by a few mechanical rewrites of the words
(see ``_candidates``), not by a table of spellings; ``CONDA_ALIASES`` holds the few the list lacks.

Rules (pure): a feed's rule for an id overrides the system's; an AND needs every part, an OR any one
alternative; an id with no rule is allowed when the list knows it, and gets the "unknown" action when
it does not (as does a string that is not an expression at all).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from license_expression import (
    AND,
    ExpressionError,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
    Licensing,
    get_license_index,
    get_spdx_licensing,
)

from condagate.errors import UnknownLicenseId

MAX_DECLARED_LENGTH = 500  # conda's longest real license strings are well under 200 characters
MAX_LICENSES = 32  # ids in one expression
UNKNOWN = "unknown"  # the rule subject for licenses that are not recognised
ACTIONS = ("allow", "warn", "block")
ID_VERDICTS = ("allow", "block")
AMBIGUOUS_BSD = "LicenseRef-BSD-ambiguous"

# Spellings found in conda channels that the license list has no entry for (keys: the rewritten
# form ``_candidates`` produces, lower case, words joined by "-").
CONDA_ALIASES: Mapping[str, str] = {
    # "BSD" alone names at least three different licenses (2-, 3- and 4-clause, the last with an
    # advertising clause): guessing one would be wrong for some packages. It gets an id of its own,
    # not on the list, so it takes the "unknown" action unless a rule names it: an administrator
    # may allow every "BSD" package without allowing all unrecognised licenses.
    "bsd": AMBIGUOUS_BSD,
    # Recipes' short form of BSD-3-Clause; the list has the same short form for BSD-2-Clause ("BSD-2").
    "bsd-3": "BSD-3-Clause",
    # Python packages (defaults, older conda-forge) declare "PSF"; the PSF license has one SPDX id.
    "psf": "PSF-2.0",
}
# Categories of the ScanCode list that say no license is stated: not a recognised license.
_UNSTATED = frozenset({"Unstated License"})
_LICENSE_REF = re.compile(r"(DocumentRef-[A-Za-z0-9.\-]+:)?LicenseRef-[A-Za-z0-9.\-]+")
_OR_LATER = re.compile(r"\s+(or|and)\s+(later|newer|greater)\b", re.IGNORECASE)
_FILLER_WORDS = frozenset({"the", "gnu", "license", "licenses", "licensed", "version", "software", "only", "v"})


@dataclass(frozen=True)
class Term:
    """One license of an expression (with its exception, as in "GPL-2.0-or-later WITH ...")."""

    id: str
    known: bool  # on the license list (and not one that states no license)
    exception: str | None = None


@dataclass(frozen=True)
class Op:
    kind: str  # "AND" or "OR"
    parts: tuple[Term | Op, ...]


Node = Term | Op


@dataclass(frozen=True)
class NormalizedLicense:
    """``expression``: the SPDX expression, None when the string is none; ``recognised``: every id
    in it is on the license list (a packager's own LicenseRef-... is valid SPDX but not recognised)."""

    declared: str
    expression: str | None
    ids: tuple[str, ...]
    recognised: bool
    note: str
    tree: Node | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class _Catalog:
    by_lower: dict[str, str]  # SPDX id or alias, lower case -> the SPDX id
    scancode: dict[str, str]  # ScanCode key -> SPDX id (LicenseRef-scancode-... when SPDX has none)
    category: dict[str, str]  # SPDX id -> ScanCode category
    exceptions: frozenset[str]
    ids: tuple[str, ...]  # every SPDX id, for suggestions


@functools.cache
def _catalog() -> _Catalog:
    by_lower: dict[str, str] = {}
    scancode: dict[str, str] = {}
    category: dict[str, str] = {}
    exceptions: set[str] = set()
    entries: list[dict[str, Any]] = get_license_index()
    # Current entries first: a deprecated one never takes over a spelling a current one has.
    for entry in sorted(entries, key=lambda e: bool(e.get("is_deprecated"))):
        spdx_id = entry.get("spdx_license_key")
        if not spdx_id:
            continue
        by_lower.setdefault(spdx_id.lower(), spdx_id)
        category.setdefault(spdx_id, str(entry.get("category") or ""))
        if entry.get("is_exception"):
            exceptions.add(spdx_id)
        if not entry.get("is_deprecated"):
            scancode.setdefault(str(entry["license_key"]).lower(), spdx_id)
    for entry in entries:  # aliases after every primary id: an id always wins over an alias
        spdx_id = entry.get("spdx_license_key")
        if spdx_id:
            for alias in entry.get("other_spdx_license_keys") or ():
                by_lower.setdefault(alias.lower(), spdx_id)
    return _Catalog(by_lower, scancode, category, frozenset(exceptions), tuple(sorted(category)))


@functools.cache
def _spdx() -> Licensing:
    """The library's SPDX licensing (building it takes tens of milliseconds: once)."""
    return get_spdx_licensing()


def _known(spdx_id: str) -> bool:
    category = _catalog().category.get(spdx_id)
    return category is not None and category not in _UNSTATED


def _versions(words: list[str]) -> list[str]:
    """ "gpl 2" -> "gpl 2.0": the list spells versions with a minor number."""
    return [f"{w}.0" if w.isdigit() and i > 0 and not words[i - 1].isdigit() else w for i, w in enumerate(words)]


def _candidates(key: str) -> list[str]:
    """Spellings of one license name to look up, most literal first: as given; lower case with filler
    words dropped ("MIT License" -> mit, "Apache License, Version 2.0" -> apache-2.0); "+" and "or
    later" as "plus" (ScanCode's gpl-2.0-plus); a version glued to the name split off ("GPLv3" ->
    gpl-3.0); the last word first ("New BSD" -> bsd-new, "3-Clause BSD" -> bsd-3-clause); with the
    list's LicenseRef- prefix ("Apache" -> LicenseRef-Apache) and a "-license" suffix
    ("Proprietary" -> proprietary-license)."""
    core = key.strip()
    if core.lower().startswith("licenseref-"):
        core = core[len("licenseref-") :]
    text = core.lower().replace("licence", "license")
    text = re.sub(r"\b(or|and)[\s-]+(later|newer|greater)\b", " plus ", text).replace("+", " plus ")
    found = [key.strip()]
    for spaced in (text, re.sub(r"(?<=[a-z])v?(?=\d)", " ", text)):
        words = [w for w in re.split(r"[\s_\-,;:/()]+", spaced) if w and w not in _FILLER_WORDS]
        if not words:
            continue
        for variant in (words, _versions(words), words[-1:] + words[:-1], _versions(words[-1:] + words[:-1])):
            joined = "-".join(variant)
            found += [joined, f"licenseref-{joined}", f"{joined}-license"]
    return list(dict.fromkeys(found))


def _lookup(key: str) -> str | None:
    """The SPDX id (or ScanCode LicenseRef) of one license name, or a conda alias; None if none."""
    catalog = _catalog()
    for candidate in _candidates(key):
        lowered = candidate.lower()
        found = CONDA_ALIASES.get(lowered) or catalog.by_lower.get(lowered) or catalog.scancode.get(lowered)
        if found is not None:
            return found
    return None


def _resolve(key: str, shown: str) -> tuple[str | None, str]:
    """(id, note): an id on the list, an alias, a packager's own LicenseRef-..., or (None, why);
    ``shown``: how the note names what was declared."""
    found = _lookup(key)
    if found == AMBIGUOUS_BSD:
        return found, f"{shown!r} does not say which BSD license (2-, 3- or 4-clause)"
    if found is not None and _catalog().category.get(found) in _UNSTATED:
        return found, f"{shown!r} names no license ({found})"
    if found is not None:
        return found, "" if found.lower() == key.lower() else f"{shown!r} read as {found}"
    if _LICENSE_REF.fullmatch(key):
        return key, f"{key} is the packager's own license reference, not on the SPDX or ScanCode list"
    return None, f"not recognised: {shown!r}"


_SYMBOLS = (LicenseSymbol, LicenseWithExceptionSymbol)


def _render(node: Any, resolved: Mapping[str, str]) -> str:
    if isinstance(node, LicenseWithExceptionSymbol):
        return f"{resolved[node.license_symbol.key]} WITH {resolved[node.exception_symbol.key]}"
    if isinstance(node, LicenseSymbol):
        return resolved[node.key]
    operator = " AND " if isinstance(node, AND) else " OR "
    return operator.join(
        _render(arg, resolved) if isinstance(arg, _SYMBOLS) else f"({_render(arg, resolved)})" for arg in node.args
    )


def _tree(node: Any) -> Node:
    if isinstance(node, LicenseWithExceptionSymbol):
        license_id = str(node.license_symbol.key)
        return Term(license_id, _known(license_id), str(node.exception_symbol.key))
    if isinstance(node, LicenseSymbol):
        return Term(str(node.key), _known(str(node.key)))
    return Op("AND" if isinstance(node, AND) else "OR", tuple(_tree(arg) for arg in node.args))


def _terms(node: Node) -> list[Term]:
    return [node] if isinstance(node, Term) else [term for part in node.parts for term in _terms(part)]


def normalize(declared: str | None) -> NormalizedLicense:
    """Read a declared license (index.json ``license``) as an SPDX expression; results are memoised."""
    if declared is None or not declared.strip():
        return NormalizedLicense(declared or "", None, (), False, "no license declared")
    if len(declared) > MAX_DECLARED_LENGTH:
        note = f"longer than {MAX_DECLARED_LENGTH} characters: not read"
        return NormalizedLicense(declared[:MAX_DECLARED_LENGTH], None, (), False, note)
    return _normalize(declared)


def _structure(text: str) -> tuple[Any, list[str]]:
    """The expression's structure (AND, OR, WITH, parentheses) with its names as written; a string that
    is not an expression (punctuation: "Apache License, Version 2.0") is one name."""
    plain = Licensing()
    try:
        parsed = plain.parse(text, validate=False)
        keys = [] if parsed is None else [str(s.key) for s in plain.license_symbols(parsed, decompose=True)]
    except ExpressionError:
        return None, [] if "(" in text or ")" in text else [text]
    except Exception:  # boolean.py fails on some odd input with IndexError, AssertionError, ...
        return None, []
    return parsed, keys


@functools.lru_cache(maxsize=8192)
def _normalize(declared: str) -> NormalizedLicense:
    # "GPL v2 or later" is one license, not "GPL v2" OR "later".
    text = _OR_LATER.sub("+", " ".join(declared.split()))
    parsed, keys = _structure(text)
    if len(keys) > MAX_LICENSES:
        return NormalizedLicense(declared, None, (), False, f"more than {MAX_LICENSES} licenses: not read")
    resolved: dict[str, str] = {}
    notes: list[str] = []
    for key in keys:
        found, note = _resolve(key, declared.strip() if len(keys) == 1 else key)
        if found is None:
            return NormalizedLicense(declared, None, (), False, note)
        resolved[key] = found
        if note:
            notes.append(note)
    if not resolved:
        return NormalizedLicense(declared, None, (), False, f"not recognised: {declared!r}")
    rendered = _render(parsed, resolved) if parsed is not None else resolved[keys[0]]
    try:
        spdx = _spdx()
        expression = spdx.dedup(spdx.parse(rendered, validate=False))
    except Exception:  # as above: never let a packager's string break a listing
        return NormalizedLicense(declared, None, (), False, f"not a valid license expression: {declared!r}")
    tree = _tree(expression)
    terms = _terms(tree)
    ids = tuple(dict.fromkeys(term.id for term in terms))
    recognised = all(term.known for term in terms)
    return NormalizedLicense(declared, str(expression), ids, recognised, "; ".join(dict.fromkeys(notes)), tree)


def rule_subject(subject: str) -> str:
    """The id a rule names, checked: an SPDX id (its aliases and other case read as the id), an id of
    the ScanCode list, a LicenseRef-..., or "unknown". Anything else is refused with a suggestion."""
    text = subject.strip()
    if text.lower() == UNKNOWN:
        return UNKNOWN
    if not text or len(text) > 200:
        raise UnknownLicenseId("a license rule names one SPDX license id (at most 200 characters)")
    catalog = _catalog()
    listed = catalog.by_lower.get(text.lower())
    if listed is not None and listed in catalog.exceptions:
        raise UnknownLicenseId(f"{text} is a license exception: a rule names the license it applies to")
    if listed is not None:
        return listed
    normalized = normalize(text)
    if normalized.expression == text and len(normalized.ids) == 1:
        return text  # a conda alias's id, or a packager's own LicenseRef-...
    if normalized.expression is not None and len(normalized.ids) == 1:
        raise UnknownLicenseId(f"{text!r} is not an SPDX license id: did you mean {normalized.expression}?")
    if normalized.expression is not None:
        raise UnknownLicenseId(f"{text!r} is an expression: a rule names one license id ({', '.join(normalized.ids)})")
    close = difflib.get_close_matches(text, catalog.ids, n=3, cutoff=0.75)
    hint = f": did you mean {' or '.join(close)}?" if close else " (see https://spdx.org/licenses/)"
    raise UnknownLicenseId(f"{text!r} is not an SPDX license id{hint}")


# Rules --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """The rules of one scope (system-wide, or one feed): id -> allow|block, and the unknown action."""

    verdicts: Mapping[str, str] = field(default_factory=dict)
    unknown: str | None = None


@dataclass(frozen=True)
class LicenseDecision:
    action: str  # "allow", "warn" or "block"
    reason: str


_SEVERITY = {"allow": 0, "warn": 1, "block": 2}
_PAST = {"allow": "allowed", "warn": "warned about", "block": "blocked"}


def _unknown_action(system: RuleSet, feed: RuleSet | None) -> tuple[str, str]:
    if feed is not None and feed.unknown is not None:
        return feed.unknown, f"unknown licenses: {feed.unknown} on this feed"
    if system.unknown is not None:
        return system.unknown, f"unknown licenses: {system.unknown} system-wide"
    return "allow", "unknown licenses are allowed (no rule)"


def _decide_term(term: Term, system: RuleSet, feed: RuleSet | None, declared: str = "") -> LicenseDecision:
    if feed is not None and term.id in feed.verdicts:
        verdict = feed.verdicts[term.id]
        return LicenseDecision(verdict, f"{term.id} is {_PAST[verdict]} on this feed")
    if term.id in system.verdicts:
        verdict = system.verdicts[term.id]
        return LicenseDecision(verdict, f"{term.id} is {_PAST[verdict]} system-wide")
    if term.known:
        return LicenseDecision("allow", f"{term.id}: no rule")
    action, why = _unknown_action(system, feed)
    if declared and declared != term.id:  # the whole license is this one id: say what was declared
        return LicenseDecision(action, f"license not recognised: {declared!r} ({term.id}); {why}")
    return LicenseDecision(action, f"{term.id} is not a recognised license; {why}")


def _decide(node: Node, system: RuleSet, feed: RuleSet | None) -> LicenseDecision:
    if isinstance(node, Term):
        return _decide_term(node, system, feed)
    decisions = [_decide(part, system, feed) for part in node.parts]
    pick = max if node.kind == "AND" else min  # AND: the worst part decides; OR: the best alternative
    action = pick((d.action for d in decisions), key=_SEVERITY.__getitem__)
    reasons = list(dict.fromkeys(d.reason for d in decisions if d.action == action))
    if node.kind == "OR" and action != "allow":
        return LicenseDecision(action, "no alternative is allowed: " + "; ".join(reasons))
    return LicenseDecision(action, "; ".join(reasons))


def evaluate(license: NormalizedLicense, *, system: RuleSet, feed: RuleSet | None = None) -> LicenseDecision:
    """What the rules say about a package's license (before the feed's license policy is applied)."""
    if license.tree is None:
        action, why = _unknown_action(system, feed)
        what = (
            "no license declared" if not license.declared.strip() else f"license not recognised: {license.declared!r}"
        )
        return LicenseDecision(action, f"{what}; {why}")
    if isinstance(license.tree, Term):
        return _decide_term(license.tree, system, feed, license.declared)
    return _decide(license.tree, system, feed)
