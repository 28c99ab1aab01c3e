"""Which versions an OSV affected entry covers: real advisories, range edge cases, and the versions
where conda and PEP 440 disagree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from condagate.conda.affected_versions import (
    AFFECTED,
    CLEAN,
    UNKNOWN,
    AffectedVersions,
    PackageAdvisories,
    Verdict,
    check,
)
from condagate.conda.osv import Advisory, parse_advisory
from condagate.conda.version_order import QueriedVersion

DATA = Path(__file__).parent.parent / "data" / "osv"


def real_entry(name: str) -> AffectedVersions:
    advisory = parse_advisory((DATA / name).read_bytes(), source=name)
    assert isinstance(advisory, Advisory)
    (affected,) = advisory.affected
    # The stored form, as the matcher reads it back.
    ranges = json.dumps([r.as_json() for r in affected.ranges])
    return AffectedVersions.from_json(affected.ecosystem, ranges, json.dumps(list(affected.versions)))


def entry(*ranges: list[tuple[str, str]], versions: tuple[str, ...] = (), kind: str = "ECOSYSTEM") -> AffectedVersions:
    return AffectedVersions("PyPI", [(kind, events) for events in ranges], list(versions))


def status(affected: AffectedVersions, version: str) -> str:
    return check(affected, version).status


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.2.1", CLEAN),
        ("2.3.0", AFFECTED),  # introduced: inclusive
        ("2.30.0", AFFECTED),
        ("2.31.0rc1", AFFECTED),  # a pre-release of the fix still has the bug
        ("2.31.0", CLEAN),  # fixed: exclusive
        ("2.32.3", CLEAN),
        ("3.0", CLEAN),
    ],
)
def test_requests(version: str, expected: str) -> None:
    assert status(real_entry("requests/PYSEC-2023-74.json"), version) == expected


def test_fixed_in_names_the_upgrade() -> None:
    requests = real_entry("requests/PYSEC-2023-74.json")
    assert check(requests, "2.30.0") == Verdict(AFFECTED, ("2.31.0",))
    # urllib3's event list holds two ranges, unsorted: [2.0.0, 2.0.6) and [0, 1.26.17).
    urllib3 = real_entry("urllib3/PYSEC-2023-192.json")
    assert check(urllib3, "1.26.16") == Verdict(AFFECTED, ("1.26.17", "2.0.6"))
    assert check(urllib3, "2.0.5") == Verdict(AFFECTED, ("2.0.6",))
    assert status(urllib3, "1.26.17") == CLEAN
    assert status(urllib3, "1.26.18") == CLEAN
    assert status(urllib3, "2.0.6") == CLEAN
    assert status(urllib3, "2.0.0") == AFFECTED


def test_introduced_zero() -> None:
    jinja2 = real_entry("jinja2/PYSEC-2019-217.json")
    assert status(jinja2, "0.1") == AFFECTED
    assert status(jinja2, "2.10") == AFFECTED
    assert status(jinja2, "2.10.1") == CLEAN
    pillow = real_entry("pillow/PYSEC-2022-168.json")
    assert (status(pillow, "9.0.0"), status(pillow, "9.0.1"), status(pillow, "10.4.0")) == (AFFECTED, CLEAN, CLEAN)
    pyyaml = real_entry("pyyaml/PYSEC-2020-96.json")
    assert [status(pyyaml, v) for v in ("5.0", "5.1", "5.3", "5.3.1")] == [CLEAN, AFFECTED, AFFECTED, CLEAN]


def test_last_affected_is_inclusive() -> None:
    py = real_entry("py/PYSEC-2022-42969.json")
    assert status(py, "1.11.0") == AFFECTED
    assert status(py, "1.11.1") == CLEAN
    assert check(py, "1.11.0").fixed_in == ()  # no fix known
    synthetic = entry([("introduced", "1.0"), ("last_affected", "1.4")])
    assert [status(synthetic, v) for v in ("0.9", "1.0", "1.4", "1.4.0", "1.4.1")] == [
        CLEAN,
        AFFECTED,
        AFFECTED,
        AFFECTED,
        CLEAN,
    ]


def test_limit() -> None:
    limited = entry([("introduced", "0"), ("limit", "2.0")])
    assert (status(limited, "1.9"), status(limited, "2.0"), status(limited, "3.0")) == (AFFECTED, CLEAN, CLEAN)
    star = entry([("introduced", "1.0"), ("limit", "*")])
    assert (status(star, "0.9"), status(star, "99")) == (CLEAN, AFFECTED)
    # Below any one of several limits counts.
    two = entry([("introduced", "0"), ("limit", "1.5"), ("limit", "3.0")])
    assert (status(two, "2.0"), status(two, "3.0")) == (AFFECTED, CLEAN)


def test_multiple_ranges_and_explicit_versions() -> None:
    ranges = entry([("introduced", "1.0"), ("fixed", "1.2")], [("introduced", "3.0"), ("fixed", "3.2.5")])
    assert [status(ranges, v) for v in ("0.9", "1.1", "1.2", "2.0", "3.1", "3.2.5")] == [
        CLEAN,
        AFFECTED,
        CLEAN,
        CLEAN,
        AFFECTED,
        CLEAN,
    ]
    listed = entry(versions=("0.5", "0.7.1"))
    assert [status(listed, v) for v in ("0.5", "0.5.0", "0.6", "0.7.1")] == [AFFECTED, AFFECTED, CLEAN, AFFECTED]
    # A listed version the ranges leave out is still affected: the union of both.
    both = entry([("introduced", "2.0")], versions=("1.3",))
    assert (status(both, "1.3"), status(both, "1.4"), status(both, "2.1")) == (AFFECTED, CLEAN, AFFECTED)


def test_git_only_entries_cannot_decide() -> None:
    git = AffectedVersions("PyPI", [("GIT", [])], [])
    verdict = check(git, "1.0")
    assert verdict.status == UNKNOWN and "git commit ranges" in verdict.note
    # With a versions list, the list decides.
    listed = AffectedVersions("PyPI", [("GIT", [])], ["1.0"])
    assert (status(listed, "1.0"), status(listed, "1.1")) == (AFFECTED, CLEAN)


def test_semver_ranges() -> None:
    semver = entry([("introduced", "1.0.0"), ("fixed", "1.4.0-rc.1")], kind="SEMVER")
    assert [status(semver, v) for v in ("0.9", "1.0", "1.3.9", "1.4.0", "2.0.0")] == [
        CLEAN,
        AFFECTED,
        AFFECTED,
        CLEAN,
        CLEAN,
    ]


def test_a_bound_that_is_not_pep440_makes_the_range_unknown() -> None:
    odd = entry([("introduced", "0.2.0-n653"), ("fixed", "0.3")])
    verdict = check(odd, "0.2.5")
    assert verdict.status == UNKNOWN and verdict.note
    # ... unless another range or the list decides.
    assert status(entry([("introduced", "0.2.0-n653")], [("introduced", "0")]), "0.2.5") == AFFECTED


def test_conda_versions_that_are_not_pep440_are_unknown() -> None:
    requests = real_entry("requests/PYSEC-2023-74.json")
    for version in ("2.30_0", "2.30.0_1", "1.0_1", "2023a_b"):
        verdict = check(requests, version)
        assert verdict.status == UNKNOWN, version
        assert "not a PEP 440 version" in verdict.note


@pytest.mark.parametrize(
    ("events", "version", "pep440_says"),
    [
        # PEP 440: 1.0.dev0 < 1.0a1; conda: 1.0.dev0 > 1.0a1 ("dev" as an ordinary word).
        ([("introduced", "1.0a1"), ("fixed", "1.0")], "1.0.dev0", CLEAN),
        ([("introduced", "0"), ("fixed", "1.0a1")], "1.0.dev0", AFFECTED),
        # PEP 440: a local version sorts after its public one; conda: before it.
        ([("introduced", "0"), ("fixed", "2.31.0")], "2.31.0+cuda", CLEAN),
        ([("introduced", "2.31.0"), ("fixed", "2.32")], "2.31.0+cuda", AFFECTED),
    ],
)
def test_where_conda_and_pep440_disagree_the_answer_is_unknown(
    events: list[tuple[str, str]], version: str, pep440_says: str
) -> None:
    verdict = check(entry(events), version)
    assert verdict.status == UNKNOWN
    assert "conda and PEP 440 order" in verdict.note and f"PEP 440: {pep440_says}" in verdict.note


def test_divergent_spellings_are_decided_where_both_orders_agree() -> None:
    requests = real_entry("requests/PYSEC-2023-74.json")
    # Far from any bound, conda's 1.0a1 / .post1 / dev spellings order the same in both.
    for version, expected in [
        ("2.30.0a1", AFFECTED),
        ("2.30.0.post1", AFFECTED),
        ("2.32.0dev", CLEAN),
        ("2.32.0+local", CLEAN),
        ("2.2.0rc1", CLEAN),
    ]:
        verdict = check(requests, version)
        assert (verdict.status, verdict.note) == (expected, ""), version


def test_an_exact_listed_spelling_is_affected_whatever_the_order() -> None:
    pillow = real_entry("pillow/PYSEC-2022-168.json")
    assert "3.1.0.rc1" in pillow.versions
    assert status(pillow, "3.1.0.rc1") == AFFECTED


def test_other_ecosystems_are_not_compared() -> None:
    npm = AffectedVersions("npm", [("ECOSYSTEM", [("introduced", "0")])], [])
    assert check(npm, "1.0").status == UNKNOWN


def test_all_entries_of_a_package_at_once_agree_with_one_by_one() -> None:
    """PackageAdvisories places a plain release once among every entry's bounds: the same answers."""
    entries = [
        (path.stem, real_entry(path.relative_to(DATA).as_posix()))
        for path in sorted(DATA.glob("*/*.json"))
        if path.parent.name not in ("cipherbcrypt", "redis")
    ]
    entries += [
        (
            "LIMITS",
            entry(
                [("introduced", "1.0"), ("limit", "2.0")],
                [("introduced", "0"), ("last_affected", "0.5")],
                versions=("3.0", "v4.0", "05.1"),
            ),
        ),
        ("EMPTY", entry([("introduced", "1.5"), ("fixed", "1.5")], [("introduced", "2.0"), ("limit", "*")])),
        (
            "OVERLAP",
            entry(
                [
                    ("introduced", "1.0"),
                    ("fixed", "1.2"),
                    ("introduced", "1.1"),
                    ("last_affected", "1.3"),
                    ("limit", "1.25"),
                    ("limit", "2.5"),
                ]
            ),
        ),
        ("PRE", entry([("introduced", "0"), ("fixed", "2.0rc1")])),
        ("SEMVER", entry([("introduced", "1.0.0"), ("fixed", "1.1.0")], kind="SEMVER")),
        ("GIT", AffectedVersions("PyPI", [("GIT", [])], [])),
    ]
    together = PackageAdvisories(entries)
    versions = {v for _, e in entries for v in list(e.versions)[:60]}
    versions |= {v for _, e in entries for _, events in e.ranges for _, v in events if v not in ("0", "*")}
    versions |= {
        "0.1",
        "0.5",
        "0.5.1",
        "1.0",
        "1.1",
        "1.15",
        "1.25",
        "1.3",
        "1.9.9",
        "2.0",
        "2.5",
        "3.0",
        "4",
        "5.1.0",
        "99",
        "2.0.0rc1",
        "2.31.0+local",
        "1.0_1",
        "2.30.0.post1",
    }
    for version in sorted(versions):
        tested = QueriedVersion.of(version)
        one_by_one = sorted(((i, check(e, tested)) for i, e in entries), key=repr)
        assert sorted(together.check(tested), key=repr) == one_by_one, version
