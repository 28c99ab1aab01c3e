"""Bad states of the S3-compatible blob store get a clear error, never a half-stored package: a missing
bucket, refused credentials or an unreachable store stop ``condagate serve`` with a message naming
them; a store that becomes unreachable during an upload, a download or a proxied download answers a
503 problem (or ends a streamed answer short of its Content-Length) and keeps nothing -- no row, no
object, no temp file -- and once it is back the same request works. The store is made unreachable by
pointing the server at a relay in front of moto's S3 server and cutting the relay, and by stopping moto."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_proxy_feed import make_proxy_feed

from condagate.web.errors import STORAGE_PHRASE

from conftest import BACKENDS, backend_database_url, upload
from package_factory import PackageSpec
from s3_server import CuttableRelay, S3Server, object_key, running_s3, server_env
from servers import Server, condagate_command, free_port, start_server
from upstream_channel import UpstreamChannel

MakePackage = Callable[..., Path]
PREFIX = "blobs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


# --- condagate serve refuses a store it cannot use ------------------------------------------------


def run_serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``condagate serve`` expected to stop at once (it would run forever otherwise: the timeout fails)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CONDAGATE_", "AWS_"))}
    full = {**base, "CONDAGATE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250", **env}
    return subprocess.run(
        [*condagate_command(), "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True, text=True, env=full, timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_serve_refuses_a_missing_bucket(s3: S3Server, tmp_path: Path):
    missing = "no-such-bucket-" + uuid.uuid4().hex[:8]
    result = run_serve(tmp_path, server_env(s3.url, missing))
    assert result.returncode == 1, one_line(result)
    message = one_line(result)
    assert f"error: cannot use the blob storage s3://{missing}/{PREFIX}" in message
    assert f"the bucket '{missing}' does not exist" in message
    assert "Traceback" not in message
    assert s3.client().list_objects_v2(Bucket=s3.new_bucket()).get("KeyCount") == 0  # moto still fine


def test_serve_refuses_a_storage_url_without_a_bucket(tmp_path: Path):
    result = run_serve(tmp_path, {"CONDAGATE_STORAGE_URL": "s3://", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1 and "names no bucket" in one_line(result), one_line(result)


def test_serve_refuses_an_unreachable_store(tmp_path: Path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_serve(tmp_path, server_env(closed, "somewhere"))
    assert result.returncode == 1, one_line(result)
    message = one_line(result)
    assert f"error: cannot use the blob storage s3://somewhere/{PREFIX}" in message
    assert closed in message and "Traceback" not in message


def test_serve_refuses_to_start_without_credentials(s3: S3Server, tmp_path: Path):
    env = {
        **{k: v for k, v in server_env(s3.url, s3.new_bucket()).items() if not k.startswith("AWS_ACCESS")},
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata service asked (nothing but 127.0.0.1)
    }
    result = run_serve(tmp_path, env)
    assert result.returncode == 1, one_line(result)
    assert "cannot use the blob storage s3://" in one_line(result)
    assert "Unable to locate credentials" in one_line(result) and "Traceback" not in one_line(result)


def test_serve_refuses_wrong_credentials_and_starts_with_the_right_ones(tmp_path: Path, make_package: MakePackage):
    # moto accepts any key unless told to authenticate: a server of this test's own is told to.
    with running_s3(tmp_path) as s3:
        bucket = s3.new_bucket()
        access_key, secret_key = s3.require_credentials()
        env = server_env(s3.url, bucket)
        unknown = run_serve(tmp_path, env)  # the key moto accepted so far is no IAM user's
        wrong_secret = run_serve(tmp_path, {**env, "AWS_ACCESS_KEY_ID": access_key})
        for result in (unknown, wrong_secret):
            assert result.returncode == 1, one_line(result)
            message = one_line(result)
            assert f"cannot use the blob storage s3://{bucket}/{PREFIX}" in message
            assert f"access to the bucket '{bucket}' was refused" in message
            assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
            assert secret_key not in message and "Traceback" not in message
        right = {**env, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        server = start_server(tmp_path / "data", extra_env=right)
        try:
            with server.admin() as admin:
                assert admin.post("/api/feeds", json={"name": "keyed"}).status_code == 201
            package = make_package("keyed")
            assert upload(server, "keyed", package).status_code == 201
            with server.client() as client:
                assert client.get(f"/conda/keyed/noarch/{package.name}").content == package.read_bytes()
            assert secret_key not in server.log()
        finally:
            server.stop()


# --- the store unreachable while serving ---------------------------------------------------------


@dataclass
class Behind:
    """A condagate server reaching its bucket through ``relay`` (cut it: the store is unreachable)."""

    s3: S3Server
    relay: CuttableRelay
    server: Server
    bucket: str

    def key(self, sha256: str) -> str:
        return object_key(PREFIX, sha256)

    def objects(self) -> list[str]:
        return self.s3.keys(self.bucket)  # straight to moto, not through the relay

    def temp_files(self) -> list[Path]:
        tmp = self.server.data_dir / "tmp"
        return sorted(p for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else []

    def feed(self) -> str:
        name = "cut-" + uuid.uuid4().hex[:8]
        with self.server.admin() as client:
            assert client.post("/api/feeds", json={"name": name}).status_code == 201
        return name


@pytest.fixture(scope="module", params=BACKENDS)
def behind(request: pytest.FixtureRequest, s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Behind]:
    database_url = backend_database_url(request.param)
    relay = CuttableRelay(s3.port)
    bucket = s3.new_bucket()
    env = {
        **server_env(relay.url, bucket),
        # small files are verified before the first byte goes out; larger ones stream (both are cut below)
        "CONDAGATE_PROXY_VERIFY_BEFORE_SEND_BYTES": "1000000",
        "CONDAGATE_S3_TIMEOUT_SECONDS": "3",  # a store that stops answering fails a request after 3 s
    }
    server = start_server(tmp_path_factory.mktemp(f"cut-{request.param}") / "data", database_url, extra_env=env)
    try:
        yield Behind(s3, relay, server, bucket)
    finally:
        server.stop()
        relay.stop()


@pytest.fixture
def store(behind: Behind) -> Iterator[Behind]:
    """``behind``, with its relay restored after the test whatever happened."""
    behind.relay.restore()
    yield behind
    behind.relay.restore()


def assert_storage_problem(response: httpx.Response, bucket: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == 503 and body["code"] == "storage_unavailable"
    assert "object store" in body["detail"] and f"s3://{bucket}/{PREFIX}" in body["detail"], body["detail"]
    assert "Traceback" not in response.text


def assert_public_storage_problem(response: httpx.Response, bucket: str) -> None:
    """What anyone but an administrator reads: a fixed phrase, no endpoint, bucket or prefix."""
    assert response.status_code == 503, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == "storage_unavailable" and body["detail"] == STORAGE_PHRASE
    assert bucket not in response.text


def test_an_upload_while_the_store_goes_away_is_refused_whole_then_works(store: Behind, make_package: MakePackage):
    feed = store.feed()
    package = make_package("cut-upload", files={"blob.bin": os.urandom(2_000_000)})
    data = package.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    before = set(store.objects())

    def slow_body() -> Iterator[bytes]:
        step = len(data) // 10 + 1
        for index, offset in enumerate(range(0, len(data), step)):
            if index == 5:
                store.relay.cut()  # half the body is in: the store goes away before the server stores it
            yield data[offset : offset + step]

    with store.server.admin() as client:
        refused = client.post(f"/api/feeds/{feed}/upload/{package.name}", content=slow_body())
        assert_storage_problem(refused, store.bucket)
        assert set(store.objects()) == before  # no object, not even a part of one
        assert store.temp_files() == []
        assert client.get(f"/api/feeds/{feed}").json()["package_files"] == 0
        listed = client.get(f"/conda/{feed}/noarch/repodata.json")
        assert listed.status_code == 200 and listed.json()["packages.conda"] == {}
        assert client.get(f"/conda/{feed}/noarch/{package.name}").status_code == 404

        store.relay.restore()
        accepted = client.post(f"/api/feeds/{feed}/upload/{package.name}", content=data)
        assert accepted.status_code == 201, accepted.text
        assert store.s3.object_bytes(store.bucket, store.key(sha256)) == data
        assert client.get(f"/conda/{feed}/noarch/{package.name}").content == data
        assert set(client.get(f"/conda/{feed}/noarch/repodata.json").json()["packages.conda"]) == {package.name}
        assert store.temp_files() == []


def test_a_download_while_the_store_is_unreachable_is_a_503_problem(store: Behind, make_package: MakePackage):
    feed = store.feed()
    package = make_package("cut-download")
    assert upload(store.server, feed, package).status_code == 201
    url = f"/conda/{feed}/noarch/{package.name}"
    store.relay.cut()
    with store.server.admin() as admin:
        assert_storage_problem(admin.get(url), store.bucket)  # an administrator reads the store's reason
    with store.server.client() as client:
        for method, headers in (("GET", {}), ("GET", {"Range": "bytes=0-9"}), ("HEAD", {})):
            response = client.request(method, url, headers=headers)
            assert response.status_code == 503, (method, headers, response.status_code)
            if method == "GET":  # anyone else a fixed phrase
                assert_public_storage_problem(response, store.bucket)
        repodata = client.get(f"/conda/{feed}/noarch/repodata.json")  # the database still answers
        assert repodata.status_code == 200 and package.name in repodata.json()["packages.conda"]
        store.relay.restore()
        assert client.get(url).content == package.read_bytes()


def test_a_store_that_stops_answering_gets_a_503_not_a_hang(store: Behind, make_package: MakePackage):
    feed = store.feed()
    package = make_package("stalled")
    assert upload(store.server, feed, package).status_code == 201
    url = f"/conda/{feed}/noarch/{package.name}"
    other = make_package("stalled-upload")
    store.relay.stall()
    with store.server.admin() as client:
        stalled = client.get(url)
        assert_storage_problem(stalled, store.bucket)
        assert "no answer in time" in stalled.json()["detail"]
        refused = client.post(f"/api/feeds/{feed}/upload/{other.name}", content=other.read_bytes())
        assert_storage_problem(refused, store.bucket)
        assert store.temp_files() == []
        store.relay.restore()
        assert client.get(url).content == package.read_bytes()
        assert upload(store.server, feed, other).status_code == 201
        listed = client.get(f"/conda/{feed}/noarch/repodata.json").json()["packages.conda"]
        assert set(listed) == {package.name, other.name}


def test_a_download_cut_off_by_the_store_ends_short_of_its_length(store: Behind, make_package: MakePackage):
    feed = store.feed()
    package = make_package("cut-stream", files={"blob.bin": os.urandom(24_000_000)})
    data = package.read_bytes()
    assert upload(store.server, feed, package).status_code == 201
    url = f"{store.server.url}/conda/{feed}/noarch/{package.name}"
    received = bytearray()
    # the answer has begun: it ends short of its Content-Length
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", url, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-length"] == str(len(data))
        chunks = response.iter_raw(65536)
        received += next(chunks)
        store.relay.cut()
        for chunk in chunks:
            received += chunk
    assert len(received) < len(data)
    store.relay.restore()
    assert httpx.get(url, timeout=60).content == data


@pytest.fixture
def big_upstream(upstream: UpstreamChannel) -> UpstreamChannel:
    upstream.add(PackageSpec("big", "1.0", "0", subdir="linux-64", files={"blob.bin": os.urandom(3_000_000)}))
    upstream.index()
    return upstream


@pytest.mark.parametrize(
    ("filename", "streamed"), [("numpy-1.26.4-py311h0_0.conda", False), ("big-1.0-0.conda", True)]
)
def test_a_proxied_download_while_the_store_goes_away_caches_nothing(
    store: Behind, big_upstream: UpstreamChannel, filename: str, streamed: bool
):
    upstream = big_upstream
    _, feed = make_proxy_feed(store.server, upstream.url)
    good = (upstream.root / "linux-64" / filename).read_bytes()
    sha256 = hashlib.sha256(good).hexdigest()
    url = f"{store.server.url}/conda/{feed}/linux-64/{filename}"
    with store.server.client() as client:
        assert client.get(f"/conda/{feed}/linux-64/repodata.json").status_code == 200
    before = set(store.objects())

    store.relay.cut()  # the upstream answers; the store is gone before the file can be stored
    if streamed:
        received = bytearray()
        # never the promised length of a file that was not stored
        with pytest.raises(httpx.HTTPError), httpx.stream("GET", url, timeout=60) as response:
            assert response.status_code == 200 and response.headers["content-length"] == str(len(good))
            for chunk in response.iter_raw(65536):
                received += chunk
        assert len(received) < len(good) and good.startswith(bytes(received))
    else:
        assert_public_storage_problem(httpx.get(url, timeout=60), store.bucket)
    assert upstream.count(f"/linux-64/{filename}") == 1
    assert set(store.objects()) == before
    assert store.temp_files() == []
    if not streamed:  # nothing was cached: the upstream is asked again (and the store is still cut)
        assert_public_storage_problem(httpx.get(url, timeout=60), store.bucket)
        assert upstream.count(f"/linux-64/{filename}") == 2

    store.relay.restore()
    with store.server.client() as client:
        fetched = client.get(url)
        assert fetched.status_code == 200 and fetched.content == good
        assert store.s3.object_bytes(store.bucket, store.key(sha256)) == good
        upstream.stop()
        assert client.get(url).content == good  # from the store now
    assert store.temp_files() == []


# --- the S3 server itself stopped -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_s3_server_stopped_mid_upload_and_mid_proxied_download_stores_nothing(
    backend: str, tmp_path: Path, make_package: MakePackage, upstream: UpstreamChannel
):
    """Not a relay: moto's process is stopped while an upload's body arrives, and while a proxied file
    downloads; both answer 503 and leave no row, no object and no temp file. A new S3 server on the same
    address (with the bucket made again) then takes the same upload and the same download."""
    s3 = S3Server(tmp_path)
    bucket = s3.new_bucket()
    env = {**server_env(s3.url, bucket), "CONDAGATE_S3_TIMEOUT_SECONDS": "3"}
    server = start_server(tmp_path / "data", backend_database_url(backend), extra_env=env)
    try:
        with server.admin() as client:
            assert client.post("/api/feeds", json={"name": "stopped"}).status_code == 201
        _, proxy = make_proxy_feed(server, upstream.url)
        filename = "numpy-1.26.4-py311h0_0.conda"
        with server.client() as client:
            assert client.get(f"/conda/{proxy}/linux-64/repodata.json").status_code == 200
        package = make_package("stopped-upload", files={"blob.bin": os.urandom(2_000_000)})
        data = package.read_bytes()

        def body_stopping_the_store() -> Iterator[bytes]:
            step = len(data) // 10 + 1
            for index, offset in enumerate(range(0, len(data), step)):
                if index == 5:
                    s3.stop()  # half the body is in
                yield data[offset : offset + step]

        with server.admin() as client:
            refused = client.post(f"/api/feeds/stopped/upload/{package.name}", content=body_stopping_the_store())
            assert_storage_problem(refused, bucket)
            assert client.get("/api/feeds/stopped").json()["package_files"] == 0
            assert client.get(f"/conda/stopped/noarch/{package.name}").status_code == 404
            proxied = client.get(f"/conda/{proxy}/linux-64/{filename}")  # the upstream answers, the store not
            assert_storage_problem(proxied, bucket)
        assert upstream.count(f"/linux-64/{filename}") == 1
        tmp = server.data_dir / "tmp"
        assert not tmp.exists() or [p for p in tmp.rglob("*") if p.is_file()] == []

        s3 = S3Server(tmp_path, port=s3.port)  # back, empty: moto kept its buckets in memory
        s3.client().create_bucket(Bucket=bucket)
        with server.admin() as client:
            assert client.post(f"/api/feeds/stopped/upload/{package.name}", content=data).status_code == 201
            assert client.get(f"/conda/stopped/noarch/{package.name}").content == data
            fetched = client.get(f"/conda/{proxy}/linux-64/{filename}")
            assert fetched.status_code == 200
            assert hashlib.sha256(fetched.content).hexdigest() in {k.rsplit("/", 1)[-1] for k in s3.keys(bucket)}
        assert upstream.count(f"/linux-64/{filename}") == 2  # nothing was cached the first time
    finally:
        server.stop()
        s3.stop()
