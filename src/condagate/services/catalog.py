"""What the UI and the REST API show of a feed's packages: pages of names, one package's versions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from condagate.conda.versions import sort_versions_descending
from condagate.errors import PackageNotFound
from condagate.services.context import Services
from condagate.store import downloads as download_store
from condagate.store import feeds as feed_store
from condagate.store import packages as package_store
from condagate.store.models import PackageFile


@dataclass(frozen=True)
class PackageListItem:
    name: str
    latest_version: str
    summary: str
    license: str
    subdirs: list[str]
    files: int


@dataclass(frozen=True)
class PackagePage:
    items: list[PackageListItem]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class FileDetail:
    filename: str
    subdir: str
    version: str
    build: str
    build_number: int
    size: int
    sha256: str
    md5: str
    depends: list[str]
    constrains: list[str]
    license: str
    timestamp: int
    uploaded_at: str
    downloads: int


@dataclass(frozen=True)
class VersionDetail:
    version: str
    files: list[FileDetail] = field(default_factory=list)


@dataclass(frozen=True)
class PackageDetail:
    feed: str
    name: str
    latest_version: str
    about: dict[str, str]
    versions: list[VersionDetail]
    downloads: int


def _about(row: PackageFile) -> dict[str, str]:
    value: dict[str, str] = json.loads(row.about or "{}")
    return value


def list_packages(services: Services, *, feed: str, search: str = "", offset: int = 0, limit: int = 50) -> PackagePage:
    with services.db.read() as session:
        feed_row = feed_store.get_feed(session=session, name=feed)
        total = package_store.count_package_names(session=session, feed_id=feed_row.id, search=search)
        names = package_store.page_package_names(
            session=session, feed_id=feed_row.id, search=search, offset=offset, limit=limit
        )
        rows = package_store.files_of_names(session=session, feed_id=feed_row.id, names=names)
    by_name: dict[str, list[PackageFile]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    items = []
    for name in names:
        files = by_name.get(name, [])
        latest = sort_versions_descending(row.version for row in files)[0]
        newest = next(row for row in files if row.version == latest)
        about = _about(newest)
        items.append(
            PackageListItem(
                name=name,
                latest_version=latest,
                summary=about.get("summary", ""),
                license=json.loads(newest.record).get("license", about.get("license", "")) or "",
                subdirs=sorted({row.subdir for row in files}),
                files=len(files),
            )
        )
    return PackagePage(items=items, total=total, offset=offset, limit=limit)


def package_detail(services: Services, *, feed: str, name: str) -> PackageDetail:
    with services.db.read() as session:
        feed_row = feed_store.get_feed(session=session, name=feed)
        rows = package_store.files_of_names(session=session, feed_id=feed_row.id, names=[name])
        if not rows:
            raise PackageNotFound(f"package {name!r} is not in feed {feed!r}")
        counts = download_store.downloads_by_file(
            session=session, feed_id=feed_row.id, filenames=[row.filename for row in rows]
        )
    ordered = sort_versions_descending(row.version for row in rows)
    versions = {version: VersionDetail(version) for version in ordered}
    for row in rows:
        record: dict[str, Any] = json.loads(row.record)
        versions[row.version].files.append(
            FileDetail(
                filename=row.filename,
                subdir=row.subdir,
                version=row.version,
                build=row.build,
                build_number=int(record.get("build_number", 0)),
                size=row.size,
                sha256=row.sha256,
                md5=row.md5,
                depends=list(record.get("depends", [])),
                constrains=list(record.get("constrains", [])),
                license=str(record.get("license", "")),
                timestamp=int(record.get("timestamp", 0)),
                uploaded_at=row.uploaded_at.isoformat(),
                downloads=counts.get((row.subdir, row.filename), 0),
            )
        )
    for detail in versions.values():
        detail.files.sort(key=lambda f: (f.subdir, -f.build_number, f.filename))
    newest = next(row for row in rows if row.version == ordered[0])
    return PackageDetail(
        feed=feed,
        name=name,
        latest_version=ordered[0],
        about=_about(newest),
        versions=list(versions.values()),
        downloads=sum(counts.values()),
    )


def downloads_of_packages(services: Services, *, feed: str, names: list[str]) -> dict[str, int]:
    """Total downloads of each named package, over all its files (the feed page's column)."""
    with services.db.read() as session:
        feed_row = feed_store.get_feed(session=session, name=feed)
        rows = package_store.files_of_names(session=session, feed_id=feed_row.id, names=names)
        counts = download_store.downloads_by_file(
            session=session, feed_id=feed_row.id, filenames=[row.filename for row in rows]
        )
    totals = dict.fromkeys(names, 0)
    for row in rows:
        totals[row.name] += counts.get((row.subdir, row.filename), 0)
    return totals
