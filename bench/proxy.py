"""Proxy feeds: cached package downloads, repodata refresh at conda-forge scale, and quetz as a proxy.

A generated upstream channel is served by nginx (the "upstream nginx", with an access log so that the
benchmark can check what condagate asked the upstream for):

- ``noarch/``: two real packages, ~1 MB and ~50 MB of random (incompressible) payload, with their
  repodata;
- ``linux-64/``: ``repodata.json`` + ``repodata.json.zst`` with N generated records (default 500,000,
  ~16,000 distinct names, conda-forge-like fields and sizes) and no package files.

(a) Downloads: a condagate proxy feed on that upstream fetches each package once (cold), then wrk
    loads the cached file at 1 and 64 connections; baselines: a second nginx (no access log) serving
    the same files, the same 1 MB file uploaded to a hosted condagate feed, and quetz (c).
(b) Repodata, in a fresh condagate: the first (cold) GET of ``linux-64/repodata.json.zst`` with the
    worker's peak RSS; warm GETs (TTFB + total) against nginx serving the same bytes; a connector with
    ``cache_minutes=0`` (every request revalidates, the upstream answers 304); latency of a small hosted
    feed's repodata while a cold refresh and the shard build run; the first GET of
    ``repodata_shards.msgpack.zst``; the first GET after a restart (repodata from condagate's disk
    cache); and the same parse/encode steps in a fresh interpreter (the work without a server).
(c) quetz 0.10.4 (``quetz-server`` in its own venv, default /tmp/quetz-venv) as a proxy channel to the
    same upstream, when installed.

    .venv/bin/python bench/proxy.py [--records 500000] [--names 16000] [--duration 5] [--no-quetz]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import zstandard

import common
import serve_http

SMALL_MB = 1_000_000
LARGE_MB = 50_000_000
QUETZ_VENV = Path("/tmp/quetz-venv")
QUETZ_INSTALL = "python3 -m venv /tmp/quetz-venv && /tmp/quetz-venv/bin/pip install quetz-server fastapi==0.109.2"
LICENSES = ("MIT", "BSD-3-Clause", "Apache-2.0", "GPL-3.0-or-later", "LGPL-2.1-or-later", "MPL-2.0",
            "BSD-2-Clause", "Zlib", "LicenseRef-Proprietary", "PSF-2.0")
PREFIXES = ("", "", "", "py", "lib", "r-", "perl-", "ros-humble-", "python-", "jupyter", "font-", "xorg-",
            "ocaml-", "go-", "rust-", "julia-")
SYLLABLES = ("ab", "ar", "co", "da", "el", "fi", "gra", "io", "jet", "ka", "lo", "mu", "net", "on", "py",
             "qu", "ra", "st", "ta", "ux", "vi", "wa", "xo", "yz", "zen", "arrow", "geo", "num", "sci", "tor")


# --- the generated upstream ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Package:
    path: Path
    subdir: str
    record: dict[str, object]

    @property
    def name(self) -> str:
        return self.path.name


def make_package(directory: Path, name: str, payload_bytes: int) -> Package:
    spec = common.package_factory.PackageSpec(name=name, version="1.0", build="0", subdir="noarch",
                                       files={f"share/{name}/payload.bin": os.urandom(payload_bytes)})
    path = common.package_factory.write_package(directory, spec, ".conda")
    data = path.read_bytes()
    record = {**spec.index(), "size": len(data), "md5": hashlib.md5(data).hexdigest(),
              "sha256": hashlib.sha256(data).hexdigest()}
    return Package(path, "noarch", record)


def write_repodata(folder: Path, body: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "repodata.json").write_bytes(body)
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=True, threads=-1)
    (folder / "repodata.json.zst").write_bytes(compressor.compress(body))


def big_repodata(records: int, names: int, seed: int = 20261125, in_order: bool = True) -> tuple[bytes, int]:
    """conda-forge-like linux-64 repodata as JSON bytes (written as text: every value is plain ASCII),
    its records in file name order as channel indexers write them (``in_order``; conda-index and
    conda-build ``json.dumps(..., sort_keys=True)``), else in the order they were drawn.

    Names are drawn with a skew (a few names have thousands of builds, most a dozen or so), as on
    conda-forge; ~70 % .conda, ~30 % .tar.bz2; 1-8 depends, 0-2 constrains; random md5/sha256."""
    rng = random.Random(seed)
    name_list = []
    for i in range(names):
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        name_list.append(f"{rng.choice(PREFIXES)}{word}-{i}")
    pins = [f"{name} >={rng.randint(0, 9)}.{rng.randint(0, 30)},<{rng.randint(10, 20)}.0a0"
            for name in rng.sample(name_list, min(len(name_list), 4000))]
    pins += [f"python >=3.{minor},<3.{minor + 1}.0a0" for minor in range(8, 14)] * 200
    pins += ["libgcc-ng >=12", "libstdcxx-ng >=12", "__glibc >=2.17,<3.0.a0", "python_abi 3.11.* *_cp311",
             "libzlib >=1.2.13,<2.0.0a0", "openssl >=3.3.1,<4.0a0"] * 200
    counters = [0] * names
    conda: list[str] = []
    tar_bz2: list[str] = []
    used: set[int] = set()
    for _ in range(records):
        index = int(names * rng.random() ** 2)
        count = counters[index]
        counters[index] = count + 1
        used.add(index)
        name = name_list[index]
        version = f"{index % 7}.{count // 24}.{(count // 4) % 6}"
        build_number = count % 4
        build = f"py311h{(count * 2654435761 + index) & 0xFFFFFFFF:08x}_{build_number}"
        depends = ",".join(f'"{spec}"' for spec in rng.sample(pins, rng.randint(1, 8)))
        constrains = ",".join(f'"{spec}"' for spec in rng.sample(pins, rng.choice((0, 0, 0, 1, 2))))
        record = (
            f'{{"build":"{build}","build_number":{build_number},"constrains":[{constrains}],'
            f'"depends":[{depends}],"license":"{rng.choice(LICENSES)}","md5":"{rng.getrandbits(128):032x}",'
            f'"name":"{name}","sha256":"{rng.getrandbits(256):064x}","size":{int(10 ** rng.uniform(3.5, 7.7))},'
            f'"subdir":"linux-64","timestamp":{1_500_000_000_000 + rng.randrange(280_000_000_000)},'
            f'"version":"{version}"}}'
        )
        if rng.random() < 0.7:
            conda.append(f'"{name}-{version}-{build}.conda":{record}')
        else:
            tar_bz2.append(f'"{name}-{version}-{build}.tar.bz2":{record}')
    if in_order:
        for entries in (conda, tar_bz2):
            entries.sort(key=lambda entry: entry[1 : entry.index('"', 1)])
    text = ('{"info":{"subdir":"linux-64"},"packages":{' + ",".join(tar_bz2) + '},"packages.conda":{'
            + ",".join(conda) + '},"removed":[],"repodata_version":1}')
    return text.encode(), len(used)


def noarch_repodata(packages: list[Package]) -> bytes:
    document = {"info": {"subdir": "noarch"}, "packages": {},
                "packages.conda": {p.name: p.record for p in packages}, "repodata_version": 1}
    return json.dumps(document, sort_keys=True).encode()


# --- servers ------------------------------------------------------------------------------------------

def start_logging_nginx(root: Path, core: int) -> tuple[subprocess.Popen[bytes], str]:
    """serve_http's nginx with an access log (the upstream: we check what condagate asked it for)."""
    original = serve_http.NGINX_CONF
    serve_http.NGINX_CONF = original.replace(
        "access_log off;", 'log_format bench \'"$request" $status\'; access_log {root}/access.log bench;')
    try:
        return serve_http.start_nginx(root, core)
    finally:
        serve_http.NGINX_CONF = original


def upstream_requests(root: Path) -> Counter[tuple[str, str]]:
    """(path, status) -> count, from the upstream nginx's access log."""
    found: Counter[tuple[str, str]] = Counter()
    log = root / "access.log"
    if log.is_file():
        for match in re.finditer(r'"GET (\S+) HTTP/[0-9.]+" (\d{3})', log.read_text(errors="replace")):
            found[(match.group(1), match.group(2))] += 1
    return found


def create_proxy_feed(server: common.servers.Server, feed: str, connector: str, url: str, **fields: object) -> None:
    with server.admin() as client:
        response = client.post("/api/connectors", json={"name": connector, "url": url, **fields})
        if response.status_code != 201:
            raise RuntimeError(f"could not create connector {connector!r}: {response.status_code} {response.text}")
        response = client.post("/api/feeds", json={"name": feed, "connectors": [connector]})
        if response.status_code != 201:
            raise RuntimeError(f"could not create feed {feed!r}: {response.status_code} {response.text}")


def descendants(pid: int) -> list[int]:
    """The server's worker processes (granian's children); the server itself when it has none."""
    return common.process_tree(pid)[1:] or [pid]


def status_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssSampler:
    """Samples VmRSS of the server's workers every 20 ms; ``peak`` is the largest worker's largest value."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(200_000):  # bounded: ~67 minutes at 20 ms
            for member in descendants(self.pid):
                self.peak_kib = max(self.peak_kib, status_kib(member, "VmRSS"))
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def worker_memory(pid: int) -> tuple[int, int]:
    """(VmRSS now, VmHWM = peak since start) of the largest worker, KiB."""
    members = descendants(pid)
    return max(status_kib(m, "VmRSS") for m in members), max(status_kib(m, "VmHWM") for m in members)


class Prober:
    """Sequential GETs of one small URL from a background thread; latency of each (seconds)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(1_000_000):  # bounded; stopped by the event long before
                if self._stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=150)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Fetch:
    status: int
    ttfb: float
    total: float
    size: int
    digest: str


def fetch(client: httpx.Client, url: str) -> Fetch:
    """One GET: seconds to the response headers (TTFB) and to the last byte, body size and sha256."""
    digest = hashlib.sha256()
    size = 0
    started = time.perf_counter()
    with client.stream("GET", url) as response:
        ttfb = time.perf_counter() - started
        for chunk in response.iter_raw(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return Fetch(response.status_code, ttfb, time.perf_counter() - started, size, digest.hexdigest())


def must(result: Fetch, what: str, expected: str | None = None) -> Fetch:
    if result.status != 200:
        raise RuntimeError(f"{what}: HTTP {result.status}")
    if expected is not None and result.digest != expected:
        raise RuntimeError(f"{what}: different bytes than expected")
    return result


# --- results ------------------------------------------------------------------------------------------

@dataclass
class Step:
    """One row of the repodata table."""

    what: str
    seconds: float
    ttfb: float | None = None
    rss_peak_kib: int | None = None
    detail: str = ""
    baseline: float | None = None  # seconds of the baseline this row is compared with


@dataclass
class ProbeRow:
    condition: str
    latencies: list[float]
    failures: int
    seconds: float


@dataclass
class Results:
    records: int = 0
    names: int = 0
    duration: int = 0
    repeats: int = 1
    sizes: dict[str, int] = field(default_factory=dict)
    generate_seconds: float = 0.0
    loads: list[Load] = field(default_factory=list)
    cold_downloads: list[tuple[str, float, float]] = field(default_factory=list)  # file, condagate s, nginx s
    upstream_file_gets: dict[str, int] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    probes: list[ProbeRow] = field(default_factory=list)
    in_process: dict[str, float] = field(default_factory=dict)
    revalidations: str = ""
    quetz: str = ""
    notes: list[str] = field(default_factory=list)


# --- (a) downloads ------------------------------------------------------------------------------------

_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass
class Load:
    server: str
    resource: str
    connections: str
    requests_per_s: float
    megabytes_per_s: float  # files >= 10 MB: wrk's Transfer/sec (partial responses included); else req/s x size
    latency: str
    server_cores: float
    errors: str
    round: int = 0  # which round over the servers (ratios pair runs of one round)


def wrk(url: str, options: list[str], seconds: int) -> tuple[float, float, str, str]:
    """serve_http.wrk, plus the bytes per second: with 64 connections on 50 MB files few responses
    complete within a run, so req/s x size would undercount; wrk's Transfer/sec counts every byte read."""
    command = [*common.pinned(common.CLIENT_CORE), shutil.which("wrk") or "/usr/bin/wrk", *options,
               f"-d{seconds}s", "--timeout", "10s", url]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    transfer = re.search(r"Transfer/sec:\s+([0-9.]+)([KMGT]?B)", done.stdout)
    if done.returncode != 0 or rate is None or transfer is None:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    latency = re.search(r"Latency\s+(\S+)", done.stdout)
    errors = []
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout):
        errors.append(f"{match.group(1)} non-2xx")
    if match := re.search(r"Socket errors: (.*)", done.stdout):
        errors.append(match.group(1).strip())
    megabytes = float(transfer.group(1)) * _UNITS[transfer.group(2)] / 1e6
    return float(rate.group(1)), megabytes, latency.group(1) if latency else "?", "; ".join(errors)


def measure(name: str, pid: int, url: str, resource_name: str, seconds: int, results: Results,
            loads: tuple[tuple[str, list[str]], ...] = serve_http.LOADS, round_number: int = 0) -> None:
    for connections, options in loads:
        cpu_before, started = common.cpu_seconds(pid), time.perf_counter()
        rate, megabytes, latency, errors = wrk(url, options, seconds)
        size = results.sizes.get(resource_name, 0)
        if size < 10_000_000:  # wrk prints Transfer/sec with 3 digits: req/s x size is more precise here
            megabytes = rate * size / 1e6
        cores = (common.cpu_seconds(pid) - cpu_before) / (time.perf_counter() - started)
        if not rate and not megabytes and not errors:
            errors = "no response completed within the run"
        results.loads.append(Load(name, resource_name, connections, rate, megabytes, latency, cores, errors,
                                  round_number))
        print(f"[proxy] {name:21} {resource_name:15} c={connections:>2}: {rate:8,.1f} req/s {megabytes:8,.1f} MB/s"
              f"  server {cores:.2f} cores {errors}", file=sys.stderr)


def downloads(workdir: Path, upstream_url: str, nginx_url: str, nginx_pid: int, packages: list[Package],
              upstream_root: Path, duration: int, repeats: int, results: Results, with_quetz: bool,
              quetz_venv: Path) -> None:
    server = common.start_condagate(workdir / "condagate-a")
    try:
        create_proxy_feed(server, "proxy", "bench-up", upstream_url)
        common.create_feed(server, "hosted")
        with server.admin() as client:
            common.upload_one(client, "hosted", packages[0].path)
        targets: list[tuple[str, str, int, str]] = []  # (resource, server, pid, url)
        with httpx.Client(timeout=300) as client:
            for package, label in zip(packages, ("1 MB", "50 MB"), strict=True):
                resource_name = f"package ({label})"
                proxied = f"{server.url}/conda/proxy/noarch/{package.name}"
                direct = f"{nginx_url}/upstream/noarch/{package.name}"
                cold = must(fetch(client, proxied), f"first GET of {proxied}", str(package.record["sha256"]))
                plain = must(fetch(client, direct), f"GET {direct}", str(package.record["sha256"]))
                results.cold_downloads.append((resource_name, cold.total, plain.total))
                again = client.get(proxied)
                if again.status_code != 200 or "etag" not in again.headers:
                    raise RuntimeError(f"{proxied} is not served from condagate's cache: {again.headers}")
                results.sizes[resource_name] = int(str(package.record["size"]))
                targets += [(resource_name, "nginx", nginx_pid, direct),
                            (resource_name, "condagate proxy feed", server.process.pid, proxied)]
                if label == "1 MB":
                    targets.append((resource_name, "condagate hosted feed", server.process.pid,
                                    f"{server.url}/conda/hosted/noarch/{package.name}"))
        for target in targets:
            wrk(target[3], ["-t2", "-c64"], 1)  # warm-up, not counted
        for round_number in range(repeats):  # rounds over all servers, so that a noisy moment hits them alike
            for resource_name, name, pid, url in targets:
                measure(name, pid, url, resource_name, duration, results, round_number=round_number)
        seen = upstream_requests(upstream_root)
        for package in packages:
            results.upstream_file_gets[package.name] = sum(
                n for (path, _), n in seen.items() if path == f"/upstream/noarch/{package.name}")
    finally:
        server.stop()
    if with_quetz:
        quetz_downloads(workdir, upstream_url, packages[0], upstream_root, duration, results, quetz_venv)


# --- (c) quetz ----------------------------------------------------------------------------------------

def start_quetz(workdir: Path, venv: Path, core: int) -> tuple[subprocess.Popen[bytes], str, str]:
    quetz = venv / "bin" / "quetz"
    if not quetz.is_file():
        raise RuntimeError(f"quetz is not installed at {venv} (to install: `{QUETZ_INSTALL}`)")
    folder = workdir / "quetz"
    folder.mkdir()
    conf = folder / "template.toml"
    conf.write_text(
        '[github]\nclient_id = ""\nclient_secret = ""\n\n[sqlalchemy]\ndatabase_url = "sqlite:///./quetz.sqlite"\n\n'
        f'[session]\nsecret = "{uuid.uuid4().hex}"\nhttps_only = false\n\n'
        '[users]\nadmins = ["dummy:alice", "dummy:bob", "dummy:carol", "dummy:dave"]\n'
    )
    env = {**os.environ, "QUETZ_LOG_LEVEL": "WARNING"}
    # --dev fills the database with test users (made admins above) and prints an API key of one of them.
    created = subprocess.run([str(quetz), "create", str(folder / "deployment"), "--copy-conf", str(conf), "--dev"],
                             capture_output=True, text=True, check=False, timeout=180, cwd=folder, env=env)
    key = re.search(r'Test API key created for user "\w+": ([0-9a-f]{32})', created.stdout + created.stderr)
    if created.returncode != 0 or key is None:
        raise RuntimeError(f"`quetz create` failed ({created.returncode}): {(created.stdout + created.stderr)[-800:]}")
    port = common.free_port()
    log = (folder / "quetz.log").open("wb")
    process = subprocess.Popen(
        [*common.pinned(core), str(quetz), "start", str(folder / "deployment"), "--port", str(port),
         "--host", "127.0.0.1", "--no-supervisor", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"quetz exited with {process.returncode}: "
                               f"{(folder / 'quetz.log').read_text(errors='replace')[-800:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/api/channels", timeout=2).status_code == 200:
                common.check_pinned(process.pid, core)
                return process, url, key.group(1)
        time.sleep(0.1)
    serve_http.stop(process)
    raise RuntimeError("quetz did not answer within 60 s")


def quetz_downloads(workdir: Path, upstream_url: str, package: Package, upstream_root: Path, duration: int,
                    results: Results, venv: Path) -> None:
    started = time.perf_counter()
    process = None
    try:
        process, url, key = start_quetz(workdir, venv, common.SERVER_CORE)
        with httpx.Client(timeout=300) as client:
            response = client.post(f"{url}/api/channels", headers={"X-API-Key": key},
                                   json={"name": "proxy", "private": False, "mirror_channel_url": upstream_url,
                                         "mirror_mode": "proxy"})
            if response.status_code not in (200, 201):
                raise RuntimeError(f"quetz: could not create the proxy channel: {response.status_code} {response.text}")
            proxied = f"{url}/get/proxy/noarch/{package.name}"
            cold = must(fetch(client, proxied), f"quetz: first GET of {proxied}", str(package.record["sha256"]))
        results.cold_downloads.append(("package (1 MB), quetz", cold.total, float("nan")))
        before = sum(n for (path, _), n in upstream_requests(upstream_root).items()
                     if path == f"/upstream/noarch/{package.name}")
        wrk(proxied, ["-t1", "-c1"], 1)  # warm-up at 1 connection: quetz may jam at 64
        measure("quetz 0.10.4", process.pid, proxied, "package (1 MB)", duration, results)
        after = sum(n for (path, _), n in upstream_requests(upstream_root).items()
                    if path == f"/upstream/noarch/{package.name}")
        results.quetz = (f"quetz-server 0.10.4 (FastAPI 0.109.2, uvicorn, SQLite) in {venv}, proxy channel on the "
                         f"same upstream; started and measured in {time.perf_counter() - started:.0f} s; "
                         f"upstream GETs of the file during its wrk runs: {after - before}.")
    except (RuntimeError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        results.quetz = f"quetz skipped: {exc}"
        print(f"[proxy] {results.quetz}", file=sys.stderr)
    finally:
        if process is not None:
            serve_http.stop(process)


# --- (b) repodata -------------------------------------------------------------------------------------

IN_PROCESS = """
import gc, json, resource, sys, time
from pathlib import Path
from condagate.conda.repodata import compress_zstd, encode_repodata
from condagate.conda.upstream_repodata import parse_upstream_repodata
import zstandard
out = {}
def step(name, action):
    started = time.perf_counter(); value = action(); out[name] = time.perf_counter() - started; return value
data = step("read .zst from disk", lambda: Path(sys.argv[1]).read_bytes())
body = step("decompress", lambda: zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 33))
parsed = step("parse (msgspec Raw + name per record)", lambda: parse_upstream_repodata(body))
del body
records = step("merge (dict of record bytes)", lambda: {f: raw for f, (_, raw) in parsed.records.items()})
encoded = step("encode repodata.json", lambda: encode_repodata("linux-64", records))
step("compress repodata.json.zst", lambda: compress_zstd(encoded))
out["total"] = sum(out.values())
out["peak RSS (KiB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
"""


def in_process_steps(upstream_zst: Path) -> dict[str, float]:
    """condagate's own parse/encode steps on the same bytes, in a fresh interpreter on the server core."""
    done = subprocess.run([*common.pinned(common.SERVER_CORE), sys.executable, "-c", IN_PROCESS, str(upstream_zst)],
                          capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"in-process steps failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def timed_fetch(pid: int, client: httpx.Client, url: str) -> tuple[Fetch, int]:
    with RssSampler(pid) as sampler:
        result = must(fetch(client, url), f"GET {url}")
    return result, sampler.peak_kib


def probe(url: str, seconds: float) -> ProbeRow:
    started = time.perf_counter()
    with Prober(url) as prober:
        time.sleep(seconds)
    return ProbeRow("", prober.latencies, prober.failures, time.perf_counter() - started)


def repodata(workdir: Path, upstream_url: str, nginx_url: str, upstream_root: Path, records_total: int,
             results: Results) -> None:
    subdir_zst = upstream_root / "www" / "upstream" / "linux-64" / "repodata.json.zst"
    results.in_process = in_process_steps(subdir_zst)
    print(f"[proxy] in-process steps: {results.in_process}", file=sys.stderr)
    server = common.start_condagate(workdir / "condagate-b")
    steps = results.steps
    try:
        pid = server.process.pid
        rss, hwm = worker_memory(pid)
        results.notes.append(f"condagate worker after start: VmRSS {rss / 1024:,.0f} MiB")
        create_proxy_feed(server, "proxy", "bench-up", upstream_url)
        create_proxy_feed(server, "reval", "bench-up-reval", upstream_url, cache_minutes=0)
        common.create_feed(server, "small")
        small = common.generate_packages(workdir / "small", 100, ("linux-64",), prefix="small")
        common.upload_all(server, "small", [g.path for g in small], concurrency=2)
        small_url = f"{server.url}/conda/small/linux-64/repodata.json"
        proxy_zst = f"{server.url}/conda/proxy/linux-64/repodata.json.zst"
        reval_zst = f"{server.url}/conda/reval/linux-64/repodata.json.zst"
        with httpx.Client(timeout=600) as client:
            client.get(small_url)
            row = probe(small_url, 3.0)
            row.condition = "small hosted feed's repodata.json (100 records), server otherwise idle"
            results.probes.append(row)

            # Cold: nothing cached; fetch + decompress + parse + save + merge + encode + compress.
            cold, peak = timed_fetch(pid, client, proxy_zst)
            rss, hwm = worker_memory(pid)
            results.sizes["served repodata.json.zst"] = cold.size
            steps.append(Step(f"cold: first GET of linux-64/repodata.json.zst ({records_total:,} records)",
                              cold.total, cold.ttfb, max(peak, hwm),
                              f"worker VmHWM {hwm / 1024:,.0f} MiB, VmRSS after {rss / 1024:,.0f} MiB",
                              results.in_process.get("total")))
            print(f"[proxy] cold {cold.total:.2f} s, peak RSS {max(peak, hwm) / 1024:,.0f} MiB", file=sys.stderr)

            # Warm: the cached snapshot, against nginx serving the same bytes.
            served = workdir / "www" / "served" / "repodata.json.zst"
            served.parent.mkdir(parents=True, exist_ok=True)
            served.write_bytes(client.get(proxy_zst).content)
            served.chmod(0o644)
            served.parent.chmod(0o755)
            warm = [must(fetch(client, proxy_zst), "warm GET") for _ in range(5)]
            plain = [must(fetch(client, f"{nginx_url}/served/repodata.json.zst"), "nginx GET") for _ in range(5)]
            steps.append(Step("warm: GET repodata.json.zst (cached), median of 5",
                              common.median(f.total for f in warm), common.median(f.ttfb for f in warm), None,
                              f"{cold.size:,} bytes; nginx, same bytes: TTFB "
                              f"{common.median(f.ttfb for f in plain) * 1000:.1f} ms, total "
                              f"{common.median(f.total for f in plain) * 1000:.1f} ms",
                              common.median(f.total for f in plain)))

            # Refresh blocking: a second, cold connector's subdir while the prober runs.
            with Prober(small_url) as prober:
                during, peak = timed_fetch(pid, client, reval_zst)
            row = ProbeRow(f"same, while a second proxy feed's cold refresh of {records_total:,} records runs",
                           prober.latencies, prober.failures, during.total)
            results.probes.append(row)
            rss, hwm = worker_memory(pid)
            steps.append(Step("cold, second connector, while the prober runs (first subdir still cached)",
                              during.total, during.ttfb, peak,
                              f"worker VmRSS after {rss / 1024:,.0f} MiB (two such subdirs held)"))

            # Unchanged upstream, cache_minutes=0: every GET revalidates (If-None-Match -> 304).
            before = upstream_requests(upstream_root)
            reval = [must(fetch(client, reval_zst), "revalidating GET") for _ in range(5)]
            after = upstream_requests(upstream_root)
            path = "/upstream/linux-64/repodata.json.zst"
            answered = {status: after[(path, status)] - before[(path, status)] for status in ("200", "304")}
            results.revalidations = (f"upstream answered {answered['304']}× 304 and {answered['200']}× 200 to the "
                                     f"{len(reval)} revalidating GETs")
            steps.append(Step("refresh with unchanged upstream (cache_minutes=0: If-None-Match → 304), median of 5",
                              common.median(f.total for f in reval), common.median(f.ttfb for f in reval), None,
                              results.revalidations, common.median(f.total for f in warm)))

            # Shards: the first GET builds every shard of the subdir.
            shards_url = f"{server.url}/conda/proxy/linux-64/repodata_shards.msgpack.zst"
            with Prober(small_url) as prober:
                first, peak = timed_fetch(pid, client, shards_url)
            results.probes.append(ProbeRow("same, while the first GET of repodata_shards.msgpack.zst builds all "
                                           "shards", prober.latencies, prober.failures, first.total))
            rss, hwm = worker_memory(pid)
            second = must(fetch(client, shards_url), "shard index")
            steps.append(Step("shards: first GET of repodata_shards.msgpack.zst (builds all shards)",
                              first.total, first.ttfb, peak,
                              f"index {first.size:,} bytes; worker VmRSS after {rss / 1024:,.0f} MiB; "
                              f"second GET {second.total * 1000:.1f} ms"))

            # +1 local package in the proxy feed: the merge with the upstream's records is rebuilt.
            extra = common.generate_one(workdir / "extra", "bench-extra", "linux-64", ".conda")
            with server.admin() as admin:
                started = time.perf_counter()
                common.upload_one(admin, "proxy", extra)
                uploaded = time.perf_counter() - started
            # Meanwhile a client downloads the (hosted, local) package from the same subdir, back to back.
            with Prober(f"{server.url}/conda/proxy/linux-64/{extra.name}") as prober, RssSampler(pid) as sampler:
                response = client.get(proxy_zst)
            results.probes.append(ProbeRow("a download of a local package of the same proxy feed subdir, during the "
                                           "rebuild after +1 package", prober.latencies, prober.failures,
                                           response.elapsed.total_seconds()))
            listed = response.status_code == 200 and extra.name.encode() in zstandard.ZstdDecompressor().decompress(
                response.content, max_output_size=1 << 33)
            if not listed:
                raise RuntimeError(f"{extra.name} is not listed in the proxy feed's repodata after its upload")
            rebuilt = response.elapsed.total_seconds()
            steps.append(Step("+1 local package in the proxy feed: upload, then GET repodata.json.zst (lists it)",
                              uploaded + rebuilt, None, sampler.peak_kib,
                              f"upload {_ms(uploaded)} + GET {_ms(rebuilt)} (the merge of {records_total:,} "
                              "upstream records + 1 is re-encoded and re-compressed)"))
            again = must(fetch(client, shards_url), "shard index after +1")
            steps.append(Step("+1: then GET repodata_shards.msgpack.zst (re-shards the changed name)",
                              again.total, again.ttfb))

        # Restart: the subdir comes back from condagate's own disk cache (no upstream transfer).
        server.stop()
        server = common.start_condagate(workdir / "condagate-b")
        pid = server.process.pid
        with httpx.Client(timeout=600) as client:  # a new port: the URL changed
            restarted, peak = timed_fetch(pid, client, f"{server.url}/conda/proxy/linux-64/repodata.json.zst")
        rss, hwm = worker_memory(pid)
        steps.append(Step("after a restart: first GET of repodata.json.zst (from condagate's disk cache)",
                          restarted.total, restarted.ttfb, max(peak, hwm),
                          f"worker VmRSS after {rss / 1024:,.0f} MiB"))
    finally:
        server.stop()


# --- the benchmark ------------------------------------------------------------------------------------

def run(records: int = 500_000, names: int = 16_000, duration: int = 5, repeats: int = 3, with_quetz: bool = True,
        quetz_venv: Path = QUETZ_VENV, keep: bool = False) -> Results:
    results = Results(records=records, duration=duration, repeats=repeats)
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-proxy-"))
    workdir.chmod(0o755)  # nginx's worker runs as nobody and must read the root
    common.pin_this_process(common.CLIENT_CORE)
    upstream_nginx = nginx = None
    try:
        started = time.perf_counter()
        www = workdir / "www"
        noarch = www / "upstream" / "noarch"
        print(f"[proxy] generating the upstream ({records:,} linux-64 records, 2 packages) in {workdir}",
              file=sys.stderr)
        noarch.mkdir(parents=True)
        packages = [make_package(noarch, "bench-small", SMALL_MB), make_package(noarch, "bench-large", LARGE_MB)]
        write_repodata(noarch, noarch_repodata(packages))
        body, results.names = big_repodata(records, names)
        write_repodata(www / "upstream" / "linux-64", body)
        results.sizes["upstream repodata.json"] = len(body)
        del body
        zst = www / "upstream" / "linux-64" / "repodata.json.zst"
        results.sizes["upstream repodata.json.zst"] = zst.stat().st_size
        for path in [www, *www.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        results.generate_seconds = time.perf_counter() - started

        # Two nginx on the server core: the upstream (access log on) and the baseline (serve_http's config).
        upstream_root, baseline_root = workdir / "upstream-nginx", workdir / "baseline-nginx"
        for root in (upstream_root, baseline_root):
            root.mkdir()
            root.chmod(0o755)
            (root / "www").symlink_to(www)
        upstream_nginx, upstream_base = start_logging_nginx(upstream_root, common.SERVER_CORE)
        nginx, nginx_url = serve_http.start_nginx(baseline_root, common.SERVER_CORE)
        common.check_pinned(nginx.pid, common.SERVER_CORE)
        upstream_url = f"{upstream_base}/upstream"

        results.notes.append("load average (1, 5, 15 min) at the start: "
                             + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        downloads(workdir, upstream_url, nginx_url, nginx.pid, packages, upstream_root, duration, repeats, results,
                  with_quetz, quetz_venv)
        repodata(workdir, upstream_url, nginx_url, upstream_root, records, results)
        results.notes.append("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        return results
    finally:
        for process in (upstream_nginx, nginx):
            if process is not None:
                serve_http.stop(process)
        if keep:
            print(f"[proxy] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- report -------------------------------------------------------------------------------------------

def _ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def _mib(kib: int | None) -> str:
    return "" if kib is None else f"{kib / 1024:,.0f} MiB"


def markdown(r: Results) -> str:
    sizes = ", ".join(f"{k} {v:,} bytes" for k, v in r.sizes.items())
    out = [
        f"### Proxy feeds: cached downloads and repodata at {r.records:,} records ({r.names:,} names)",
        "",
        f"Upstream: a generated channel served by nginx (1 worker, sendfile, core {common.SERVER_CORE}); {sizes}. "
        f"Generated in {r.generate_seconds:.0f} s. condagate: granian, 1 worker, SQLite, log level info, "
        f"core {common.SERVER_CORE}; clients (wrk, httpx) on core {common.CLIENT_CORE}.",
        "",
        "#### Cached package downloads through a proxy feed",
        "",
        f"Each file fetched once through the proxy feed first (cold), then `wrk -t1 -c1 -d{r.duration}s` and "
        f"`wrk -t2 -c64 -d{r.duration}s`, {r.repeats} rounds over the servers (quetz: one round, after the "
        "others); each row is the round with the median MB/s; the ratios are medians of per-round ratios (each "
        "run against nginx's run of the same round; their range in brackets). nginx = a second nginx (no "
        "access log) serving the same file from the upstream folder. MB/s = req/s × size for the 1 MB file, "
        "wrk's Transfer/sec for the 50 MB one (every byte read, so responses still in flight when a run ends "
        "count too); ratios are of MB/s. Server CPU = CPU-seconds of the server's processes / wall seconds; "
        "CPU core-s / GB = that / GB/s; CPU ms / request = that × the file's size. Where nginx is far below one "
        "core, the client (wrk, one shared core) is the limit and the CPU ratio says more.",
        "",
    ]
    # Several rounds: report the run with the median MB/s of each (file, connections, server), and the range.
    groups: dict[tuple[str, str, str], list[Load]] = {}
    for load in r.loads:
        groups.setdefault((load.resource, load.connections, load.server), []).append(load)
    chosen: dict[tuple[str, str, str], tuple[Load, str]] = {}
    for key, runs in groups.items():
        ordered = sorted(runs, key=lambda x: x.megabytes_per_s)
        spread = (f"{ordered[0].megabytes_per_s:,.0f}–{ordered[-1].megabytes_per_s:,.0f}"
                  if len(ordered) > 1 else "")
        chosen[key] = (ordered[(len(ordered) - 1) // 2], spread)
    nginx = {(k[0], k[1]): load for k, (load, _) in chosen.items() if k[2] == "nginx"}

    def per_gb(load: Load) -> float:
        return load.server_cores / (load.megabytes_per_s / 1000) if load.megabytes_per_s else float("nan")

    by_round = {(x.resource, x.connections, x.round): x for x in r.loads if x.server == "nginx"}

    def paired(key: tuple[str, str, str]) -> tuple[list[float], list[float]]:
        """Ratios to nginx of each round's run (MB/s; CPU per GB), each against nginx of the same round."""
        speed, cpu = [], []
        for load in groups[key]:
            base = by_round.get((load.resource, load.connections, load.round))
            if base is None and load.server.startswith("quetz"):
                base = nginx.get((load.resource, load.connections))  # quetz runs after the rounds
            if base is not None and base.megabytes_per_s:
                speed.append(load.megabytes_per_s / base.megabytes_per_s)
                if load.megabytes_per_s and base.server_cores:
                    cpu.append(per_gb(load) / per_gb(base))
        return speed, cpu

    ratios: dict[tuple[str, str, str], float] = {}
    rows = []
    for key, (load, spread) in chosen.items():
        per_request = per_gb(load) * r.sizes.get(load.resource, 0) / 1e9  # per response's worth of bytes
        ratio = cpu_ratio = ""
        speed, cpu = paired(key) if load.server != "nginx" else ([], [])
        if speed:
            ratios[key] = statistics.median(speed)
            ratio = f"**{ratios[key]:.2f}×**" + (f" ({min(speed):.2f}–{max(speed):.2f})" if len(speed) > 1 else "")
        if cpu:
            cpu_ratio = f"{statistics.median(cpu):.1f}×"
        rows.append([load.resource, load.connections, load.server, f"{load.requests_per_s:,.1f}",
                     f"{load.megabytes_per_s:,.1f}", spread, load.latency, f"{load.server_cores:.2f}",
                     f"{per_request * 1000:.2f}", f"{per_gb(load):.2f}", ratio, cpu_ratio, load.errors or "-"])
    order = {"nginx": 0, "condagate proxy feed": 1, "condagate hosted feed": 2}
    rows.sort(key=lambda row: (str(row[0]), int(str(row[1])), order.get(str(row[2]), 9)))
    out += [common.table(["file", "conns", "server", "req/s", "MB/s", f"MB/s range ({r.repeats} runs)",
                          "avg latency", "server CPU (cores)", "CPU ms / request", "CPU core-s / GB",
                          "MB/s vs nginx (range)", "CPU per GB vs nginx", "errors"], rows), ""]
    goal = []
    for resource_name in sorted({x.resource for x in r.loads}):
        base = nginx.get((resource_name, "64"))
        ratio = ratios.get((resource_name, "64", "condagate proxy feed"))
        if base is not None and ratio is not None:
            goal.append(f"{resource_name}: {ratio:.2f}× ({'reached' if ratio >= 0.5 else 'NOT reached'})")
    out += [f"Goal, proxy feed at 64 connections ≥ 0.5× nginx: {'; '.join(goal)}.", ""]
    cold = [f"{name}: {_ms(mine)}" + ("" if base != base else f" (nginx direct {_ms(base)})")
            for name, mine, base in r.cold_downloads]
    gets = ", ".join(f"{name} {n}×" for name, n in r.upstream_file_gets.items())
    out += [f"First (uncached) GET through the proxy: {'; '.join(cold)}. Upstream GETs of each file over the "
            f"whole condagate run (first fetch + all wrk runs): {gets}.", ""]
    if r.quetz:
        out += [r.quetz, ""]

    out += ["#### Repodata at conda-forge scale", "",
            "Peak RSS = the largest condagate worker's VmRSS sampled every 20 ms during the step (for the first "
            "step in a fresh server: or its VmHWM, when larger). Baseline for the cold GET: the same "
            "parse/encode steps (condagate's functions) in a fresh interpreter on the server core, reading the "
            ".zst from disk; for the warm GET: nginx serving the same bytes; for the revalidation: the warm GET.",
            ""]
    rows = []
    for step in r.steps:
        ratio = f"{step.seconds / step.baseline:.1f}×" if step.baseline else ""
        rows.append([step.what, _ms(step.seconds), _ms(step.ttfb), _mib(step.rss_peak_kib), ratio, step.detail])
    out += [common.table(["step", "total", "TTFB", "peak RSS (worker)", "vs baseline", "detail"], rows), ""]
    if r.in_process:
        parts = [f"{k} {_ms(v)}" for k, v in r.in_process.items() if k not in ("total", "peak RSS (KiB)")]
        out += [f"Baseline, fresh interpreter (one core): {'; '.join(parts)}; **total "
                f"{_ms(r.in_process.get('total'))}, peak RSS {_mib(int(r.in_process.get('peak RSS (KiB)', 0)))}**.",
                ""]
    rows = []
    for row in r.probes:
        rows.append([row.condition, f"{len(row.latencies):,}", f"{row.seconds:.1f} s",
                     _ms(percentile(row.latencies, 0.5)), _ms(percentile(row.latencies, 0.99)),
                     _ms(max(row.latencies) if row.latencies else float("nan")), row.failures])
    out += ["Does a refresh block other requests? One client GETs a small hosted feed's `repodata.json` "
            "back to back:", "",
            common.table(["condition", "requests", "during", "p50", "p99", "max", "failures"], rows), ""]
    out += [*r.notes, ""] if r.notes else []
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000, help="records in the upstream's linux-64")
    parser.add_argument("--names", type=int, default=16_000, help="distinct package names among them")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk rounds over the servers (median reported)")
    parser.add_argument("--no-quetz", action="store_true", help="skip the quetz comparison")
    parser.add_argument("--quetz-venv", type=Path, default=QUETZ_VENV, help="venv with quetz-server installed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (and the server logs)")
    args = parser.parse_args()
    results = run(args.records, args.names, args.duration, args.repeats, not args.no_quetz, args.quetz_venv,
                  args.keep)
    print(markdown(results))


if __name__ == "__main__":
    main()
