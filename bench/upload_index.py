"""Upload-and-index throughput: condagate over HTTP against py-rattler's ``index_fs`` on the same files.

condagate: upload N generated packages with a few concurrent clients, then fetch every subdir's
repodata.json and repodata.json.zst (the first fetch builds them). rattler: copy the same files into a
channel folder and run ``index_fs`` cold (with and without .zst + shards). Then "+1 package" for both:
one more upload until it shows in repodata.json, and one more file plus a re-index.

    .venv/bin/python bench/upload_index.py [--packages 2000] [--repeats 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import zstandard

import common

SUBDIRS = ("noarch", "linux-64")
FEED = "bench"

# os._exit: py-rattler 0.28 sometimes segfaults while the interpreter shuts down, after index_fs returned.
_RATTLER_INDEX = """
import asyncio, os, sys, time
from rattler.index import index_fs
full = sys.argv[2] == "1"
started = time.perf_counter()
asyncio.run(index_fs(sys.argv[1], write_zst=full, write_shards=full))
print(time.perf_counter() - started, flush=True)
os._exit(0)
"""


@dataclass
class Results:
    packages: int = 0
    clients: int = 0
    repeats: int = 0
    megabytes: float = 0.0
    per_subdir: dict[str, int] = field(default_factory=dict)
    upload_s: float = 0.0
    upload_server_cpu_s: float = 0.0
    first_fetch_s: dict[str, float] = field(default_factory=dict)
    upload_ms: list[float] = field(default_factory=list)
    store_ms: list[float] = field(default_factory=list)
    rattler_cold_s: dict[str, float] = field(default_factory=dict)
    rattler_plus_one_s: dict[str, list[float]] = field(default_factory=dict)
    plus_one: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def serve_s(self) -> float:
        return sum(self.first_fetch_s.values())

    @property
    def cold_s(self) -> float:
        return self.upload_s + self.serve_s


# --- rattler ------------------------------------------------------------------------------------------

def rattler_index(channel: Path, full: bool, core: int | None) -> float:
    """Seconds ``index_fs`` takes, measured inside a fresh interpreter (optionally pinned to one core)."""
    prefix = common.pinned(core) if core is not None else common.unpinned()
    done = subprocess.run([*prefix, sys.executable, "-c", _RATTLER_INDEX, str(channel), "1" if full else "0"],
                          capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"rattler index_fs exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def rattler_count(channel: Path, subdir: str) -> int:
    repodata = json.loads((channel / subdir / "repodata.json").read_bytes())
    return len(repodata.get("packages", {})) + len(repodata.get("packages.conda", {}))


# --- condagate ----------------------------------------------------------------------------------------

def fetch(client: httpx.Client, path: str) -> bytes:
    response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return response.content


def check_repodata(body: bytes, expected: int, where: str) -> None:
    repodata = json.loads(body)
    found = len(repodata.get("packages", {})) + len(repodata.get("packages.conda", {}))
    if found != expected:
        raise RuntimeError(f"{where} lists {found} packages, expected {expected}")


def plus_one(client: httpx.Client, admin: httpx.Client, feed: str, path: Path) -> dict[str, float]:
    """One upload, then repodata.json until it lists the file (bounded), then repodata.json.zst."""
    subdir = path.parent.name
    needle = f'"{path.name}"'.encode()
    data = path.read_bytes()
    started = time.perf_counter()
    common.upload_one(admin, feed, path, data)
    uploaded = time.perf_counter()
    for _ in range(200):
        if needle in fetch(client, f"/conda/{feed}/{subdir}/repodata.json"):
            break
        time.sleep(0.005)
    else:
        raise RuntimeError(f"{path.name} never showed in {feed}/{subdir}/repodata.json")
    visible = time.perf_counter()
    zst = zstandard.ZstdDecompressor().decompress(fetch(client, f"/conda/{feed}/{subdir}/repodata.json.zst"))
    done = time.perf_counter()
    if needle not in zst:
        raise RuntimeError(f"{path.name} is in repodata.json but not in repodata.json.zst")
    return {"upload": uploaded - started, "fetch_json": visible - uploaded, "visible": visible - started,
            "fetch_zst": done - visible}


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def log_figures(log: str, skip: str) -> tuple[list[float], list[float]]:
    """Per-upload milliseconds from the server's log: the whole request (access log) and store_upload;
    files whose name contains ``skip`` (the +1 uploads) are left out."""
    request_ms, store_ms = [], []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = str(entry.get("message", ""))
        if skip in message:
            continue
        if entry.get("logger") == "condagate.access":
            # The fields are either at the top level of the line or JSON in its message.
            fields = entry if "ms" in entry else _json_object(message)
            if fields.get("method") == "POST" and "/upload/" in str(fields.get("path", "")):
                request_ms.append(float(str(fields["ms"])))
        elif message.startswith("stored "):
            match = re.search(r" in ([0-9.]+) ms$", message)
            if match:
                store_ms.append(float(match.group(1)))
    return request_ms, store_ms


# --- the benchmark ------------------------------------------------------------------------------------

def run(packages: int = 2000, repeats: int = 5, clients: int = 4, keep: bool = False) -> Results:
    results = Results(packages=packages, clients=clients, repeats=repeats)
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-upload-"))
    common.pin_this_process(common.CLIENT_CORE)
    server = None
    try:
        print(f"[upload_index] generating {packages} packages in {workdir}", file=sys.stderr)
        source = workdir / "packages"
        generated = common.generate_packages(source, packages, SUBDIRS)
        results.megabytes = sum(g.path.stat().st_size for g in generated) / 1e6
        results.per_subdir = {s: sum(1 for g in generated if g.subdir == s) for s in SUBDIRS}
        extras = [common.generate_one(workdir / "extra", f"bench-extra-{k:03d}") for k in range(repeats)]

        print("[upload_index] rattler index_fs", file=sys.stderr)
        for full in (True, False):
            variant = "zst+shards" if full else "json"
            for core, cores in ((common.SERVER_CORE, "1 core"), (None, "2 cores")):
                channel = workdir / f"rattler-{variant}-{cores.replace(' ', '')}"
                shutil.copytree(source, channel)
                results.rattler_cold_s[f"{variant}, {cores}"] = rattler_index(channel, full, core)
                for subdir in SUBDIRS:
                    if rattler_count(channel, subdir) != results.per_subdir[subdir]:
                        raise RuntimeError(f"rattler indexed the wrong count in {channel}/{subdir}")
                if core is None:
                    continue
                times = results.rattler_plus_one_s.setdefault(variant, [])
                for extra in extras:
                    shutil.copy2(extra, channel / "noarch" / extra.name)
                    times.append(rattler_index(channel, full, core))
                if rattler_count(channel, "noarch") != results.per_subdir["noarch"] + len(extras):
                    raise RuntimeError("rattler's +1 re-index missed a package")

        print("[upload_index] condagate", file=sys.stderr)
        server = common.start_condagate(workdir / "condagate")
        common.create_feed(server, FEED)
        cpu_before = common.cpu_seconds(server.process.pid)
        results.upload_s = common.upload_all(server, FEED, [g.path for g in generated], clients)
        results.upload_server_cpu_s = common.cpu_seconds(server.process.pid) - cpu_before
        with server.client() as client, server.admin() as admin:
            bodies = {}
            for subdir in SUBDIRS:
                for filename in ("repodata.json", "repodata.json.zst"):
                    path = f"/conda/{FEED}/{subdir}/{filename}"
                    seconds, body = common.timed(lambda p=path: fetch(client, p))
                    results.first_fetch_s[f"{subdir}/{filename}"] = seconds
                    bodies[(subdir, filename)] = body
            for (subdir, filename), body in bodies.items():
                raw = zstandard.ZstdDecompressor().decompress(body) if filename.endswith(".zst") else body
                check_repodata(raw, results.per_subdir[subdir], f"{subdir}/{filename}")  # type: ignore[arg-type]

            results.plus_one["full"] = [plus_one(client, admin, FEED, extra) for extra in extras]
            common.create_feed(server, "empty")
            results.plus_one["empty"] = [plus_one(client, admin, "empty", extra) for extra in extras]
        server.stop()  # flushes the server's log
        results.upload_ms, results.store_ms = log_figures(server.log(), skip="bench-extra-")
        return results
    finally:
        if server is not None:
            server.stop()
        if keep:
            print(f"[upload_index] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _ratio(a: float, b: float) -> str:
    return f"**{a / b:.2f}×**"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def markdown(r: Results) -> str:
    subdirs = " + ".join(f"{n:,} {s}" for s, n in r.per_subdir.items())
    out = [
        f"### Upload and index: {r.packages:,} packages ({subdirs}; half .conda, half .tar.bz2; "
        f"{r.megabytes:.1f} MB in all)",
        "",
        f"condagate: {r.clients} concurrent HTTP clients (httpx, one keep-alive connection each) on core "
        f"{common.CLIENT_CORE}, server (granian, 1 worker, SQLite) on core {common.SERVER_CORE}. rattler: "
        "`index_fs` in a fresh interpreter, pinned to core 0 unless marked 2 cores. Ratio = condagate / "
        "rattler (below 1: condagate faster).",
        "",
    ]
    cold_rows: list[list[object]] = [
        ["condagate: upload all over HTTP", _s(r.upload_s), f"{r.packages / r.upload_s:,.0f} pkg/s", ""],
        ["condagate: then first GET of repodata.json + .zst, every subdir",
         _ms(r.serve_s), ", ".join(f"{k} {_ms(v)}" for k, v in r.first_fetch_s.items()), ""],
        ["**condagate: cold total (upload → all repodata served)**", _s(r.cold_s),
         f"{r.packages / r.cold_s:,.0f} pkg/s", ""],
    ]
    for variant, seconds in r.rattler_cold_s.items():
        cold_rows.append([f"rattler index_fs ({variant})", _s(seconds), f"{r.packages / seconds:,.0f} pkg/s",
                          _ratio(r.cold_s, seconds)])
    out += [common.table(["cold", "time", "rate", "condagate / rattler"], cold_rows), ""]

    full, empty = r.plus_one["full"], r.plus_one["empty"]
    visible_full = common.median(p["visible"] for p in full)
    rows: list[list[object]] = [
        [f"condagate, feed with {r.packages:,}: upload → listed in repodata.json", _ms(visible_full),
         f"upload {_ms(common.median(p['upload'] for p in full))} + GET repodata.json "
         f"{_ms(common.median(p['fetch_json'] for p in full))} (rebuild); then .zst "
         f"{_ms(common.median(p['fetch_zst'] for p in full))}; "
         f"max {_ms(max(p['visible'] for p in full))}", ""],
        ["condagate, empty feed: upload → listed in repodata.json",
         _ms(common.median(p["visible"] for p in empty)),
         f"upload {_ms(common.median(p['upload'] for p in empty))} + GET repodata.json "
         f"{_ms(common.median(p['fetch_json'] for p in empty))}", ""],
    ]
    for variant, times in r.rattler_plus_one_s.items():
        rows.append([f"rattler index_fs ({variant}, 1 core), channel with {r.packages:,}: copy + re-index",
                     _ms(common.median(times)), f"max {_ms(max(times))}",
                     _ratio(visible_full, common.median(times))])
    header = [f"+1 package (median of {r.repeats})", "time", "detail", "condagate / rattler"]
    out += [common.table(header, rows), ""]
    if r.upload_ms:
        out += [
            f"Server side of the {r.packages:,} uploads: {r.upload_server_cpu_s:.1f} CPU-s in the server "
            "process "
            f"({r.upload_server_cpu_s / r.packages * 1000:.1f} ms per package, "
            f"{r.upload_server_cpu_s / r.upload_s:.2f} of a core); request time median "
            f"{common.median(r.upload_ms):.1f} ms, p95 {_percentile(r.upload_ms, 0.95):.1f} ms; of which "
            f"`store_upload` (validate, hash check, blob commit, database write) median "
            f"{common.median(r.store_ms):.1f} ms, p95 {_percentile(r.store_ms, 0.95):.1f} ms.",
            "",
        ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5, help="how many +1 uploads / re-indexes (median)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent upload connections")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (and the server log)")
    args = parser.parse_args()
    print(markdown(run(args.packages, args.repeats, args.clients, args.keep)))


if __name__ == "__main__":
    main()
