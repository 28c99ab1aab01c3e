"""Shared pieces of the benchmarks: the test helpers, CPU pinning, package generation, uploads, timing."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TESTS = ROOT / "tests"
RESULTS = BENCH / "results"

# The real-server and package helpers live in tests/; import them rather than copy them.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import package_factory  # noqa: E402
import servers  # noqa: E402

ADMIN_KEY = servers.ADMIN_KEY
free_port = servers.free_port


# --- CPU pinning -------------------------------------------------------------------------------------

# The cores this process may use when it starts (before pin_this_process narrows them).
CORES = sorted(os.sched_getaffinity(0))


SERVER_CORE = CORES[0]
CLIENT_CORE = CORES[1] if len(CORES) > 1 else CORES[0]


def can_pin() -> bool:
    return shutil.which("taskset") is not None and len(CORES) >= 2


def pinned(core: int) -> list[str]:
    """A command prefix that runs the command on one core (nothing when pinning is unavailable)."""
    return ["taskset", "-c", str(core)] if can_pin() else []


def unpinned() -> list[str]:
    """A command prefix that lets the command use every core (undoing this process's own pinning)."""
    return ["taskset", "-c", ",".join(str(c) for c in CORES)] if can_pin() else []


def check_pinned(pid: int, core: int) -> None:
    """Fail loudly when a server we meant to pin is not (its numbers would be meaningless)."""
    if can_pin():
        for member in process_tree(pid):
            affinity = os.sched_getaffinity(member)
            if affinity != {core}:
                raise RuntimeError(f"process {member} runs on cores {sorted(affinity)}, not on core {core}")


def pin_this_process(core: int) -> None:
    """Pin the calling thread (and the threads it starts later) to one core."""
    if can_pin():
        os.sched_setaffinity(0, {core})


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (granian runs its worker as a child process)."""
    found, todo = [], [pid]
    while todo and len(found) < 256:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


# --- condagate ----------------------------------------------------------------------------------------

def start_condagate(data_dir: Path, core: int | None = SERVER_CORE, **env: str) -> servers.Server:
    """``condagate serve`` through tests/servers.py, optionally pinned to one core (inherited by workers)."""
    original = servers.condagate_command
    prefix = pinned(core) if core is not None else unpinned()
    servers.condagate_command = lambda: [*prefix, *original()]
    try:
        # tests/servers.py flushes download counts every 0.2 s for the tests; use the server's default.
        server = servers.start_server(data_dir, extra_env={"CONDAGATE_DOWNLOAD_FLUSH_SECONDS": "2", **env})
    finally:
        servers.condagate_command = original
    if core is not None:
        try:
            check_pinned(server.process.pid, core)
        except RuntimeError:
            server.stop()
            raise
    return server


def create_feed(server: servers.Server, name: str) -> None:
    with server.admin() as client:
        response = client.post("/api/feeds", json={"name": name})
        if response.status_code != 201:
            raise RuntimeError(f"could not create feed {name!r}: {response.status_code} {response.text}")


def upload_one(client: httpx.Client, feed: str, path: Path, data: bytes | None = None) -> None:
    response = client.post(f"/api/feeds/{feed}/upload/{path.name}", content=data or path.read_bytes())
    if response.status_code != 201:
        raise RuntimeError(f"upload of {path.name} failed: {response.status_code} {response.text[:300]}")


def upload_all(server: servers.Server, feed: str, paths: Sequence[Path], concurrency: int = 4) -> float:
    """Upload every file with ``concurrency`` threads (one HTTP connection each); returns wall seconds."""
    payloads = [(path, path.read_bytes()) for path in paths]
    local = threading.local()
    clients: list[httpx.Client] = []
    guard = threading.Lock()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = server.admin()
            with guard:
                clients.append(local.client)
        return local.client  # type: ignore[no-any-return]

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for _ in pool.map(lambda item: upload_one(client(), feed, item[0], item[1]), payloads):
                pass
        return time.perf_counter() - started
    finally:
        for each in clients:
            each.close()


# --- packages -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Generated:
    path: Path
    subdir: str


def generate_packages(root: Path, count: int, subdirs: Sequence[str] = ("noarch", "linux-64"),
                      prefix: str = "bench", versions_per_name: int = 4) -> list[Generated]:
    """``count`` small packages in ``root/SUBDIR/``: alternately .conda and .tar.bz2, a few versions per
    name (so shards hold several records), names spread over ``subdirs``."""
    made: list[Generated] = []
    for i in range(count):
        name_index, version_index = divmod(i, versions_per_name)
        subdir = subdirs[name_index % len(subdirs)]
        spec = package_factory.PackageSpec(
            name=f"{prefix}-{name_index:05d}",
            version=f"1.{version_index}.0",
            build=f"h{i % 7}_0",
            subdir=subdir,
            depends=[f"{prefix}-{(name_index + 1) % max(1, count // versions_per_name):05d} >=1.0",
                     "python >=3.9"],
        )
        directory = root / subdir
        directory.mkdir(parents=True, exist_ok=True)
        extension = ".conda" if i % 2 == 0 else ".tar.bz2"
        made.append(Generated(package_factory.write_package(directory, spec, extension), subdir))
    return made


def generate_one(root: Path, name: str, subdir: str = "noarch", extension: str = ".conda",
                 files: dict[str, bytes] | None = None) -> Path:
    directory = root / subdir
    directory.mkdir(parents=True, exist_ok=True)
    spec = package_factory.PackageSpec(name=name, subdir=subdir, files=files or {})
    return package_factory.write_package(directory, spec, extension)


# --- reporting ----------------------------------------------------------------------------------------

def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{os.cpu_count()} cores ({cpu}){memory}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
