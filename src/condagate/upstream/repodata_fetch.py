"""Fetching one subdir's repodata from an upstream: zst first, conditional on the last ETag."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import zstandard

from condagate.errors import UpstreamTimeout, UpstreamUnavailable
from condagate.upstream.connector import ConnectorConfig

MAX_REPODATA_BYTES = 4 * 1024**3  # decompressed; conda-forge linux-64 is about 250 MB


@dataclass(frozen=True)
class FetchedRepodata:
    """``body`` is None when the upstream answered 304 (unchanged); ``missing`` when it has no such subdir."""

    body: bytes | None
    etag: str
    elapsed_ms: int
    missing: bool = False
    compressed: bytes | None = None  # the zstd bytes as received, kept on disk as they are


def decompress_zstd(data: bytes) -> bytes:
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            chunks = []
            total = 0
            while chunk := reader.read(16 * 1024 * 1024):
                total += len(chunk)
                if total > MAX_REPODATA_BYTES:
                    raise UpstreamUnavailable("the upstream repodata decompresses to more than 4 GiB")
                chunks.append(chunk)
        return b"".join(chunks)
    except zstandard.ZstdError as exc:
        raise UpstreamUnavailable(f"the upstream repodata.json.zst is corrupt: {exc}") from exc


def fetch_repodata(client: httpx.Client, connector: ConnectorConfig, subdir: str, etag: str = "") -> FetchedRepodata:
    """GET ``repodata.json.zst`` (then ``repodata.json``) with ``If-None-Match``; raise on any failure."""
    started = time.perf_counter()
    headers = dict(connector.headers)
    if etag:
        headers["If-None-Match"] = etag
    for variant in ("repodata.json.zst", "repodata.json"):
        url = connector.file_url(subdir, variant)
        try:
            response = client.get(url, headers=headers, auth=connector.basic_auth, timeout=connector.timeout)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"connector {connector.name!r}: {url} timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"connector {connector.name!r}: {url} is unreachable: {exc}") from exc
        elapsed = int((time.perf_counter() - started) * 1000)
        if response.status_code == 304:
            return FetchedRepodata(None, etag, elapsed)
        if response.status_code == 404:
            continue
        if response.status_code != 200:
            raise UpstreamUnavailable(
                f"connector {connector.name!r}: {url} answered {response.status_code} {response.reason_phrase}"
            )
        etag_received = response.headers.get("etag", "")
        if variant.endswith(".zst"):
            compressed = response.content
            return FetchedRepodata(decompress_zstd(compressed), etag_received, elapsed, compressed=compressed)
        return FetchedRepodata(response.content, etag_received, elapsed)
    return FetchedRepodata(b"", "", int((time.perf_counter() - started) * 1000), missing=True)
