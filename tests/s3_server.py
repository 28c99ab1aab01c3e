"""A real S3 API server for the tests (moto's server, on 127.0.0.1), and a TCP relay in front of it
that a test can cut to make the store unreachable mid-upload or mid-download, then restore."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx

from servers import free_port

ACCESS_KEY = "condagate-test"
SECRET_KEY = "condagate-test-secret"  # noqa: S105 - moto accepts any; a fixed one for the tests
REGION = "us-east-1"


class S3Server:
    """moto's S3 server as a process of its own; the bucket namespace is in its memory."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        """``port``: start again where a stopped one listened (its buckets are gone: moto keeps them in memory)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (log_dir / f"moto-{self.port}.log").open("ab")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url + "/", timeout=1)
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start")

    def client(self, endpoint: str | None = None):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=endpoint or self.url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = "condagate-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def object_bytes(self, bucket: str, key: str) -> bytes | None:
        """An object's bytes, or None when there is none under ``key``."""
        client = self.client()
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
        except client.exceptions.NoSuchKey:
            return None
        data: bytes = body.read()
        return data

    def delete_object(self, bucket: str, key: str) -> None:
        self.client().delete_object(Bucket=bucket, Key=key)

    def require_credentials(self) -> tuple[str, str]:
        """From now on, only an IAM user's key is accepted (moto accepts any key until told otherwise):
        creates a user allowed everything on S3 and returns its (access key, secret key). Every key
        used before, ``ACCESS_KEY`` included, is refused afterwards (403 InvalidAccessKeyId)."""
        iam = boto3.client(
            "iam", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )
        user = "condagate-" + uuid.uuid4().hex[:8]
        iam.create_user(UserName=user)
        policy = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=policy)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        # moto's switch: authenticate every request from the next one on
        response = httpx.post(self.url + "/moto-api/reset-auth", content=b"0", timeout=10)
        response.raise_for_status()
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        found: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def object_key(prefix: str, sha256: str) -> str:
    """Where the S3 store keeps the blob ``sha256`` (``PREFIX/blobs/ab/cd/abcd...``)."""
    name = f"blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


def server_env(endpoint: str, bucket: str, prefix: str = "blobs") -> dict[str, str]:
    """What a condagate server needs to keep its blobs in ``bucket`` (given to ``start_server``)."""
    return {
        "CONDAGATE_STORAGE_URL": f"s3://{bucket}/{prefix}",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }


class CuttableRelay:
    """127.0.0.1:port → target, byte for byte, until ``cut()``: open connections are reset and new
    ones refused (the store is unreachable) until ``restore()``. ``stall()``: connections are taken and
    requests go nowhere (a store that stops answering) until ``restore()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._stalled = threading.Event()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._cut.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            pair = _Pair()
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target, pair), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, pair: _Pair) -> None:
        try:
            while data := source.recv(65536):
                while self._stalled.is_set() and not self._cut.is_set():
                    time.sleep(0.05)  # held: nothing goes through while stalled
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the other direction's pump ends too
            if pair.done():  # both directions are over: the sockets can go (with an RST when cut)
                with self._lock:
                    self._open.difference_update((source, target))
                for sock in (source, target):
                    if self._cut.is_set():
                        _reset(sock)
                    else:
                        sock.close()

    def cut(self) -> None:
        """Unreachable from now on: every open connection is broken off, new ones are reset."""
        self._cut.set()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            # A socket cannot be closed under a thread blocked in recv() or sendall() on it (the close
            # waits for them): shutdown wakes them, and their pump then closes it with an RST.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self._stalled.set()

    def restore(self) -> None:
        self._cut.clear()
        self._stalled.clear()

    def stop(self) -> None:
        self.cut()
        self._stopped.set()
        self._listener.close()


class _Pair:
    """The two pumps of one relayed connection: the second to end closes its sockets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended = 0

    def done(self) -> bool:
        with self._lock:
            self._ended += 1
            return self._ended == 2


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def running_s3(log_dir: Path) -> Iterator[S3Server]:
    server = S3Server(log_dir)
    try:
        yield server
    finally:
        server.stop()
