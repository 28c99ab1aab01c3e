"""Which bytes a download from an S3 store sends for a ``Range`` header: one satisfiable range is
honoured, several (or a stale ``If-Range``) get the whole file, an unsatisfiable one is a 416."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from condagate.errors import RangeNotSatisfiable
from condagate.web.stored_blob import requested_range

ETAG = '"abc"'


def _request(headers: dict[str, str], method: str = "GET") -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": method, "path": "/", "headers": raw, "query_string": b""})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=90-500", (90, 100)),  # clipped to the file
        ("bytes=-5", (95, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes = 1 - 2", (1, 3)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_one_range_is_honoured_others_get_the_whole_file(header: str, expected: tuple[int, int] | None) -> None:
    assert requested_range(_request({"Range": header}), ETAG, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=200-300", "bytes=-0", "bytes=5-4"])
def test_an_unsatisfiable_range_is_a_416(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        requested_range(_request({"Range": header}), ETAG, 100)


def test_if_range_and_head() -> None:
    assert requested_range(_request({"Range": "bytes=0-9", "If-Range": ETAG}), ETAG, 100) == (0, 10)
    assert requested_range(_request({"Range": "bytes=0-9", "If-Range": '"other"'}), ETAG, 100) is None
    assert requested_range(_request({"Range": "bytes=0-9"}, method="HEAD"), ETAG, 100) is None
    assert requested_range(_request({}), ETAG, 100) is None
