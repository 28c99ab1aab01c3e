"""Small changes stay small (issue 12): a proxy feed over a 500,000-record upstream subdir. How long from
an upload's 201 until the feed's ``repodata.json.zst``, shard index and ``repodata.json`` list the file;
the first build of the subdir (cold) and after a restart; the worker's peak RSS.

Set-up (not measured): conda-forge-like linux-64 repodata generated directly as JSON (``proxy.py``'s
``big_repodata``: skewed names, 1-8 depends; the package files do not exist) and served with its .zst by
nginx (the upstream, on the client core). Measured, in a fresh ``condagate serve`` (granian, 1 worker,
SQLite) pinned to core 0, client on core 1: the first GET of ``linux-64/repodata.json.zst`` (fetch,
parse, merge, encode, compress), the first shard index (builds every shard) and ``repodata.json``; then
``--repeats`` times one local package uploaded into the proxy feed's linux-64 and the three indexes
polled back to back with ``If-None-Match`` from its 201 (``large_hosted.plus_one``: the time is taken
when a 200 with a new ETag arrives, then the bodies are checked to list the file); then a restart and
the first GET of ``repodata.json.zst`` again (from condagate's disk cache of the upstream).

    flock /tmp/condagate-bench.lock .venv/bin/python bench/large_upstream.py [--records 500000]
        [--names 16000] [--repeats 5] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import common
import large_hosted
import proxy
import serve_http

FEED = "proxy"
SUBDIR = "linux-64"


@dataclass
class Results:
    records: int = 0
    json_bytes: int = 0
    zst_bytes: int = 0
    steps: dict[str, float] = field(default_factory=dict)  # seconds
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # (VmRSS, VmHWM) MiB
    plus_one: list[dict[str, float]] = field(default_factory=list)
    load: list[str] = field(default_factory=list)


def _timed_get(client: httpx.Client, url: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.get(url)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
    return seconds, response


def run(records: int, names: int, repeats: int, keep: bool) -> Results:
    results = Results(records=records)
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-upstream-"))
    workdir.chmod(0o755)  # nginx's worker runs as nobody and must read the root
    common.pin_this_process(common.CLIENT_CORE)
    nginx = server = None
    try:
        print(f"[large_upstream] generating {records:,} records in {workdir}", file=sys.stderr)
        www = workdir / "nginx" / "www"
        body, _ = proxy.big_repodata(records, names)
        proxy.write_repodata(www / "upstream" / SUBDIR, body)
        proxy.write_repodata(www / "upstream" / "noarch", b'{"info":{"subdir":"noarch"},"packages":{}}')
        del body
        for path in [workdir / "nginx", *(workdir / "nginx").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        nginx, nginx_url = serve_http.start_nginx(workdir / "nginx", common.CLIENT_CORE)
        extras = [
            common.generate_one(workdir / "extra", f"upstream-extra-{k:03d}", SUBDIR, ".conda") for k in range(repeats)
        ]
        results.load.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))

        server = common.start_condagate(workdir / "condagate")
        proxy.create_proxy_feed(server, FEED, "bench-up", f"{nginx_url}/upstream")
        base = f"/conda/{FEED}/{SUBDIR}/"
        with server.client(timeout=600) as client, server.client(timeout=600, headers=server.admin_headers) as admin:
            results.steps["cold"], response = _timed_get(client, base + "repodata.json.zst")
            results.zst_bytes = len(response.content)
            results.json_bytes = len(large_hosted._unzstd(response.content))
            results.memory["cold"] = large_hosted.worker_memory(server.process.pid)
            results.steps["shards"], _ = _timed_get(client, base + "repodata_shards.msgpack.zst")
            results.steps["json"], _ = _timed_get(client, base + "repodata.json")
            results.steps["shard_files"] = _shard_files_written(server.data_dir)
            results.memory["built"] = large_hosted.worker_memory(server.process.pid)
            for path in extras:
                name = path.name.split("-1.0-")[0]
                results.plus_one.append(large_hosted.plus_one(client, admin, path, name, SUBDIR, FEED))
                print(f"[large_upstream] {path.name}: {results.plus_one[-1]}", file=sys.stderr)
            results.memory["plus_one"] = large_hosted.worker_memory(server.process.pid)
        server.stop()
        server = common.start_condagate(workdir / "condagate")
        with server.client(timeout=600) as client:
            results.steps["restart"], _ = _timed_get(client, base + "repodata.json.zst")
        results.memory["restart"] = large_hosted.worker_memory(server.process.pid)
        results.load.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
        return results
    finally:
        if server is not None:
            server.stop()
        if nginx is not None:
            serve_http.stop(nginx)
        if keep:
            print(f"[large_upstream] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _shard_files_written(data_dir: Path, quiet: float = 1.0, limit: float = 60.0) -> float:
    """Seconds until the server's shard files (written on a writer thread after the first shard index,
    ``services.shard_files``) stopped changing for ``quiet`` seconds; the quiet second not counted."""
    folder = data_dir / "encoded" / "shards"
    start = last_change = time.monotonic()
    seen: tuple[int, int] | None = None
    while time.monotonic() - start < limit:
        entries = [entry for feed in folder.glob("*") for entry in os.scandir(feed)] if folder.is_dir() else []
        state = (len(entries), sum(1 for entry in entries if entry.name.startswith(".writing-")))
        if state != seen:
            seen, last_change = state, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            break
        time.sleep(0.05)
    return last_change - start


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def markdown(r: Results) -> str:
    p = r.plus_one
    rows: list[list[object]] = [
        ["cold: first GET of repodata.json.zst (fetch, parse, merge, encode, compress)", _ms(r.steps["cold"]), ""],
        ["then first GET of repodata_shards.msgpack.zst (every shard built)", _ms(r.steps["shards"]), ""],
        ["then first GET of repodata.json (decompressed into this host's file)", _ms(r.steps["json"]), ""],
        ["then until the shard files are all written (a writer thread's)", _ms(r.steps["shard_files"]), ""],
    ]
    for kind, label in (("zst", "repodata.json.zst"), ("shards", "the shard index"), ("json", "repodata.json")):
        if p:
            rows.append(
                [
                    f"+1 local upload: 201 → listed in {label} (median of {len(p)})",
                    _ms(common.median(x[kind] for x in p)),
                    f"max {_ms(max(x[kind] for x in p))}",
                ]
            )
    if p:
        rows.append(["+1: the upload itself (POST → 201)", _ms(common.median(x["upload"] for x in p)), ""])
        rows.append(
            [
                "+1: then the first GET of repodata.json, body included (this host's file written first)",
                _ms(common.median(x["get_json"] for x in p)),
                f"max {_ms(max(x['get_json'] for x in p))}",
            ]
        )
    rows.append(["after a restart: first GET of repodata.json.zst", _ms(r.steps["restart"]), ""])
    for step, (rss, hwm) in r.memory.items():
        rows.append([f"worker memory after '{step}': VmRSS / VmHWM", f"{rss:,.0f} / {hwm:,.0f} MiB", ""])
    return "\n".join(
        [
            f"### Proxy feed over {r.records:,} upstream records (served repodata.json {r.json_bytes / 1e6:.1f} MB, "
            f".zst {r.zst_bytes / 1e6:.1f} MB)",
            "",
            f"Load average (1, 5, 15 min) at the start: {r.load[0]}; at the end: {r.load[-1]}.",
            "",
            common.table(["step", "time", ""], rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--names", type=int, default=16_000)
    parser.add_argument("--repeats", type=int, default=5, help="+1 uploads (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (and the server log)")
    args = parser.parse_args()
    print(markdown(run(args.records, args.names, args.repeats, args.keep)))


if __name__ == "__main__":
    main()
