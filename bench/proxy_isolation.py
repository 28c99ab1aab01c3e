"""A tarpit upstream against the rest of the server: latency of /health, a hosted feed's repodata and a
hosted package download while N concurrent requests (default 200) keep hitting a proxy feed whose only
upstream drips one byte per second (connector timeout 3 s), against the same with the server idle.

The tarpit's feed is kept under load for the whole measurement: each of the N client workers asks
again as soon as it is answered. Reported: p50 / p99 / max latency of each probe (sequential, one
connection), how many requests the tarpit feed answered and with which status, and how many
connections reached the tarpit (single flight and the circuit breaker keep it small).

Server (condagate, 1 worker, SQLite) on core 0; the load and the probes on core 1; the tarpit too.
Run: .venv/bin/python bench/proxy_isolation.py [--concurrency 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import common  # noqa: E402

from tarpit import Tarpit  # noqa: E402


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


def probe(base: str, paths: dict[str, str], seconds: float) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {name: [] for name in paths}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=30) as client:
        while time.monotonic() < deadline:
            for name, path in paths.items():
                started = time.perf_counter()
                response = client.get(path)
                found[name].append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code}")
            time.sleep(0.02)
    return found


def storm(base: str, path: str, concurrency: int, stop: threading.Event, statuses: collections.Counter[int]) -> None:
    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                statuses[(await client.get(path)).status_code] += 1
            except httpx.HTTPError:
                statuses[0] += 1

    async def run() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    common.pin_this_process(common.CLIENT_CORE)
    work = Path(tempfile.mkdtemp(prefix="condagate-bench-isolation-"))
    pit = Tarpit("drip", interval=1.0)
    server = None
    try:
        server = common.start_condagate(work / "condagate")
        payload = {"share/healthy/x": b"x" * 100_000}
        package = common.generate_one(work / "pkg", "healthy", "noarch", ".conda", payload)
        with server.admin() as admin:
            connector = {"name": "tarpit", "url": pit.url, "timeout_seconds": 3, "check": False}
            admin.post("/api/connectors", json=connector).raise_for_status()
            admin.post("/api/feeds", json={"name": "sick", "connectors": ["tarpit"]}).raise_for_status()
            admin.post("/api/feeds", json={"name": "hosted"}).raise_for_status()
            common.upload_one(admin, "hosted", package)
        paths = {
            "/health": "/health",
            "hosted repodata.json": "/conda/hosted/noarch/repodata.json",
            "hosted package (100 kB)": f"/conda/hosted/noarch/{package.name}",
        }
        idle = probe(server.url, paths, args.seconds)
        stop, statuses = threading.Event(), collections.Counter()
        loader = threading.Thread(
            target=storm, args=(server.url, "/conda/sick/linux-64/repodata.json", args.concurrency, stop, statuses)
        )
        loader.start()
        time.sleep(1.0)
        loaded = probe(server.url, paths, args.seconds)
        stop.set()
        loader.join(timeout=120)
        print(f"### Isolation: {args.concurrency} concurrent requests to a proxy feed whose upstream drips 1 byte/s\n")
        print(f"{common.machine()}\n")
        print("| probe | server idle | during the tarpit storm |")
        print("|---|---|---|")
        for name in paths:
            print(f"| {name} | {_percentiles(idle[name])} | {_percentiles(loaded[name])} |")
        print(f"\nTarpit feed answers during the storm: {dict(statuses)}; connections that reached the tarpit: "
              f"{pit.connections}")
    finally:
        pit.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
