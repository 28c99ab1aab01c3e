"""Serving a package an upstream lists but condagate has not cached yet (the *streamed* policy).

The first request streams the upstream's bytes to its client while writing them to a temp blob and
hashing them; the size and sha256 (md5 where the upstream gives only that) are checked against the
repodata record before the file enters the cache. The last chunk is held back until the check
passes, so a client never receives a complete but wrong file: on a mismatch the connection is cut
short of the promised Content-Length, and nothing is cached. Files up to
``proxy_verify_before_send_bytes`` are fetched whole and checked before the first byte goes out, so
that a mismatch there is a clean 502 with a message. Concurrent requests for the same file wait on a
cross-process lock and are then served from the cache: one upstream download in all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import BinaryIO

import httpx
import msgspec
from anyio.to_thread import run_sync as run_in_threadpool

from condagate import telemetry
from condagate.errors import Busy, CondagateError, UpstreamMismatch, UpstreamTimeout, UpstreamUnavailable
from condagate.services.blob_cleanup import blob_lock_name
from condagate.services.channel import PackageBlob, UpstreamPackage, cached_blob
from condagate.services.context import Services
from condagate.store import connectors as connector_store
from condagate.store.blobs import IncomingBlob
from condagate.store.locks import Lock
from condagate.upstream import http as upstream_http

log = logging.getLogger(__name__)


class UpstreamStream:
    """An open upstream response and the lock that makes it the only download of its file."""

    def __init__(
        self,
        services: Services,
        item: UpstreamPackage,
        response: httpx.Response,
        lock: Lock,
        keep_going: bool = False,
        started: float | None = None,
    ) -> None:
        self.services = services
        self.started = time.perf_counter() if started is None else started  # when the upstream was asked
        self.item = item
        self.response = response
        self.lock = lock
        # Mirroring: finish the download even when the client that started it leaves.
        self.keep_going = keep_going
        size = item.record.get("size")
        self.size = int(size) if isinstance(size, int) else None
        # Without a size in the record, the upload limit bounds what one download may write.
        self.limit = self.size if self.size is not None else services.settings.max_upload_bytes
        self.written = 0
        self.finished = False
        self.failure: CondagateError | None = None
        self._progress = asyncio.Event()
        self._started = False
        self._reader: BinaryIO
        self._task: asyncio.Task[None]

    async def _download(self, incoming: IncomingBlob) -> str:
        """Read the whole upstream body into ``incoming``, verify it, cache it; return its sha256.
        Always releases the upstream response and the file's lock."""
        committed = False
        outcome = "error"
        try:
            async for chunk in upstream_http.aiter_body(self.response, self.item.connector.name):
                incoming.write(chunk)
                self.written = incoming.size
                if incoming.size > self.limit:
                    raise UpstreamMismatch(f"{self._what} is larger than its repodata record says (or than allowed)")
                self._wake()
            await run_in_threadpool(incoming.finish)  # fsync: not on the event loop
            self._verify(incoming)
            sha256 = incoming.sha256.hexdigest()
            await run_in_threadpool(self._commit, incoming)
            committed = True
            outcome = "ok"
            return sha256
        except BaseException as exc:
            outcome = telemetry.outcome_of(exc)
            raise
        finally:
            telemetry.upstream_fetched("package", self.item.connector.name, outcome, time.perf_counter() - self.started)
            if not committed:
                incoming.discard()
            await self.response.aclose()
            self.lock.release()
            _in_flight.release(self.item.connector.id, self.limit)

    async def fetch_whole(self) -> PackageBlob:
        """Download, verify and cache the whole file before answering (small files)."""
        sha256 = await self._download(self.services.blobs.incoming())
        item = self.item
        stored = await run_in_threadpool(self.services.blobs.stat, sha256)
        if stored is None:  # removed between its commit and now (an administrator's clean-up)
            raise UpstreamUnavailable(f"{self._what} was cached and removed at once: try again")
        return PackageBlob(item.feed_id, item.subdir, item.filename, sha256, stored)

    def start(self) -> None:
        """Start the download as a task of its own, at the upstream's pace: a slow or stalled client
        must not hold the file's lock (and every other client waiting on it) for longer than that."""
        incoming = self.services.blobs.incoming()
        self._reader = incoming.path.open("rb")  # opened now: the temp file is renamed or removed later
        self._task = asyncio.create_task(self._run(incoming))
        self._task.add_done_callback(lambda task: self._cancelled_before_start(task, incoming))

    def _cancelled_before_start(self, task: asyncio.Task[None], incoming: IncomingBlob) -> None:
        """A task cancelled before its first step never ran ``_download``'s clean-up: do it here."""
        if task.cancelled() and not self._started:
            incoming.discard()
            self.lock.release()
            _in_flight.release(self.item.connector.id, self.limit)
            asyncio.get_running_loop().create_task(self.response.aclose())

    async def _run(self, incoming: IncomingBlob) -> None:
        self._started = True
        try:
            await self._download(incoming)
            self.finished = True
        except BaseException as exc:
            self.failure = (
                exc
                if isinstance(exc, CondagateError)
                else UpstreamUnavailable(upstream_http.bounded_message(f"{self._what}: {type(exc).__name__}: {exc}"))
            )
            log.error("%s", self.failure.message)
        finally:
            self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def body(self) -> AsyncIterator[bytes]:
        """The client's view of the download: what has arrived so far, less the last byte until the
        whole file is verified; on a failure the response ends short of its Content-Length."""
        sent = 0
        try:
            while True:
                progress = self._progress
                if self.failure is not None:
                    raise self.failure
                available = self.written if self.finished else max(0, self.written - 1)
                if sent < available:
                    data = await run_in_threadpool(self._reader.read, min(available - sent, 1024 * 1024))
                    sent += len(data)
                    yield data
                elif self.finished:
                    return
                else:
                    await progress.wait()
        finally:
            self._reader.close()
            if not self.finished and self.failure is None and not self.keep_going:
                # The client left and nobody else reads this download: stop it, keep nothing.
                self._task.cancel()

    @property
    def _what(self) -> str:
        return f"{self.item.connector.name}/{self.item.subdir}/{self.item.filename}"

    def _verify(self, incoming: IncomingBlob) -> None:
        record = self.item.record
        if self.size is not None and incoming.size != self.size:
            raise UpstreamMismatch(f"{self._what}: {incoming.size} bytes arrived, the record says {self.size}")
        expected_sha256 = record.get("sha256")
        if isinstance(expected_sha256, str) and expected_sha256:
            if incoming.sha256.hexdigest() != expected_sha256.lower():
                raise UpstreamMismatch(f"{self._what}: sha256 differs from the upstream's repodata record")
        elif isinstance(record.get("md5"), str):
            if incoming.md5_hex() != str(record["md5"]).lower():
                raise UpstreamMismatch(f"{self._what}: md5 differs from the upstream's repodata record")
        else:
            raise UpstreamMismatch(f"{self._what}: the upstream's record has no checksum to verify against")

    def _commit(self, incoming: IncomingBlob) -> None:
        sha256 = incoming.sha256.hexdigest()
        with self.services.locks.held(blob_lock_name(sha256)):
            self.services.blobs.commit(incoming)
            with self.services.db.write() as session:
                connector_store.add_cached_package(
                    session=session,
                    connector_id=self.item.connector.id,
                    subdir=self.item.subdir,
                    filename=self.item.filename,
                    sha256=sha256,
                    size=incoming.size,
                    # kept so that the feed can go on listing the file if the upstream removes it
                    record=msgspec.json.encode(self.item.record).decode(),
                    name=str(self.item.record.get("name", "")),
                )
        self.services.lookups.remember_cached_file(self.item.connector.id, self.item.subdir, self.item.filename, sha256)
        log.info("cached %s (%d bytes)", self._what, incoming.size)


class _InFlight:
    """Bytes of upstream files being downloaded per connector (this process): temp space is bounded."""

    def __init__(self) -> None:
        self._bytes: dict[int, int] = {}

    def reserve(self, connector_id: int, size: int, limit: int, connector: str) -> None:
        current = self._bytes.get(connector_id, 0)
        if current and current + size > limit:
            raise Busy(
                f"connector {connector!r} already has {current} bytes of downloads in flight "
                f"(limit {limit}): try again shortly"
            )
        self._bytes[connector_id] = current + size

    def release(self, connector_id: int, size: int) -> None:
        left = self._bytes.get(connector_id, 0) - size
        if left > 0:
            self._bytes[connector_id] = left
        else:
            self._bytes.pop(connector_id, None)


_in_flight = _InFlight()


async def open_upstream(
    services: Services, item: UpstreamPackage, keep_going: bool = False
) -> PackageBlob | UpstreamStream:
    """Either the file is cached by now (another request fetched it), or an open upstream stream.
    ``keep_going``: finish the download even if the client leaves (mirroring)."""
    connector = item.connector
    lock = services.locks.lock(f"{connector.id}/{item.subdir}/{item.filename}")
    if not await lock.acquire(timeout=connector.timeout_seconds * 10):
        message = f"another download of {item.filename} from {connector.name!r} is still running"
        raise UpstreamTimeout(message, public=message)
    try:
        cached = await run_in_threadpool(
            cached_blob, services, connector.id, item.feed_id, item.subdir, item.filename, item.record.get("sha256")
        )
        if cached is not None:
            lock.release()
            telemetry.proxy_cache("hit")  # another request fetched it meanwhile
            return cached
        url = connector.file_url(item.subdir, item.filename)
        telemetry.proxy_cache("miss")
        started = time.perf_counter()
        try:
            # identity: the bytes must be the file itself, or its sha256 and size cannot match the record
            response = await upstream_http.open_stream(
                services.http_async, connector, url, headers={"Accept-Encoding": "identity"}
            )
        except UpstreamTimeout:
            telemetry.upstream_fetched("package", connector.name, "timeout", time.perf_counter() - started)
            raise
        except UpstreamUnavailable as exc:
            telemetry.upstream_fetched("package", connector.name, "error", time.perf_counter() - started)
            raise UpstreamUnavailable(
                upstream_http.bounded_message(f"{item.filename} is not cached, and {exc.message}"),
                public=f"{item.filename} is not cached, and connector {connector.name!r} is unreachable",
            ) from None
        if response.status_code != 200:
            await response.aclose()
            outcome = "missing" if response.status_code == 404 else "error"
            telemetry.upstream_fetched("package", connector.name, outcome, time.perf_counter() - started)
            failure = upstream_http.unavailable(
                connector.name,
                f"{upstream_http.shown(response.url)} answered {response.status_code} {response.reason_phrase[:60]}",
            )
            failure.public = f"{item.filename} is not cached, and connector {connector.name!r} cannot provide it now"
            raise failure
        declared = response.headers.get("content-length")
        size = item.record.get("size")
        if declared is not None and isinstance(size, int) and declared.isdigit() and int(declared) != size:
            await response.aclose()
            telemetry.upstream_fetched("package", connector.name, "mismatch", time.perf_counter() - started)
            raise UpstreamMismatch(
                f"connector {connector.name!r}: {item.filename} is {declared} bytes upstream, "
                f"but its repodata record says {size}"
            )
        stream = UpstreamStream(services, item, response, lock, keep_going, started)
        try:
            _in_flight.reserve(connector.id, stream.limit, services.settings.proxy_max_inflight_bytes, connector.name)
        except Busy:
            await response.aclose()
            raise
        if stream.size is not None and stream.size <= services.settings.proxy_verify_before_send_bytes:
            return await stream.fetch_whole()
        stream.start()
        return stream
    except BaseException:
        lock.release()
        raise
