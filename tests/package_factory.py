"""Builds real conda package files (.conda and .tar.bz2) for tests and benchmarks, hostile ones too."""

from __future__ import annotations

import bz2
import io
import json
import os
import tarfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard


@dataclass
class Member:
    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    declared_size: int | None = None


@dataclass
class PackageSpec:
    name: str
    version: str = "1.0"
    build: str = "0"
    build_number: int = 0
    subdir: str = "noarch"
    depends: list[str] = field(default_factory=list)
    constrains: list[str] = field(default_factory=list)
    license: str = "MIT"
    summary: str = ""
    noarch: str | None = "generic"
    extra_index: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def index(self) -> dict[str, Any]:
        index: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": self.build_number,
            "subdir": self.subdir,
            "depends": self.depends,
            "constrains": self.constrains,
            "license": self.license,
            "timestamp": int(time.time() * 1000),
        }
        if self.subdir == "noarch" and self.noarch:
            index["noarch"] = self.noarch
        else:
            index["platform"], _, index["arch"] = self.subdir.partition("-")
        index.update(self.extra_index)
        return index

    def info_members(self) -> list[Member]:
        about = {"summary": self.summary or f"The {self.name} test package", "license": self.license,
                 "home": f"https://example.org/{self.name}", "description": f"{self.name} for tests"}
        files = self.files or {f"share/{self.name}/README.txt": f"{self.name} {self.version}\n".encode()}
        paths = {"paths": [{"_path": p, "path_type": "hardlink", "size_in_bytes": len(d)} for p, d in files.items()],
                 "paths_version": 1}
        return [
            Member("info/index.json", json.dumps(self.index()).encode()),
            Member("info/about.json", json.dumps(about).encode()),
            Member("info/paths.json", json.dumps(paths).encode()),
            Member("info/files", "\n".join(files).encode() + b"\n"),
        ]

    def payload_members(self) -> list[Member]:
        files = self.files or {f"share/{self.name}/README.txt": f"{self.name} {self.version}\n".encode()}
        return [Member(path, data) for path, data in files.items()]


def tar_bytes(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.linkname = member.linkname
            info.mtime = 1_700_000_000
            info.mode = 0o644
            if member.kind == tarfile.REGTYPE:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def write_tar_bz2(directory: Path, spec: PackageSpec, members: list[Member] | None = None,
                  filename: str | None = None) -> Path:
    members = members if members is not None else spec.info_members() + spec.payload_members()
    path = directory / (filename or f"{spec.stem}.tar.bz2")
    path.write_bytes(bz2.compress(tar_bytes(members), 9))
    return path


def write_conda(directory: Path, spec: PackageSpec, *, info: list[Member] | None = None,
                payload: list[Member] | None = None, filename: str | None = None,
                skip_info: bool = False, info_raw: bytes | None = None) -> Path:
    path = directory / (filename or f"{spec.stem}.conda")
    compressor = zstandard.ZstdCompressor(level=3)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", json.dumps({"conda_pkg_format_version": 2}))
        if not skip_info:
            raw = info_raw if info_raw is not None else compressor.compress(tar_bytes(info or spec.info_members()))
            zf.writestr(f"info-{spec.stem}.tar.zst", raw)
        zf.writestr(f"pkg-{spec.stem}.tar.zst", compressor.compress(tar_bytes(payload or spec.payload_members())))
    return path


def write_package(directory: Path, spec: PackageSpec, extension: str = ".conda") -> Path:
    return write_conda(directory, spec) if extension == ".conda" else write_tar_bz2(directory, spec)


# Helpers for hostile and broken archives: the raw pieces, so a test can assemble what no builder would.


def zstd_tar(members: list[Member]) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(tar_bytes(members))


def write_zip(path: Path, entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip with exactly these entries, in this order (duplicates allowed: zipfile only warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def conda_entries(spec: PackageSpec, *, info: bytes | None = None, pkg: bytes | None = None) -> list[tuple[str, bytes]]:
    """The three entries of a .conda, with the compressed info or pkg tar replaceable."""
    return [
        ("metadata.json", json.dumps({"conda_pkg_format_version": 2}).encode()),
        (f"info-{spec.stem}.tar.zst", info if info is not None else zstd_tar(spec.info_members())),
        (f"pkg-{spec.stem}.tar.zst", pkg if pkg is not None else zstd_tar(spec.payload_members())),
    ]


def write_truncated(source: Path, directory: Path) -> Path:
    """The first half of ``source``, under the same name in ``directory``."""
    data = source.read_bytes()
    target = directory / source.name
    target.write_bytes(data[: len(data) // 2])
    return target


def _tar_without_end(members: list[Member]) -> bytes:
    """``tar_bytes`` without the end-of-archive blocks, so more members can follow."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.size = len(member.data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(member.data))
        body_length = tar.offset
    return buffer.getvalue()[:body_length]


def _zero_member_tar(prefix: list[Member], name: str, size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Tar bytes of ``prefix`` then one member of ``size`` zero bytes, yielded without holding it in memory."""
    yield _tar_without_end(prefix)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 1_700_000_000
    info.mode = 0o644
    yield info.tobuf(tarfile.PAX_FORMAT)
    zeros = bytes(chunk)
    remaining = size
    while remaining > 0:
        yield zeros[: min(chunk, remaining)]
        remaining -= chunk
    yield bytes(-size % tarfile.BLOCKSIZE) + bytes(2 * tarfile.BLOCKSIZE)


def zero_bomb_zst(prefix: list[Member], size: int, name: str = "info/zeros") -> bytes:
    """A zstd tar whose ``name`` member is ``size`` zero bytes: tiny compressed, huge decompressed."""
    buffer = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(buffer, closefd=False) as writer:
        for piece in _zero_member_tar(prefix, name, size):
            writer.write(piece)
    return buffer.getvalue()


def zero_bomb_bz2(prefix: list[Member], size: int, name: str = "info/zeros") -> bytes:
    compressor = bz2.BZ2Compressor(9)
    pieces = [compressor.compress(piece) for piece in _zero_member_tar(prefix, name, size)]
    return b"".join(pieces) + compressor.flush()


def patch_zip_central_directory(path: Path, member: str, field_offset: int, value: bytes) -> None:
    """Overwrite one field of ``member``'s central directory header (offsets as in the zip spec)."""
    data = bytearray(path.read_bytes())
    encoded = member.encode()
    offset = data.find(b"PK\x01\x02")
    while offset != -1:
        name_length = int.from_bytes(data[offset + 28 : offset + 30], "little")
        if bytes(data[offset + 46 : offset + 46 + name_length]) == encoded:
            data[offset + field_offset : offset + field_offset + len(value)] = value
            path.write_bytes(bytes(data))
            return
        offset = data.find(b"PK\x01\x02", offset + 4)
    raise ValueError(f"{member} is not in {path}")


def set_zip_declared_size(path: Path, member: str, size: int) -> None:
    """Make ``member`` claim ``size`` uncompressed bytes in the central directory (a lie)."""
    patch_zip_central_directory(path, member, 24, size.to_bytes(4, "little"))


# Where a hostile member can hide: a .conda's info tar, its payload tar, or the one tar of a .tar.bz2.
PLACES = ("conda-info", "conda-pkg", "tar.bz2")


def write_with_members(directory: Path, place: str, extra: list[Member], spec: PackageSpec | None = None) -> Path:
    """A valid package plus ``extra`` members in ``place`` (one of PLACES)."""
    spec = spec or PackageSpec("hostile")
    if place == "conda-info":
        return write_conda(directory, spec, info=spec.info_members() + extra)
    if place == "conda-pkg":
        return write_conda(directory, spec, payload=spec.payload_members() + extra)
    return write_tar_bz2(directory, spec, spec.info_members() + spec.payload_members() + extra)


def write_with_metadata(directory: Path, extension: str, spec: PackageSpec, *, index: bytes | None = None,
                        about: bytes | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A package whose info/index.json or info/about.json is exactly the given bytes; ``drop`` leaves members out."""
    replaced = {"info/index.json": index, "info/about.json": about}
    info = [Member(m.name, m.data if replaced.get(m.name) is None else replaced[m.name] or b"")
            for m in spec.info_members() if m.name not in drop]
    if extension == ".conda":
        return write_conda(directory, spec, info=info)
    return write_tar_bz2(directory, spec, info + spec.payload_members())


def index_json(spec: PackageSpec, **changes: Any) -> bytes:
    """``spec``'s index.json with ``changes``; a change to ``...`` removes the key."""
    index = {**spec.index(), **changes}
    return json.dumps({key: value for key, value in index.items() if value is not ...}).encode()


def write_random(directory: Path, filename: str, size: int = 8192) -> Path:
    path = directory / filename
    path.write_bytes(os.urandom(size))
    return path
