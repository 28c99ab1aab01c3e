"""Where condagate's time goes: the pieces of the upload and download paths, timed in-process (no HTTP).

Not part of run_all.sh: it calls condagate's internal services, so it explains the HTTP figures rather
than being one. One thread, pinned to one core; medians per call.

    .venv/bin/python bench/request_costs.py [--packages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import common

FEED = "bench"
SUBDIR = "linux-64"


def per_call(action: Callable[[], object], calls: int) -> float:
    """Median seconds per call over ``calls`` calls, timed in batches of 50."""
    batches = []
    for _ in range(max(1, calls // 50)):
        started = time.perf_counter()
        for _ in range(50):
            action()
        batches.append((time.perf_counter() - started) / 50)
    return common.median(batches)


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def run(packages: int = 2000) -> list[tuple[str, float, str]]:
    from condagate.conda.package import read_package
    from condagate.services import channel, feeds, upload
    from condagate.services.authentication import principal_for_key
    from condagate.services.bootstrap import ensure_admin_key
    from condagate.services.context import Services
    from condagate.settings import Settings

    common.pin_this_process(common.SERVER_CORE)
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-costs-"))
    rows: list[tuple[str, float, str]] = []
    try:
        generated = common.generate_packages(workdir / "packages", packages + 50, (SUBDIR,))
        services = Services.open(Settings(data_dir=workdir / "data", admin_api_key=common.ADMIN_KEY,
                                          log_level="warning"))
        try:
            ensure_admin_key(services)
            feeds.create_feed(services, name=FEED)
            receive_s, read_s, store_s = [], [], []
            loop = asyncio.new_event_loop()
            try:
                for item in generated[:packages]:
                    data = item.path.read_bytes()
                    started = time.perf_counter()
                    incoming = loop.run_until_complete(upload.receive(services, _one_chunk(data)))
                    received = time.perf_counter()
                    read_package(incoming.path, item.path.name)
                    read = time.perf_counter()
                    upload.store_upload(services, feed_name=FEED, filename=item.path.name, incoming=incoming,
                                        uploaded_by="bench")
                    stored = time.perf_counter()
                    receive_s.append(received - started)
                    read_s.append(read - received)
                    store_s.append(stored - read)
            finally:
                loop.close()
            rows += [
                ("upload: receive (temp file, sha256 + md5)", common.median(receive_s), "per package"),
                ("upload: read_package (open archive, parse info/*.json)", common.median(read_s),
                 "per package; store_upload repeats it"),
                ("upload: store_upload (read_package + 5 ORM statements, blob rename, commit)",
                 common.median(store_s), "per package"),
                ("upload: store_upload minus read_package (database + blob)",
                 common.median(store_s) - common.median(read_s), "per package"),
            ]

            seconds, _ = common.timed(lambda: channel.subdir_snapshot(services, FEED, SUBDIR))
            rows.append((f"first snapshot of a {packages:,}-record subdir (json + zst + shards)", seconds,
                         "once"))
            extra = generated[packages:]
            rebuilds = []
            loop = asyncio.new_event_loop()
            try:
                for item in extra[:10]:
                    chunks = _one_chunk(item.path.read_bytes())
                    incoming = loop.run_until_complete(upload.receive(services, chunks))
                    upload.store_upload(services, feed_name=FEED, filename=item.path.name, incoming=incoming)
                    rebuilds.append(common.timed(lambda: channel.subdir_snapshot(services, FEED, SUBDIR))[0])
            finally:
                loop.close()
            rows.append(("incremental snapshot after +1 package", common.median(rebuilds), "median of 10"))

            filename = generated[0].path.name
            rows += [
                ("request: principal_for_key (API key → principal, 1 ORM read)",
                 per_call(lambda: principal_for_key(services, common.ADMIN_KEY), 2000),
                 "per request with a key"),
                ("request: resolve_feed (1 ORM read)",
                 per_call(lambda: channel.resolve_feed(services, FEED), 2000), "per request"),
                ("request: subdir_snapshot, unchanged (resolve_feed + subdir_version: 2 ORM reads)",
                 per_call(lambda: channel.subdir_snapshot(services, FEED, SUBDIR), 2000),
                 "every repodata / shard request"),
                ("request: package_blob (snapshot + record decode + stat)",
                 per_call(lambda: channel.package_blob(services, FEED, SUBDIR, filename), 2000),
                 "every package download"),
            ]
        finally:
            services.close()
        return rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def markdown(rows: list[tuple[str, float, str]]) -> str:
    body = [(what, f"{seconds * 1000:.3f} ms", note) for what, seconds, note in rows]
    return "\n".join(["### In-process costs (no HTTP), one thread on one core", "",
                      common.table(["step", "median time", "counted"], body), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=2000)
    args = parser.parse_args()
    print(markdown(run(args.packages)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
