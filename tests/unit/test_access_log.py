"""The access log off the request path (web.access_log): the lines the logging call wrote, through any
handler; redaction; a full buffer; what shutdown writes; the batched request metrics; the security
headers added once."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from condagate import telemetry
from condagate.logs import JsonFormatter
from condagate.security.permissions import Principal
from condagate.web import access_log
from condagate.web.access_log import AccessLogWriter, Entry
from condagate.web.security_headers import HTML_SECURITY_HEADERS, SECURITY_HEADERS, already_secured, secured

KEY = Principal(name="key 7", authenticated=True, key_id=7)
Row = tuple[int | None, str, str, str, str, int, float]


class Recorder:
    """Stands in for services.access_recorder.AccessRecorder."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def record_many(self, requests: Iterable[Row]) -> None:
        self.rows.extend(requests)


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    """The access logger on its own (no propagation to pytest's handlers), restored afterwards."""
    logger = logging.getLogger("condagate.access")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers[:] = []
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


def _entries() -> list[Entry]:
    now = time.time()
    return [
        (now, "GET", "/conda/feed/noarch/repodata.json", 200, 0.00123, 512, "127.0.0.1", None),
        (now + 0.0004, "GET", "/t/cg-SecretKeyValue1234567890abcd/conda/feed/noarch/x.conda", 401, 0.0, 0, "::1", None),
        (now + 0.5, "HEAD", '/odd/"quoted"/\\path/ü', 404, 12.3456, 0, "10.0.0.1", KEY),
        (now + 1, "GET", "/conda/feed/noarch/repodata.json", 304, 0.00004, 0, "127.0.0.1", KEY),
        (now + 2, "GET", "/conda/feed/noarch/repodata.json", 304, 0.00005, 0, "127.0.0.1", KEY),  # a known layout
    ]


def _line_as_logging_wrote_it(entry: Entry, path: str) -> str:
    """What ``log.info("%s %s %s", ...)`` with its fields produced through the JSON formatter."""
    created, method, _, status, seconds, _, client, principal = entry
    fields = {
        "method": method,
        "path": path,
        "status": status,
        "ms": round(seconds * 1000, 2),
        "client": client,
        "principal": principal.name if principal is not None else "anonymous",
    }
    record = logging.LogRecord("condagate.access", logging.INFO, __file__, 1, "%s %s %s", (method, path, status), None)
    record.fields = fields
    record.created = created
    return JsonFormatter().format(record)


def test_lines_are_those_the_logging_call_wrote(access_logger: logging.Logger) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access_logger.addHandler(handler)
    writer = AccessLogWriter()
    entries = _entries()
    for entry in entries:
        writer.put(entry)
    writer.drain()
    expected_paths = [
        "/conda/feed/noarch/repodata.json",
        "/t/***/conda/feed/noarch/x.conda",
        '/odd/"quoted"/\\path/ü',
        "/conda/feed/noarch/repodata.json",
        "/conda/feed/noarch/repodata.json",
    ]
    assert stream.getvalue().splitlines() == [
        _line_as_logging_wrote_it(entry, path) for entry, path in zip(entries, expected_paths, strict=True)
    ]
    assert "SecretKeyValue" not in stream.getvalue()


def test_other_handlers_get_log_records(access_logger: logging.Logger) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    access_logger.addHandler(Collect())
    writer = AccessLogWriter()
    entry = _entries()[2]
    writer.put(entry)
    writer.drain()
    (record,) = records
    assert record.getMessage() == 'HEAD /odd/"quoted"/\\path/ü 404'
    assert record.created == entry[0] and record.levelno == logging.INFO
    assert record.fields == {  # type: ignore[attr-defined]
        "method": "HEAD",
        "path": '/odd/"quoted"/\\path/ü',
        "status": 404,
        "ms": 12345.6,
        "client": "10.0.0.1",
        "principal": "key 7",
    }


def test_requests_with_credentials_reach_the_per_key_log_redacted(access_logger: logging.Logger) -> None:
    recorder = Recorder()
    writer = AccessLogWriter()
    writer.start(recorder)  # type: ignore[arg-type]
    entries = _entries()
    entries.append(
        (time.time(), "GET", "/t/cg-AnotherSecretKey1234567890xy/conda/f/noarch/a.conda", 200, 0.1, 9, "::1", KEY)
    )
    for entry in entries:
        writer.put(entry)
    writer.close()  # shutdown writes what is left
    assert recorder.rows == [
        (7, "key 7", "10.0.0.1", "HEAD", '/odd/"quoted"/\\path/ü', 404, entries[2][0]),
        (7, "key 7", "127.0.0.1", "GET", "/conda/feed/noarch/repodata.json", 304, entries[3][0]),
        (7, "key 7", "127.0.0.1", "GET", "/conda/feed/noarch/repodata.json", 304, entries[4][0]),
        (7, "key 7", "::1", "GET", "/t/***/conda/f/noarch/a.conda", 200, entries[5][0]),
    ]


def test_a_full_buffer_drops_entries_and_says_so(
    access_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access_logger.addHandler(handler)
    writer = AccessLogWriter(buffer_limit=2)
    for entry in _entries():
        writer.put(entry)  # never blocks: the last three are dropped
    with caplog.at_level(logging.WARNING, logger=access_log.__name__):
        writer.drain()
        writer.drain()  # nothing new dropped: no second warning
    assert len(stream.getvalue().splitlines()) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == access_log.__name__]
    assert warnings == ["the access log's buffer was full: 3 lines dropped (3 since the start)"]


def _samples(metrics: telemetry.Telemetry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.exposition import generate_latest

    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_batched_request_metrics_equal_one_update_per_request() -> None:
    requests = [
        (telemetry.CHANNEL_REPODATA, 200, 0.0004, 1000),
        (telemetry.CHANNEL_REPODATA, 304, 0.001, 0),  # on a bucket's bound
        (telemetry.CHANNEL_PACKAGE, 200, 0.03, 1_000_000),
        (telemetry.UPLOAD, 201, 2.0, 50),
        (telemetry.UPLOAD, 409, 500.0, 80),  # beyond the last bound
        (telemetry.CHANNEL_REPODATA, 200, 0.0025, 1000),
    ]
    batched, one_by_one = telemetry.Telemetry(), telemetry.Telemetry()
    batched.observe_requests(requests)
    for family, status, seconds, sent in requests:
        one_by_one.requests.labels(family, str(status)).inc()
        one_by_one.request_seconds.labels(family).observe(seconds)
        if sent:
            one_by_one.response_bytes.labels(family).inc(sent)
        if family == telemetry.UPLOAD:
            one_by_one.uploads.labels("accepted" if 200 <= status < 300 else "refused").inc()
    assert _samples(batched) == _samples(one_by_one)
    assert _samples(batched)[("condagate_http_requests_total", frozenset({("family", "upload"), ("code", "409")}))] == 1


def test_security_headers_are_added_once() -> None:
    plain = secured([(b"content-type", b"application/json"), (b"etag", b'"x"')])
    assert plain[-2:] == list(SECURITY_HEADERS) and already_secured(plain)
    page = secured([(b"Content-Type", b"text/html; charset=utf-8")])
    assert page[1:] == [*SECURITY_HEADERS, *HTML_SECURITY_HEADERS] and already_secured(page)
    # Equal headers written by anyone else are not taken for ours.
    assert not already_secured([(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")])
    assert not already_secured([])
