"""Blob storage throughput (issue 13): uploads and downloads on the S3 backend against the local one,
same run, same package files.

Two ``condagate serve`` (granian, 1 worker, SQLite, access log on), identical but for
``CONDAGATE_STORAGE_URL``: a local folder, and ``s3://BUCKET/bench`` on moto's S3 server (tests/s3_server.py,
a Python process on 127.0.0.1). Packages of random (incompressible) bytes, ~1 MB and ~32 MB:
- uploads: N files of each size, ``POST /api/feeds/FEED/upload/NAME`` by C concurrent clients (httpx,
  one keep-alive connection each); the S3 server stores each after it is hashed and verified (one PUT,
  multipart above 64 MiB);
- downloads: M GETs of each size, round robin over the uploaded files, by C clients, each body read
  whole and its length checked (every file's bytes were checked once before); S3 streams from the store,
  and with ``CONDAGATE_S3_REDIRECT=on`` (the same S3 server restarted on the same data) answers a 302
  to a presigned URL that the client follows to moto.
For each phase: wall seconds, MB/s, requests/s, and CPU from /proc (utime + stime of each process
tree over the phase): condagate's and moto's, per request and in cores (CPU seconds / wall seconds),
so the reader sees which side saturates, and the client's (this process's threads). moto is a Python
server, so the S3 throughput is moto's as much as condagate's: a real S3 or MinIO moves the MB/s, while
condagate's CPU per request is its own. Nothing is pinned (the machine may have only two cores).

    flock /tmp/condagate-bench.lock .venv/bin/python bench/s3_storage.py [--uploads 32 8] [--downloads 400 48]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import s3_server  # noqa: E402  (tests/, put on sys.path by common)
import servers  # noqa: E402

FEED = "bench"
SIZES = {"1 MB": 1_000_000, "32 MB": 32_000_000}


@dataclass
class Row:
    backend: str
    operation: str
    size: str
    requests: int
    wall: float
    megabytes: float
    condagate_cpu: float
    moto_cpu: float | None
    client_cpu: float

    def cells(self) -> list[str]:
        moto = "-" if self.moto_cpu is None else f"{self.moto_cpu / self.requests * 1000:.1f}"
        moto_cores = "-" if self.moto_cpu is None else f"{self.moto_cpu / self.wall:.2f}"
        return [
            self.backend,
            self.operation,
            self.size,
            str(self.requests),
            f"{self.wall:.2f}",
            f"{self.megabytes / self.wall:,.1f}",
            f"{self.requests / self.wall:,.1f}",
            f"{self.condagate_cpu / self.requests * 1000:.1f}",
            f"{self.condagate_cpu / self.wall:.2f}",
            moto,
            moto_cores,
            f"{self.client_cpu / self.wall:.2f}",
        ]


HEADER = [
    "backend", "operation", "size", "requests", "wall s", "MB/s", "req/s",
    "condagate CPU ms/req", "condagate cores", "moto CPU ms/req", "moto cores",
    "client cores",
]


def measured(backend: str, operation: str, size: str, requests: int, megabytes: float, server: servers.Server,
             moto_pid: int | None, action: Callable[[], object]) -> Row:
    cpu_server = common.cpu_seconds(server.process.pid)
    cpu_moto = common.cpu_seconds(moto_pid) if moto_pid is not None else 0.0
    cpu_client = time.process_time()  # this process (the client threads), without its children
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    row = Row(
        backend, operation, size, requests, wall, megabytes,
        common.cpu_seconds(server.process.pid) - cpu_server,
        None if moto_pid is None else common.cpu_seconds(moto_pid) - cpu_moto,
        time.process_time() - cpu_client,
    )
    print("[s3_storage] " + " | ".join(row.cells()), file=sys.stderr)
    return row


def download_all(server: servers.Server, paths: list[str], sizes: dict[str, int], concurrency: int,
                 follow: bool) -> None:
    local = threading.local()
    clients: list[httpx.Client] = []
    guard = threading.Lock()

    def fetch(path: str) -> None:
        if not hasattr(local, "client"):
            local.client = server.client(follow_redirects=follow)
            with guard:
                clients.append(local.client)
        received = 0
        with local.client.stream("GET", path) as response:
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code}")
            for chunk in response.iter_raw(1024 * 1024):
                received += len(chunk)
        if received != sizes[path]:
            raise RuntimeError(f"GET {path}: {received} bytes, expected {sizes[path]}")

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(fetch, paths))
    finally:
        for client in clients:
            client.close()


def check_bytes(server: servers.Server, files: list[Path], follow: bool) -> None:
    with server.client(follow_redirects=follow) as client:
        for path in files:
            answer = client.get(f"/conda/{FEED}/noarch/{path.name}")
            if hashlib.sha256(answer.content).digest() != hashlib.sha256(path.read_bytes()).digest():
                raise RuntimeError(f"{server.url} served other bytes for {path.name} ({answer.status_code})")
            if follow and not answer.history:
                raise RuntimeError("CONDAGATE_S3_REDIRECT=on answered without a redirect")


def run(uploads: dict[str, int], downloads: dict[str, int], concurrency: int, keep: bool) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-s3-"))
    rows: list[Row] = []
    started: list[servers.Server] = []
    moto = None
    try:
        files: dict[str, list[Path]] = {}
        for size, count in uploads.items():
            print(f"[s3_storage] generating {count} packages of {size}", file=sys.stderr)
            files[size] = [
                common.generate_one(workdir / "packages", f"bench-{size.split()[0]}mb-{i}", "noarch", ".conda",
                                    {"share/payload.bin": os.urandom(SIZES[size])})
                for i in range(count)
            ]
        moto = s3_server.S3Server(workdir)
        bucket = moto.new_bucket()
        s3_env = s3_server.server_env(moto.url, bucket, "bench")
        backends = {"local": {}, "S3 (moto)": s3_env}
        servers_by_backend: dict[str, servers.Server] = {}
        for backend, env in backends.items():
            server = common.start_condagate(workdir / backend.split()[0].lower(), core=None, **env)
            started.append(server)
            servers_by_backend[backend] = server
            common.create_feed(server, FEED)
        for size in uploads:
            megabytes = sum(path.stat().st_size for path in files[size]) / 1e6
            for backend, server in servers_by_backend.items():
                moto_pid = moto.process.pid if backend != "local" else None
                rows.append(measured(
                    backend, f"upload (c={concurrency})", size, len(files[size]), megabytes, server, moto_pid,
                    lambda server=server, size=size: common.upload_all(server, FEED, files[size], concurrency),
                ))
        for server in servers_by_backend.values():
            check_bytes(server, [path for group in files.values() for path in group], follow=False)

        def downloads_on(backend: str, server: servers.Server, follow: bool, label: str) -> None:
            for size, count in downloads.items():
                names = [f"/conda/{FEED}/noarch/{path.name}" for path in files[size]]
                sizes = {f"/conda/{FEED}/noarch/{path.name}": path.stat().st_size for path in files[size]}
                paths = [names[i % len(names)] for i in range(count)]
                megabytes = sum(sizes[path] for path in paths) / 1e6
                rows.append(measured(
                    backend, f"{label} (c={concurrency})", size, count, megabytes, server,
                    moto.process.pid if backend != "local" else None,  # type: ignore[union-attr]
                    lambda paths=paths, sizes=sizes: download_all(server, paths, sizes, concurrency, follow),
                ))

        for backend, server in servers_by_backend.items():
            downloads_on(backend, server, False, "download" if backend == "local" else "download, streamed")
        # The same S3 server, restarted with presigned redirects: condagate answers 302s, moto sends the bytes.
        s3_server_instance = servers_by_backend["S3 (moto)"]
        s3_server_instance.stop()
        redirecting = common.start_condagate(
            s3_server_instance.data_dir, core=None, **s3_env, CONDAGATE_S3_REDIRECT="on"
        )
        started.append(redirecting)
        check_bytes(redirecting, [path for group in files.values() for path in group], follow=True)
        downloads_on("S3 (moto)", redirecting, True, "download, 302 → presigned")
        return rows
    finally:
        for server in started:
            server.stop()
        if moto is not None:
            moto.stop()
        if keep:
            print(f"[s3_storage] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, nargs=2, default=[32, 8], metavar=("SMALL", "LARGE"),
                        help="uploads of ~1 MB and of ~32 MB files (default 32 8)")
    parser.add_argument("--downloads", type=int, nargs=2, default=[400, 48], metavar=("SMALL", "LARGE"),
                        help="downloads of ~1 MB and of ~32 MB files (default 400 48)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (server and moto logs)")
    options = parser.parse_args()
    sizes = list(SIZES)
    load = os.getloadavg()[0]
    rows = run(dict(zip(sizes, options.uploads, strict=True)), dict(zip(sizes, options.downloads, strict=True)),
               options.concurrency, options.keep)
    print(f"\n{common.machine()}; load average before the run {load:.2f}\n")
    print(common.table(HEADER, [row.cells() for row in rows]))


if __name__ == "__main__":
    main()
