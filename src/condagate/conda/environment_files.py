"""Environment files a promotion may be asked for: what to solve (match specs) and what is pinned (files).

Four formats, told apart by name and content: a conda ``environment.yml``, an explicit list
(``@EXPLICIT``, as ``conda list --explicit`` writes it), a ``conda-lock`` lock file (version 1) and a
``pixi.lock`` (read by py-rattler). pip and pypi entries are skipped: a conda feed cannot hold them.
Bytes in, data out; YAML is read with the safe loader only, and sizes are bounded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import rattler
import yaml
from rattler.exceptions import ParseCondaLockError

from condagate.conda.subdirs import parse_package_filename, require_known_subdir
from condagate.errors import BadRequest, InvalidPackage, PayloadTooLarge, SubdirNotFound

MAX_CONTENT_BYTES = 5 * 1024 * 1024
MAX_ENTRIES = 10_000

_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader when PyYAML has it


@dataclass(frozen=True)
class EnvironmentRequest:
    specs: list[str]  # match specs to solve (environment.yml dependencies; not pip ones)
    files: list[tuple[str, str]]  # (subdir, filename) pinned by a lock file or an explicit list
    subdirs: list[str]  # platforms named in the file (a lock file's platforms), may be empty


def read_environment_file(filename: str, content: bytes) -> EnvironmentRequest:
    """Read an environment file; ``BadRequest`` names the line or entry that is wrong."""
    if len(content) > MAX_CONTENT_BYTES:
        raise PayloadTooLarge(
            f"{filename!r} is {len(content)} bytes; an environment file may have at most {MAX_CONTENT_BYTES}"
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{filename!r} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    basename = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if basename.endswith("pixi.lock"):
        return _read_pixi_lock(filename, content)
    if any(line.strip() == "@EXPLICIT" for line in text.splitlines()):
        return _read_explicit(filename, text)
    document = _load_yaml(filename, text)
    if not isinstance(document, dict):
        raise BadRequest(_unknown_format(filename))
    if "package" in document and "metadata" in document:
        return _read_conda_lock(filename, document)
    if "environments" in document and "packages" in document and "version" in document:
        return _read_pixi_lock(filename, content)  # a rattler lock file under another name
    if "dependencies" in document:
        return _read_environment_yml(filename, document)
    raise BadRequest(_unknown_format(filename))


def _unknown_format(filename: str) -> str:
    return (
        f"{filename!r} is not an environment file condagate reads: expected an environment.yml "
        "(with 'dependencies'), an explicit list (with an '@EXPLICIT' line), a conda-lock.yml "
        "(version 1) or a pixi.lock"
    )


def _load_yaml(filename: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a safe loader (C or Python)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise BadRequest(f"{filename!r} is not valid YAML{where}: {problem}") from None


def _counted(filename: str, entries: Iterable[Any]) -> Iterator[Any]:
    for count, entry in enumerate(entries, start=1):
        if count > MAX_ENTRIES:
            raise PayloadTooLarge(f"{filename!r} has more than {MAX_ENTRIES} entries")
        yield entry


def _subdirs(filename: str, values: object, what: str) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise BadRequest(f"{filename!r}: {what} must be a list of platform names")
    return _unique(_known_subdir(filename, value, what) for value in values)


def _known_subdir(filename: str, subdir: str, where: str) -> str:
    try:
        return require_known_subdir(subdir)
    except SubdirNotFound as exc:
        raise BadRequest(f"{filename!r}, {where}: {exc.message}") from None


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def package_location(filename: str, location: str, where: str) -> tuple[str, str]:
    """``(subdir, filename)`` of a package URL or path ``.../SUBDIR/FILENAME`` (query and hash dropped)."""
    path = urlsplit(location.strip()).path if "://" in location else location.split("#", 1)[0]
    parts = path.replace("\\", "/").rstrip().split("/")
    if len(parts) < 2 or not parts[-1]:
        raise BadRequest(f"{filename!r}, {where}: {location!r} is not a package URL ending in SUBDIR/FILENAME")
    subdir, name = unquote(parts[-2]), unquote(parts[-1])
    _known_subdir(filename, subdir, where)
    try:
        parse_package_filename(name)
    except InvalidPackage as exc:
        raise BadRequest(f"{filename!r}, {where}: {exc.message}") from None
    return subdir, name


def _read_environment_yml(filename: str, document: dict[Any, Any]) -> EnvironmentRequest:
    dependencies = document.get("dependencies")
    if not isinstance(dependencies, list):
        raise BadRequest(f"{filename!r}: 'dependencies' must be a list of match specs")
    specs: list[str] = []
    for number, entry in enumerate(_counted(filename, dependencies), start=1):
        if isinstance(entry, dict) and set(entry) == {"pip"}:
            continue  # pip requirements: not conda packages
        if not isinstance(entry, str) or not entry.strip():
            raise BadRequest(f"{filename!r}, dependency {number}: {entry!r} is not a match spec")
        specs.append(entry.strip())
    subdirs = _subdirs(filename, document.get("platforms"), "'platforms'")
    return EnvironmentRequest(specs=_unique(specs), files=[], subdirs=subdirs)


def _read_explicit(filename: str, text: str) -> EnvironmentRequest:
    files: list[tuple[str, str]] = []
    subdirs: list[str] = []
    for number, raw in enumerate(_counted(filename, text.splitlines()), start=1):
        line = raw.strip()
        if line.startswith("# platform:"):
            subdirs.append(_known_subdir(filename, line.removeprefix("# platform:").strip(), f"line {number}"))
            continue
        if not line or line.startswith("#") or line == "@EXPLICIT":
            continue
        if line.startswith("@"):
            raise BadRequest(f"{filename!r}, line {number}: unknown directive {line!r}")
        files.append(package_location(filename, line, f"line {number}"))
    return EnvironmentRequest(specs=[], files=_unique(files), subdirs=_unique(subdirs))


def _read_conda_lock(filename: str, document: dict[Any, Any]) -> EnvironmentRequest:
    version = document.get("version")
    if version != 1:
        raise BadRequest(f"{filename!r}: conda-lock file version {version!r} is not supported (version 1 is)")
    metadata = document.get("metadata")
    packages = document.get("package")
    if not isinstance(metadata, dict) or not isinstance(packages, list):
        raise BadRequest(f"{filename!r}: a conda-lock file needs a 'metadata' mapping and a 'package' list")
    subdirs = _subdirs(filename, metadata.get("platforms"), "metadata.platforms")
    files: list[tuple[str, str]] = []
    for number, entry in enumerate(_counted(filename, packages), start=1):
        where = f"package {number}"
        if not isinstance(entry, dict):
            raise BadRequest(f"{filename!r}, {where}: not a mapping")
        name = entry.get("name")
        where = f"package {number} ({name})" if isinstance(name, str) else where
        manager = entry.get("manager")
        if manager == "pip":
            continue
        if manager != "conda":
            raise BadRequest(f"{filename!r}, {where}: unknown manager {manager!r} (conda or pip)")
        url, platform = entry.get("url"), entry.get("platform")
        if not isinstance(url, str) or not isinstance(platform, str):
            raise BadRequest(f"{filename!r}, {where}: a conda package needs 'url' and 'platform'")
        _known_subdir(filename, platform, where)
        files.append(package_location(filename, url, where))
    return EnvironmentRequest(specs=[], files=_unique(files), subdirs=subdirs)


def _read_pixi_lock(filename: str, content: bytes) -> EnvironmentRequest:
    """All environments, all platforms; conda binary packages only (pypi and source packages skipped)."""
    with tempfile.TemporaryDirectory(prefix="condagate-lock-") as folder:
        path = Path(folder) / "pixi.lock"
        path.write_bytes(content)
        try:
            lock = rattler.LockFile.from_path(path)
        except ParseCondaLockError as exc:
            raise BadRequest(f"{filename!r} is not a valid pixi.lock: {exc}") from None
    files: list[tuple[str, str]] = []
    subdirs: list[str] = []
    count = 0
    for environment_name, environment in lock.environments():
        for platform, packages in environment.packages_by_platform().items():
            where = f"environment {environment_name!r}, platform {platform.name!r}"
            subdirs.append(_known_subdir(filename, str(platform.subdir), where))
            for package in packages:
                count += 1
                if count > MAX_ENTRIES:
                    raise PayloadTooLarge(f"{filename!r} has more than {MAX_ENTRIES} entries")
                if not isinstance(package, rattler.CondaLockedBinaryPackage):
                    continue  # pypi packages, and conda packages built from source by pixi
                files.append(package_location(filename, package.location, f"{where}, package {package.name!r}"))
    return EnvironmentRequest(specs=[], files=_unique(files), subdirs=_unique(subdirs))
