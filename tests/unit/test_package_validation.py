"""read_package on broken and hostile archives: each is refused with an InvalidPackage naming the problem."""

from __future__ import annotations

import bz2
import json
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from condagate.conda.limits import ArchiveLimits
from condagate.conda.package import PackageMetadata, read_package
from condagate.errors import InvalidPackage

from package_factory import (
    PLACES,
    Member,
    PackageSpec,
    conda_entries,
    index_json,
    patch_zip_central_directory,
    set_zip_declared_size,
    write_conda,
    write_package,
    write_random,
    write_truncated,
    write_with_members,
    write_with_metadata,
    write_zip,
    zero_bomb_bz2,
    zero_bomb_zst,
    zstd_tar,
)

EXTENSIONS = [".conda", ".tar.bz2"]
SMALL = ArchiveLimits(max_expansion_ratio=10, min_budget=1 << 20, max_metadata_member=64 * 1024, max_members=100)


def read(path: Path, **kwargs: object) -> PackageMetadata:
    return read_package(path, path.name, **kwargs)  # type: ignore[arg-type]


def refused(path: Path, match: str, **kwargs: object) -> str:
    with pytest.raises(InvalidPackage, match=match) as caught:
        read(path, **kwargs)
    assert caught.value.status_code == 400 and caught.value.code == "invalid_package"
    return caught.value.message


META = PackageSpec("meta")


def with_index(directory: Path, extension: str, raw: bytes, spec: PackageSpec = META) -> Path:
    return write_with_metadata(directory, extension, spec, index=raw)


def meta_index(**changes: object) -> bytes:
    return index_json(META, **changes)


# --- what valid packages give (the control for everything below) ---


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_valid_package_is_read(tmp_path: Path, extension: str) -> None:
    spec = PackageSpec("good", version="2.0", build="h1_3", build_number=3, subdir="linux-64", depends=["dep >=1"])
    metadata = read(write_package(tmp_path, spec, extension), expected_subdir="linux-64", limits=SMALL)
    assert (metadata.index["name"], metadata.index["version"], metadata.index["build"]) == ("good", "2.0", "h1_3")
    assert metadata.subdir == "linux-64"
    assert metadata.index["depends"] == ["dep >=1"]
    assert metadata.about["license"] == "MIT"


@pytest.mark.parametrize("place", PLACES)
def test_links_that_stay_inside_the_package_are_accepted(tmp_path: Path, place: str) -> None:
    links = [
        Member("bin/tool", kind=tarfile.SYMTYPE, linkname="../share/hostile/README.txt"),
        Member("share/copy", kind=tarfile.LNKTYPE, linkname="share/hostile/README.txt"),
        Member("lib/libx.so", kind=tarfile.SYMTYPE, linkname="libx.so.1"),
    ]
    assert read(write_with_members(tmp_path, place, links)).index["name"] == "hostile"


# --- not an archive, or a broken one ---


@pytest.mark.parametrize(
    ("extension", "match"),
    [(".conda", r"not a \.conda \(zip\) archive"), (".tar.bz2", r"not a bzip2-compressed tar archive")],
)
def test_random_bytes_are_refused(tmp_path: Path, extension: str, match: str) -> None:
    refused(write_random(tmp_path, f"junk-1.0-0{extension}"), match)


def test_bzip2_header_with_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk-1.0-0.tar.bz2"
    path.write_bytes(b"BZh9" + os.urandom(4096))
    refused(path, r"the \.tar\.bz2 archive is not a readable tar archive")


def test_bzip2_of_something_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk-1.0-0.tar.bz2"
    path.write_bytes(bz2.compress(b"this is not a tar file\n" * 100))
    refused(path, r"not a readable tar archive")


@pytest.mark.parametrize(
    ("extension", "match"),
    [(".conda", r"not a \.conda \(zip\) archive"), (".tar.bz2", r"not a readable tar archive")],
)
def test_truncated_archive_is_refused(tmp_path: Path, extension: str, match: str) -> None:
    spec = PackageSpec("cut", files={f"share/cut/{n}.bin": os.urandom(2000) for n in range(8)})
    whole = write_package(tmp_path, spec, extension)
    half = tmp_path / "half"
    half.mkdir()
    refused(write_truncated(whole, half), match)


def test_conda_with_corrupt_info_tar_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("corrupt")
    path = write_zip(tmp_path / f"{spec.stem}.conda", conda_entries(spec, info=os.urandom(500)))
    refused(path, r"info-corrupt-1\.0-0\.tar\.zst")


def test_conda_without_info_member_is_refused(tmp_path: Path) -> None:
    refused(write_conda(tmp_path, PackageSpec("noinfo"), skip_info=True), r"has no info-noinfo-1\.0-0\.tar\.zst member")


def test_conda_without_pkg_member_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("nopkg")
    path = write_zip(tmp_path / f"{spec.stem}.conda", conda_entries(spec)[:2])
    refused(path, r"has no pkg-nopkg-1\.0-0\.tar\.zst member")


def test_renamed_conda_is_refused(tmp_path: Path) -> None:
    """A .conda renamed to another package's name: its members carry the old name."""
    path = write_conda(tmp_path, PackageSpec("original"), filename="renamed-1.0-0.conda")
    refused(path, r"has no info-renamed-1\.0-0\.tar\.zst member")


def test_conda_with_duplicate_zip_entries_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("twice")
    entries = conda_entries(spec)
    path = write_zip(tmp_path / f"{spec.stem}.conda", [*entries, entries[1]])
    refused(path, r"has the member 'info-twice-1\.0-0\.tar\.zst' twice")


def test_conda_with_path_zip_entry_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("pathy")
    path = write_zip(tmp_path / f"{spec.stem}.conda", [*conda_entries(spec), ("../evil.txt", b"x")])
    refused(path, r"member '\.\./evil\.txt' must not be a path")


# Fields of a zip central directory header: (offset, value, what the refusal says).
ZIP_HEADER_DAMAGE = {
    "needs-zip-version-9.9": (6, (99).to_bytes(2, "little"), r"not a \.conda \(zip\) archive: zip file version 9\.9"),
    "encrypted": (8, (1).to_bytes(2, "little"), r"info-zipped-1\.0-0\.tar\.zst is encrypted"),
    "unknown-compression": (10, (77).to_bytes(2, "little"), r"info-zipped-1\.0-0\.tar\.zst is corrupt"),
}


@pytest.mark.parametrize("case", ZIP_HEADER_DAMAGE)
def test_conda_with_unreadable_zip_entry_is_refused(tmp_path: Path, case: str) -> None:
    """Each of these made zipfile raise something other than its usual errors: a 500 instead of a 400."""
    offset, value, match = ZIP_HEADER_DAMAGE[case]
    spec = PackageSpec("zipped")
    path = write_package(tmp_path, spec)
    patch_zip_central_directory(path, f"info-{spec.stem}.tar.zst", offset, value)
    refused(path, match)


# --- info/index.json ---


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_missing_index_json_is_refused(tmp_path: Path, extension: str) -> None:
    path = write_with_metadata(tmp_path, extension, PackageSpec("noindex"), drop=("info/index.json",))
    refused(path, r"the package has no info/index\.json")


INVALID_INDEXES = {
    "not-json": (b'{"name": "meta", ', r"info/index\.json is not valid JSON"),
    "not-utf8": (b'{"name": "\xff\xfe"}', r"info/index\.json is not valid JSON"),
    "array": (b'["meta", "1.0", "0"]', r"info/index\.json must hold a JSON object, not list"),
    "string": (b'"meta-1.0-0"', r"must hold a JSON object, not str"),
    "nan": (meta_index()[:-1] + b', "size_hint": NaN}', r"not valid JSON: NaN is not a JSON value"),
    "infinity-timestamp": (meta_index(timestamp=...)[:-1] + b', "timestamp": Infinity}', r"Infinity is not a JSON"),
    "no-name": (meta_index(name=...), r"info/index\.json has no 'name' string"),
    "no-version": (meta_index(version=...), r"has no 'version' string"),
    "no-build": (meta_index(build=...), r"has no 'build' string"),
    "no-subdir": (meta_index(subdir=...), r"has no 'subdir' string"),
    "name-not-string": (meta_index(name=7), r"has no 'name' string"),
    "empty-version": (meta_index(version=""), r"has no 'version' string"),
    "no-build-number": (meta_index(build_number=...), r"'build_number' must be an integer"),
    "build-number-string": (meta_index(build_number="0"), r"'build_number' must be an integer"),
    "build-number-float": (meta_index(build_number=1.5), r"'build_number' must be an integer"),
    "build-number-bool": (meta_index(build_number=True), r"'build_number' must be an integer"),
    "build-number-negative": (meta_index(build_number=-1), r"'build_number' must be an integer"),
    "build-number-huge": (meta_index(build_number=2**63), r"'build_number' must be an integer"),
    "depends-string": (meta_index(depends="python >=3"), r"'depends' must be a list of strings"),
    "depends-numbers": (meta_index(depends=[1, 2]), r"'depends' must be a list of strings"),
    "depends-object": (meta_index(depends={"python": ">=3"}), r"'depends' must be a list of strings"),
    "depends-nested": (meta_index(depends=[["python"]]), r"'depends' must be a list of strings"),
    "constrains-string": (meta_index(constrains="x <2"), r"'constrains' must be a list of strings"),
    "timestamp-string": (meta_index(timestamp="yesterday"), r"'timestamp' must be a number"),
    "timestamp-negative": (meta_index(timestamp=-1), r"'timestamp' must be a number"),
    "timestamp-beyond-9999": (meta_index(timestamp=1e300), r"'timestamp' must be a number"),
    "unknown-subdir": (meta_index(subdir="mars-64"), r"names the unknown subdir 'mars-64'"),
    # Values that re-encode badly: each once made every later repodata or API request for the feed fail.
    "int-over-64-bits": (meta_index(size_hint=2**64), r"info/index\.json: size_hint is an integer outside the 64-bit"),
    "int-under-64-bits": (meta_index(extra={"n": [-(2**63) - 1]}), r"extra\.n\[0\] is an integer outside"),
    "nested-40-deep": (meta_index(extra=json.loads("[" * 40 + "]" * 40)), r"nests deeper than 32 levels"),
    "nested-100000-deep": (meta_index()[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                           r"info/index\.json nests too deeply"),
    "lone-surrogate": (meta_index()[:-1] + b', "license_family": "\\udcff"}', r"license_family holds text that is not"),
    "lone-surrogate-key": (meta_index()[:-1] + b', "\\ud800": 1}', r"a key holds text that is not valid Unicode"),
}


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize("case", INVALID_INDEXES)
def test_invalid_index_json_is_refused(tmp_path: Path, extension: str, case: str) -> None:
    raw, match = INVALID_INDEXES[case]
    refused(with_index(tmp_path, extension, raw), match)


def test_about_json_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    path = write_with_metadata(tmp_path, ".conda", PackageSpec("about"), about=b'{"summary": "bad \\udcff text"}')
    refused(path, r"info/about\.json: summary holds text that is not valid Unicode")


def test_index_json_over_the_metadata_limit_is_refused(tmp_path: Path) -> None:
    path = with_index(tmp_path, ".conda", meta_index(padding="x" * 70_000))
    assert read(path)  # fine with the default limits
    refused(path, r"info/index\.json is \d+ bytes; at most 65536 allowed", limits=SMALL)


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize(
    ("field", "value"), [("name", "other"), ("version", "2.0"), ("build", "1"), ("name", "Meta")]
)
def test_file_name_not_matching_index_json_is_refused(tmp_path: Path, extension: str, field: str, value: str) -> None:
    path = with_index(tmp_path, extension, meta_index(**{field: value}))
    message = refused(path, r"file name 'meta-1\.0-0(\.conda|\.tar\.bz2)' does not match its info/index\.json")
    assert repr(value) in message


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize(("version", "build"), [("1.0-0", "0"), ("1.0", "0-0")])
def test_version_or_build_with_a_dash_is_refused(tmp_path: Path, extension: str, version: str, build: str) -> None:
    """``x-1.0-0-0`` splits as name x-1.0, so index.json's name x with version 1.0-0 does not match."""
    spec = PackageSpec("x", version=version, build=build)
    raw = json.dumps({**spec.index()}).encode()
    refused(with_index(tmp_path, extension, raw, spec), r"file name 'x-1\.0-0-0.* does not match")


@pytest.mark.parametrize(
    "filename",
    ["evil.txt", "../x.conda", "..%2Fx.conda", "dir/x-1.0-0.conda", "Upper-1.0-0.conda", "with space-1.0-0.conda",
     "x.conda", "x-1.0.conda", "x-1.0-0.tar", "x-1.0-0.conda.exe", "x-1.0-0.conda\n", "-x-1.0-0.conda",
     "x-1 0-0.conda", "x-1.0-0;rm.conda", "a" * 300 + "-1.0-0.conda"],
)
def test_names_that_are_not_package_file_names_are_refused(tmp_path: Path, filename: str) -> None:
    valid = write_package(tmp_path, PackageSpec("x"))
    with pytest.raises(InvalidPackage, match=r"conda package file name|at most 255") as caught:
        read_package(valid, filename)
    assert repr(filename)[1:-1][:40] in caught.value.message or "at most 255" in caught.value.message


def test_subdir_other_than_the_one_uploaded_to_is_refused(tmp_path: Path) -> None:
    noarch = write_package(tmp_path, PackageSpec("plain"))
    assert read(noarch, expected_subdir="noarch").subdir == "noarch"
    refused(noarch, r"built for subdir 'noarch' but was uploaded to 'linux-64'", expected_subdir="linux-64")
    linux = write_package(tmp_path, PackageSpec("native", subdir="linux-64"), ".tar.bz2")
    refused(linux, r"built for subdir 'linux-64' but was uploaded to 'osx-arm64'", expected_subdir="osx-arm64")


# --- hostile members ---

HOSTILE_MEMBERS = {
    "absolute-path": ([Member("/etc/cron.d/evil", b"x")], r"member '/etc/cron\.d/evil' has an absolute path"),
    "windows-absolute-path": ([Member("C:/Windows/evil.dll", b"x")], r"has an absolute path"),
    "dotdot": ([Member("../evil", b"x")], r"member '\.\./evil' contains '\.\.'"),
    "nested-dotdot": ([Member("share/../../evil", b"x")], r"contains '\.\.'"),
    "backslash-dotdot": ([Member("share\\..\\..\\evil", b"x")], r"contains '\.\.'"),
    "symlink-out": ([Member("share/link", kind=tarfile.SYMTYPE, linkname="../../etc/passwd")],
                    r"link 'share/link' points outside the package \('\.\./\.\./etc/passwd'\)"),
    "symlink-absolute": ([Member("share/link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")],
                         r"link 'share/link' points to the absolute path '/etc/passwd'"),
    "hardlink-out": ([Member("share/hard", kind=tarfile.LNKTYPE, linkname="../etc/passwd")],
                     r"link 'share/hard' points outside the package"),
    "hardlink-absolute": ([Member("share/hard", kind=tarfile.LNKTYPE, linkname="/etc/shadow")],
                          r"points to the absolute path '/etc/shadow'"),
    "symlink-chain": ([Member("d/a", kind=tarfile.SYMTYPE, linkname=".."),
                       Member("d/a/b", kind=tarfile.SYMTYPE, linkname="..")],
                      r"member 'd/a/b' lies under the symlink 'd/a'"),
    "file-through-symlink": ([Member("lib", kind=tarfile.SYMTYPE, linkname="share"), Member("lib/x", b"x")],
                             r"member 'lib/x' lies under the symlink 'lib'"),
    "symlink-over-folder": ([Member("share/sub/f", b"x"), Member("share/sub", kind=tarfile.SYMTYPE, linkname="..")],
                            r"symlink 'share/sub' replaces a folder"),
    "char-device": ([Member("dev/tty", kind=tarfile.CHRTYPE)], r"member 'dev/tty' is a device or fifo"),
    "block-device": ([Member("dev/sda", kind=tarfile.BLKTYPE)], r"is a device or fifo"),
    "fifo": ([Member("run/pipe", kind=tarfile.FIFOTYPE)], r"is a device or fifo"),
    "duplicate": ([Member("share/dup", b"1"), Member("share/dup", b"2")], r"member 'share/dup' appears twice"),
    "duplicate-after-normalising": ([Member("share/dup", b"1"), Member("./share//dup", b"2")], r"appears twice"),
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("case", HOSTILE_MEMBERS)
def test_hostile_member_is_refused(tmp_path: Path, place: str, case: str) -> None:
    members, match = HOSTILE_MEMBERS[case]
    refused(write_with_members(tmp_path, place, members), match)


def test_payload_overwriting_info_member_is_refused(tmp_path: Path) -> None:
    """A .conda's two tars unpack into one folder: a payload info/index.json would replace the indexed one."""
    spec = PackageSpec("sneaky")
    fake = Member("info/index.json", json.dumps({**spec.index(), "depends": ["malware"]}).encode())
    refused(write_conda(tmp_path, spec, payload=[*spec.payload_members(), fake]), r"'info/index\.json' appears twice")


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    spec = PackageSpec("many", files={f"share/many/{n}": b"" for n in range(150)})
    path = write_package(tmp_path, spec)
    assert read(path)
    refused(path, r"more than 100 archive members", limits=SMALL)


# --- compression bombs (SMALL allows 1 MiB decompressed) ---


def test_zstd_bomb_in_info_tar_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("bomb")
    info = zero_bomb_zst(spec.info_members(), 8 << 20)
    path = write_zip(tmp_path / f"{spec.stem}.conda", conda_entries(spec, info=info))
    assert path.stat().st_size < 10_000
    assert read(path).index["name"] == "bomb"  # 8 MiB is within the default budget: only the limit refuses it
    message = r"info-bomb-1\.0-0\.tar\.zst decompresses to more than 1048576 bytes: .*compression bomb"
    refused(path, message, limits=SMALL)


def test_zstd_bomb_in_payload_tar_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("bomb")
    payload = zero_bomb_zst(spec.payload_members(), 8 << 20, name="share/zeros")
    path = write_zip(tmp_path / f"{spec.stem}.conda", conda_entries(spec, pkg=payload))
    refused(path, r"pkg-bomb-1\.0-0\.tar\.zst decompresses to more than 1048576 bytes", limits=SMALL)


def test_bzip2_bomb_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec("bomb")
    path = tmp_path / f"{spec.stem}.tar.bz2"
    path.write_bytes(zero_bomb_bz2(spec.info_members(), 8 << 20))
    assert read(path).index["name"] == "bomb"
    refused(path, r"\.tar\.bz2 archive decompresses to more than 1048576 bytes", limits=SMALL)


def test_zip_entry_lying_about_its_size_does_not_raise_the_budget(tmp_path: Path) -> None:
    """The budget follows the bytes uploaded, not the uncompressed size a zip entry claims (4 GiB here)."""
    spec = PackageSpec("liar")
    entries = conda_entries(spec, info=zero_bomb_zst(spec.info_members(), 8 << 20))
    path = write_zip(tmp_path / f"{spec.stem}.conda", entries)
    set_zip_declared_size(path, f"info-{spec.stem}.tar.zst", 0xFFFF_FFF0)
    assert zipfile.ZipFile(path).getinfo(f"info-{spec.stem}.tar.zst").file_size == 0xFFFF_FFF0
    refused(path, r"decompresses to more than 1048576 bytes", limits=SMALL)


def test_deflated_zip_entry_is_limited_too(tmp_path: Path) -> None:
    """zstd skips a skippable frame without output, so only a limit on the zip entry's bytes sees these 64 MiB."""
    spec = PackageSpec("deflated")
    skippable = struct.pack("<II", 0x184D2A50, 64 << 20) + bytes(64 << 20)
    entries = conda_entries(spec, info=skippable + zstd_tar(spec.info_members()))
    path = write_zip(tmp_path / f"{spec.stem}.conda", entries, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000
    refused(path, r"zip entry info-deflated-1\.0-0\.tar\.zst decompresses to more than 1048576 bytes", limits=SMALL)
