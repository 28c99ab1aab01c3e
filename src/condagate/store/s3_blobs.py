"""Blobs in an S3-compatible bucket (``CONDAGATE_STORAGE_URL=s3://bucket/prefix``), with boto3.

The endpoint and credentials come from the standard variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), so any S3-compatible server works.
Objects are ``PREFIX/blobs/ab/cd/abcd...``; an object appears only when its PUT (or multipart upload)
completes, so a reader never sees part of one. Bytes arriving (uploads, proxy downloads) are
written to a temp file on this host first, hashed and verified there, then uploaded: a failing
store leaves nothing stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from condagate.errors import StorageUnavailable
from condagate.store.blobs import (
    FAULT_AFTER_BLOB_STORED,
    SHA256_RE,
    IncomingBlob,
    StoredBlob,
    TempFolder,
    hash_reader,
    require_sha256,
)

log = logging.getLogger(__name__)
_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]{0,250}$")

# Multipart above this size (each part is retried alone); below, one PUT.
_MULTIPART_BYTES = 64 * 1024 * 1024
_STAT_SECONDS = 10.0
_STATS_KEPT = 4096
# How long one request to the store may wait for an answer, or for the next bytes of one
# (CONDAGATE_S3_TIMEOUT_SECONDS); connecting waits at most 5 s of it. A store that stops answering
# fails the request after this (times 3 attempts), a refused connection at once.
TIMEOUT_ENV = "CONDAGATE_S3_TIMEOUT_SECONDS"
_DEFAULT_TIMEOUT = 30.0

# What a failure is called in answers to clients: botocore's own messages name the endpoint's address,
# which is for the server's log (and the operator at start), not for whoever downloads a package.
_PUBLIC_REASONS = {
    "EndpointConnectionError": "cannot connect",
    "ConnectTimeoutError": "connecting timed out",
    "ReadTimeoutError": "no answer in time",
    "ConnectionClosedError": "the connection was closed",
    "ResponseStreamingError": "the connection broke off",
    "IncompleteReadError": "the connection broke off",
    "ProxyConnectionError": "cannot connect to the proxy",
    "NoCredentialsError": "no credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
}


def _timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return _DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} must be more than 0 seconds")
    return value


class S3RangeReader:
    def __init__(self, body: Any, size: int, what: str, store: str = "") -> None:
        self._body = body
        self.size = size
        self._what = what
        self._store = store

    def read(self, count: int = 1024 * 1024) -> bytes:
        try:
            return bytes(self._body.read(count))
        except Exception as exc:  # the store went away mid-body
            log.error("reading %s from the object store %s failed: %s", self._what, self._store, _reason(exc))
            raise StorageUnavailable(
                f"the object store {self._store} failed while reading {self._what}: {_public_reason(exc)}"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()

    def __del__(self) -> None:
        # A response dropped before its body was streamed never ran the reader's ``finally``: the
        # store's connection goes back to the pool here instead of waiting for its socket to be collected.
        self.close()


def _reason(exc: BaseException) -> str:
    """A failure's reason without secrets: botocore's messages name the endpoint and bucket, never keys."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code", "")
        message = error.get("Message", "")
        return f"{code}: {message}".strip(": ") or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"[:300]


def _public_reason(exc: BaseException) -> str:
    """A failure's reason as clients may read it: the store's error code and message, or what kind of
    failure it was -- never the endpoint's address."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return _reason(exc)
    name = type(exc).__name__
    return f"{_PUBLIC_REASONS.get(name, 'failed')} ({name})"


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    return None


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str, temp: TempFolder, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._temp = temp
        self.description = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client
        self._exit_after_store = os.environ.get(FAULT_AFTER_BLOB_STORED) == "exit"
        self._stats: dict[str, tuple[float, StoredBlob]] = {}  # sha256 -> (when asked, answer)

    @classmethod
    def from_url(cls, url: str, temp: TempFolder) -> S3BlobStore:
        import boto3
        from botocore.config import Config

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"CONDAGATE_STORAGE_URL {url!r} names no bucket: use s3://BUCKET/PREFIX")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        timeout = _timeout_seconds()
        config = Config(
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            # S3-compatible servers (MinIO, Ceph, moto, ...) are addressed by path; AWS either way.
            s3={"addressing_style": "path" if endpoint else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            signature_version="s3v4",  # presigned URLs too (SigV2 is deprecated, refused by newer regions)
            connect_timeout=min(5.0, timeout),
            read_timeout=timeout,
            max_pool_connections=32,
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        return cls(bucket, prefix, temp, client)

    def _key(self, sha256: str) -> str:
        require_sha256(sha256)
        name = f"blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _fail(self, doing: str, exc: BaseException) -> StorageUnavailable:
        """The error for clients (no endpoint address); the log has the whole reason."""
        log.error("the object store %s failed while %s: %s", self.description, doing, _reason(exc))
        return StorageUnavailable(f"the object store {self.description} failed while {doing}: {_public_reason(exc)}")

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            status = _status(exc)
            if status == 404:
                raise StorageUnavailable(f"the bucket {self.bucket!r} does not exist (create it first)") from None
            if status in (401, 403):
                raise StorageUnavailable(
                    f"access to the bucket {self.bucket!r} was refused: check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY"
                ) from None
            raise StorageUnavailable(f"cannot use the object store {self.description}: {_reason(exc)}") from None

    def file_for_sending(self, sha256: str) -> Path | None:
        return None

    def presigned_url(self, sha256: str, filename: str, expires_seconds: int) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(sha256), "ResponseContentType": "application/octet-stream"}
        if _SAFE_FILENAME.match(filename):
            # saved under the package's name, not the object's (a browser's download from the web UI)
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        try:
            return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds))
        except Exception as exc:  # signing is local; it fails only on missing credentials
            raise self._fail(f"signing a download address for {sha256[:12]}…", exc) from None

    def incoming(self) -> IncomingBlob:
        return self._temp.incoming()

    def commit(self, incoming: IncomingBlob) -> bool:
        sha256 = incoming.sha256.hexdigest()
        try:
            if self.exists(sha256):
                return False
            from boto3.s3.transfer import TransferConfig

            transfer = TransferConfig(multipart_threshold=_MULTIPART_BYTES, multipart_chunksize=_MULTIPART_BYTES)
            self._client.upload_file(str(incoming.path), self.bucket, self._key(sha256), Config=transfer)
        except StorageUnavailable:
            raise
        except Exception as exc:
            raise self._fail(f"storing {sha256[:12]}…", exc) from None
        finally:
            incoming.discard()
        if self._exit_after_store:
            os._exit(70)  # the crash test: blob in place, row never committed
        return True

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(sha256), Body=data)
        except Exception as exc:
            raise self._fail(f"storing {sha256[:12]}…", exc) from None
        return sha256

    def read_bytes(self, sha256: str) -> bytes | None:
        reader = self.open(sha256)
        if reader is None:
            return None
        try:
            chunks = []
            while chunk := reader.read():
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            reader.close()

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None  # always asks: writers decide on it

    def stat(self, sha256: str) -> StoredBlob | None:
        """A blob's size and time, remembered for ``_STAT_SECONDS`` (a blob never changes under its
        name): a download asks the store once, not before every answer. A blob deleted by another
        replica meanwhile is found missing when it is opened (404, "removed meanwhile")."""
        now = time.monotonic()
        remembered = self._stats.get(sha256)
        if remembered is not None and now - remembered[0] < _STAT_SECONDS:
            return remembered[1]
        found = self._head(sha256)
        if found is None:
            self._stats.pop(sha256, None)
        else:
            if len(self._stats) >= _STATS_KEPT:
                self._stats.clear()
            self._stats[sha256] = (now, found)
        return found

    def _head(self, sha256: str) -> StoredBlob | None:
        key = self._key(sha256)  # not a sha256: ValueError, before any request
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise self._fail(f"looking up {sha256[:12]}…", exc) from None
        return StoredBlob(sha256, int(head["ContentLength"]), head["LastModified"].timestamp())

    def open(self, sha256: str, start: int = 0, end: int | None = None) -> S3RangeReader | None:
        what = f"{sha256[:12]}…"
        if end is not None and end <= start:
            return S3RangeReader(_Empty(), 0, what) if self.exists(sha256) else None
        byte_range = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(sha256), Range=byte_range)
        except Exception as exc:
            status = _status(exc)
            if status == 404:
                return None
            if status == 416:  # start at the very end of the blob
                return S3RangeReader(_Empty(), 0, what)
            raise self._fail(f"reading {what}", exc) from None
        return S3RangeReader(answer["Body"], int(answer["ContentLength"]), what, self.description)

    def delete(self, sha256: str) -> None:
        self._stats.pop(sha256, None)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:
            if _status(exc) != 404:
                raise self._fail(f"deleting {sha256[:12]}…", exc) from None

    def scan(self) -> Iterator[StoredBlob]:
        start = f"{self.prefix}/blobs/" if self.prefix else "blobs/"
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if SHA256_RE.match(name) and item["Key"] == self._key(name):
                        yield StoredBlob(name, int(item["Size"]), item["LastModified"].timestamp())
        except StorageUnavailable:
            raise
        except Exception as exc:
            raise self._fail("listing blobs", exc) from None

    def digest(self, sha256: str, progress: Callable[[int], None] | None = None) -> tuple[str, int] | None:
        reader = self.open(sha256)
        return None if reader is None else hash_reader(reader, progress)

    def quarantine(self, sha256: str) -> str | None:
        key = self._key(sha256)
        target = f"{self.prefix}/quarantine/{sha256}" if self.prefix else f"quarantine/{sha256}"
        try:
            self._client.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key})
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise self._fail(f"quarantining {sha256[:12]}…", exc) from None
        self.delete(sha256)
        return f"s3://{self.bucket}/{target}"

    @contextlib.contextmanager
    def readable_copy(self, sha256: str) -> Iterator[Path]:
        reader = self.open(sha256)
        if reader is None:
            raise FileNotFoundError(sha256)
        fd, path = self._temp.copy_file()
        try:
            with os.fdopen(fd, "wb") as handle:
                while chunk := reader.read():
                    handle.write(chunk)
            reader.close()
            yield path
        finally:
            reader.close()
            path.unlink(missing_ok=True)

    def temp_files(self) -> list[Path]:
        return self._temp.files()

    def clean_temp_files(self) -> int:
        return self._temp.clean()


class _Empty:
    def read(self, count: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass
