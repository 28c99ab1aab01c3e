"""Walk the members of a conda archive with limits, rejecting hostile paths and links.

``conda-package-streaming`` does the tar walking (``tar_generator``); this module feeds it
size-limited decompressed streams and checks every member before anything is read from it.
"""

from __future__ import annotations

import bz2
import posixpath
import tarfile
import zipfile
from collections.abc import Callable
from typing import IO, BinaryIO

import zstandard
from conda_package_streaming.package_streaming import tar_generator

from condagate.conda.limits import ArchiveLimits, LimitedReader
from condagate.errors import InvalidPackage

MemberVisitor = Callable[[tarfile.TarInfo, IO[bytes] | None], None]


def check_member(member: tarfile.TarInfo, seen: set[str]) -> str:
    """Return the member's normalised path, or raise if it could escape or harm an install."""
    name = member.name
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise InvalidPackage(f"archive member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise InvalidPackage(f"archive member {name!r} contains '..'")
    normalised = posixpath.normpath(name.replace("\\", "/"))
    if member.ischr() or member.isblk() or member.isfifo():
        raise InvalidPackage(f"archive member {name!r} is a device or fifo")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/") or target.startswith("\\"):
            raise InvalidPackage(f"link {name!r} points to the absolute path {target!r}")
        base = posixpath.dirname(normalised) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
        if resolved == ".." or resolved.startswith("../"):
            raise InvalidPackage(f"link {name!r} points outside the package ({target!r})")
    if not member.isdir():
        if normalised in seen:
            raise InvalidPackage(f"archive member {name!r} appears twice")
        seen.add(normalised)
    return normalised


def _walk_tar(stream: LimitedReader, visit: MemberVisitor, limits: ArchiveLimits, what: str) -> None:
    seen: set[str] = set()
    try:
        for count, (tar, member) in enumerate(tar_generator(stream), start=1):
            if count > limits.max_members:
                raise InvalidPackage(f"{what} has more than {limits.max_members} members")
            check_member(member, seen)
            reader = tar.extractfile(member) if member.isfile() else None
            visit(member, reader)
    except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError) as exc:
        raise InvalidPackage(f"{what} is not a readable tar archive: {exc}") from exc


def walk_tar_bz2(fileobj: BinaryIO, compressed_size: int, visit: MemberVisitor, limits: ArchiveLimits) -> None:
    head = fileobj.read(3)
    fileobj.seek(0)
    if head != b"BZh":
        raise InvalidPackage("the file is not a bzip2-compressed tar archive (.tar.bz2)")
    raw = bz2.BZ2File(fileobj, mode="rb")
    _walk_tar(LimitedReader(raw, limits.budget_for(compressed_size), "the .tar.bz2 archive"), visit, limits, "the .tar.bz2 archive")


def walk_conda(fileobj: BinaryIO, stem: str, visit: MemberVisitor, limits: ArchiveLimits) -> None:
    """Walk ``info-STEM.tar.zst`` first (metadata), then ``pkg-STEM.tar.zst`` (payload paths)."""
    try:
        zf = zipfile.ZipFile(fileobj)
        entries = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidPackage(f"the file is not a .conda (zip) archive: {exc}") from exc
    by_name: dict[str, zipfile.ZipInfo] = {}
    for entry in entries:
        if entry.filename in by_name:
            raise InvalidPackage(f".conda archive has the member {entry.filename!r} twice")
        if "/" in entry.filename or "\\" in entry.filename or entry.filename.startswith(".."):
            raise InvalidPackage(f".conda archive member {entry.filename!r} must not be a path")
        by_name[entry.filename] = entry
    for component in ("info", "pkg"):
        member_name = f"{component}-{stem}.tar.zst"
        entry = by_name.get(member_name)
        if entry is None:
            raise InvalidPackage(f".conda archive has no {member_name} member")
        what = f"the .conda member {member_name}"
        try:
            with zf.open(entry) as compressed:
                decompressor = zstandard.ZstdDecompressor(max_window_size=1 << 27)
                with decompressor.stream_reader(compressed, closefd=False) as reader:
                    limited = LimitedReader(reader, limits.budget_for(entry.file_size), what)
                    _walk_tar(limited, visit if component == "info" else _paths_only, limits, what)
        except (zipfile.BadZipFile, zstandard.ZstdError, EOFError, OSError) as exc:
            raise InvalidPackage(f"{what} is corrupt: {exc}") from exc


def _paths_only(member: tarfile.TarInfo, reader: IO[bytes] | None) -> None:
    """Payload members are only checked for their paths (done by ``_walk_tar``), not read."""
