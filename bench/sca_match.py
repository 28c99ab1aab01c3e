"""Matching advisories against a big feed: the vulnerability index (``services.vulnerabilities``).

10,000 OSV advisories generated from the real PyPA ones (shared/data/osv: their ranges and version
lists kept, package names varied over real conda-forge names from the grayskull table and synthetic
ones) are imported into a fresh SQLite database; 500,000 records (name, version) over ~50,000 names
(about 2,500 with advisories, which get a fifth of the records; their versions drawn from the
advisories' own version lists; conda spellings such as ``rc1``, ``.post1`` and ``_1`` included)
are then checked with ``vulnerability_state``.

Measured: the import, the index build, a full evaluation (cold), the same again (memoised), and
after importing one changed advisory: the incremental refresh, the names it touches, their
re-evaluation, and a full pass over everything afterwards. In-process, one thread.

    .venv/bin/python bench/sca_match.py [--advisories 10000] [--records 500000] [--names 50000]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OSV_ZIP = ROOT.parent / "shared" / "data" / "osv" / "pypa-advisory-database.zip"

from condagate.conda.osv import Document  # noqa: E402
from condagate.conda.package_names import grayskull_table, normalize_pypi  # noqa: E402
from condagate.services import advisories, vulnerabilities  # noqa: E402
from condagate.services.context import Services  # noqa: E402
from condagate.settings import Settings  # noqa: E402


def real_documents(path: Path) -> list[dict[str, Any]]:
    found = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith(".json"):
                document = json.loads(archive.read(name))
                if document.get("affected") and str(document.get("modified", "")).startswith("20"):
                    found.append(document)
    return found


def generate_advisories(real: list[dict[str, Any]], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Real documents first, then variants: another package name (real conda-forge Python names
    and synthetic ones), the same ranges and version lists, sometimes a later fix."""
    table = grayskull_table()
    real_names = sorted({normalize_pypi(d["affected"][0]["package"]["name"]) for d in real})
    extra = sorted({n for names in table.names.values() for n in names} - set(real_names))
    rng.shuffle(extra)
    pool = real_names + extra[:1200] + [f"pyproject-{i}" for i in range(600)]
    generated = []
    for i in range(count):
        document = json.loads(json.dumps(real[i % len(real)]))
        if i >= len(real):
            document["id"] = f"{document['id']}-V{i}"
            name = rng.choice(pool)
            for affected in document["affected"]:
                affected["package"]["name"] = name
                affected["package"].pop("purl", None)
        generated.append(document)
    return generated


def conda_name_of(pypi: str, reverse: dict[str, str]) -> str:
    return reverse.get(pypi, pypi)


def generate_records(
    documents: list[dict[str, Any]], count: int, names: int, rng: random.Random
) -> list[tuple[str, str]]:
    table = grayskull_table()
    reverse = {pypi[0]: conda for conda, pypi in table.names.items() if len(pypi) == 1}
    versions_of: dict[str, list[str]] = {}
    for document in documents:
        for affected in document["affected"]:
            conda = conda_name_of(normalize_pypi(affected["package"]["name"]), reverse)
            versions_of.setdefault(conda, []).extend(affected.get("versions", [])[-40:])
    with_advisories = sorted(versions_of)
    python = sorted(set(table.names) - set(with_advisories))
    rng.shuffle(python)
    others = python[: max(0, min(len(python), names // 4))]
    others += [f"lib{rng.choice('abcdefgh')}-{i}" for i in range(names - len(with_advisories) - len(others))]
    all_names = with_advisories + others
    spellings = ("", "", "", "", "", "", "rc1", ".post1", "a1", "_1", ".dev0")
    records = []
    for i in range(count):
        if i < len(all_names):
            name = all_names[i]
        else:  # packages with advisories (popular Python ones) have many builds: a fifth of the records
            name = rng.choice(with_advisories) if rng.random() < 0.2 else rng.choice(all_names)
        listed = versions_of.get(name)
        if listed and rng.random() < 0.8:
            version = rng.choice(listed)
        else:
            version = f"{rng.randint(0, 30)}.{rng.randint(0, 20)}.{rng.randint(0, 12)}"
        if rng.random() < 0.05:
            version += rng.choice(spellings)
        records.append((name, version))
    return records


def as_documents(items: list[dict[str, Any]]) -> list[Document]:
    return [Document(f"{d['affected'][0]['package']['name']}/{d['id']}.json", json.dumps(d).encode()) for d in items]


def evaluate(
    services: Services, records: list[tuple[str, str]], feed_id: int | None = 1
) -> tuple[float, float, Counter[str]]:
    """(wall seconds, CPU seconds of this process, statuses): on a shared machine the CPU time says more."""
    started, cpu = time.perf_counter(), time.process_time()
    statuses: Counter[str] = Counter()
    for name, version in records:
        statuses[vulnerabilities.vulnerability_state(services, feed_id=feed_id, name=name, version=version).status] += 1
    return time.perf_counter() - started, time.process_time() - cpu, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--advisories", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--names", type=int, default=50_000)
    parser.add_argument("--osv-zip", type=Path, default=OSV_ZIP)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = parser.parse_args()
    rng = random.Random(42)
    rows: list[tuple[str, str]] = []

    def row(what: str, value: str) -> None:
        rows.append((what, value))
        print(f"{what}: {value}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    real = real_documents(args.osv_zip)
    generated = generate_advisories(real, args.advisories, rng)
    records = generate_records(generated, args.records, args.names, rng)
    distinct = len({name for name, _ in records})
    row(
        "generated",
        f"{len(generated)} advisories ({len(real)} real), {len(records)} records, {distinct} names "
        f"in {time.perf_counter() - started:.1f} s",
    )

    data_dir = Path(tempfile.mkdtemp(prefix="condagate-sca-bench-"))
    services = Services.open(Settings(data_dir=data_dir))
    try:
        started = time.perf_counter()
        summary = advisories.import_documents(services, as_documents(generated))
        took = time.perf_counter() - started
        row(
            "import (SQLite)",
            f"{took:.2f} s, {summary.documents / took:.0f} documents/s "
            f"({summary.new} new, {summary.withdrawn} withdrawn, {summary.failed} failed)",
        )

        matcher = vulnerabilities.matcher(services)
        started = time.perf_counter()
        matcher.current()
        row("index build", f"{(time.perf_counter() - started) * 1000:.0f} ms")

        took, cpu, statuses = evaluate(services, records)
        row(
            "full evaluation, cold",
            f"{took:.2f} s ({cpu:.2f} s CPU), {len(records) / took / 1000:.0f}k records/s  {dict(statuses)}",
        )
        took, cpu, _ = evaluate(services, records)
        row("full evaluation, memoised", f"{took:.2f} s ({cpu:.2f} s CPU), {len(records) / took / 1000:.0f}k records/s")
        took, cpu, _ = evaluate(services, records, feed_id=2)
        row(
            "the same records in a second feed",
            f"{took:.2f} s ({cpu:.2f} s CPU): matching is shared, assessments per feed",
        )

        # One changed advisory: a real urllib3 one with a later fix.
        before = vulnerabilities.sca_revision(services)
        changed = next(d for d in generated if d["affected"][0]["package"]["name"] == "urllib3")
        changed = json.loads(json.dumps(changed))
        changed["modified"] = "2030-01-01T00:00:00Z"
        for affected in changed["affected"]:
            for ranges in affected.get("ranges", []):
                for event in ranges["events"]:
                    if "fixed" in event and ranges["type"] == "ECOSYSTEM":
                        event["fixed"] = "99.0"
        started = time.perf_counter()
        summary = advisories.import_documents(services, as_documents([changed]))
        row(
            "import one changed advisory",
            f"{(time.perf_counter() - started) * 1000:.1f} ms ({summary.updated} updated)",
        )
        started = time.perf_counter()
        matcher.current()
        row("incremental index refresh", f"{(time.perf_counter() - started) * 1000:.1f} ms")
        names = sorted({name for name, _ in records})
        started = time.perf_counter()
        touched = vulnerabilities.names_changed_since(services, revision=before, names=names)
        assert touched is not None
        row(
            "names touched",
            f"{len(touched)} of {len(names)} (found in {(time.perf_counter() - started) * 1000:.0f} ms)",
        )
        affected_records = [r for r in records if r[0] in touched]
        took, _, statuses = evaluate(services, affected_records)
        row(
            "re-evaluate the touched records",
            f"{len(affected_records)} records in {took * 1000:.1f} ms  {dict(statuses)}",
        )
        took, _, _ = evaluate(services, records)
        row("full pass after the change", f"{took:.2f} s (memo kept for untouched names)")

        # An assessment: only the findings of that advisory's names change.
        before = vulnerabilities.sca_revision(services)
        advisories.assess(services, advisory_id=changed["id"], verdict="block", feed=None, comment="", actor="bench")
        started = time.perf_counter()
        matcher.current()
        touched = vulnerabilities.names_changed_since(services, revision=before, names=names) or set()
        row(
            "assessment: refresh + names touched",
            f"{(time.perf_counter() - started) * 1000:.1f} ms, {len(touched)} names",
        )
    finally:
        services.close()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    print()
    print("| step | result |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
