"""The channel's hot path (issue 12): condagate's CPU per request against a bare granian ASGI app and
nginx serving the same bytes, in one run.

Resources: ``repodata.json.zst`` of an N-record subdir (200, and 304 with ``If-None-Match``), one
shard (CEP 16), and a ~1 MB package file; condagate anonymously and with a feed API key. With
``--in-process``, also a proxy feed's ``repodata.json.zst`` (200 and 304; an N-record upstream served
by nginx, cache lifetime 30 minutes). Baselines:
``bench/bare_granian_app.py`` (granian, 1 worker, no framework: start + body, ``pathsend`` for the
package) and nginx (1 worker, sendfile) serving the same bytes. Every server runs on core 0, wrk
(``-t1 -c64``) on core 1 (``taskset``). Server CPU = utime + stime from ``/proc/PID/stat`` of the
server's process tree (granian's main process and its worker) over the run; CPU per request = that
/ the requests wrk completed.

With ``--accel``, also: condagate started with ``CONDAGATE_ACCEL_REDIRECT`` behind an nginx that
serves the blobs from an ``internal`` location (both on core 0), the 1 MB download through it
against bare nginx.

With ``--in-process`` instead: condagate's own Python work per request, without a server. The same
data is set up through a real server, which is then stopped; a fresh interpreter on core 0 opens the
app in-process (``create_app_from_env``, lifespan and all, logging to a file) and calls it directly
with ASGI messages, N times per resource after a warm-up. CPU per request = that interpreter's CPU
(every thread: the access-log writer's too) over the N requests plus writing out what they left
behind (access log, counters), / N. ``--profile RESOURCE`` adds cProfile's top functions for one.

    .venv/bin/python bench/hot_path.py [--records 2000] [--duration 5] [--accel] [--keep]
    .venv/bin/python bench/hot_path.py --in-process [--requests 20000] [--profile "repodata.json.zst 304"]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import zstandard

import common
import proxy
from serve_http import start_nginx, stop

FEED = "bench"
PROXY_FEED = "bench-proxy"
SUBDIR = "linux-64"
BENCH = Path(__file__).resolve().parent

ACCEL_NGINX_CONF = """\
daemon off;
user root;  # the bench runs as root and the data folder is 0700: the worker must read the blobs
worker_processes 1;
pid {root}/nginx-accel.pid;
error_log {root}/nginx-accel-error.log warn;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    upstream condagate {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://condagate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
        location /_condagate_blobs/ {{
            internal;
            alias {blobs}/;
        }}
    }}
}}
"""


@dataclass
class Row:
    resource: str
    server: str
    requests_per_s: float
    cpu_ms_per_request: float
    server_cores: float
    errors: str


@dataclass
class Results:
    records: int = 0
    duration: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def wrk(url: str, seconds: int, headers: list[str]) -> tuple[float, int, str]:
    extra = [option for header in headers for option in ("-H", header)]
    command = [*common.pinned(common.CLIENT_CORE), shutil.which("wrk") or "/usr/bin/wrk", "-t1", "-c64",
               *extra, f"-d{seconds}s", "--timeout", "10s", url]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    count = re.search(r"(\d+) requests in", done.stdout)
    if done.returncode != 0 or rate is None or count is None:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    errors = []
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout):
        errors.append(f"{match.group(1)} non-2xx")
    if match := re.search(r"Socket errors: (.*)", done.stdout):
        errors.append(match.group(1).strip())
    return float(rate.group(1)), int(count.group(1)), "; ".join(errors)


def measure(results: Results, resource: str, server: str, pids: list[int], url: str, seconds: int,
            headers: list[str]) -> None:
    wrk(url, 1, headers)  # warm-up, not counted
    before = sum(common.cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    rate, count, errors = wrk(url, seconds, headers)
    elapsed = time.perf_counter() - started
    cpu = sum(common.cpu_seconds(pid) for pid in pids) - before
    row = Row(resource, server, rate, cpu / count * 1000 if count else float("nan"), cpu / elapsed, errors)
    results.rows.append(row)
    print(f"[hot_path] {resource:26} {server:26} {rate:10,.0f} req/s  {row.cpu_ms_per_request:.3f} ms CPU/req "
          f"({row.server_cores:.2f} cores) {errors}", file=sys.stderr)


def start_bare_granian(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = common.free_port()
    env = {**os.environ, "BARE_ROOT": str(root), "PYTHONPATH": str(BENCH)}
    command = [*common.pinned(common.SERVER_CORE), sys.executable, "-m", "granian", "--interface", "asgi",
               "--workers", "1", "--host", "127.0.0.1", "--port", str(port), "--no-log",
               "bare_granian_app:app"]
    process = subprocess.Popen(command, cwd=BENCH, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"bare granian exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/", timeout=1)
            return process, url
        time.sleep(0.05)
    stop(process)
    raise RuntimeError("bare granian did not start")


def start_accel_nginx(root: Path, upstream: str, blobs: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = common.free_port()
    conf = root / "nginx-accel.conf"
    conf.write_text(ACCEL_NGINX_CONF.format(root=root, port=port, upstream=upstream, blobs=blobs))
    command = [*common.pinned(common.SERVER_CORE), shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(root),
               "-c", str(conf), "-e", str(root / "nginx-accel-error.log")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(root / 'nginx-accel-error.log').read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/health", timeout=1)
            return process, url
        time.sleep(0.05)
    stop(process)
    raise RuntimeError("nginx (accel) did not start")


def _first_shard(index_bytes: bytes) -> str:
    index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index_bytes, max_output_size=1 << 30))
    name = sorted(index["shards"])[0]
    return f"shards/{index['shards'][name].hex()}.msgpack.zst"


def run(records: int = 2000, duration: int = 5, accel: bool = False, keep: bool = False,
        env: dict[str, str] | None = None) -> Results:
    results = Results(records=records, duration=duration)
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-hot-"))
    workdir.chmod(0o755)  # nginx's worker runs as nobody and must read the root
    common.pin_this_process(common.CLIENT_CORE)
    started: list[subprocess.Popen[bytes]] = []
    server = None
    try:
        print(f"[hot_path] generating {records} packages + one ~1 MB package in {workdir}", file=sys.stderr)
        generated = common.generate_packages(workdir / "packages", records, (SUBDIR,))
        big = common.generate_one(workdir / "big", "bench-big", "noarch", ".conda",
                                  {"share/bench-big/payload.bin": os.urandom(1_000_000)})
        server = common.start_condagate(workdir / "condagate", **(env or {}))
        common.create_feed(server, FEED)
        common.upload_all(server, FEED, [g.path for g in generated])
        common.upload_all(server, FEED, [big])
        base = f"/conda/{FEED}/{SUBDIR}/"
        paths = {"repodata.json.zst": base + "repodata.json.zst", "package (1 MB)": f"/conda/{FEED}/noarch/{big.name}"}
        www = workdir / "www"
        with server.client() as client:
            index = client.get(base + "repodata_shards.msgpack.zst")
            index.raise_for_status()
            paths["shard"] = base + _first_shard(index.content)
            for resource, path in paths.items():
                response = client.get(path)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path}: {response.status_code}")
                target = www / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(response.content)
                results.sizes[resource] = len(response.content)
            condagate_etag = client.get(paths["repodata.json.zst"]).headers["etag"]
            client.get(f"/conda/{FEED}/noarch/repodata.json").raise_for_status()  # as conda does first
        for item in [www, *www.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        nginx, nginx_url = start_nginx(workdir, common.SERVER_CORE)
        started.append(nginx)
        bare, bare_url = start_bare_granian(www)
        started.append(bare)
        common.check_pinned(bare.pid, common.SERVER_CORE)
        etags = {"condagate": condagate_etag,
                 "nginx": httpx.get(nginx_url + paths["repodata.json.zst"]).headers["etag"],
                 "bare granian": httpx.get(bare_url + paths["repodata.json.zst"]).headers["etag"]}
        for name, url in (("nginx", nginx_url), ("bare granian", bare_url)):
            for resource, path in paths.items():
                got = httpx.get(url + path)
                if got.status_code != 200 or len(got.content) != results.sizes[resource]:
                    raise RuntimeError(f"{name} does not serve {path} as condagate does: {got.status_code}")
        with server.admin() as admin:
            created = admin.post("/api/apikeys", json={"feeds": [FEED], "permissions": ["view"]})
            created.raise_for_status()
            key = [f"X-API-Key: {created.json()['key']}"]
        targets = [
            ("condagate", [server.process.pid], server.url, []),
            ("condagate, API key", [server.process.pid], server.url, key),
            ("bare granian", [bare.pid], bare_url, []),
            ("nginx", [nginx.pid], nginx_url, []),
        ]
        resources = [("repodata.json.zst", paths["repodata.json.zst"], False),
                     ("repodata.json.zst 304", paths["repodata.json.zst"], True),
                     ("shard", paths["shard"], False),
                     ("package (1 MB)", paths["package (1 MB)"], False)]
        for resource, path, conditional in resources:
            for name, pids, url, headers in targets:
                etag = etags[name.split(",")[0]]
                measure(results, resource, name, pids, url + path, duration,
                        [*headers, f"If-None-Match: {etag}"] if conditional else headers)
        if accel:
            server.stop()
            server = common.start_condagate(workdir / "condagate", CONDAGATE_ACCEL_REDIRECT="/_condagate_blobs/",
                                            CONDAGATE_TRUSTED_PROXIES="127.0.0.1", **(env or {}))
            front, front_url = start_accel_nginx(workdir, server.url.removeprefix("http://"),
                                                 workdir / "condagate" / "blobs")
            started.append(front)
            httpx.get(front_url + f"/conda/{FEED}/noarch/repodata.json").raise_for_status()
            got = httpx.get(front_url + paths["package (1 MB)"])
            if got.status_code != 200 or got.content != big.read_bytes():
                raise RuntimeError(f"nginx + condagate (accel) did not serve the package: {got.status_code}")
            measure(results, "package (1 MB)", "nginx + condagate (accel)", [front.pid, server.process.pid],
                    front_url + paths["package (1 MB)"], duration, [])
        return results
    finally:
        for process in started:
            stop(process)
        if server is not None:
            server.stop()
        if keep:
            print(f"[hot_path] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def in_process(records: int, requests: int, profile: str | None, keep: bool) -> None:
    """Set up as ``run`` does, then measure in a fresh interpreter on the server's core (``_measure``)."""
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-inproc-"))
    common.pin_this_process(common.CLIENT_CORE)
    try:
        generated = common.generate_packages(workdir / "packages", records, (SUBDIR,))
        big = common.generate_one(workdir / "big", "bench-big", "noarch", ".conda",
                                  {"share/bench-big/payload.bin": os.urandom(1_000_000)})
        # A proxy feed's upstream: nginx on the client's core, up while the app runs in-process too.
        upstream_body, _ = proxy.big_repodata(records, max(1, records // 10))
        www = workdir / "upstream" / "www"
        proxy.write_repodata(www / SUBDIR, upstream_body)
        proxy.write_repodata(www / "noarch", proxy.noarch_repodata([]))  # what adding a connector checks
        for path in [workdir, workdir / "upstream", www, *www.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # nginx's worker runs as nobody and must read them
        upstream, upstream_url = start_nginx(workdir / "upstream", common.CLIENT_CORE)
        server = common.start_condagate(workdir / "condagate")
        try:
            common.create_feed(server, FEED)
            common.upload_all(server, FEED, [g.path for g in generated])
            common.upload_all(server, FEED, [big])
            proxy.create_proxy_feed(server, PROXY_FEED, "bench-upstream", upstream_url)
            base = f"/conda/{FEED}/{SUBDIR}/"
            proxied = f"/conda/{PROXY_FEED}/{SUBDIR}/repodata.json.zst"
            with server.client() as client:
                shard = base + _first_shard(client.get(base + "repodata_shards.msgpack.zst").content)
                etag = client.get(base + "repodata.json.zst").headers["etag"]
            with server.admin() as admin:
                created = admin.post("/api/apikeys", json={"feeds": [FEED], "permissions": ["view"]})
                created.raise_for_status()
                key = created.json()["key"]
        finally:
            server.stop()
        package = f"/conda/{FEED}/noarch/{big.name}"
        conditional = [["if-none-match", etag]]
        cases = {
            "repodata.json.zst": [base + "repodata.json.zst", []],
            "repodata.json.zst 304": [base + "repodata.json.zst", conditional],
            "repodata.json.zst 304, API key": [base + "repodata.json.zst", [*conditional, ["x-api-key", key]]],
            "shard": [shard, []],
            "package (1 MB)": [package, []],
            "package (1 MB), API key": [package, [["x-api-key", key]]],
            # The ETag is taken in the measuring process: its merge of the upstream is its own.
            "proxy repodata.json.zst": [proxied, []],
            "proxy repodata.json.zst 304": [proxied, [["if-none-match", "ETAG OF " + proxied]]],
        }
        spec = {"requests": requests, "profile": profile, "cases": cases, "log": str(workdir / "in-process.log"),
                "warm": [f"/conda/{FEED}/noarch/repodata.json", proxied]}
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
        env.update({"CONDAGATE_DATA_DIR": str(workdir / "condagate"), "CONDAGATE_DOWNLOAD_FLUSH_SECONDS": "2",
                    "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics")})
        (workdir / "metrics").mkdir()
        command = [*common.pinned(common.SERVER_CORE), sys.executable, str(Path(__file__).resolve()), "--measure",
                   json.dumps(spec)]
        try:
            if subprocess.run(command, env=env, check=False).returncode != 0:
                log_tail = Path(spec["log"]).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the in-process run failed:\n{log_tail}")
        finally:
            stop(upstream)
    finally:
        if keep:
            print(f"[hot_path] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(spec: dict[str, Any]) -> None:
    """In the fresh interpreter: the app in-process, called with ASGI messages (see ``in_process``)."""
    log = open(spec["log"], "wb")  # noqa: SIM115 - the app's log (stderr) for the whole run
    os.dup2(log.fileno(), 2)
    from starlette.concurrency import run_in_threadpool

    from condagate.web.app import create_app_from_env

    async def main() -> None:
        app = create_app_from_env()
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                           inbox.get, outbox.put))
        if (await outbox.get())["type"] != "lifespan.startup.complete":
            raise RuntimeError("the app did not start")
        services = app.state.services
        statuses: set[int] = set()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        etags: dict[str, str] = {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.add(message["status"])
                etags["last"] = dict(message["headers"]).get(b"etag", b"").decode()

        async def call(path: str, headers: list[list[str]]) -> None:
            await app({"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                       "server": ("127.0.0.1", 8624), "client": ("127.0.0.1", 40000), "scheme": "http",
                       "method": "GET", "root_path": "", "path": path, "raw_path": path.encode(),
                       "query_string": b"", "headers": [(b"host", b"127.0.0.1:8624"),
                                                       *((k.encode(), v.encode()) for k, v in headers)],
                       "extensions": {"http.response.pathsend": {}}, "state": {}}, receive, send)

        drain = getattr(getattr(app.state, "access_log", None), "drain", None)  # a tree without one: logs inline

        async def settle() -> None:  # what the requests left behind, written now
            if drain is not None:
                await run_in_threadpool(drain)
            await run_in_threadpool(services.flush)

        for path in spec["warm"]:
            await call(path, [])
            for _ in range(100):  # a proxy feed's first request starts the upstream fetch and waits a bounded time
                if statuses == {200}:
                    break
                statuses.clear()
                await asyncio.sleep(0.1)
                await call(path, [])
            statuses.clear()
        for path, headers in spec["cases"].values():
            for header in headers:
                if header[1] == "ETAG OF " + path:
                    await call(path, [])
                    header[1] = etags["last"]
        print(f"{'resource':32} µs CPU / request  (in-process, {spec['requests']:,} requests each)")
        for name, (path, headers) in spec["cases"].items():
            for _ in range(500):
                await call(path, headers)
            await settle()
            statuses.clear()
            profiler = cProfile.Profile() if spec["profile"] == name else None
            started = time.process_time()
            if profiler:
                profiler.enable()
            for _ in range(spec["requests"]):
                await call(path, headers)
            if profiler:
                profiler.disable()
            await settle()
            cpu = time.process_time() - started
            print(f"{name:32} {cpu / spec['requests'] * 1e6:8.1f}  (statuses {sorted(statuses)})", flush=True)
            if profiler:
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan

    asyncio.run(main())


def markdown(r: Results) -> str:
    sizes = ", ".join(f"{k} {v:,} bytes" for k, v in r.sizes.items())
    out = [f"### Hot path: condagate vs a bare granian app and nginx ({r.records:,}-record subdir; {sizes})", "",
           f"`wrk -t1 -c64 -d{r.duration}s` on core {common.CLIENT_CORE}, every server on core "
           f"{common.SERVER_CORE} (1 worker each; condagate with its access log on). CPU per request = server "
           "CPU (utime + stime of its process tree) / requests completed.", ""]
    by = {(row.resource, row.server): row for row in r.rows}
    table = []
    for row in r.rows:
        bare = by.get((row.resource, "bare granian"))
        nginx = by.get((row.resource, "nginx"))
        vs_bare = f"{row.cpu_ms_per_request / bare.cpu_ms_per_request:.2f}×" if bare else ""
        vs_nginx = f"{row.cpu_ms_per_request / nginx.cpu_ms_per_request:.1f}×" if nginx else ""
        rate_nginx = f"{row.requests_per_s / nginx.requests_per_s:.2f}×" if nginx else ""
        table.append([row.resource, row.server, f"{row.requests_per_s:,.0f}", f"{row.cpu_ms_per_request:.3f}",
                      f"{row.server_cores:.2f}", vs_bare, vs_nginx, rate_nginx, row.errors or "-"])
    header = ["resource", "server", "req/s", "CPU ms / request", "server cores", "CPU/req vs bare granian",
              "CPU/req vs nginx", "req/s vs nginx", "errors"]
    return "\n".join([*out, common.table(header, table), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--accel", action="store_true", help="also nginx + condagate with X-Accel-Redirect")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="condagate's Python work per request, no server")
    parser.add_argument("--requests", type=int, default=20000, help="per resource, with --in-process")
    parser.add_argument("--profile", metavar="RESOURCE", help="with --in-process: cProfile's top functions")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the fresh interpreter of --in-process
    args = parser.parse_args()
    if args.measure:
        _measure(json.loads(args.measure))
    elif args.in_process:
        in_process(args.records, args.requests, args.profile, args.keep)
    else:
        print(markdown(run(args.records, args.duration, args.accel, args.keep)))


if __name__ == "__main__":
    main()
