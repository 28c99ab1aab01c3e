"""Known conda subdirs (platforms) and package file names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from condagate.errors import InvalidPackage, SubdirNotFound

KNOWN_SUBDIRS: tuple[str, ...] = (
    "noarch",
    "linux-64",
    "linux-aarch64",
    "linux-ppc64le",
    "linux-s390x",
    "linux-32",
    "linux-armv6l",
    "linux-armv7l",
    "linux-riscv64",
    "osx-64",
    "osx-arm64",
    "win-64",
    "win-32",
    "win-arm64",
    "emscripten-wasm32",
    "wasi-wasm32",
    "zos-z",
)

PACKAGE_EXTENSIONS: tuple[str, ...] = (".conda", ".tar.bz2")

# conda names are lower case; versions and build strings use a small alphabet. Being strict here
# is what keeps a file name safe to use as a URL segment and a display string.
_NAME = r"[a-z0-9_][a-z0-9_.\-]*"
_VERSION = r"[A-Za-z0-9_.+!*]+"
_BUILD = r"[A-Za-z0-9_.+]+"
# Clients unpack a package into a folder named after its stem: longer names fail on most file systems.
_MAX_FILENAME = 255
_FILENAME_RE = re.compile(rf"(?P<name>{_NAME})-(?P<version>{_VERSION})-(?P<build>{_BUILD})(?P<ext>\.conda|\.tar\.bz2)")


def require_known_subdir(subdir: str) -> str:
    if subdir not in KNOWN_SUBDIRS:
        raise SubdirNotFound(f"unknown subdir {subdir!r}; known subdirs: {', '.join(KNOWN_SUBDIRS)}")
    return subdir


@dataclass(frozen=True)
class PackageFilename:
    name: str
    version: str
    build: str
    extension: str

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def __str__(self) -> str:
        return self.stem + self.extension


def parse_package_filename(filename: str) -> PackageFilename:
    """Split NAME-VERSION-BUILD.EXT; the name may itself contain dashes, version and build may not."""
    if not filename.endswith(PACKAGE_EXTENSIONS):
        raise InvalidPackage(f"{filename!r} is not a conda package file name: it must end in .conda or .tar.bz2")
    if len(filename) > _MAX_FILENAME:
        raise InvalidPackage(f"the file name is {len(filename)} characters long; at most {_MAX_FILENAME} allowed")
    match = _FILENAME_RE.fullmatch(filename)
    if match is None:
        raise InvalidPackage(
            f"{filename!r} is not a valid conda package file name: expected NAME-VERSION-BUILD.conda "
            "or NAME-VERSION-BUILD.tar.bz2 with a lower-case name"
        )
    return PackageFilename(match["name"], match["version"], match["build"], match["ext"])
