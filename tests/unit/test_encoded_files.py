"""This host's files of deferred encodings (``services.encoded_files``): written once, whole or not at
all, named by feed subdir and ETag; a subdir's superseded files, and files nobody served for a while,
are removed when another is written."""

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
    path, stat = files.path(encoded, 7, "noarch")
    assert path.read_bytes() == b'{"packages":{}}' and path.name == "7-noarch." + "a" * 40 + "-json"
    assert stat.st_size == encoded.size
    assert files.path(encoded, 7, "noarch")[0] == path
    assert EncodedFiles(tmp_path / "encoded").path(encoded, 7, "noarch")[0] == path
    assert calls == [1]  # another process (a second EncodedFiles) found the file too
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_source_that_breaks_off_leaves_no_file(tmp_path: Path) -> None:
    files = EncodedFiles(tmp_path / "encoded")

    def broken() -> list[bytes]:
        raise OSError("the disk is full")

    with pytest.raises(OSError, match="full"):
        files.path(Encoded.deferred(10, broken, '"' + "b" * 40 + '-json"', MOMENT), 1, "noarch")
    short = Encoded.deferred(10, lambda: [b"12345"], '"' + "c" * 40 + '-json"', MOMENT)
    with pytest.raises(RuntimeError, match="expected 10"):
        EncodedFiles(tmp_path / "encoded").path(short, 1, "noarch")
    assert list((tmp_path / "encoded").iterdir()) == []


def _aged(seconds: float, *paths: Path) -> None:
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def test_a_subdirs_superseded_files_go_once_nobody_serves_them(tmp_path: Path) -> None:
    folder = tmp_path / "encoded"
    files = EncodedFiles(folder)
    old = files.path(deferred(b"version 1", '"' + "1" * 40 + '-json"'), 1, "linux-64")[0]
    recent = files.path(deferred(b"version 2", '"' + "2" * 40 + '-json"'), 1, "linux-64")[0]
    other_subdir = files.path(deferred(b"noarch 1", '"' + "4" * 40 + '-json"'), 1, "noarch")[0]
    other_feed = files.path(deferred(b"feed 2", '"' + "5" * 40 + '-json"'), 2, "linux-64")[0]
    _aged(encoded_files.SUPERSEDED_SECONDS + 30, old, other_subdir, other_feed)
    newest = files.path(deferred(b"version 3", '"' + "3" * 40 + '-json"'), 1, "linux-64")[0]
    # ``old``: superseded and untouched; ``recent``: perhaps still served by a worker that has not seen
    # the change; the other subdir's and feed's files are not superseded by this one.
    kept = (recent, other_subdir, other_feed, newest)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in kept)


def test_files_unused_for_a_while_are_removed_when_another_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "encoded"
    files = EncodedFiles(folder)
    old = files.path(deferred(b"old bytes", '"' + "1" * 40 + '-json"'), 1, "noarch")[0]
    served = files.path(deferred(b"served bytes", '"' + "2" * 40 + '-json"'), 2, "noarch")[0]
    crashed = folder / ".writing-leftover"
    crashed.write_bytes(b"half")
    _aged(encoded_files.UNUSED_SECONDS + 60, old, served, crashed)
    # A worker that serves a file moves its mtime (at most once a minute): it is not removed.
    EncodedFiles(folder).path(deferred(b"served bytes", '"' + "2" * 40 + '-json"'), 2, "noarch")[0]
    new = files.path(deferred(b"new bytes", '"' + "3" * 40 + '-json"'), 3, "noarch")[0]
    assert sorted(p.name for p in folder.iterdir()) == sorted([served.name, new.name])


@pytest.mark.parametrize("etag", ['"../../etc/passwd-json"', '"ABC-json"', "W/\"" + "a" * 40 + '-json"', '"a-json"'])
def test_only_condagates_own_etags_name_files(etag: str) -> None:
    with pytest.raises(ValueError, match="not an ETag"):
        file_name(etag)


@pytest.mark.parametrize("subdir", ["../x", "Linux-64", "", "a/b"])
def test_only_subdir_names_name_files(tmp_path: Path, subdir: str) -> None:
    with pytest.raises(ValueError, match="not a feed subdir"):
        EncodedFiles(tmp_path).path(deferred(b"x", '"' + "a" * 40 + '-json"'), 1, subdir)


def test_a_short_file_under_the_name_is_written_again(tmp_path: Path) -> None:
    """A crash between write and rename (or a disk's clean-up) may leave fewer bytes under the name:
    never sent with the full answer's ETag."""
    files, calls = EncodedFiles(tmp_path / "encoded"), []
    encoded = deferred(b"0123456789" * 10, '"' + "d" * 40 + '-json"', calls)
    path, _ = files.path(encoded, 1, "noarch")
    path.write_bytes(b"01234")
    again, stat = EncodedFiles(tmp_path / "encoded").path(encoded, 1, "noarch")
    assert again == path and path.read_bytes() == b"0123456789" * 10 and stat.st_size == 100
    assert len(calls) == 2


def test_an_entry_that_cannot_be_removed_does_not_stop_the_others_or_the_write(tmp_path: Path) -> None:
    folder = tmp_path / "encoded"
    files = EncodedFiles(folder)
    old = files.path(deferred(b"version 1", '"' + "1" * 40 + '-json"'), 1, "linux-64")[0]
    stuck = folder / "lost+found"
    stuck.mkdir()
    _aged(encoded_files.UNUSED_SECONDS + 60, old, stuck)
    newest, _ = files.path(deferred(b"version 2", '"' + "2" * 40 + '-json"'), 1, "linux-64")
    assert sorted(p.name for p in folder.iterdir()) == sorted([stuck.name, newest.name])


def test_after_a_failed_write_the_bytes_are_sent_without_a_file_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "encoded").write_bytes(b"a file where the folder goes")  # every write fails, as on a full disk
    files, calls = EncodedFiles(tmp_path / "encoded"), []
    encoded = deferred(b"bytes", '"' + "e" * 40 + '-json"', calls)
    with pytest.raises(OSError) as first:
        files.path(encoded, 1, "noarch")
    assert not isinstance(first.value, encoded_files.WriteFailed)
    with pytest.raises(encoded_files.WriteFailed):
        files.path(encoded, 1, "noarch")  # not tried again at once: no second full write to a full disk
    monkeypatch.setattr(encoded_files, "RETRY_SECONDS", 0.0)
    (tmp_path / "encoded").unlink()  # the disk has room again
    path, _ = files.path(encoded, 1, "noarch")
    assert path.read_bytes() == b"bytes"
