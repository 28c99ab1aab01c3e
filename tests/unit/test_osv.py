"""Reading OSV documents: real PyPA advisories, and every way a document is refused."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from condagate.conda import osv
from condagate.conda.osv import Advisory, Rejected, parse_advisory
from condagate.errors import ImportRefused

DATA = Path(__file__).parent.parent / "data" / "osv"


def real(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def parse(document: dict[str, Any] | bytes, source: str = "doc.json") -> Advisory | Rejected:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_advisory(data, source=source)


def parsed(document: dict[str, Any]) -> Advisory:
    result = parse(document)
    assert isinstance(result, Advisory), result
    return result


def rejected(document: dict[str, Any] | bytes) -> str:
    result = parse(document, "some/file.json")
    assert isinstance(result, Rejected), result
    assert result.source == "some/file.json"
    return result.reason


def minimal(**fields: Any) -> dict[str, Any]:
    return {"id": "TEST-1", "modified": "2024-01-01T00:00:00Z", **fields}


def test_requests_advisory() -> None:
    advisory = parsed(real("requests/PYSEC-2023-74.json"))
    assert advisory.id == "PYSEC-2023-74"
    assert advisory.aliases == ("CVE-2023-32681", "GHSA-j8r2-6x86-q33q")
    assert advisory.modified == datetime(2023, 6, 5, 1, 13, 0, 534973, tzinfo=UTC)
    assert advisory.published == datetime(2023, 5, 26, 18, 15, tzinfo=UTC)
    assert advisory.withdrawn is None
    assert advisory.summary.startswith("Requests is a HTTP library.")  # no summary: the first sentence
    assert advisory.severity == "unknown" and advisory.score is None and advisory.vector == ""
    assert advisory.links[0] == "https://github.com/psf/requests/security/advisories/GHSA-j8r2-6x86-q33q"
    assert len(advisory.links) == 4  # one URL given twice
    (affected,) = advisory.affected
    assert (affected.ecosystem, affected.name) == ("PyPI", "requests")
    assert [r.type for r in affected.ranges] == ["GIT", "ECOSYSTEM"]
    assert affected.ranges[0].events == ()  # commits: no version information kept
    assert affected.ranges[1].events == (("introduced", "2.3.0"), ("fixed", "2.31.0"))
    assert "2.30.0" in affected.versions


def test_cvss_v3_vector_gives_score_and_level() -> None:
    advisory = parsed(real("urllib3/PYSEC-2023-192.json"))
    assert advisory.severity == "high"
    assert advisory.score == 8.1
    assert advisory.vector == "CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:N"


def test_cvss_v4_is_preferred_and_bad_vectors_are_passed_over() -> None:
    v4 = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"
    both = parsed(
        minimal(
            severity=[
                {"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"},
                {"type": "CVSS_V4", "score": v4},
            ]
        )
    )
    assert (both.severity, both.score, both.vector) == ("critical", 9.3, v4)
    broken = parsed(minimal(severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:X"}]))
    assert (broken.severity, broken.score) == ("unknown", None)
    nothing = parsed(minimal(severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N"}]))
    assert (nothing.severity, nothing.score) == ("none", 0.0)


def test_database_specific_severity_is_the_fallback() -> None:
    ghsa = parsed(minimal(database_specific={"severity": "MODERATE"}))
    assert (ghsa.severity, ghsa.score, ghsa.vector) == ("medium", None, "")
    per_package = minimal(
        affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "database_specific": {"severity": "HIGH"}}]
    )
    assert parsed(per_package).severity == "high"


def test_withdrawn_and_pypi_names_normalised() -> None:
    advisory = parsed(real("redis/PYSEC-2023-73.json"))
    assert advisory.withdrawn == datetime(2023, 6, 6, 10, 37, tzinfo=UTC)
    odd = parsed(minimal(affected=[{"package": {"ecosystem": "PyPI", "name": "Zope.Interface_x"}}]))
    assert odd.affected[0].name == "zope-interface-x"
    npm = parsed(minimal(affected=[{"package": {"ecosystem": "npm", "name": "Left_Pad"}}]))
    assert npm.affected[0].name == "Left_Pad"  # other ecosystems keep their spelling


def test_only_http_links_are_kept() -> None:
    advisory = parsed(
        minimal(
            references=[
                {"type": "WEB", "url": u}
                for u in (
                    "javascript:alert(1)",
                    "ftp://x/y",
                    "https://ok.example/a",
                    "http://ok.example/b",
                    "https://bad.example/a b",
                    "data:text/html,hi",
                )
            ]
        )
    )
    assert advisory.links == ("https://ok.example/a", "http://ok.example/b")


def test_long_text_is_shortened_not_refused() -> None:
    advisory = parsed(minimal(summary="s" * 5000, details="d" * 100_000))
    assert len(advisory.summary) == osv.MAX_SUMMARY and advisory.summary.endswith("…")
    assert len(advisory.details) == osv.MAX_DETAILS


def test_schema_versions() -> None:
    assert isinstance(parse(minimal(schema_version="1.6.0")), Advisory)
    assert isinstance(parse(minimal(schema_version="1.7")), Advisory)
    assert "unsupported schema_version '2.0.0'" in rejected(minimal(schema_version="2.0.0"))
    assert "unknown schema_version" in rejected(minimal(schema_version="latest"))


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "the top level must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        ({"modified": "2024-01-01T00:00:00Z"}, "required field 'id' is missing"),
        ({"id": "X-1"}, "required field 'modified' is missing"),
        ({"id": "../../etc/passwd", "modified": "2024-01-01T00:00:00Z"}, "is not a usable advisory id"),
        (minimal(modified="yesterday"), "'modified' 'yesterday' is not an RFC 3339 timestamp"),
        (minimal(modified="2024-02-30T00:00:00Z"), "is not a valid date"),
        (minimal(affected=[{"ranges": []}]), "affected[0].package is missing"),
        (minimal(affected=[{"package": {"name": "x"}}]), "affected[0].package.ecosystem is missing"),
        (minimal(affected=[{"package": {"ecosystem": "PyPI"}}]), "affected[0].package.name is missing"),
        (minimal(affected={"package": {}}), "'affected' must be a list"),
        (minimal(aliases="CVE-1"), "'aliases' must be a list of strings"),
    ],
)
def test_bad_documents_say_why(document: dict[str, Any] | bytes, reason: str) -> None:
    assert reason in rejected(document)


def _ranged(*events: dict[str, str], kind: str = "ECOSYSTEM") -> dict[str, Any]:
    return minimal(
        affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [{"type": kind, "events": list(events)}]}]
    )


def test_range_rules() -> None:
    assert "no 'introduced' event" in rejected(_ranged({"fixed": "1.0"}))
    assert "both 'fixed' and 'last_affected'" in rejected(
        _ranged({"introduced": "0"}, {"fixed": "1"}, {"last_affected": "2"})
    )
    assert "exactly one of" in rejected(_ranged({"introduced": "0", "fixed": "1.0"}))
    assert "unknown event 'patched'" in rejected(_ranged({"introduced": "0"}, {"patched": "1.0"}))
    assert "events is missing or empty" in rejected(_ranged())
    assert "must be a version string" in rejected(_ranged({"introduced": 1}))  # type: ignore[dict-item]
    semver = parsed(_ranged({"introduced": "1.0.0"}, {"limit": "2.0.0"}, kind="SEMVER"))
    assert semver.affected[0].ranges[0].type == "SEMVER"
    # A range type of a later schema says nothing comparable: dropped, the document kept.
    future = parsed(_ranged({"introduced": "0"}, kind="CALVER"))
    assert future.affected[0].ranges == ()


def test_bounds() -> None:
    many = minimal(affected=[{"package": {"ecosystem": "PyPI", "name": f"p{i}"}} for i in range(osv.MAX_AFFECTED + 1)])
    assert f"more than the {osv.MAX_AFFECTED} accepted" in rejected(many)
    assert "larger than" in rejected(b" " * (osv.MAX_DOCUMENT_BYTES + 1))


def test_every_real_document_but_one_reads() -> None:
    results = {
        path.relative_to(DATA).as_posix(): parse_advisory(path.read_bytes(), source=path.name)
        for path in DATA.glob("*/*.json")
    }
    refused = {name: r.reason for name, r in results.items() if isinstance(r, Rejected)}
    assert refused == {"cipherbcrypt/PYSEC-2024-55.json": "'modified' '1-01-01T00:00:00Z' is not an RFC 3339 timestamp"}


def _zip(members: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def test_documents_from_a_zip_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    body = _zip({"a/ONE.json": b"{}", "README.md": b"hi", "../../escape.json": b"{}", "dir/": b""})
    documents = list(osv.documents_from_body(body, source="up.zip"))
    assert [(d.source, d.data) for d in documents] == [
        ("up.zip:a/ONE.json", b"{}"),
        ("up.zip:../../escape.json", b"{}"),
    ]
    # A member bigger than a document may be is reported, not read.
    monkeypatch.setattr(osv, "MAX_DOCUMENT_BYTES", 10)
    documents = list(osv.documents_from_zip(_zip({"big.json": b"x" * 11, "ok.json": b"{}"}), source="z"))
    assert documents[0].data is None and "larger than 10 bytes" in documents[0].error
    assert documents[1].data == b"{}"


def test_zip_bombs_and_garbage_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(osv, "MAX_TOTAL_BYTES", 1000)
    bomb = _zip({f"{i}.json": b"0" * 600 for i in range(3)})
    with pytest.raises(ImportRefused, match="would inflate to 1800 bytes"):
        list(osv.documents_from_zip(bomb, source="bomb.zip"))
    monkeypatch.setattr(osv, "MAX_DOCUMENTS", 2)
    with pytest.raises(ImportRefused, match="holds 3 documents"):
        list(osv.documents_from_zip(_zip({f"{i}.json": b"{}" for i in range(3)}), source="many.zip"))
    with pytest.raises(ImportRefused, match="not a readable zip"):
        list(osv.documents_from_zip(io.BytesIO(b"PK\x03\x04garbage"), source="bad.zip"))


def test_documents_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "X-1.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("skip")
    (tmp_path / "inner.zip").write_bytes(_zip({"Y-1.json": b"[]"}).getvalue())
    (tmp_path / "link.json").symlink_to(tmp_path / "a" / "b" / "X-1.json")
    documents = list(osv.documents_from_path(tmp_path))
    assert sorted(d.source for d in documents) == ["a/b/X-1.json", "inner.zip:Y-1.json"]
