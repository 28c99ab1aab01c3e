"""Large hosted feeds (issue 12): +1 upload → listed, and the first request after a restart, in a feed of
100,000 package files; py-rattler's ``index_fs`` re-indexing the same channel as the baseline.

Set-up (not measured): N real package files are generated in parallel (``tests/package_factory.py``),
each read back with condagate's own ``read_package`` / ``build_record`` (as an upload would), their
blobs hard-linked into the blob store, and the rows written through ``services.publish.publish``
(the one publish path: policy step, blob checks, one transaction per batch of candidates, a revision
per subdir) in batches, in-process, before any server runs.

Measured, in a fresh ``condagate serve`` (granian, 1 worker, SQLite) pinned to core 0, client on core 1:
(b) the first ``repodata.json.zst`` of each subdir after the start (cold), the first shard index, and
the worker's peak RSS (VmHWM); (a) one upload over HTTP, then from its 201: ``repodata.json``,
``repodata.json.zst`` and ``repodata_shards.msgpack.zst`` polled back to back with ``If-None-Match``
until each lists the new file (name) — median and max of ``--repeats``. rattler: ``index_fs`` on the
same files laid out as a channel, cold and "+1" (one file copied in, re-index), json only and with
.zst + shards, in a fresh interpreter pinned to core 0.

    .venv/bin/python bench/large_hosted.py [--packages 100000] [--repeats 10] [--rattler-repeats 3] [--keep]
        [--workdir DIR]  # keep the generated set-up in DIR and reuse it in later runs (each run works on
                         # a copy of the data dir: blobs hard-linked, the database copied)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgpack
import zstandard

import common

FEED = "large"
SUBDIRS = ("noarch", "linux-64")
_BATCH = 2000  # candidates per publish transaction in the set-up

# os._exit: py-rattler sometimes segfaults while the interpreter shuts down, after index_fs returned.
_RATTLER_INDEX = """
import asyncio, os, sys, time
from rattler.index import index_fs
full = sys.argv[2] == "1"
started = time.perf_counter()
asyncio.run(index_fs(sys.argv[1], write_zst=full, write_shards=full))
print(time.perf_counter() - started, flush=True)
os._exit(0)
"""


# --- set-up ---------------------------------------------------------------------------------------------

Row = tuple[str, str, str, str, str, str, str, int, bytes, str, str]  # subdir .. about, path


def _generate_range(root: str, start: int, stop: int, count: int) -> list[Row]:
    """Packages ``start..stop`` (as common.generate_packages lays them out) and their publish data."""
    from condagate.conda.package import read_package
    from condagate.conda.records import about_summary, build_record, encode_record

    rows: list[Row] = []
    versions_per_name = 4
    for i in range(start, stop):
        name_index, version_index = divmod(i, versions_per_name)
        subdir = SUBDIRS[name_index % len(SUBDIRS)]
        spec = common.package_factory.PackageSpec(
            name=f"bench-{name_index:05d}",
            version=f"1.{version_index}.0",
            build=f"h{i % 7}_0",
            subdir=subdir,
            depends=[f"bench-{(name_index + 1) % max(1, count // versions_per_name):05d} >=1.0", "python >=3.9"],
        )
        directory = Path(root) / subdir
        directory.mkdir(parents=True, exist_ok=True)
        path = common.package_factory.write_package(directory, spec, ".conda" if i % 2 == 0 else ".tar.bz2")
        data = path.read_bytes()
        sha256, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
        metadata = read_package(path, path.name, expected_subdir=subdir)
        record = build_record(metadata, sha256=sha256, md5=md5, size=len(data), uploaded_at_ms=0)
        rows.append(
            (
                subdir,
                path.name,
                spec.name,
                spec.version,
                spec.build,
                sha256,
                md5,
                len(data),
                encode_record(record),
                json.dumps(about_summary(metadata), sort_keys=True),
                str(path),
            )
        )
    return rows


def generate(root: Path, count: int) -> list[Row]:
    chunk = 2000
    with ProcessPoolExecutor(max_workers=len(common.CORES)) as pool:
        futures = [
            pool.submit(_generate_range, str(root), a, min(count, a + chunk), count) for a in range(0, count, chunk)
        ]
        return [row for future in futures for row in future.result()]


def populate(data_dir: Path, rows: list[Row]) -> float:
    """Blobs hard-linked into the store, rows through ``publish`` in batches; returns seconds."""
    from condagate.services.context import Services
    from condagate.services.feeds import create_feed
    from condagate.services.publish import Candidate, publish
    from condagate.settings import Settings

    started = time.perf_counter()
    services = Services.open(Settings(data_dir=data_dir))
    try:
        create_feed(services, name=FEED)
        for row in rows:
            target = services.blobs.file_for_sending(row[5])  # a local store: its blob file
            assert target is not None
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(row[10], target)
        for a in range(0, len(rows), _BATCH):
            candidates = [
                Candidate(
                    subdir=r[0],
                    filename=r[1],
                    name=r[2],
                    version=r[3],
                    build=r[4],
                    sha256=r[5],
                    md5=r[6],
                    size=r[7],
                    record=r[8],
                    about=r[9],
                )
                for r in rows[a : a + _BATCH]
            ]
            publish(services, FEED, candidates, actor="bench", action="upload")
    finally:
        services.close()
    return time.perf_counter() - started


# --- measuring -------------------------------------------------------------------------------------------


@dataclass
class Results:
    packages: int = 0
    per_subdir: dict[str, int] = field(default_factory=dict)
    json_bytes: dict[str, int] = field(default_factory=dict)
    zst_bytes: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    populate_s: float = 0.0
    start_s: float = 0.0
    cold_ms: dict[str, float] = field(default_factory=dict)
    worker_hwm_mib: float = 0.0
    worker_rss_mib: float = 0.0
    plus_one: list[dict[str, float]] = field(default_factory=list)
    rattler_cold_s: dict[str, float] = field(default_factory=dict)
    rattler_plus_one_s: dict[str, list[float]] = field(default_factory=dict)


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the largest process of the server's tree, MiB."""
    members = common.process_tree(pid)
    return (max(_status_kib(m, "VmRSS") for m in members) / 1024, max(_status_kib(m, "VmHWM") for m in members) / 1024)


def _get(client: httpx.Client, path: str, etag: str | None = None) -> httpx.Response:
    response = client.get(path, headers={"If-None-Match": etag} if etag else None)
    if response.status_code not in (200, 304):
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return response


def _lists(kind: str, body: bytes, filename: str, name: str) -> bool:
    if kind == "json":
        return f'"{filename}"'.encode() in body
    raw = _unzstd(body)
    if kind == "zst":
        return f'"{filename}"'.encode() in raw
    return name in msgpack.unpackb(raw)["shards"]


def _unzstd(body: bytes) -> bytes:
    """Every frame (a stream of several is valid zstd too), as conda's ``stream_writer`` reads it."""
    return zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True).read()


def plus_one(
    client: httpx.Client, admin: httpx.Client, path: Path, name: str, subdir: str, feed: str = FEED
) -> dict[str, float]:
    """Upload one file; from its 201, poll the three indexes with HEAD and If-None-Match until each
    answers 200 with a new ETag: the time is taken when its headers arrive (the server has the new
    bytes). HEAD, so that no poll waits behind the body of another (a 70 MB .zst the client would drop
    after its headers still leaves the one worker busy sending it). The bodies are fetched afterwards
    by that ETag and checked to list the file."""
    paths = {
        "zst": f"/conda/{feed}/{subdir}/repodata.json.zst",
        "shards": f"/conda/{feed}/{subdir}/repodata_shards.msgpack.zst",
        "json": f"/conda/{feed}/{subdir}/repodata.json",
    }
    etags = {kind: _get(client, p).headers.get("etag") for kind, p in paths.items()}
    data = path.read_bytes()
    started = time.perf_counter()
    common.upload_one(admin, feed, path, data)
    created = time.perf_counter()
    seen: dict[str, float] = {}
    new_etags: dict[str, str] = {}
    while len(seen) < len(paths):
        if time.perf_counter() - created > 120:
            raise RuntimeError(f"{path.name} not listed within 120 s: {sorted(seen)}")
        for kind, p in paths.items():
            if kind in seen:
                continue
            response = client.head(p, headers={"If-None-Match": str(etags[kind])})
            if response.status_code == 200:
                seen[kind] = time.perf_counter() - created
                new_etags[kind] = response.headers["etag"]
            elif response.status_code != 304:
                raise RuntimeError(f"HEAD {p}: {response.status_code}")
    fetched: dict[str, float] = {}
    for kind, p in paths.items():
        asked = time.perf_counter()
        response = _get(client, p)
        fetched[f"get_{kind}"] = time.perf_counter() - asked  # the first GET of the new bytes, body included
        if response.headers.get("etag") != new_etags[kind] or not _lists(kind, response.content, path.name, name):
            raise RuntimeError(f"{p} changed to {new_etags[kind]} without listing {path.name}")
    return {"upload": created - started, **seen, "all": max(seen.values()), **fetched}


def rattler_index(channel: Path, full: bool) -> float:
    prefix = common.pinned(common.SERVER_CORE)
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _RATTLER_INDEX, str(channel), "1" if full else "0"],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rattler index_fs exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def rattler_count(channel: Path, subdir: str) -> int:
    repodata = json.loads((channel / subdir / "repodata.json").read_bytes())
    return len(repodata.get("packages", {})) + len(repodata.get("packages.conda", {}))


def set_up(base: Path, packages: int) -> dict[str, object]:
    """Generated packages in ``base/packages`` and a populated data dir ``base/data``, made once."""
    marker = base / "set-up.json"
    if marker.exists():
        done: dict[str, object] = json.loads(marker.read_text())
        if done["packages"] == packages:
            return done
        raise RuntimeError(f"{base} holds a set-up of {done['packages']} packages, not {packages}")
    base.mkdir(parents=True, exist_ok=True)
    print(f"[large_hosted] generating {packages:,} packages in {base}", file=sys.stderr)
    started = time.perf_counter()
    rows = generate(base / "packages", packages)
    generate_s = time.perf_counter() - started
    print(f"[large_hosted] publishing in batches of {_BATCH}", file=sys.stderr)
    populate_s = populate(base / "data", rows)
    done = {
        "packages": packages,
        "generate_s": generate_s,
        "populate_s": populate_s,
        "per_subdir": {s: sum(1 for r in rows if r[0] == s) for s in SUBDIRS},
    }
    marker.write_text(json.dumps(done))
    return done


def _fresh_copy(source: Path, target: Path) -> None:
    """The data dir for one run: blobs hard-linked (never written in place), everything else copied."""

    def link_or_copy(src: str, dst: str) -> object:
        if "/blobs/" in src:
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)


def run(
    packages: int, repeats: int, rattler_repeats: int, keep: bool, skip_rattler: bool, base: Path | None
) -> Results:
    results = Results(packages=packages)
    workdir = Path(tempfile.mkdtemp(prefix="condagate-bench-large-"))
    base = base or workdir / "set-up"
    server = None
    try:
        done = set_up(base, packages)
        results.generate_s, results.populate_s = float(done["generate_s"]), float(done["populate_s"])  # type: ignore[arg-type]
        results.per_subdir = dict(done["per_subdir"])  # type: ignore[call-overload]
        extras = [
            (common.generate_one(workdir / "extra", f"large-extra-{k:03d}"), f"large-extra-{k:03d}")
            for k in range(max(repeats, rattler_repeats))
        ]
        _fresh_copy(base / "data", workdir / "condagate")
        common.pin_this_process(common.CLIENT_CORE)

        print("[large_hosted] condagate: cold start", file=sys.stderr)
        started = time.perf_counter()
        server = common.start_condagate(workdir / "condagate")
        results.start_s = time.perf_counter() - started
        with server.client() as client, server.admin() as admin:
            for subdir in SUBDIRS:
                for filename in ("repodata.json.zst", "repodata_shards.msgpack.zst", "repodata.json"):
                    path = f"/conda/{FEED}/{subdir}/{filename}"
                    seconds, response = common.timed(lambda p=path: _get(client, p))  # type: ignore[misc]
                    results.cold_ms[f"{subdir}/{filename}"] = seconds * 1000
                    body = response.content  # type: ignore[attr-defined]
                    if filename == "repodata.json.zst":
                        raw = _unzstd(body)
                        results.zst_bytes[subdir], results.json_bytes[subdir] = len(body), len(raw)
                        repodata = json.loads(raw)
                        found = len(repodata["packages"]) + len(repodata["packages.conda"])
                        if found != results.per_subdir[subdir]:
                            raise RuntimeError(f"{subdir} lists {found}, expected {results.per_subdir[subdir]}")
                if subdir == SUBDIRS[0]:
                    results.worker_rss_mib, results.worker_hwm_mib = worker_memory(server.process.pid)
            print("[large_hosted] condagate: +1 uploads", file=sys.stderr)
            for path, name in extras[:repeats]:
                results.plus_one.append(plus_one(client, admin, path, name, "noarch"))
                print(f"[large_hosted] {name}: {results.plus_one[-1]}", file=sys.stderr)
        server.stop()

        if not skip_rattler:
            source = base / "packages"
            for full in (False, True):
                variant = "zst+shards" if full else "json"
                print(f"[large_hosted] rattler index_fs ({variant})", file=sys.stderr)
                channel = workdir / f"rattler-{variant}"
                shutil.copytree(source, channel, copy_function=os.link)
                results.rattler_cold_s[variant] = rattler_index(channel, full)
                for subdir in SUBDIRS:
                    if rattler_count(channel, subdir) != results.per_subdir[subdir]:
                        raise RuntimeError(f"rattler indexed the wrong count in {channel}/{subdir}")
                times = results.rattler_plus_one_s.setdefault(variant, [])
                for path, _ in extras[:rattler_repeats]:
                    shutil.copy2(path, channel / "noarch" / path.name)
                    times.append(rattler_index(channel, full))
                if rattler_count(channel, "noarch") != results.per_subdir["noarch"] + rattler_repeats:
                    raise RuntimeError("rattler's +1 re-index missed a package")
        return results
    finally:
        if server is not None:
            server.stop()
        if keep:
            print(f"[large_hosted] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- report ------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def markdown(r: Results) -> str:
    subdirs = " + ".join(f"{n:,} {s}" for s, n in r.per_subdir.items())
    sizes = "; ".join(
        f"{s}: repodata.json {r.json_bytes[s] / 1e6:.1f} MB, .zst {r.zst_bytes[s] / 1e6:.1f} MB" for s in r.json_bytes
    )
    out = [
        f"### Large hosted feed: {r.packages:,} packages ({subdirs}; {sizes})",
        "",
        f"Set-up (not measured): generated in {r.generate_s:.0f} s; blobs hard-linked and rows written "
        f"through `services.publish.publish` in batches of {_BATCH:,} candidates in {r.populate_s:.0f} s. "
        f"Server: a fresh `condagate serve` (granian, 1 worker, SQLite) on core {common.SERVER_CORE}, "
        f"healthy {r.start_s:.1f} s after spawn; client on core {common.CLIENT_CORE}. rattler: `index_fs` in "
        f"a fresh interpreter on core {common.SERVER_CORE}, timed around `index_fs` only.",
        "",
    ]
    p = r.plus_one
    n = len(p)
    rows: list[list[object]] = []
    if p:
        for kind, label in (
            ("json", "repodata.json"),
            ("zst", "repodata.json.zst"),
            ("shards", "repodata_shards.msgpack.zst"),
            ("all", "**all three (goal ≤ 50 ms)**"),
        ):
            rows.append(
                [
                    f"condagate: 201 → listed in {label}",
                    _ms(common.median(x[kind] for x in p)),
                    _ms(max(x[kind] for x in p)),
                    "",
                ]
            )
        rows.append(
            [
                "condagate: the upload itself (POST → 201, not counted above)",
                _ms(common.median(x["upload"] for x in p)),
                _ms(max(x["upload"] for x in p)),
                "",
            ]
        )
    for variant, times in r.rattler_plus_one_s.items():
        ratio = f"{common.median(x['all'] for x in p) / common.median(times):.3f}×" if p else ""
        rows.append(
            [
                f"rattler index_fs ({variant}): copy 1 file in + re-index",
                _ms(common.median(times)),
                _ms(max(times)),
                ratio,
            ]
        )
    out += [
        common.table(
            [
                f"+1 package (median of {n} / rattler {len(next(iter(r.rattler_plus_one_s.values()), []))})",
                "median",
                "max",
                "condagate / rattler",
            ],
            rows,
        ),
        "",
    ]
    cold: list[list[object]] = [
        [f"condagate, first GET after the start: {k}", _ms(v / 1000), ""] for k, v in r.cold_ms.items()
    ]
    cold.append(
        [
            "condagate worker after these: peak RSS (VmHWM) / RSS now",
            f"{r.worker_hwm_mib:,.0f} MiB / {r.worker_rss_mib:,.0f} MiB",
            "",
        ]
    )
    first = r.cold_ms.get(f"{SUBDIRS[0]}/repodata.json.zst", 0) / 1000
    for variant, seconds in r.rattler_cold_s.items():
        cold.append(
            [f"rattler index_fs ({variant}), cold, whole channel", f"{seconds:.2f} s", f"{first / seconds:.3f}×"]
        )
    out += [common.table(["cold (goal: first request ≤ 1 s)", "time", "condagate first .zst / rattler"], cold), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=10, help="+1 uploads (median)")
    parser.add_argument("--rattler-repeats", type=int, default=3, help="+1 re-indexes per rattler variant")
    parser.add_argument("--no-rattler", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (and the server log)")
    parser.add_argument("--workdir", type=Path, help="where the generated set-up is kept and reused")
    args = parser.parse_args()
    print(markdown(run(args.packages, args.repeats, args.rattler_repeats, args.keep, args.no_rattler, args.workdir)))


if __name__ == "__main__":
    main()
