"""Run every benchmark once and write bench/results/latest.md (also printed to stdout).

    .venv/bin/python bench/run_all.py        (or: bench/run_all.sh)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import common
import proxy
import serve_http
import upload_index


def _tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "missing"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def header(started: datetime) -> str:
    commit = _tool_version(["git", "-C", str(common.ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _tool_version(["git", "-C", str(common.ROOT), "status", "--porcelain", "--", "src"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([
        "## condagate benchmarks",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {common.machine()}; load average at start {load}",
        f"- condagate {_package_version('condagate')} at commit {commit}"
        f"{' (src/ has uncommitted changes)' if dirty not in ('', '?', 'missing') else ''}; "
        f"granian {_package_version('granian')}, py-rattler {_package_version('py-rattler')}, "
        f"{_tool_version(['nginx', '-v'])}, {_tool_version(['wrk', '--version']).split(' [')[0]}",
        f"- pinning: servers on core {common.SERVER_CORE}, clients on core {common.CLIENT_CORE}"
        f"{'' if common.can_pin() else ' (NOT pinned: taskset missing or fewer than 2 cores)'}",
        "- one run, not a median of runs: the machine is shared, so expect noise of 10-20 %; compare ratios",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--proxy-records", type=int, default=500_000, help="records in the proxy upstream's subdir")
    parser.add_argument("--proxy-repeats", type=int, default=3, help="wrk rounds in the proxy download benchmark")
    parser.add_argument("--no-proxy", action="store_true", help="skip the proxy benchmark (about 5 minutes)")
    parser.add_argument("--no-quetz", action="store_true", help="skip quetz in the proxy benchmark")
    args = parser.parse_args()
    started, clock = datetime.now(UTC), time.perf_counter()
    upload = upload_index.markdown(upload_index.run(args.packages))
    serve = serve_http.markdown(serve_http.run(args.packages, args.duration))
    proxied = "" if args.no_proxy else proxy.markdown(
        proxy.run(records=args.proxy_records, duration=args.duration, repeats=args.proxy_repeats,
                  with_quetz=not args.no_quetz))
    footer = f"Whole suite: {time.perf_counter() - clock:.0f} s. Reproduce: `bench/run_all.sh`.\n"
    report = "\n".join([header(started), upload, serve, proxied, footer])
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "latest.md").write_text(report)
    print(report)
    print(f"written to {common.RESULTS / 'latest.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
