"""Declared licenses read as SPDX expressions, rule subjects checked, and license rules evaluated."""

from __future__ import annotations

import pytest

from condagate.conda.licenses import (
    AMBIGUOUS_BSD,
    MAX_DECLARED_LENGTH,
    MAX_LICENSES,
    NormalizedLicense,
    RuleSet,
    evaluate,
    normalize,
    rule_subject,
)
from condagate.errors import UnknownLicenseId

# (declared, SPDX expression, recognised): spellings found in conda channels' index.json files.
SPELLINGS = [
    # SPDX ids as written, and in other case
    ("MIT", "MIT", True),
    ("mit", "MIT", True),
    ("BSD-3-Clause", "BSD-3-Clause", True),
    ("BSD-2-Clause", "BSD-2-Clause", True),
    ("Apache-2.0", "Apache-2.0", True),
    ("GPL-2.0-or-later", "GPL-2.0-or-later", True),
    ("LGPL-2.1-only", "LGPL-2.1-only", True),
    ("LGPL-3.0-or-later", "LGPL-3.0-or-later", True),
    ("MPL-2.0", "MPL-2.0", True),
    ("PSF-2.0", "PSF-2.0", True),
    ("Python-2.0", "Python-2.0", True),
    ("ISC", "ISC", True),
    ("Zlib", "Zlib", True),
    ("BSL-1.0", "BSL-1.0", True),
    ("CC0-1.0", "CC0-1.0", True),
    ("Unlicense", "Unlicense", True),
    ("NCSA", "NCSA", True),
    ("curl", "curl", True),
    ("libpng", "Libpng", True),
    # deprecated SPDX ids: the list's aliases
    ("GPL-3.0", "GPL-3.0-only", True),
    ("gpl-2.0", "GPL-2.0-only", True),
    ("LGPL-2.1", "LGPL-2.1-only", True),
    ("AGPL-3.0", "AGPL-3.0-only", True),
    ("GPL-2.0+", "GPL-2.0-or-later", True),
    # the words of the name, found on the list by rewriting them
    ("MIT License", "MIT", True),
    ("ISC License", "ISC", True),
    ("The Unlicense", "Unlicense", True),
    ("Apache 2.0", "Apache-2.0", True),
    ("Apache License 2.0", "Apache-2.0", True),
    ("Apache License, Version 2.0", "Apache-2.0", True),
    ("BSD 3-Clause", "BSD-3-Clause", True),
    ("3-Clause BSD License", "BSD-3-Clause", True),
    ("New BSD License", "BSD-3-Clause", True),
    ("Simplified BSD", "BSD-2-Clause", True),
    ("GPLv2+", "GPL-2.0-or-later", True),
    ("GPL v2 or later", "GPL-2.0-or-later", True),
    ("GPL3", "GPL-3.0-only", True),
    ("GPLv3", "GPL-3.0-only", True),
    ("GPL-2", "GPL-2.0-only", True),
    ("GNU GPL v3", "GPL-3.0-only", True),
    ("LGPLv3+", "LGPL-3.0-or-later", True),
    ("MPL2", "MPL-2.0", True),
    ("ZPL 2.1", "ZPL-2.1", True),
    ("Boost Software License 1.0", "BSL-1.0", True),
    # names without a version: the list's own aliases decide (ScanCode's curation)
    ("Apache", "Apache-2.0", True),
    ("LGPL", "LGPL-2.0-or-later", True),
    ("GPL", "GPL-1.0-or-later", True),
    # ScanCode's keys for what SPDX has no id for
    ("Public Domain", "LicenseRef-scancode-public-domain", True),
    ("LicenseRef-Public-Domain", "LicenseRef-scancode-public-domain", True),
    ("Proprietary", "LicenseRef-scancode-proprietary-license", True),
    ("LicenseRef-Proprietary", "LicenseRef-scancode-proprietary-license", True),
    ("Commercial", "LicenseRef-scancode-commercial-license", True),
    # conda aliases (the list has none)
    ("PSF", "PSF-2.0", True),
    ("BSD-3", "BSD-3-Clause", True),
    ("BSD", AMBIGUOUS_BSD, False),
    ("BSD License", AMBIGUOUS_BSD, False),
    # a packager's own references: valid SPDX, not on the list
    ("LicenseRef-ProprietaryIntel", "LicenseRef-ProprietaryIntel", False),
    (
        "LicenseRef-NVIDIA-End-User-License-Agreement",
        "LicenseRef-NVIDIA-End-User-License-Agreement",
        False,
    ),
    # what names no license
    ("Unknown", "LicenseRef-scancode-unknown", False),
    ("Other", None, False),
    ("MIT/X11", None, False),
    ("CC0", None, False),
    ("", None, False),
    ("   ", None, False),
    (None, None, False),
]


@pytest.mark.parametrize(("declared", "expression", "recognised"), SPELLINGS)
def test_declared_spellings_read_as_spdx(declared: str | None, expression: str | None, recognised: bool) -> None:
    normalized = normalize(declared)
    assert (normalized.expression, normalized.recognised) == (expression, recognised)
    if expression is None:
        assert normalized.ids == ()
        assert normalized.note


EXPRESSIONS = [
    ("Apache-2.0 OR MIT", "Apache-2.0 OR MIT", ("Apache-2.0", "MIT")),
    ("MIT AND BSD-3-Clause", "MIT AND BSD-3-Clause", ("MIT", "BSD-3-Clause")),
    ("Apache-2.0 and MIT", "Apache-2.0 AND MIT", ("Apache-2.0", "MIT")),
    ("BSD-3-Clause OR GPL-2.0", "BSD-3-Clause OR GPL-2.0-only", ("BSD-3-Clause", "GPL-2.0-only")),
    (
        "(MIT or apache 2.0) and BSD 3-clause",
        "(MIT OR Apache-2.0) AND BSD-3-Clause",
        ("MIT", "Apache-2.0", "BSD-3-Clause"),
    ),
    (
        "BSD-3-Clause AND (Apache-2.0 OR MIT)",
        "BSD-3-Clause AND (Apache-2.0 OR MIT)",
        ("BSD-3-Clause", "Apache-2.0", "MIT"),
    ),
    (
        "Artistic-1.0-Perl OR GPL-1.0-or-later",
        "Artistic-1.0-Perl OR GPL-1.0-or-later",
        ("Artistic-1.0-Perl", "GPL-1.0-or-later"),
    ),
    # WITH: the exception stays in the expression; the ids are the licenses
    (
        "GPL-2.0-or-later WITH Classpath-exception-2.0",
        "GPL-2.0-or-later WITH Classpath-exception-2.0",
        ("GPL-2.0-or-later",),
    ),
    ("Apache-2.0 WITH LLVM-exception", "Apache-2.0 WITH LLVM-exception", ("Apache-2.0",)),
    ("GPLv2+ WITH Classpath-exception-2.0", "GPL-2.0-or-later WITH Classpath-exception-2.0", ("GPL-2.0-or-later",)),
    # duplicates go (dedup), choices stay
    ("MIT AND MIT", "MIT", ("MIT",)),
    ("MIT OR MIT", "MIT", ("MIT",)),
    ("MIT License AND MIT", "MIT", ("MIT",)),
]


@pytest.mark.parametrize(("declared", "expression", "ids"), EXPRESSIONS)
def test_expressions_with_or_and_with(declared: str, expression: str, ids: tuple[str, ...]) -> None:
    normalized = normalize(declared)
    assert normalized.expression == expression
    assert normalized.ids == ids
    assert normalized.recognised


def test_one_unknown_name_makes_the_whole_expression_unknown() -> None:
    normalized = normalize("Foo Corp EULA AND MIT")
    assert normalized.expression is None and not normalized.recognised
    assert "Foo Corp EULA" in normalized.note
    mixed = normalize("MIT OR LicenseRef-Acme")
    assert (mixed.expression, mixed.recognised) == ("MIT OR LicenseRef-Acme", False)


@pytest.mark.parametrize("broken", ["MIT AND", "(MIT", "MIT OR OR BSD-3-Clause", "AND", "()"])
def test_broken_expressions_are_not_recognised(broken: str) -> None:
    normalized = normalize(broken)
    assert normalized.expression is None and not normalized.recognised


def test_notes_say_how_a_spelling_was_read() -> None:
    assert normalize("GPLv2+").note == "'GPLv2+' read as GPL-2.0-or-later"
    assert normalize("MIT").note == ""
    assert "which BSD license" in normalize("BSD").note
    assert "packager's own" in normalize("LicenseRef-Acme").note
    assert normalize("").note == "no license declared"


def test_input_is_bounded() -> None:
    long = "MIT OR " * (MAX_DECLARED_LENGTH // 7 + 1) + "MIT"
    normalized = normalize(long)
    assert normalized.expression is None and "longer than" in normalized.note
    assert len(normalized.declared) == MAX_DECLARED_LENGTH
    many = " OR ".join(f"L{i}" for i in range(MAX_LICENSES + 1))
    assert len(many) <= MAX_DECLARED_LENGTH
    assert "more than" in normalize(many).note
    assert normalize("x" * (MAX_DECLARED_LENGTH + 1)).expression is None


def test_normalisation_is_memoised() -> None:
    assert normalize("Apache License 2.0") is normalize("Apache License 2.0")


# Rule subjects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("MIT", "MIT"),
        ("mit", "MIT"),
        ("GPL-3.0", "GPL-3.0-only"),
        ("GPL-2.0+", "GPL-2.0-or-later"),
        ("LicenseRef-scancode-public-domain", "LicenseRef-scancode-public-domain"),
        ("LicenseRef-Acme-EULA", "LicenseRef-Acme-EULA"),
        (AMBIGUOUS_BSD, AMBIGUOUS_BSD),
        ("unknown", "unknown"),
        ("Unknown", "unknown"),
    ],
)
def test_rule_subjects_are_ids(given: str, stored: str) -> None:
    assert rule_subject(given) == stored


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("Apache 2.0", "did you mean Apache-2.0?"),
        ("Public Domain", "did you mean LicenseRef-scancode-public-domain?"),
        ("LicenseRef-Proprietary", "did you mean LicenseRef-scancode-proprietary-license?"),
        ("BSD", f"did you mean {AMBIGUOUS_BSD}?"),
        ("GPL-3.0-onyl", "did you mean GPL-3.0-only"),
        ("MIT OR Apache-2.0", "is an expression"),
        ("Classpath-exception-2.0", "is a license exception"),
        ("Foo", "is not an SPDX license id"),
        ("", "one SPDX license id"),
        ("x" * 201, "one SPDX license id"),
    ],
)
def test_unknown_rule_subjects_are_refused_with_a_suggestion(given: str, message: str) -> None:
    with pytest.raises(UnknownLicenseId) as raised:
        rule_subject(given)
    assert message in raised.value.message
    assert raised.value.status_code == 400


# Rules ------------------------------------------------------------------------------------------

SYSTEM = RuleSet({"GPL-3.0-only": "block", "AGPL-3.0-only": "block"}, "warn")
FEED = RuleSet({"GPL-3.0-only": "allow", "MIT": "block"})


def decide(declared: str | None, system: RuleSet = SYSTEM, feed: RuleSet | None = None) -> tuple[str, str]:
    decision = evaluate(normalize(declared), system=system, feed=feed)
    return decision.action, decision.reason


def test_blocked_ids_and_ids_without_rules() -> None:
    assert decide("GPL-3.0-only") == ("block", "GPL-3.0-only is blocked system-wide")
    assert decide("GPL-3.0") == ("block", "GPL-3.0-only is blocked system-wide")  # read as GPL-3.0-only
    assert decide("MIT License") == ("allow", "MIT: no rule")
    assert decide("GPL-2.0-only")[0] == "allow"


def test_a_feeds_rule_overrides_the_systems() -> None:
    assert decide("GPL-3.0-only", feed=FEED) == ("allow", "GPL-3.0-only is allowed on this feed")
    assert decide("MIT", feed=FEED) == ("block", "MIT is blocked on this feed")
    assert decide("AGPL-3.0-only", feed=FEED) == ("block", "AGPL-3.0-only is blocked system-wide")
    assert decide("Foo", feed=RuleSet(unknown="block")) == (
        "block",
        "license not recognised: 'Foo'; unknown licenses: block on this feed",
    )


def test_or_is_blocked_only_when_every_alternative_is() -> None:
    assert decide("MIT OR GPL-3.0-only") == ("allow", "MIT: no rule")
    action, reason = decide("GPL-3.0-only OR AGPL-3.0-only")
    assert action == "block"
    assert (
        reason == "no alternative is allowed: GPL-3.0-only is blocked system-wide; AGPL-3.0-only is blocked system-wide"
    )
    assert decide("GPL-3.0-only OR AGPL-3.0-only", feed=FEED) == ("allow", "GPL-3.0-only is allowed on this feed")


def test_and_is_blocked_when_any_part_is() -> None:
    assert decide("MIT AND GPL-3.0-only") == ("block", "GPL-3.0-only is blocked system-wide")
    assert decide("MIT AND Apache-2.0", feed=FEED) == ("block", "MIT is blocked on this feed")
    assert decide("(MIT OR GPL-3.0-only) AND BSD-3-Clause")[0] == "allow"
    assert decide("(AGPL-3.0-only OR GPL-3.0-only) AND BSD-3-Clause")[0] == "block"


def test_with_exception_is_decided_by_its_license() -> None:
    assert decide("GPL-3.0-only WITH GCC-exception-3.1")[0] == "block"
    assert decide("GPL-3.0-only WITH GCC-exception-3.1", feed=FEED)[0] == "allow"


def test_unknown_licenses_take_the_unknown_action() -> None:
    assert decide("Foo Corp EULA") == (
        "warn",
        "license not recognised: 'Foo Corp EULA'; unknown licenses: warn system-wide",
    )
    assert decide(None) == ("warn", "no license declared; unknown licenses: warn system-wide")
    assert decide("Foo", system=RuleSet()) == (
        "allow",
        "license not recognised: 'Foo'; unknown licenses are allowed (no rule)",
    )
    assert decide("BSD")[0] == "warn"
    assert "'BSD'" in decide("BSD")[1]
    # an unknown part of an AND decides; an allowed alternative of an OR wins over an unknown one
    assert decide("MIT AND LicenseRef-Acme")[0] == "warn"
    assert decide("MIT OR LicenseRef-Acme")[0] == "allow"
    # a rule naming an id that is not on the list applies to it, whatever the unknown action says
    assert decide("BSD", feed=RuleSet({AMBIGUOUS_BSD: "allow"})) == (
        "allow",
        f"{AMBIGUOUS_BSD} is allowed on this feed",
    )
    assert decide("LicenseRef-Acme", system=RuleSet({"LicenseRef-Acme": "block"}, "allow"))[0] == "block"


def test_a_warn_rule_only_weighs_between_allow_and_block() -> None:
    system = RuleSet({"GPL-3.0-only": "block"}, "warn")
    assert decide("GPL-3.0-only OR Foo-Unknown-Thing", system=system)[0] == "warn"
    assert decide("MIT OR LicenseRef-Acme", system=system)[0] == "allow"
    assert decide("GPL-3.0-only AND LicenseRef-Acme", system=system)[0] == "block"


def test_decisions_need_no_tree_for_strings_that_are_no_expression() -> None:
    assert evaluate(NormalizedLicense("Foo", None, (), False, ""), system=RuleSet(unknown="block")).action == "block"
