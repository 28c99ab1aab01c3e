"""Reading a document condagate checked before (its kept copy, after a restart) without the per-record
checks: the same records as a full parse, the ones named as not served as written checked again."""

from __future__ import annotations

import pytest
from test_upstream_records import document, fn, record

from condagate.conda.filters import NameFilter
from condagate.conda.upstream_repodata import checks_fingerprint, parse_upstream_repodata, reload_checked_repodata

DASHED = record("py-lib-name", "1.2.3", "py311_0")
MOVED = record("moved", url="https://elsewhere.example/moved-1.0-h0_0.conda", channel="https://elsewhere.example")
HUGE = record("huge", size=2**64)
MISNAMED = record("misnamed")


def _document() -> bytes:
    return document(
        (fn(DASHED), DASHED),
        (fn(MOVED), MOVED),
        (fn(HUGE), HUGE),
        ("other-1.0-h0_0.conda", MISNAMED),
        (fn(record("plain"), ".tar.bz2"), record("plain")),
    )


@pytest.mark.parametrize("name_filter", [None, NameFilter(("py-*", "moved", "huge")), NameFilter((), ("py-*",))])
def test_a_reload_gives_the_records_and_drops_of_a_full_parse(name_filter: NameFilter | None):
    body = _document()
    parsed = parse_upstream_repodata(body, name_filter)
    assert parsed.not_as_written == {fn(MOVED), fn(HUGE), "other-1.0-h0_0.conda"}
    reloaded = reload_checked_repodata(body, parsed.not_as_written, name_filter)
    assert reloaded is not None
    assert reloaded.records == parsed.records and list(reloaded.records) == list(parsed.records)
    assert (reloaded.subdir, reloaded.dropped, reloaded.drop_reasons) == (
        parsed.subdir, parsed.dropped, parsed.drop_reasons
    )
    if name_filter is None:
        assert reloaded.names[fn(DASHED)] == "py-lib-name"  # the name read from a dashed file name
        assert b"elsewhere" not in reloaded.records[fn(MOVED)]


def test_the_records_named_are_checked_again_on_reload():
    body = _document()
    reloaded = reload_checked_repodata(body, frozenset({fn(HUGE), fn(DASHED)}))
    assert reloaded is not None
    assert fn(HUGE) not in reloaded.records and reloaded.dropped == 1
    assert reloaded.names[fn(DASHED)] == "py-lib-name"


def test_a_document_read_by_the_scanner_cannot_be_reloaded_and_a_broken_one_is_refused():
    deep = document((fn(record("deep")), b'{"x":' + b"[" * 100 + b"]" * 100 + b"}"), (fn(DASHED), DASHED))
    assert parse_upstream_repodata(deep).not_as_written is None
    assert reload_checked_repodata(b'{"packages.conda": [', frozenset()) is None
    assert reload_checked_repodata(b'{"packages.conda": []}', frozenset()) is None


def test_the_fingerprint_names_the_code_of_the_checks():
    assert len(checks_fingerprint()) == 64
