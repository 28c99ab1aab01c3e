"""What one large upstream subdir costs a worker in memory, in process: the generated conda-forge-like
document (``proxy.big_repodata``) parsed and cut into an ``UpstreamSnapshot`` (records kept compressed
in blocks, ``conda.parts_records``), then a feed snapshot over it with three of the feed's own
packages laid over, then its shards built. RSS is read after ``gc.collect()`` and ``malloc_trim``, so
it is what the worker keeps, not what the allocator had not handed back yet; pymalloc's arenas are
reported apart (``sys._debugmallocstats``), as the part of the RSS that is fragmentation.

    .venv/bin/python bench/subdir_memory.py [--records 500000] [--names 16000]
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
from condagate.conda.upstream_repodata import parse_upstream_repodata
from condagate.services.context import Services
from condagate.services.feeds import create_feed
from condagate.services.repodata_cache import RepodataCache
from condagate.services.upload import store_upload
from condagate.settings import Settings
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_cache import UpstreamSnapshot, UpstreamView

import package_factory


def _rss_mib() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


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
    rows: list[tuple[str, float, str]] = [("interpreter and services", _rss_mib(), "")]
    body, _ = proxy.big_repodata(args.records, args.names)
    json_mib = len(body) / 2**20
    started = time.perf_counter()
    parsed = parse_upstream_repodata(body)
    del body
    upstream = UpstreamSnapshot.of(1, "linux-64", parsed, 1, '"bench"', time.time())
    del parsed
    rows.append(("+ the upstream snapshot", _rss_mib(), f"{time.perf_counter() - started:.2f} s to parse and cut"))

    class OneUpstream:
        def view(self, connector: ConnectorConfig, subdir: str, refresh: bool = True) -> UpstreamView:
            return UpstreamView(upstream, None, "")

    cache = RepodataCache(services.db, OneUpstream(), services.repodata._shard_files)  # type: ignore[arg-type]
    connectors = [ConnectorConfig(1, "bench", "http://127.0.0.1:9")]
    snapshot = cache.snapshot(feed_id=1, subdir="linux-64", connectors=connectors)
    rows.append(("+ the feed's snapshot (its own packages laid over)", _rss_mib(), type(snapshot.records).__name__))
    snapshot.shard_index()
    if snapshot._spilling is not None:
        snapshot._spilling.result()
    rows.append(("+ its shards (bodies in this host's files)", _rss_mib(), f"{len(snapshot.shards()):,} shards"))
    arenas, live = _pymalloc()
    services.close()
    shutil.rmtree(workdir, ignore_errors=True)
    start = rows[0][1]
    print(f"### One upstream subdir in a worker: {args.records:,} records, JSON {json_mib:,.0f} MiB\n")
    print("| step | RSS | over the start | over the start ÷ JSON | |")
    print("|---|---|---|---|---|")
    for step, rss, note in rows:
        print(f"| {step} | {rss:,.0f} MiB | {rss - start:,.0f} MiB | {(rss - start) / json_mib:.2f}× | {note} |")
    print(f"\npymalloc at the end: {arenas:,.0f} MiB of arenas holding {live:,.0f} MiB of live objects.")


if __name__ == "__main__":
    main()
