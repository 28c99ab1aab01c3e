"""Serving throughput: condagate against nginx serving the same bytes, loaded with wrk.

Resources: a subdir's repodata.json (N records), its repodata.json.zst, and a ~1 MB package file of
random (incompressible) bytes. The bytes condagate serves are fetched over HTTP and written under an
nginx root at the same paths. Servers run on core 0, wrk on core 1 (``taskset``), each resource at 1
connection (``wrk -t1 -c1``) and at 64 (``wrk -t2 -c64``).

    .venv/bin/python bench/serve_http.py [--records 2000] [--duration 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import common

FEED = "bench"
SUBDIR = "linux-64"
LOADS = (("1", ["-t1", "-c1"]), ("64", ["-t2", "-c64"]))

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    access_log off;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types {{ application/json json; application/zstd zst; }}
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
}}
"""


@dataclass
class Load:
    server: str
    resource: str
    connections: str
    requests_per_s: float
    megabytes_per_s: float
    latency: str
    server_cores: float
    errors: str


@dataclass
class Results:
    records: int = 0
    duration: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    loads: list[Load] = field(default_factory=list)
    pathsend: str = ""


# --- nginx --------------------------------------------------------------------------------------------

def start_nginx(root: Path, core: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = common.free_port()
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, port=port))
    prefix = common.pinned(core) if core is not None else []
    command = [*prefix, shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(root), "-c", str(conf),
               "-e", str(root / "nginx-error.log")]
    stderr = (root / "nginx-stderr.log").open("wb")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: "
                               f"{(root / 'nginx-stderr.log').read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/", timeout=1)
            return process, url
        time.sleep(0.05)
    stop(process)
    raise RuntimeError("nginx did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- wrk ----------------------------------------------------------------------------------------------

def wrk(url: str, options: list[str], seconds: int) -> tuple[float, str, str]:
    command = [*common.pinned(common.CLIENT_CORE), shutil.which("wrk") or "/usr/bin/wrk", *options,
               f"-d{seconds}s", "--timeout", "10s", url]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    latency = re.search(r"Latency\s+(\S+)", done.stdout)
    errors = []
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout):
        errors.append(f"{match.group(1)} non-2xx")
    if match := re.search(r"Socket errors: (.*)", done.stdout):
        errors.append(match.group(1).strip())
    if rate is None:
        raise RuntimeError(f"could not read wrk's output:\n{done.stdout}")
    return float(rate.group(1)), latency.group(1) if latency else "?", "; ".join(errors)


def measure(name: str, pid: int, url: str, resource: str, size: int, seconds: int, results: Results,
            headers: list[str] | None = None) -> None:
    extra = [option for header in headers or [] for option in ("-H", header)]
    for connections, options in LOADS:
        cpu_before, started = common.cpu_seconds(pid), time.perf_counter()
        rate, latency, errors = wrk(url, [*options, *extra], seconds)
        cores = (common.cpu_seconds(pid) - cpu_before) / (time.perf_counter() - started)
        load = Load(name, resource, connections, rate, rate * size / 1e6, latency, cores, errors)
        results.loads.append(load)
        print(f"[serve_http] {name:10} {resource:18} c={connections:>2}: {rate:10,.0f} req/s "
              f"{load.megabytes_per_s:8,.1f} MB/s  server {cores:.2f} cores {errors}", file=sys.stderr)


# --- the benchmark ------------------------------------------------------------------------------------

def run(records: int = 2000, duration: int = 5, quiet_variant: bool = True, keep: bool = False) -> Results:
    results = Results(records=records, duration=duration)
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-serve-"))
    workdir.chmod(0o755)  # nginx's worker runs as nobody and must read the root
    common.pin_this_process(common.CLIENT_CORE)
    server = nginx = None
    try:
        print(f"[serve_http] generating {records} packages + one ~1 MB package in {workdir}", file=sys.stderr)
        generated = common.generate_packages(workdir / "packages", records, (SUBDIR,))
        big = common.generate_one(workdir / "big", "bench-big", "noarch", ".conda",
                                  {"share/bench-big/payload.bin": os.urandom(1_000_000)})
        server = common.start_condagate(workdir / "condagate")
        common.create_feed(server, FEED)
        common.upload_all(server, FEED, [g.path for g in generated])
        common.upload_all(server, FEED, [big])
        resources = {
            "repodata.json": f"/conda/{FEED}/{SUBDIR}/repodata.json",
            "repodata.json.zst": f"/conda/{FEED}/{SUBDIR}/repodata.json.zst",
            "package (1 MB)": f"/conda/{FEED}/noarch/{big.name}",
        }
        www = workdir / "www"
        with server.client() as client:
            for resource, path in resources.items():
                response = client.get(path)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path}: {response.status_code}")
                target = www / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(response.content)
                results.sizes[resource] = len(response.content)
            if big.read_bytes() != www.joinpath(resources["package (1 MB)"].lstrip("/")).read_bytes():
                raise RuntimeError("condagate served different bytes than were uploaded")
        for folder in [www, *www.rglob("*")]:
            folder.chmod(0o755 if folder.is_dir() else 0o644)
        nginx, nginx_url = start_nginx(workdir, common.SERVER_CORE)
        common.check_pinned(nginx.pid, common.SERVER_CORE)
        with httpx.Client(base_url=nginx_url) as client:
            for resource, path in resources.items():
                response = client.get(path)
                if response.status_code != 200 or len(response.content) != results.sizes[resource]:
                    raise RuntimeError(f"nginx does not serve {path} as condagate does: "
                                       f"{response.status_code}")

        with server.admin() as admin:
            created = admin.post("/api/apikeys", json={"feeds": [FEED], "permissions": ["view"]})
            created.raise_for_status()
            key_header = [f"X-API-Key: {created.json()['key']}"]
        targets = [
            ("condagate", server.process.pid, server.url, None),
            ("condagate, API key", server.process.pid, server.url, key_header),
            ("nginx", nginx.pid, nginx_url, None),
        ]
        for resource, path in resources.items():
            for name, pid, base, headers in targets:
                wrk(base + path, ["-t2", "-c64"], 1)  # warm-up, not counted
                measure(name, pid, base + path, resource, results.sizes[resource], duration, results, headers)
        if quiet_variant:
            # The same condagate without its per-request access log line (log level warning).
            server.stop()
            server = common.start_condagate(workdir / "condagate", CONDAGATE_LOG_LEVEL="warning")
            for resource, path in resources.items():
                wrk(server.url + path, ["-t2", "-c64"], 1)
                measure("condagate, log level warning", server.process.pid, server.url + path, resource,
                        results.sizes[resource], duration, results)
        return results
    finally:
        if nginx is not None:
            stop(nginx)
        if server is not None:
            server.stop()
        if keep:
            print(f"[serve_http] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _cpu_per_request(load: Load) -> float:
    return load.server_cores / load.requests_per_s if load.requests_per_s else float("nan")


def markdown(r: Results) -> str:
    sizes = ", ".join(f"{k} {v:,} bytes" for k, v in r.sizes.items())
    out = [
        f"### Serving: condagate vs nginx on the same bytes ({r.records:,}-record subdir; {sizes})",
        "",
        f"`wrk -t1 -c1 -d{r.duration}s` and `wrk -t2 -c64 -d{r.duration}s` on core {common.CLIENT_CORE}; "
        f"server on core {common.SERVER_CORE} (condagate: granian, 1 worker, default log level info, i.e. "
        "one access-log line per request; nginx: 1 worker, sendfile, no access log). MB/s = req/s × body "
        "size. Server CPU = CPU-seconds of the server's processes / wall seconds; CPU per request = that / "
        "req/s. Where nginx is far below one core, the client (wrk on one shared core) is the limit, and "
        "the CPU-per-request ratio says more than the req/s ratio.",
        "",
    ]
    nginx = {(x.resource, x.connections): x for x in r.loads if x.server == "nginx"}
    rows = []
    for load in r.loads:
        base = nginx.get((load.resource, load.connections))
        ratio = cpu_ratio = ""
        if load.server != "nginx" and base is not None:
            ratio = f"**{load.requests_per_s / base.requests_per_s:.2f}×**"
            cpu_ratio = f"{_cpu_per_request(load) / _cpu_per_request(base):.1f}×"
        rows.append([load.resource, load.connections, load.server, f"{load.requests_per_s:,.0f}",
                     f"{load.megabytes_per_s:,.1f}", load.latency, f"{load.server_cores:.2f}",
                     f"{_cpu_per_request(load) * 1000:.3f}", ratio, cpu_ratio, load.errors or "-"])
    rows.sort(key=lambda row: (list(r.sizes).index(str(row[0])), int(str(row[1]))))
    header = ["resource", "conns", "server", "req/s", "MB/s", "avg latency", "server CPU (cores)",
              "CPU ms / request", "req/s: condagate / nginx", "CPU per request: condagate / nginx", "errors"]
    out += [common.table(header, rows), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000, help="records in the served subdir")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--no-quiet-variant", action="store_true",
                        help="skip the extra condagate run with log level warning (no access log)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (and the server logs)")
    args = parser.parse_args()
    print(markdown(run(args.records, args.duration, not args.no_quiet_variant, args.keep)))


if __name__ == "__main__":
    main()
