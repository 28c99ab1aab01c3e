"""What one large upstream subdir costs a worker in memory, in process: the generated conda-forge-like
document (``proxy.big_repodata``) parsed and cut into an ``UpstreamSnapshot`` (records kept compressed
in blocks, ``conda.parts_records``), then a feed snapshot over it with three of the feed's own
packages laid over, then its shards built. RSS is read after ``gc.collect()`` and ``malloc_trim``, so
it is what the worker keeps, not what the allocator had not handed back yet; pymalloc's arenas are
reported apart (``sys._debugmallocstats``), as the part of the RSS that is fragmentation.

The upstream document is read as a worker reads its kept copy: from its .zst, piece by piece
(``conda.upstream_stream``); ``--whole`` reads it as condagate did before 2026-11-30 (decompressed
whole, parsed into a dict of records, then cut into blocks), ``--out-of-order`` serves records not in
file name order (read piece by piece into a dict). The peak (VmHWM, reset after the document is made)
is the building worker's: the goal is at most 2x the JSON.

    .venv/bin/python bench/subdir_memory.py [--records 500000] [--names 16000] [--whole] [--out-of-order]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  # puts tests/ on the path, for package_factory
import proxy
from condagate.conda.repodata import compress_zstd
from condagate.conda.upstream_repodata import parse_upstream_repodata
from condagate.conda.upstream_stream import parse_document
from condagate.services.context import Services
from condagate.services.feeds import create_feed
from condagate.services.repodata_cache import RepodataCache
from condagate.services.upload import store_upload
from condagate.settings import Settings
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_cache import UpstreamSnapshot, UpstreamView
from condagate.upstream.repodata_fetch import ZstdDocument, decompress_zstd

import package_factory


def _rss_mib() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def _peak_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:  # "5": the peak RSS starts again from the RSS
        clear.write("5")


def _pymalloc() -> tuple[float, float]:
    """(MiB in pymalloc's arenas, MiB of live objects in them), from a forked child's malloc stats."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.dup2(write, 2)
        sys._debugmallocstats()
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    text = b"".join(chunks).decode()
    arenas = re.search(r"(\d+) arenas \* (\d+) bytes/arena", text)
    live = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    assert arenas is not None and live is not None, text[-2000:]
    return int(arenas.group(1)) * int(arenas.group(2)) / 2**20, int(live.group(1).replace(",", "")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--names", type=int, default=16_000)
    parser.add_argument("--whole", action="store_true", help="parse the document whole, as before 2026-11-30")
    parser.add_argument("--out-of-order", action="store_true", help="records not in file name order")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-memory-"))
    services = Services.open(Settings(data_dir=workdir / "data"))
    create_feed(services, name="memory")
    for index in range(3):
        path = package_factory.write_package(workdir, package_factory.PackageSpec(f"own{index}", subdir="linux-64"))
        incoming = services.blobs.incoming()
        incoming.write(path.read_bytes())
        incoming.finish()
        store_upload(services, feed_name="memory", filename=path.name, incoming=incoming)
    rows: list[tuple[str, float, float | None, str]] = [("interpreter and services", _rss_mib(), None, "")]
    body, _ = proxy.big_repodata(args.records, args.names, in_order=not args.out_of_order)
    json_mib = len(body) / 2**20
    compressed = compress_zstd(body)  # the kept copy a worker reads
    del body
    rows.append(("+ the document's .zst (the kept copy)", _rss_mib(), None, f"{len(compressed) / 2**20:,.0f} MiB"))
    _reset_peak()
    started = time.perf_counter()
    if args.whole:
        parsed = parse_upstream_repodata(decompress_zstd(compressed))
    else:
        parsed = parse_document(ZstdDocument(compressed))
    upstream = UpstreamSnapshot.of(1, "linux-64", parsed, 1, '"bench"', time.time())
    del parsed, compressed  # as a worker lets go of the body once its records are cut
    elapsed = time.perf_counter() - started
    how = "whole" if args.whole else "piece by piece"
    rows.append(("+ the upstream snapshot", _rss_mib(), _peak_mib(), f"{elapsed:.2f} s to parse ({how}) and cut"))

    class OneUpstream:
        def view(self, connector: ConnectorConfig, subdir: str, refresh: bool = True) -> UpstreamView:
            return UpstreamView(upstream, None, "")

    cache = RepodataCache(services.db, OneUpstream(), services.repodata._shard_files)  # type: ignore[arg-type]
    connectors = [ConnectorConfig(1, "bench", "http://127.0.0.1:9")]
    snapshot = cache.snapshot(feed_id=1, subdir="linux-64", connectors=connectors)
    rows.append(
        ("+ the feed's snapshot (its own packages laid over)", _rss_mib(), _peak_mib(), type(snapshot.records).__name__)
    )
    started = time.perf_counter()
    snapshot.shard_index()
    built = time.perf_counter() - started
    if snapshot._spilling is not None:
        snapshot._spilling.result()
    written = time.perf_counter() - started
    shards = f"{len(snapshot.shards()):,} shards: built in {built:.2f} s, all in files after {written:.2f} s"
    rows.append(("+ its shards (bodies in this host's files)", _rss_mib(), _peak_mib(), shards))
    arenas, live = _pymalloc()
    services.close()
    shutil.rmtree(workdir, ignore_errors=True)
    start = rows[0][1]
    print(f"### One upstream subdir in a worker: {args.records:,} records, JSON {json_mib:,.0f} MiB\n")
    print("| step | RSS | over the start | over the start ÷ JSON | peak so far (VmHWM) ÷ JSON | |")
    print("|---|---|---|---|---|---|")
    for step, rss, peak, note in rows:
        peak_text = "" if peak is None else f"{peak:,.0f} MiB: {peak / json_mib:.2f}×"
        over = rss - start
        print(f"| {step} | {rss:,.0f} MiB | {over:,.0f} MiB | {over / json_mib:.2f}× | {peak_text} | {note} |")
    print(f"\npymalloc at the end: {arenas:,.0f} MiB of arenas holding {live:,.0f} MiB of live objects.")
    print("The peak counts from the document's .zst on (the building worker's, goal ≤ 2× the JSON).")

if __name__ == "__main__":
    main()
