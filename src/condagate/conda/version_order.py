"""Version orders an OSV advisory's versions are compared in: PEP 440 (``packaging``), conda's
(py-rattler) and SemVer 2.0; and the version asked about, parsed once in each."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion
from packaging.version import Version as Pep440Version
from rattler import Version as CondaVersion

PLAIN = re.compile(r"\d+(?:\.\d+)*")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
# A plain release spelled the usual way (no leading zeros): found in a versions list by its string.
CANONICAL_PLAIN = re.compile(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*")
# How PEP 440 may spell a plain release (1.0 == v1.0 == 0!1.0), and where any version's release starts.
RELEASE_SPELLING = re.compile(r"\s*[vV]?(?:0+!)?\d+(?:\.\d+)*\s*")
_LEADING_RELEASE = re.compile(r"\s*[vV]?(?:0+!)?(\d+(?:\.\d+)*)")


def parse_pep440(text: str) -> Pep440Version:
    return Pep440Version(text)


def parse_conda(text: str) -> CondaVersion:
    try:
        return CondaVersion(text)
    except Exception as exc:  # rattler raises its own exception types
        raise ValueError(str(exc)) from None


@dataclass(frozen=True, order=True)
class SemVer:
    """SemVer 2.0 precedence (build metadata ignored); plain releases "1" / "1.2" are padded."""

    release: tuple[int, int, int]
    final: bool
    prerelease: tuple[tuple[int, int, str], ...]

    @classmethod
    def parse(cls, text: str) -> SemVer:
        candidate = text.removeprefix("v")
        if PLAIN.fullmatch(candidate) and candidate.count(".") < 2:
            candidate += ".0" * (2 - candidate.count("."))
        match = _SEMVER.fullmatch(candidate)
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version")
        major, minor, patch, pre = match.groups()
        parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
        return cls((int(major), int(minor), int(patch)), pre is None, parts)


Parse = Callable[[str], Any]


# The version asked about, parsed once for all the entries it is checked against ----------------------


@dataclass
class QueriedVersion:
    text: str
    plain: bool  # digits and dots only: PEP 440 and conda order it alike
    pep440: Pep440Version | None  # None: not a PEP 440 version
    release: tuple[int, ...] | None  # the leading release numbers, trailing zeros cut (1.0rc1 -> (1,))
    _conda: Any = None
    _semver: Any = None
    _spellings: tuple[str, ...] | None = None

    @property
    def release_only(self) -> bool:
        """A release and nothing else (no pre, post, dev or local part, epoch 0): 1.0, v1.0."""
        if self.plain:
            return True
        v = self.pep440
        return v is not None and not (v.pre or v.post is not None or v.dev is not None or v.local or v.epoch)

    def spellings(self) -> tuple[str, ...]:
        """The plain spellings of this release PEP 440 and conda hold equal: 2 == 2.0 == 2.0.0 == 2.0.0.0."""
        if self._spellings is None:
            parts = [str(p) for p in self.release or ()]
            self._spellings = tuple(".".join(parts + ["0"] * extra) for extra in range(max(1, 5 - len(parts))))
        return self._spellings

    @classmethod
    def of(cls, text: str) -> QueriedVersion:
        try:
            parsed: Pep440Version | None = Pep440Version(text)
        except InvalidVersion:
            parsed = None
        return cls(text, bool(PLAIN.fullmatch(text)), parsed, leading_release(text))

    def key(self, order: str) -> Any:
        """This version in ``order`` (pep440, conda, semver), or None when it has no place there."""
        if order == "pep440":
            return self.pep440
        if order == "conda":
            if self._conda is None:
                self._conda = try_parse(parse_conda, self.text) or False
            return self._conda or None
        if self._semver is None:
            self._semver = try_parse(SemVer.parse, self.text) or False
        return self._semver or None


def try_parse(parse: Parse, text: str) -> Any:
    try:
        return parse(text)
    except (ValueError, InvalidVersion):
        return None


def release_key(text: str) -> str:
    """A plain release spelling's key, equal for equal releases (2 == 2.0 == 2.0.0 == v2.0 == 02)."""
    if CANONICAL_PLAIN.fullmatch(text):
        while text.endswith(".0"):
            text = text[:-2]
        return text
    release = leading_release(text)
    return ".".join(map(str, release)) if release is not None else ""


def leading_release(text: str) -> tuple[int, ...] | None:
    """The release numbers a version starts with, as both orders compare them (1.0.0 == 1.0 == 1):
    two spellings of one version always share them."""
    match = _LEADING_RELEASE.match(text)
    if match is None:
        return None
    parts = [int(part) for part in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


ORDERS: dict[str, Parse] = {"pep440": parse_pep440, "conda": parse_conda}
