"""Fetching one subdir's repodata from an upstream: zst first, conditional on the last ETag.

The whole fetch (both variants, redirects included) must finish within the connector's
``timeout_seconds`` (``upstream/http.py``). What an upstream can make condagate hold is capped while
it streams in (``RepodataLimits``): the body as received, the decompressed document, and how far
any decompression may expand its input. Memory: the body as received plus one chunk; a .zst's
document is decompressed again, piece by piece, when it is parsed (``ZstdDocument``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from condagate import telemetry
from condagate.conda.upstream_stream import PlainDocument, RepodataDocument
from condagate.errors import UpstreamUnavailable
from condagate.upstream import http as upstream_http
from condagate.upstream.addresses import Resolver
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.decoding import (
    CappedBuffer,
    CappedChunks,
    CappedCount,
    Corrupt,
    LimitExceeded,
    Tee,
    Writer,
    ZstdDecoder,
    content_decoder,
    human,
)

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class RepodataLimits:
    """Caps on one subdir's repodata (conda-forge's largest, linux-64, is about 40 MB as .zst and
    300 MB as JSON). Real repodata compresses 4- to 10-fold; a bomb, thousands-fold."""

    max_json_bytes: int = 1 * GiB  # plain repodata.json, as received (after any Content-Encoding)
    max_zst_bytes: int = 256 * MiB  # repodata.json.zst, as received
    max_decompressed_bytes: int = 2 * GiB  # repodata.json.zst once decompressed
    max_ratio: int = 100  # output : input of any decompression, once past ratio_floor
    ratio_floor: int = 32 * MiB


DEFAULT_LIMITS = RepodataLimits()


@dataclass(frozen=True)
class FetchedRepodata:
    """A 304 (``not_modified``: unchanged), a subdir the upstream lacks (``missing``), or the document:
    ``compressed`` (repodata.json.zst as received, kept as it is) or ``plain`` (repodata.json)."""

    etag: str
    elapsed_ms: int
    missing: bool = False
    not_modified: bool = False
    compressed: bytes | None = None
    plain: bytes | None = None
    last_modified: str = ""  # the upstream's Last-Modified (sent back as If-Modified-Since without an ETag)

    def document(self) -> RepodataDocument | None:
        """The document, read piece by piece or whole; None for a 304 or a missing subdir."""
        if self.compressed is not None:
            return ZstdDocument(self.compressed)
        return PlainDocument(self.plain) if self.plain is not None else None


class ZstdDocument:
    """repodata.json.zst's document, decompressed as it is read (a chunk at a time) or whole. The bytes
    passed the limits when they arrived (``fetch_repodata``, or they were kept by condagate)."""

    _FEED = 64 * 1024  # compressed bytes per step: ~0.3-1.5 MB out (repodata compresses 5- to 20-fold)

    def __init__(self, compressed: bytes, limit: int = DEFAULT_LIMITS.max_decompressed_bytes) -> None:
        self._compressed = compressed
        self._limit = limit

    def chunks(self) -> Iterator[bytes]:
        out = CappedChunks(self._limit, "the repodata")
        decoder = ZstdDecoder(out, "the repodata")
        view = memoryview(self._compressed)
        try:
            for start in range(0, len(view), self._FEED):
                decoder.write(view[start : start + self._FEED])  # type: ignore[arg-type]  # any buffer
                taken = out.take()
                if taken:
                    yield b"".join(taken)  # one chunk per step, however small the frames are
        except (LimitExceeded, Corrupt) as exc:
            raise UpstreamUnavailable(f"the repodata.json.zst is unusable: {exc}") from None

    def whole(self) -> bytes:
        return decompress_zstd(self._compressed, self._limit)


def decompress_zstd(data: bytes, limit: int = DEFAULT_LIMITS.max_decompressed_bytes) -> bytes:
    """Decompress repodata condagate kept on disk (it passed the limits when it arrived)."""
    document = CappedBuffer(limit, "the repodata")
    try:
        ZstdDecoder(document, "the repodata").write(data)
    except (LimitExceeded, Corrupt) as exc:
        raise UpstreamUnavailable(f"the kept repodata.json.zst is unusable: {exc}") from None
    return document.getvalue()


def fetch_repodata(
    client: httpx.Client,
    connector: ConnectorConfig,
    subdir: str,
    etag: str = "",
    *,
    last_modified: str = "",
    limits: RepodataLimits = DEFAULT_LIMITS,
    resolver: Resolver | None = None,
) -> FetchedRepodata:
    """GET ``repodata.json.zst`` (then ``repodata.json``) with ``If-None-Match`` (or, for an upstream
    that sent no ETag, ``If-Modified-Since``); raise on any failure."""
    started = time.perf_counter()
    try:
        fetched = _fetch_repodata(client, connector, subdir, etag, last_modified, limits, resolver, started)
    except Exception as exc:
        telemetry.upstream_fetched("repodata", connector.name, telemetry.outcome_of(exc), time.perf_counter() - started)
        raise
    outcome = "missing" if fetched.missing else "not_modified" if fetched.not_modified else "ok"
    telemetry.upstream_fetched("repodata", connector.name, outcome, time.perf_counter() - started)
    return fetched


def _fetch_repodata(
    client: httpx.Client,
    connector: ConnectorConfig,
    subdir: str,
    etag: str,
    last_modified: str,
    limits: RepodataLimits,
    resolver: Resolver | None,
    started: float,
) -> FetchedRepodata:
    deadline = upstream_http.Deadline(connector.timeout_seconds, connector.name)
    for variant in ("repodata.json.zst", "repodata.json"):
        zst = variant.endswith(".zst")
        # .zst is compressed already; plain JSON only in encodings decoded here with bounded memory
        headers = {"Accept-Encoding": "identity" if zst else "gzip, zstd"}
        if etag:
            headers["If-None-Match"] = etag
        elif last_modified:
            headers["If-Modified-Since"] = last_modified
        url = connector.file_url(subdir, variant)
        with upstream_http.get(
            client, connector, url, deadline=deadline, headers=headers, resolver=resolver
        ) as response:
            elapsed = int((time.perf_counter() - started) * 1000)
            if response.status_code == 304:
                return FetchedRepodata(etag, elapsed, not_modified=True, last_modified=last_modified)
            if response.status_code == 404:
                continue
            if response.status_code != 200:
                raise upstream_http.unavailable(
                    connector.name,
                    f"{upstream_http.shown(response.url)} answered {response.status_code} "
                    f"{response.reason_phrase[:60]}",
                )
            etag_received = response.headers.get("etag", "")
            modified = response.headers.get("last-modified", "")[:100]
            if zst:
                compressed = _read(response, deadline, connector, limits, limits.max_zst_bytes, decompress=True)
                return FetchedRepodata(etag_received, elapsed, compressed=compressed, last_modified=modified)
            plain = _read(response, deadline, connector, limits, limits.max_json_bytes, decompress=False)
            return FetchedRepodata(etag_received, elapsed, plain=plain, last_modified=modified)
    return FetchedRepodata("", int((time.perf_counter() - started) * 1000), missing=True)


def _read(
    response: httpx.Response,
    deadline: upstream_http.Deadline,
    connector: ConnectorConfig,
    limits: RepodataLimits,
    limit: int,
    decompress: bool,
) -> bytes:
    """The body as the file it is (capped at ``limit``); for .zst, decompressed as it arrives to check
    the document's size and expansion, and dropped (it is read piece by piece later: ``ZstdDocument``)."""
    where = upstream_http.shown(response.url)
    name = response.url.path.rsplit("/", 1)[-1]
    declared = response.headers.get("content-length", "")
    encoding = response.headers.get("content-encoding", "")
    if declared.isdigit() and int(declared) > limit and encoding.strip().lower() in ("", "identity"):
        raise upstream_http.unavailable(connector.name, f"{where} is {declared} bytes, more than {human(limit)}")
    received = CappedBuffer(limit, name)
    decompressed = CappedCount(limits.max_decompressed_bytes, f"{name} decompressed")
    target: Writer = received
    document = None
    if decompress:
        document = ZstdDecoder(decompressed, name, limits.max_ratio, limits.ratio_floor)
        target = Tee(received, document)
    try:
        decoder = content_decoder(encoding, target, name, limits.max_ratio, limits.ratio_floor)
        wire = 0
        for chunk in upstream_http.iter_body(response, deadline):
            wire += len(chunk)
            if wire > limit:
                raise LimitExceeded(f"{name} is larger than {human(limit)}")
            decoder.write(chunk)
        decoder.finish()
    except (LimitExceeded, Corrupt) as exc:
        raise upstream_http.unavailable(connector.name, f"{where}: {exc}") from None
    return received.getvalue()
