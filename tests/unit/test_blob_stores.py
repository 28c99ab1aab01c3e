"""The ``BlobStore`` contract, held by both backends: the local folder and an S3 bucket on moto's
real S3 server (127.0.0.1). Services rely on exactly these answers, whichever store is configured."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from condagate.errors import StorageUnavailable
from condagate.store.blobs import BlobStore, TempFolder
from condagate.store.local_blobs import LocalBlobStore
from condagate.store.s3_blobs import S3BlobStore

from s3_server import S3Server, running_s3, server_env


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


def _s3_store(s3: S3Server, bucket: str, temp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> S3BlobStore:
    for name, value in server_env(s3.url, bucket).items():
        monkeypatch.setenv(name, value)
    return S3BlobStore.from_url(f"s3://{bucket}/site-a", TempFolder(temp_dir))


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return _s3_store(s3, s3.new_bucket(), tmp_path / "tmp", monkeypatch)


def _put(store: BlobStore, data: bytes) -> str:
    incoming = store.incoming()
    incoming.write(data[: len(data) // 2])
    incoming.write(data[len(data) // 2 :])
    incoming.finish()
    assert store.commit(incoming) is True
    return incoming.sha256.hexdigest()


def _read(store: BlobStore, sha256: str, start: int = 0, end: int | None = None) -> bytes:
    reader = store.open(sha256, start, end)
    assert reader is not None
    try:
        chunks = []
        while chunk := reader.read(1000):
            chunks.append(chunk)
    finally:
        reader.close()
    data = b"".join(chunks)
    assert len(data) == reader.size
    return data


def test_a_committed_blob_reads_back_whole_and_by_range(store: BlobStore) -> None:
    data = os.urandom(3000)
    sha256 = _put(store, data)
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists(sha256)
    stat = store.stat(sha256)
    assert stat is not None and stat.size == 3000
    assert _read(store, sha256) == data
    assert _read(store, sha256, 100, 200) == data[100:200]
    assert _read(store, sha256, 2990) == data[2990:]
    assert _read(store, sha256, 3000) == b""  # a range starting at the end is empty, not an error
    assert store.digest(sha256) == (sha256, 3000)
    assert store.temp_files() == []  # the temp file became the blob


def test_the_same_bytes_twice_store_one_blob(store: BlobStore) -> None:
    data = b"same bytes" * 100
    sha256 = _put(store, data)
    again = store.incoming()
    again.write(data)
    again.finish()
    assert store.commit(again) is False
    assert [blob.sha256 for blob in store.scan()] == [sha256]
    assert store.temp_files() == []


def test_missing_blobs_answer_none_not_errors(store: BlobStore) -> None:
    missing = "0" * 64
    assert not store.exists(missing)
    assert store.stat(missing) is None
    assert store.open(missing) is None
    assert store.read_bytes(missing) is None
    assert store.digest(missing) is None
    assert store.quarantine(missing) is None
    store.delete(missing)  # nothing to delete: no error
    with pytest.raises(FileNotFoundError), store.readable_copy(missing):
        pass


def test_put_bytes_delete_and_scan(store: BlobStore) -> None:
    first = store.put_bytes(b"kept state")
    second = _put(store, b"a package")
    assert store.read_bytes(first) == b"kept state"
    assert {blob.sha256 for blob in store.scan()} == {first, second}
    store.delete(first)
    assert not store.exists(first)
    assert {blob.sha256 for blob in store.scan()} == {second}


def test_a_readable_copy_has_the_bytes_and_an_s3_copy_is_removed_after(store: BlobStore) -> None:
    data = os.urandom(5000)
    sha256 = _put(store, data)
    with store.readable_copy(sha256) as path:
        assert path.read_bytes() == data
    if store.file_for_sending(sha256) is None:  # a temp copy, not the blob itself
        assert not path.exists()
    assert store.temp_files() == []


def test_quarantine_moves_the_blob_aside(store: BlobStore) -> None:
    sha256 = _put(store, b"bytes that turned out wrong")
    where = store.quarantine(sha256)
    assert where is not None and sha256 in where
    assert not store.exists(sha256)
    assert list(store.scan()) == []  # quarantined blobs are not blobs


def test_names_that_are_not_sha256_digests_are_refused(store: BlobStore) -> None:
    for name in ("../../etc/passwd", "A" * 64, "abc"):
        with pytest.raises(ValueError):
            store.stat(name)


def test_only_the_local_store_offers_files_and_only_s3_presigned_urls(store: BlobStore) -> None:
    sha256 = _put(store, b"x")
    if isinstance(store, LocalBlobStore):
        assert store.file_for_sending(sha256) is not None
        assert store.presigned_url(sha256, "x.conda", 60) is None
    else:
        assert store.file_for_sending(sha256) is None
        url = store.presigned_url(sha256, "x.conda", 60)
        assert url is not None and url.startswith("http://127.0.0.1:") and "X-Amz-Signature" in url


def test_an_s3_store_says_why_it_cannot_be_used(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _s3_store(s3, "no-such-bucket-here", tmp_path, monkeypatch)
    with pytest.raises(StorageUnavailable, match="'no-such-bucket-here' does not exist"):
        store.check()
    with pytest.raises(StorageUnavailable, match="no-such-bucket-here"):
        store.put_bytes(b"nothing stored")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    unreachable = S3BlobStore.from_url("s3://bucket", TempFolder(tmp_path))
    with pytest.raises(StorageUnavailable, match="object store"):
        unreachable.check()
    incoming = unreachable.incoming()
    incoming.write(b"a package")
    incoming.finish()
    with pytest.raises(StorageUnavailable):
        unreachable.commit(incoming)
    assert unreachable.temp_files() == []  # nothing half-stored, nothing left behind


def test_a_replica_starting_on_a_shared_folder_leaves_the_others_temp_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    first = LocalBlobStore(shared, TempFolder(shared / "tmp", owner="a1b2c3d4"))
    second = LocalBlobStore(shared, TempFolder(shared / "tmp", owner="e5f6a7b8"))
    in_flight = first.incoming()  # an upload the first replica is receiving
    in_flight.write(b"half an upload")
    leftover = second.incoming()  # the second replica crashed while receiving this one
    leftover.handle.close()
    assert second.clean_temp_files() == 1  # its own leftover, not the other's upload
    assert in_flight.path.exists() and not leftover.path.exists()
    in_flight.finish()
    assert first.commit(in_flight) is True
    assert first.temp_files() == []
