"""Upload on one replica → listed on another (issue 12/13): how long after replica A's 201 another
``condagate serve`` on the same PostgreSQL lists the file in ``repodata.json`` — measured, not asserted.

Three servers (granian, 1 worker each, unpinned) share one database in the throwaway PostgreSQL cluster
(``tests/servers.py``) and the blob folder, each with its own data folder (so no shared memory-mapped
change counter):
- A takes the uploads;
- B listens (``NOTIFY``) and would otherwise trust what it read for 30 s: its figure is the notification's;
- C has no listener and the default fallback bound (``CONDAGATE_CHANGE_MAX_AGE_SECONDS=0.1``): what every
  replica got before the listener (a database read per 100 ms per process and subdir);
- A itself (the writing process: its own change counter).
Each upload is timed on one reader: first that reader's fast lane gets the subdir (two GETs: the route
resolves it, the lane serves it), then A takes the upload, and from its 201 the reader's ``repodata.json``
is polled back to back (``If-None-Match``, keep-alive) until it lists the file. For C this is close to
its worst case (the entry was fresh when the upload landed); for B the fallback would take 30 s.

With ``--s3`` the servers keep their blobs in one bucket of moto's S3 server (tests/s3_server.py) instead
of a shared folder: the replicas' deployment of issue 13 (PostgreSQL + S3, nothing shared on disk).

    flock /tmp/condagate-bench.lock .venv/bin/python bench/replica_visibility.py [--repeats 20] [--s3]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import s3_server  # noqa: E402  (tests/, put on sys.path by common)
import servers  # noqa: E402


def _listed_after(reader: httpx.Client, path: str, filename: str, etag: str, started: float, limit: float) -> float:
    """Seconds from ``started`` until ``reader`` lists ``filename`` at ``path``."""
    while True:
        response = reader.get(path, headers={"If-None-Match": etag})
        if response.status_code == 200:
            etag = response.headers.get("etag", "")
            if filename in response.json()["packages.conda"]:
                return time.perf_counter() - started
        elapsed = time.perf_counter() - started
        if elapsed > limit:
            raise RuntimeError(f"{filename} not listed after {limit} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (server logs)")
    parser.add_argument("--s3", action="store_true", help="blobs in a bucket of moto's S3 server, not a folder")
    options = parser.parse_args()

    database_url = servers.postgres_database()
    if database_url is None:
        raise SystemExit("PostgreSQL is not installed here (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="condagate-bench-replicas-"))
    shared = {"CONDAGATE_DATABASE_URL": database_url, "CONDAGATE_STORAGE_URL": str(root / "blobs")}
    started: list[servers.Server] = []
    stack = contextlib.ExitStack()
    try:
        if options.s3:
            s3 = stack.enter_context(s3_server.running_s3(root))
            shared.update(s3_server.server_env(s3.url, s3.new_bucket()))
        for name, extra in (
            ("a", {}),
            ("b", {"CONDAGATE_CHANGE_MAX_AGE_SECONDS": "30"}),
            ("c", {"CONDAGATE_CHANGE_LISTENER": "off"}),
        ):
            started.append(common.start_condagate(root / name, core=None, **shared, **extra))
        writer, listening, polling = started
        time.sleep(1.0)  # the listeners connect
        feed = "replicas"
        common.create_feed(writer, feed)
        path = f"/conda/{feed}/noarch/repodata.json"
        readers = {
            "same replica (A → A)": writer.admin(),
            "other replica, NOTIFY (A → B)": listening.client(),
            "other replica, 0.1 s fallback, no listener (A → C)": polling.client(),
        }
        latencies: dict[str, list[float]] = {label: [] for label in readers}
        with writer.admin() as uploader:
            common.upload_one(uploader, feed, common.generate_one(root / "packages", "warmup"))
            for i in range(options.repeats):
                for number, (label, reader) in enumerate(readers.items()):
                    package = common.generate_one(root / "packages", f"visible-{i:03d}-{number}")
                    for _ in range(2):  # the reader's fast lane holds the subdir (just resolved)
                        etag = reader.get(path).headers.get("etag", "")
                    common.upload_one(uploader, feed, package)
                    began = time.perf_counter()
                    latencies[label].append(_listed_after(reader, path, package.name, etag, began, 60.0))
        print(f"# Upload on one replica → listed on another ({options.repeats} uploads per row)\n")
        storage = "one bucket of moto's S3 server" if options.s3 else "one shared blob folder"
        print(common.machine() + f"; PostgreSQL: the test suite's throwaway cluster on 127.0.0.1; {storage}\n")
        rows = []
        for label, values in latencies.items():
            ordered = sorted(values)
            rows.append(
                (
                    label,
                    f"{common.median(values) * 1000:.1f}",
                    f"{ordered[int(len(ordered) * 0.9) - 1] * 1000:.1f}",
                    f"{ordered[-1] * 1000:.1f}",
                )
            )
        print(common.table(("from A's 201 to listed in repodata.json", "median ms", "p90 ms", "max ms"), rows))
        for client in readers.values():
            client.close()
    finally:
        for server in reversed(started):
            server.stop()
        stack.close()
        servers.stop_postgres()
        if options.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
