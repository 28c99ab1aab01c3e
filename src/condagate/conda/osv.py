"""OSV advisory documents (https://ossf.github.io/osv-schema/): one read and checked (what condagate
keeps of it, or the reason it is refused: bytes in, a value out, never an exception), and the
documents of a file, a folder or a zip, read in memory within bounds (nothing is extracted)."""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError

from condagate.conda.package_names import normalize_ecosystem_name
from condagate.errors import ImportRefused

# Bounds: a document past them is refused (matching data is never cut short: that would read as
# "not affected"); display text is shortened instead.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_AFFECTED = 500
MAX_RANGES = 100
MAX_EVENTS = 500
MAX_VERSIONS = 20_000
MAX_SUMMARY = 300
MAX_DETAILS = 20_000
MAX_ALIASES = 50
MAX_LINKS = 50
MAX_LINK_LENGTH = 2000
MAX_ID_LENGTH = 100
MAX_ECOSYSTEM_LENGTH = 50
MAX_NAME_LENGTH = 200
MAX_VERSION_LENGTH = 200

SUPPORTED_SCHEMA_MAJOR = 1
EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
VERSION_RANGE_TYPES = ("ECOSYSTEM", "SEMVER")  # GIT ranges carry commits, not versions: kept as a marker only
SEVERITY_LEVELS = ("none", "low", "medium", "high", "critical", "unknown")

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_SCHEMA_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", re.IGNORECASE)
# GHSA and others give a level when they give no vector (database_specific.severity).
_NAMED_LEVELS = {
    "none": "none",
    "low": "low",
    "moderate": "medium",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
    "important": "high",
}


@dataclass(frozen=True)
class Range:
    type: str  # ECOSYSTEM, SEMVER, or GIT (no events kept)
    events: tuple[tuple[str, str], ...]  # (kind, version) in document order

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "events": [{kind: version} for kind, version in self.events]}


@dataclass(frozen=True)
class AffectedPackage:
    ecosystem: str
    name: str  # normalised the ecosystem's way (PEP 503 for PyPI)
    ranges: tuple[Range, ...]
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Advisory:
    id: str
    modified: datetime
    published: datetime | None
    withdrawn: datetime | None
    summary: str
    details: str
    aliases: tuple[str, ...]
    severity: str  # none | low | medium | high | critical | unknown
    score: float | None
    vector: str
    links: tuple[str, ...]
    affected: tuple[AffectedPackage, ...]


@dataclass(frozen=True)
class Rejected:
    """A document that is not imported, and why (``source`` names the file)."""

    source: str
    reason: str


class _Invalid(Exception):
    pass


def parse_advisory(data: bytes, *, source: str) -> Advisory | Rejected:
    """The advisory in ``data``, or why it is refused; never raises."""
    if len(data) > MAX_DOCUMENT_BYTES:
        return Rejected(source, f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return Rejected(source, f"not valid JSON: {_first_line(str(exc))}")
    try:
        return _advisory(document)
    except _Invalid as exc:
        return Rejected(source, str(exc))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:  # a shape this module did not foresee
        return Rejected(source, f"unreadable document: {_first_line(str(exc))}")


def _advisory(document: Any) -> Advisory:
    if not isinstance(document, dict):
        raise _Invalid("not an OSV document: the top level must be a JSON object")
    _check_schema_version(document.get("schema_version"))
    advisory_id = document.get("id")
    if not isinstance(advisory_id, str) or not advisory_id:
        raise _Invalid("required field 'id' is missing or not a string")
    if len(advisory_id) > MAX_ID_LENGTH or not _ID.fullmatch(advisory_id):
        raise _Invalid(f"'id' {advisory_id[:120]!r} is not a usable advisory id (letters, digits, . _ : -)")
    if "modified" not in document:
        raise _Invalid("required field 'modified' is missing")
    modified = _timestamp(document["modified"], "modified")
    published = _timestamp(document["published"], "published") if document.get("published") is not None else None
    withdrawn = _timestamp(document["withdrawn"], "withdrawn") if document.get("withdrawn") is not None else None
    details = _text(document.get("details"), "details")
    summary = _text(document.get("summary"), "summary").strip() or _summary_from(details)
    aliases = _strings(document.get("aliases"), "aliases")
    aliases = tuple(a for a in dict.fromkeys(aliases) if len(a) <= MAX_ID_LENGTH)[:MAX_ALIASES]
    affected_list = document.get("affected") or []
    if not isinstance(affected_list, list):
        raise _Invalid("'affected' must be a list")
    if len(affected_list) > MAX_AFFECTED:
        raise _Invalid(f"'affected' has {len(affected_list)} entries, more than the {MAX_AFFECTED} accepted")
    affected = tuple(_affected(entry, index) for index, entry in enumerate(affected_list))
    severity, score, vector = _severity(document, affected_list)
    return Advisory(
        id=advisory_id,
        modified=modified,
        published=published,
        withdrawn=withdrawn,
        summary=_shorten(summary, MAX_SUMMARY),
        details=_shorten(details, MAX_DETAILS),
        aliases=aliases,
        severity=severity,
        score=score,
        vector=vector,
        links=_links(document.get("references")),
        affected=affected,
    )


def _check_schema_version(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _Invalid("'schema_version' must be a string")
    match = _SCHEMA_VERSION.fullmatch(value.strip())
    if match is None:
        raise _Invalid(f"unknown schema_version {value[:40]!r}")
    if int(match.group(1)) != SUPPORTED_SCHEMA_MAJOR:
        supported = f"this condagate reads OSV {SUPPORTED_SCHEMA_MAJOR}.x"
        raise _Invalid(f"unsupported schema_version {value[:40]!r}: {supported}")


def _timestamp(value: Any, field: str) -> datetime:
    """RFC 3339 (OSV's format); more than microseconds are cut, a missing zone means UTC."""
    if not isinstance(value, str):
        raise _Invalid(f"'{field}' must be an RFC 3339 timestamp string")
    match = _TIMESTAMP.fullmatch(value.strip())
    if match is None:
        raise _Invalid(f"'{field}' {value[:60]!r} is not an RFC 3339 timestamp")
    base, fraction, zone = match.groups()
    text = base + (fraction[:7] if fraction else "") + ("+00:00" if not zone or zone.upper() == "Z" else zone)
    try:
        parsed = datetime.fromisoformat(text.replace("t", "T"))
    except ValueError as exc:
        raise _Invalid(f"'{field}' {value[:60]!r} is not a valid date: {exc}") from None
    return parsed.astimezone(UTC)


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"'{field}' must be a string")
    return value


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Invalid(f"'{field}' must be a list of strings")
    return tuple(value)


def _affected(entry: Any, index: int) -> AffectedPackage:
    where = f"affected[{index}]"
    if not isinstance(entry, dict):
        raise _Invalid(f"{where} must be an object")
    package = entry.get("package")
    if not isinstance(package, dict):
        raise _Invalid(f"{where}.package is missing")
    ecosystem, name = package.get("ecosystem"), package.get("name")
    if not isinstance(ecosystem, str) or not ecosystem.strip():
        raise _Invalid(f"{where}.package.ecosystem is missing")
    if not isinstance(name, str) or not name.strip():
        raise _Invalid(f"{where}.package.name is missing")
    if len(ecosystem) > MAX_ECOSYSTEM_LENGTH or len(name) > MAX_NAME_LENGTH:
        raise _Invalid(f"{where}.package: ecosystem or name is too long")
    ranges_list = entry.get("ranges") or []
    if not isinstance(ranges_list, list):
        raise _Invalid(f"{where}.ranges must be a list")
    if len(ranges_list) > MAX_RANGES:
        raise _Invalid(f"{where}.ranges has more than {MAX_RANGES} ranges")
    ranges = tuple(r for i, item in enumerate(ranges_list) if (r := _range(item, f"{where}.ranges[{i}]")) is not None)
    versions = _strings(entry.get("versions"), f"{where}.versions")
    if len(versions) > MAX_VERSIONS:
        raise _Invalid(f"{where}.versions lists more than {MAX_VERSIONS} versions")
    if any(len(v) > MAX_VERSION_LENGTH for v in versions):
        raise _Invalid(f"{where}.versions holds a version longer than {MAX_VERSION_LENGTH} characters")
    ecosystem = ecosystem.strip()
    return AffectedPackage(ecosystem, normalize_ecosystem_name(ecosystem, name.strip()), ranges, versions)


def _range(item: Any, where: str) -> Range | None:
    if not isinstance(item, dict):
        raise _Invalid(f"{where} must be an object")
    kind = item.get("type")
    if not isinstance(kind, str):
        raise _Invalid(f"{where}.type is missing")
    if kind == "GIT":
        return Range("GIT", ())
    if kind not in VERSION_RANGE_TYPES:
        return None  # a range type of a later schema: it says nothing this condagate can compare
    events_list = item.get("events")
    if not isinstance(events_list, list) or not events_list:
        raise _Invalid(f"{where}.events is missing or empty")
    if len(events_list) > MAX_EVENTS:
        raise _Invalid(f"{where}.events has more than {MAX_EVENTS} events")
    events = []
    for i, event in enumerate(events_list):
        if not isinstance(event, dict) or len(event) != 1:
            raise _Invalid(f"{where}.events[{i}] must be an object with exactly one of {', '.join(EVENT_KINDS)}")
        ((event_kind, version),) = event.items()
        if event_kind not in EVENT_KINDS:
            raise _Invalid(f"{where}.events[{i}]: unknown event {str(event_kind)[:40]!r}")
        if not isinstance(version, str) or not version.strip() or len(version) > MAX_VERSION_LENGTH:
            raise _Invalid(f"{where}.events[{i}].{event_kind} must be a version string")
        events.append((event_kind, version.strip()))
    kinds = {event_kind for event_kind, _ in events}
    if "introduced" not in kinds:
        raise _Invalid(f"{where} has no 'introduced' event (the OSV schema requires one)")
    if {"fixed", "last_affected"} <= kinds:
        raise _Invalid(f"{where} has both 'fixed' and 'last_affected' events (the OSV schema allows one kind)")
    return Range(kind, tuple(events))


def _severity(document: dict[str, Any], affected: list[Any]) -> tuple[str, float | None, str]:
    """(level, score, vector) from the newest CVSS vector given; then a level the database named; else unknown."""
    entries = _severity_entries(document.get("severity"))
    for entry in affected:
        if isinstance(entry, dict):
            entries += _severity_entries(entry.get("severity"))
    for wanted in ("CVSS_V4", "CVSS_V3", "CVSS_V2"):
        for kind, vector in entries:
            if kind == wanted:
                scored = _score(kind, vector)
                if scored is not None:
                    return scored
    for holder in [document, *affected]:
        specific = holder.get("database_specific") if isinstance(holder, dict) else None
        named = specific.get("severity") if isinstance(specific, dict) else None
        if isinstance(named, str) and named.strip().lower() in _NAMED_LEVELS:
            return _NAMED_LEVELS[named.strip().lower()], None, ""
    return "unknown", None, ""


def _severity_entries(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        (item["type"], item["score"].strip())
        for item in value
        if isinstance(item, dict) and isinstance(item.get("type"), str) and isinstance(item.get("score"), str)
    ]


def _score(kind: str, vector: str) -> tuple[str, float, str] | None:
    """A vector the ``cvss`` library cannot read is passed over (the next one, or "unknown", is used)."""
    if len(vector) > 300:
        return None
    try:
        if kind == "CVSS_V4":
            v4 = CVSS4(vector)
            return str(v4.severity).lower(), float(v4.base_score), vector
        if kind == "CVSS_V3":
            v3 = CVSS3(vector)
            return str(v3.severities()[0]).lower(), float(v3.scores()[0]), vector
        v2 = CVSS2(vector)
        score = float(v2.scores()[0])
        return ("low" if score < 4.0 else "medium" if score < 7.0 else "high"), score, vector
    except (CVSSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _links(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    urls = [item["url"].strip() for item in value if isinstance(item, dict) and isinstance(item.get("url"), str)]
    kept = [
        url
        for url in urls
        if url.lower().startswith(("https://", "http://"))
        and len(url) <= MAX_LINK_LENGTH
        and not any(c.isspace() or ord(c) < 32 for c in url)
    ]
    return tuple(dict.fromkeys(kept))[:MAX_LINKS]


def _summary_from(details: str) -> str:
    """PyPA advisories carry no summary: the first sentence of the details stands in."""
    first = details.strip().split("\n\n", 1)[0].replace("\n", " ").strip()
    sentence = re.match(r"(.+?[.!?])(\s|$)", first)
    return sentence.group(1) if sentence and len(sentence.group(1)) <= MAX_SUMMARY else first


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else "unknown error"


MAX_DOCUMENTS = 200_000  # documents in one import (the whole OSV PyPI database is ~15,000)
MAX_TOTAL_BYTES = 1024**3  # uncompressed bytes read in one import


# Reading documents: files, folders, zips, request bodies -------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document to import: its bytes, or why they could not be read."""

    source: str
    data: bytes | None
    error: str = ""


def documents_from_path(path: Path) -> Iterator[Document]:
    """A .json file, a .zip of them, or a folder searched recursively for both (links not followed)."""
    if path.is_dir():
        yield from _documents_from_folder(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            yield from documents_from_zip(handle, source=path.name)
    elif path.is_file():
        yield _read_file(path, path.name)
    else:
        raise ImportRefused(f"{path} is not a file or a folder")


def _documents_from_folder(root: Path) -> Iterator[Document]:
    count = 0
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for filename in sorted(files):
            path = Path(folder) / filename
            label = str(path.relative_to(root))
            if path.is_symlink():
                continue
            if filename.endswith(".zip"):
                with path.open("rb") as handle:
                    yield from documents_from_zip(handle, source=label)
                continue
            if not filename.endswith(".json"):
                continue
            count += 1
            if count > MAX_DOCUMENTS:
                raise ImportRefused(f"{root} holds more than {MAX_DOCUMENTS} documents: import it in parts")
            yield _read_file(path, label)


def _read_file(path: Path, label: str) -> Document:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        return Document(label, None, f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_DOCUMENT_BYTES:
        return Document(label, None, f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    return Document(label, data)


def documents_from_zip(handle: IO[bytes], *, source: str) -> Iterator[Document]:
    """The .json members of a zip, read one at a time in memory. The members' declared sizes are
    checked before anything is read, and the bytes actually inflated are counted as they come."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ImportRefused(f"{source} is not a readable zip file: {exc}") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir() and info.filename.endswith(".json")]
        if len(members) > MAX_DOCUMENTS:
            raise ImportRefused(
                f"{source} holds {len(members)} documents, more than {MAX_DOCUMENTS}: import it in parts"
            )
        declared = sum(info.file_size for info in members)
        if declared > MAX_TOTAL_BYTES:
            raise ImportRefused(f"{source} would inflate to {declared} bytes, more than {MAX_TOTAL_BYTES}")
        inflated = 0
        for info in members:
            label = f"{source}:{info.filename}"
            if info.file_size > MAX_DOCUMENT_BYTES:
                yield Document(label, None, f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(MAX_DOCUMENT_BYTES + 1)
            except (zipfile.BadZipFile, RuntimeError, OSError, NotImplementedError, ValueError) as exc:
                yield Document(label, None, f"cannot read the zip member: {exc}")
                continue
            inflated += len(data)
            if inflated > MAX_TOTAL_BYTES:
                raise ImportRefused(f"{source} inflates to more than {MAX_TOTAL_BYTES} bytes")
            if len(data) > MAX_DOCUMENT_BYTES:
                yield Document(label, None, "the member inflates beyond its declared size (refused)")
                continue
            yield Document(label, data)


def documents_from_body(handle: IO[bytes], *, source: str) -> Iterator[Document]:
    """A request body: a zip of documents, or one JSON document."""
    start = handle.read(4)
    handle.seek(0)
    if start.startswith(b"PK\x03\x04") or start.startswith(b"PK\x05\x06"):
        yield from documents_from_zip(handle, source=source)
        return
    data = handle.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ImportRefused(f"one JSON document may hold at most {MAX_DOCUMENT_BYTES} bytes: send a zip")
    yield Document(source, data)
