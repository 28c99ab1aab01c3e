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
from typing import IO, BinaryIO, cast

import zstandard
from conda_package_streaming.package_streaming import tar_generator

from condagate.conda.limits import ArchiveLimits, LimitedReader
from condagate.errors import InvalidPackage

MemberVisitor = Callable[[tarfile.TarInfo, IO[bytes] | None], None]


def _is_absolute(path: str) -> bool:
    """POSIX, UNC and Windows drive paths: conda installs on Windows too."""
    return path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":")


def _escapes(path: str) -> bool:
    return path == ".." or path.startswith("../")


class MemberChecker:
    """Checks every member of one package, across all its tars: a .conda's info and pkg tars are
    extracted into the same folder, so a path in both is a duplicate and a link in one affects the other."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self._limits = limits
        self._files: set[str] = set()
        self._symlinks: set[str] = set()
        # Every folder some member lies in: a symlink there would redirect that member on install.
        self._parents: set[str] = set()
        self.count = 0

    def check(self, member: tarfile.TarInfo) -> str:
        """Return the member's normalised path, or raise if it could escape or harm an install."""
        self.count += 1
        if self.count > self._limits.max_members:
            raise InvalidPackage(f"the package has more than {self._limits.max_members} archive members")
        name = member.name
        if _is_absolute(name):
            raise InvalidPackage(f"archive member {name!r} has an absolute path")
        if ".." in name.replace("\\", "/").split("/"):
            raise InvalidPackage(f"archive member {name!r} contains '..'")
        normalised = posixpath.normpath(name.replace("\\", "/"))
        if normalised in ("", "."):
            raise InvalidPackage(f"archive member {name!r} has no path")
        if member.ischr() or member.isblk() or member.isfifo():
            raise InvalidPackage(f"archive member {name!r} is a device or fifo")
        if member.issym() or member.islnk():
            self._check_link(member, normalised)
        self._check_not_under_symlink(name, normalised)
        if not member.isdir():
            if normalised in self._files:
                raise InvalidPackage(f"archive member {name!r} appears twice")
            self._files.add(normalised)
        return normalised

    def _check_link(self, member: tarfile.TarInfo, normalised: str) -> None:
        name, target = member.name, member.linkname.replace("\\", "/")
        if _is_absolute(target):
            raise InvalidPackage(f"link {name!r} points to the absolute path {member.linkname!r}")
        # A symlink resolves from its own folder, a hard link from the archive root.
        base = posixpath.dirname(normalised) if member.issym() else ""
        if _escapes(posixpath.normpath(posixpath.join(base, target))):
            raise InvalidPackage(f"link {name!r} points outside the package ({member.linkname!r})")
        if member.issym():
            if normalised in self._parents:
                raise InvalidPackage(f"symlink {name!r} replaces a folder other members lie in")
            self._symlinks.add(normalised)

    def _check_not_under_symlink(self, name: str, normalised: str) -> None:
        # Checking each link's target alone is not enough: through a symlinked folder a later
        # link's relative target resolves elsewhere (``a -> ..`` then ``a/b -> ..`` escapes).
        parent = posixpath.dirname(normalised)
        while parent:
            if parent in self._symlinks:
                raise InvalidPackage(f"archive member {name!r} lies under the symlink {parent!r}")
            self._parents.add(parent)
            parent = posixpath.dirname(parent)


def _walk_tar(stream: LimitedReader, visit: MemberVisitor, checker: MemberChecker, what: str) -> None:
    try:
        for tar, member in tar_generator(stream):
            checker.check(member)
            reader = tar.extractfile(member) if member.isfile() else None
            visit(member, reader)
    except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError) as exc:
        raise InvalidPackage(f"{what} is not a readable tar archive: {exc}") from exc


def walk_tar_bz2(fileobj: BinaryIO, compressed_size: int, visit: MemberVisitor, limits: ArchiveLimits) -> None:
    head = fileobj.read(3)
    fileobj.seek(0)
    if head != b"BZh":
        raise InvalidPackage("the file is not a bzip2-compressed tar archive (.tar.bz2)")
    what = "the .tar.bz2 archive"
    raw = bz2.BZ2File(fileobj, mode="rb")
    _walk_tar(LimitedReader(raw, limits.budget_for(compressed_size), what), visit, MemberChecker(limits), what)


def _conda_entries(fileobj: BinaryIO) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    try:
        zf = zipfile.ZipFile(fileobj)
        entries = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise InvalidPackage(f"the file is not a .conda (zip) archive: {exc}") from exc
    by_name: dict[str, zipfile.ZipInfo] = {}
    for entry in entries:
        if entry.filename in by_name:
            raise InvalidPackage(f".conda archive has the member {entry.filename!r} twice")
        if "/" in entry.filename or "\\" in entry.filename or entry.filename.startswith(".."):
            raise InvalidPackage(f".conda archive member {entry.filename!r} must not be a path")
        by_name[entry.filename] = entry
    return zf, by_name


def walk_conda(fileobj: BinaryIO, stem: str, visit: MemberVisitor, limits: ArchiveLimits, archive_size: int) -> None:
    """Walk ``info-STEM.tar.zst`` first (metadata), then ``pkg-STEM.tar.zst`` (payload paths)."""
    zf, by_name = _conda_entries(fileobj)
    checker = MemberChecker(limits)
    # The budget comes from the bytes really uploaded: a zip entry's sizes are the uploader's claims.
    budget = limits.budget_for(archive_size)
    for component in ("info", "pkg"):
        member_name = f"{component}-{stem}.tar.zst"
        entry = by_name.get(member_name)
        if entry is None:
            raise InvalidPackage(f".conda archive has no {member_name} member")
        what = f"the .conda member {member_name}"
        if entry.flag_bits & 0x1:
            raise InvalidPackage(f"{what} is encrypted")
        try:
            with zf.open(entry) as stored:
                # .conda entries should be stored, but zipfile inflates deflated ones: limit that too.
                compressed = LimitedReader(stored, budget, f"the zip entry {member_name}")
                decompressor = zstandard.ZstdDecompressor(max_window_size=1 << 27)
                # zstandard only calls read() on its source, which LimitedReader provides.
                with decompressor.stream_reader(cast(IO[bytes], compressed), closefd=False) as reader:
                    limited = LimitedReader(reader, budget, what)
                    _walk_tar(limited, visit if component == "info" else _paths_only, checker, what)
        except (zipfile.BadZipFile, zstandard.ZstdError, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise InvalidPackage(f"{what} is corrupt: {exc}") from exc


def _paths_only(member: tarfile.TarInfo, reader: IO[bytes] | None) -> None:
    """Payload members are only checked for their paths (done by ``_walk_tar``), not read."""
