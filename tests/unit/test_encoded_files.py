"""This host's files of deferred encodings (``services.encoded_files``): written once, whole or not at
all, named by the ETag; files nobody served for a while are removed when another is written."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from condagate.services import encoded_files
from condagate.services.encoded_files import EncodedFiles, file_name
from condagate.services.subdir_snapshot import Encoded

MOMENT = datetime(2026, 11, 1, tzinfo=UTC)


def deferred(body: bytes, etag: str, calls: list[int] | None = None) -> Encoded:
    def source() -> list[bytes]:
        if calls is not None:
            calls.append(1)
        return [body[:3], body[3:]]

    return Encoded.deferred(len(body), source, etag, MOMENT)


def test_a_file_is_written_once_and_then_found(tmp_path: Path) -> None:
    files, calls = EncodedFiles(tmp_path / "encoded"), []
    encoded = deferred(b'{"packages":{}}', '"' + "a" * 40 + '-json"', calls)
    path = files.path(encoded)
    assert path.read_bytes() == b'{"packages":{}}' and path.name == "a" * 40 + "-json"
    assert files.path(encoded) == path and EncodedFiles(tmp_path / "encoded").path(encoded) == path
    assert calls == [1]  # another process (a second EncodedFiles) found the file too
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_source_that_breaks_off_leaves_no_file(tmp_path: Path) -> None:
    files = EncodedFiles(tmp_path / "encoded")

    def broken() -> list[bytes]:
        raise OSError("the disk is full")

    with pytest.raises(OSError, match="full"):
        files.path(Encoded.deferred(10, broken, '"' + "b" * 40 + '-json"', MOMENT))
    short = Encoded.deferred(10, lambda: [b"12345"], '"' + "c" * 40 + '-json"', MOMENT)
    with pytest.raises(RuntimeError, match="expected 10"):
        files.path(short)
    assert list((tmp_path / "encoded").iterdir()) == []


def test_files_unused_for_a_while_are_removed_when_another_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "encoded"
    files = EncodedFiles(folder)
    old = files.path(deferred(b"old bytes", '"' + "1" * 40 + '-json"'))
    served = files.path(deferred(b"served bytes", '"' + "2" * 40 + '-json"'))
    crashed = folder / ".writing-leftover"
    crashed.write_bytes(b"half")
    long_ago = time.time() - encoded_files.UNUSED_SECONDS - 60
    for path in (old, served, crashed):
        os.utime(path, (long_ago, long_ago))
    # A worker that serves a file moves its mtime (at most once a minute): it is not removed.
    EncodedFiles(folder).path(deferred(b"served bytes", '"' + "2" * 40 + '-json"'))
    new = files.path(deferred(b"new bytes", '"' + "3" * 40 + '-json"'))
    assert sorted(p.name for p in folder.iterdir()) == sorted([served.name, new.name])


@pytest.mark.parametrize("etag", ['"../../etc/passwd-json"', '"ABC-json"', "W/\"" + "a" * 40 + '-json"', '"a-json"'])
def test_only_condagates_own_etags_name_files(etag: str) -> None:
    with pytest.raises(ValueError, match="not an ETag"):
        file_name(etag)
