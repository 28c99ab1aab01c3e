"""channeldata.json: a channel-wide summary of each package name."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from condagate.conda.versions import sort_versions_descending


@dataclass(frozen=True)
class PackageFileSummary:
    name: str
    version: str
    subdir: str
    timestamp: int
    about: dict[str, str]


def encode_channeldata(files: Iterable[PackageFileSummary], subdirs: Iterable[str]) -> bytes:
    by_name: dict[str, list[PackageFileSummary]] = {}
    for item in files:
        by_name.setdefault(item.name, []).append(item)
    packages: dict[str, dict[str, Any]] = {}
    for name in sorted(by_name):
        items = by_name[name]
        latest = sort_versions_descending(item.version for item in items)[0]
        newest = max((item for item in items if item.version == latest), key=lambda item: item.timestamp)
        entry: dict[str, Any] = {
            key: newest.about.get(key) for key in ("description", "home", "license", "summary", "dev_url", "doc_url")
        }
        entry["subdirs"] = sorted({item.subdir for item in items})
        entry["version"] = latest
        entry["timestamp"] = max(item.timestamp for item in items)
        packages[name] = entry
    document = {"channeldata_version": 1, "packages": packages, "subdirs": sorted(set(subdirs))}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
