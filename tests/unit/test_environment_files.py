"""Environment files a promotion is asked for: environment.yml, explicit lists, conda-lock and pixi.lock.

The lock files are written by the real tools against a local channel served on 127.0.0.1: pixi.lock
by py-rattler (solve + ``LockFile``), conda-lock.yml by the ``conda-lock`` CLI, whose call to
``conda create --dry-run --json`` is answered by a small stand-in that solves with py-rattler
(no conda executable can be installed here).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import rattler

from condagate.conda.environment_files import MAX_CONTENT_BYTES, EnvironmentRequest, read_environment_file
from condagate.errors import BadRequest, PayloadTooLarge

from package_factory import PackageSpec
from upstream_channel import UpstreamChannel

PYFOO_LINUX = ("linux-64", "pyfoo-1.0-0.conda")
PYFOO_OSX = ("osx-arm64", "pyfoo-1.0-0.conda")
PYBAR_2 = ("noarch", "pybar-2.0-0.tar.bz2")


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamChannel]:
    """pyfoo (linux-64 and osx-arm64) depends on ``pybar >=1``; pybar 1.0 and 2.0 are noarch."""
    served = UpstreamChannel(tmp_path_factory.mktemp("channel") / "channel")
    served.add(PackageSpec("pyfoo", "1.0", "0", subdir="linux-64", depends=["pybar >=1", "__glibc >=2.17"]))
    served.add(PackageSpec("pyfoo", "1.0", "0", subdir="osx-arm64", depends=["pybar >=1"]))
    served.add(PackageSpec("pybar", "1.0", "0"))
    served.add(PackageSpec("pybar", "2.0", "0"), ".tar.bz2")
    served.add(PackageSpec("pybaz", "0.1", "0"))
    served.index()
    served.start()
    yield served
    served.stop()


def _bad(filename: str, content: bytes | str) -> str:
    with pytest.raises(BadRequest) as caught:
        read_environment_file(filename, content.encode() if isinstance(content, str) else content)
    return caught.value.message


# environment.yml


def test_environment_yml_gives_its_conda_specs_and_platforms() -> None:
    content = textwrap.dedent(
        """\
        name: analysis
        channels:
          - conda-forge
          - nodefaults
        dependencies:
          - python=3.11
          - numpy>=1.26,<2
          - conda-forge::pandas 2.2.*
          - scipy=1.13.1=py311h517d4fd_0
          - pip
          - pip:
              - requests==2.32.3
              - -e ./local-package
        platforms:
          - linux-64
          - osx-arm64
        variables:
          OMP_NUM_THREADS: "1"
        """
    ).encode()
    request = read_environment_file("environment.yml", content)
    assert request == EnvironmentRequest(
        specs=["python=3.11", "numpy>=1.26,<2", "conda-forge::pandas 2.2.*", "scipy=1.13.1=py311h517d4fd_0", "pip"],
        files=[],
        subdirs=["linux-64", "osx-arm64"],
    )


def test_environment_yaml_without_platforms_names_no_subdirs() -> None:
    request = read_environment_file("env.yaml", b"dependencies:\n  - pyfoo\n  - pyfoo\n")
    assert request == EnvironmentRequest(specs=["pyfoo"], files=[], subdirs=[])


# explicit lists


def test_explicit_list_as_conda_writes_it() -> None:
    content = textwrap.dedent(
        """\
        # This file may be used to create an environment using:
        # $ conda create --name <env> --file <this file>
        # platform: linux-64
        # created-by: conda 24.7.1
        @EXPLICIT
        https://conda.anaconda.org/conda-forge/linux-64/_libgcc_mutex-0.1-conda_forge.tar.bz2#d7c89558ba9fa0495403155b64376d81
        https://conda.anaconda.org/conda-forge/linux-64/libgcc-ng-14.1.0-h69a702a_0.conda#f4ca84fbd6d06b0a052fb2d5b96dde41
        https://conda.anaconda.org/conda-forge/noarch/tzdata-2024a-h0c530f3_0.conda#sha256:8ed1f6e3d1f7d1c1bd9ba4ba0ab0f8c3a1fe8f1e0e9c5e2e0f6ef1c1e9d5c4b5
        https://user:secret@repo.example.org/conda/approved/linux-64/python-3.12.5-h2ad013b_0_cpython.conda

        https://repo.example.org/conda/approved/noarch/pip-24.2-pyh8b19718_1.conda?download=1#md5
        """
    ).encode()
    request = read_environment_file("spec-file.txt", content)
    assert request.specs == []
    assert request.subdirs == ["linux-64"]
    assert request.files == [
        ("linux-64", "_libgcc_mutex-0.1-conda_forge.tar.bz2"),
        ("linux-64", "libgcc-ng-14.1.0-h69a702a_0.conda"),
        ("noarch", "tzdata-2024a-h0c530f3_0.conda"),
        ("linux-64", "python-3.12.5-h2ad013b_0_cpython.conda"),
        ("noarch", "pip-24.2-pyh8b19718_1.conda"),
    ]


def test_explicit_list_of_local_files_and_encoded_names() -> None:
    content = b"@EXPLICIT\nfile:///opt/channel/win-64/vc-14.3-h8a93ad2_20.conda\n/opt/ch/noarch/a-1%212.0-0.conda\n"
    request = read_environment_file("explicit.txt", content)
    assert request.files == [("win-64", "vc-14.3-h8a93ad2_20.conda"), ("noarch", "a-1!2.0-0.conda")]
    assert request.subdirs == []


# conda-lock


def test_conda_lock_written_by_conda_lock(channel: UpstreamChannel, tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "conda-lock"
    if not executable.exists():
        pytest.skip("conda-lock is not installed (pip install -e '.[test]' installs it)")
    conda = tmp_path / "conda"
    conda.write_text(f"#!{sys.executable}\n{STAND_IN_CONDA}")
    conda.chmod(0o755)
    (tmp_path / "environment.yml").write_text(f"channels:\n  - {channel.url}\ndependencies:\n  - pyfoo\n")
    lockfile = tmp_path / "conda-lock.yml"
    done = subprocess.run(
        [str(executable), "lock", "--conda", str(conda), "-f", "environment.yml",
         "-p", "linux-64", "-p", "osx-arm64", "--lockfile", str(lockfile)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    content = lockfile.read_bytes()
    assert b"generated by conda-lock" in content and b"manager: conda" in content

    request = read_environment_file("conda-lock.yml", content)
    assert request.specs == []
    assert request.subdirs == ["linux-64", "osx-arm64"]
    assert sorted(request.files) == sorted([PYFOO_LINUX, PYFOO_OSX, PYBAR_2])  # pybar listed once


def test_conda_lock_version_1_skips_pip_packages() -> None:
    """conda-lock's documented unified format (version 1), written out here with a pip entry."""
    content = textwrap.dedent(
        """\
        version: 1
        metadata:
          content_hash:
            linux-64: 0f2d1e7c9b7ab8a4c0d8b6f1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f
          channels:
          - url: conda-forge
            used_env_vars: []
          platforms:
          - linux-64
          sources:
          - environment.yml
        package:
        - name: python
          version: 3.12.5
          manager: conda
          platform: linux-64
          dependencies:
            libzlib: '>=1.3.1,<2.0a0'
          url: https://conda.anaconda.org/conda-forge/linux-64/python-3.12.5-h2ad013b_0_cpython.conda
          hash:
            md5: 9c56c4df45f6571b13111d8df2448692
            sha256: e2aad83838988725d4ffba4e9717b9328054fd18a668cff3377e0c50f109e8bd
          category: main
          optional: false
        - name: tzdata
          version: 2024a
          manager: conda
          platform: linux-64
          dependencies: {}
          url: https://${ARTIFACTORY_USER}:${ARTIFACTORY_TOKEN}@repo.example.org/conda/noarch/tzdata-2024a-h0c530f3_0.conda
          hash:
            md5: 161081fc7cec0bfda0d86d7cb595f8d8
            sha256: 7b2b69c54ec62a243eb6fba2391b5e443421608c3ae5dbff938ad33ca8db5122
          category: main
          optional: false
        - name: requests
          version: 2.32.3
          manager: pip
          platform: linux-64
          dependencies:
            idna: '>=2.5,<4'
          url: https://files.pythonhosted.org/packages/f9/9b/requests-2.32.3-py3-none-any.whl
          hash:
            sha256: 70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6
          category: main
          optional: false
        """
    ).encode()
    request = read_environment_file("conda-lock.yml", content)
    assert request == EnvironmentRequest(
        specs=[],
        files=[("linux-64", "python-3.12.5-h2ad013b_0_cpython.conda"), ("noarch", "tzdata-2024a-h0c530f3_0.conda")],
        subdirs=["linux-64"],
    )


# pixi.lock


def _rattler_lock(channel_url: str, cache: Path) -> rattler.LockFile:
    """What pixi does: solve each environment and platform against the channel, write the records."""
    gateway = rattler.Gateway(cache_dir=cache)

    async def solve(specs: list[str], platform: str) -> list[rattler.RepoDataRecord]:
        virtual = [rattler.GenericVirtualPackage(rattler.PackageName("__glibc"), rattler.Version("2.34"),
                                                 rattler.BuildString("0"))]  # fmt: skip
        return await rattler.solve(
            [channel_url],
            specs,
            gateway=gateway,
            platforms=[rattler.Subdir(platform), rattler.Subdir("noarch")],
            virtual_packages=virtual,
        )

    platforms = {name: rattler.LockPlatform(name) for name in ("linux-64", "osx-arm64")}
    lock = rattler.LockFile(list(platforms.values()))
    for environment, specs in (("default", ["pyfoo"]), ("docs", ["pybaz", "pybar <2"])):
        lock.set_channels(environment, [rattler.LockChannel(channel_url)])
        for name, platform in platforms.items():
            for record in asyncio.run(solve(specs, name)):
                lock.add_conda_package(environment, platform, record)
    lock.add_pypi_package(
        "default", platforms["linux-64"], "requests", "2.32.3",
        "https://files.pythonhosted.org/packages/f9/9b/requests-2.32.3-py3-none-any.whl",
    )  # fmt: skip
    return lock


def test_pixi_lock_written_by_py_rattler(channel: UpstreamChannel, tmp_path: Path) -> None:
    path = tmp_path / "pixi.lock"
    _rattler_lock(channel.url, tmp_path / "cache").to_path(path)
    content = path.read_bytes()
    assert b"pypi: https://files.pythonhosted.org" in content

    request = read_environment_file("pixi.lock", content)
    assert request.specs == []
    assert sorted(request.subdirs) == ["linux-64", "osx-arm64"]
    assert sorted(request.files) == sorted(
        [PYFOO_LINUX, PYFOO_OSX, PYBAR_2, ("noarch", "pybar-1.0-0.conda"), ("noarch", "pybaz-0.1-0.conda")]
    )
    # Under another name, told apart by its content.
    assert sorted(read_environment_file("upload.lock", content).files) == sorted(request.files)


def test_pixi_lock_with_a_local_channel_lists_paths(channel: UpstreamChannel, tmp_path: Path) -> None:
    path = tmp_path / "pixi.lock"
    _rattler_lock(channel.root.as_uri(), tmp_path / "cache").to_path(path)
    assert f"conda: {channel.root}/linux-64/pyfoo-1.0-0.conda".encode() in path.read_bytes()
    assert PYFOO_LINUX in read_environment_file("pixi.lock", path.read_bytes()).files


# bad input


def test_garbage_and_unknown_formats_are_refused() -> None:
    assert "not valid YAML at line 3" in _bad("environment.yml", "dependencies:\n  - [unclosed\n  x: : y")
    assert "not UTF-8" in _bad("environment.yml", b"dependencies:\n  - \xff\xfe\n")
    assert "not an environment file" in _bad("environment.yml", "just a string")
    assert "not an environment file" in _bad("environment.yml", "name: x\nchannels: [conda-forge]\n")
    assert "not a valid pixi.lock" in _bad("pixi.lock", "version: 6\nenvironments: [1, 2]\npackages: nope\n")
    assert "not a valid pixi.lock" in _bad("pixi.lock", b"\x00\x01garbage")


def test_wrong_environment_yml_schema_names_the_entry() -> None:
    assert "'dependencies' must be a list" in _bad("environment.yml", "dependencies: python=3.11\n")
    assert "dependency 2: {'conda': ['x']}" in _bad("environment.yml", "dependencies:\n  - a\n  - conda: [x]\n")
    assert "dependency 1: 3.11" in _bad("environment.yml", "dependencies:\n  - 3.11\n")
    assert "dependency 1" in _bad("environment.yml", "dependencies:\n  - ''\n")
    message = _bad("environment.yml", "dependencies: [a]\nplatforms: [linux-64, amiga-68k]\n")
    assert "'platforms'" in message and "amiga-68k" in message
    # Aliases (the "billion laughs") are shared references: refused at the first entry that is not a spec.
    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
    laughs += "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\ndependencies: [*c, *c, *c]\n"
    assert "dependency 1" in _bad("environment.yml", laughs)


def test_unknown_subdirs_and_file_names_are_refused() -> None:
    message = _bad("explicit.txt", "@EXPLICIT\nhttps://h/c/linux-64/a-1-0.conda\nhttps://h/c/amiga-68k/a-1-0.conda\n")
    assert "line 3" in message and "amiga-68k" in message
    assert "line 2" in _bad("explicit.txt", "@EXPLICIT\nhttps://h/c/linux-64/requests-2.32.3-py3-none-any.whl\n")
    assert "line 2" in _bad("explicit.txt", "@EXPLICIT\nhttps://h/c/linux-64/\n")
    assert "line 2" in _bad("explicit.txt", "@EXPLICIT\npyfoo-1.0-0.conda\n")
    assert "unknown directive" in _bad("explicit.txt", "@EXPLICIT\n@INCLUDE other.txt\n")
    assert "line 1" in _bad("explicit.txt", "# platform: amiga-68k\n@EXPLICIT\n")


def test_path_traversal_in_file_names_is_refused() -> None:
    for location in (
        "https://h/c/linux-64/../x.conda",
        "https://h/c/linux-64/..%2Fx.conda",
        "https://h/c/linux-64/%2e%2e%2f%2e%2e%2fx.conda",
        "../x.conda",
        "https://h/c/linux-64/..\\x.conda",
    ):
        assert "line 2" in _bad("explicit.txt", f"@EXPLICIT\n{location}\n"), location
    lock = textwrap.dedent(
        """\
        version: 1
        metadata: {platforms: [linux-64]}
        package:
        - name: evil
          manager: conda
          platform: linux-64
          url: https://h/c/linux-64/..%2F..%2Fetc%2Fevil-1-0.conda
        """
    )
    assert "package 1 (evil)" in _bad("conda-lock.yml", lock)


def test_wrong_conda_lock_schema_names_the_entry() -> None:
    head = "version: 1\nmetadata: {platforms: [linux-64]}\n"
    assert "version 2 is not supported" in _bad("conda-lock.yml", "version: 2\nmetadata: {}\npackage: []\n")
    assert "'package' list" in _bad("conda-lock.yml", head + "package: {}\n")
    assert "package 1: not a mapping" in _bad("conda-lock.yml", head + "package: [x]\n")
    assert "package 1 (a): unknown manager 'npm'" in _bad(
        "conda-lock.yml", head + "package:\n- {name: a, manager: npm}\n"
    )
    assert "package 1 (a): a conda package needs" in _bad(
        "conda-lock.yml", head + "package:\n- {name: a, manager: conda}\n"
    )
    wrong_platform = (
        head + "package:\n- {name: a, manager: conda, platform: amiga, url: https://h/noarch/a-1-0.conda}\n"
    )
    assert "package 1 (a)" in _bad("conda-lock.yml", wrong_platform)


def test_too_large_is_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        read_environment_file("environment.yml", b"dependencies:\n" + b"#" * MAX_CONTENT_BYTES)
    many = "dependencies:\n" + "".join(f"  - p{n}\n" for n in range(10_001))
    with pytest.raises(PayloadTooLarge):
        read_environment_file("environment.yml", many.encode())
    lines = "@EXPLICIT\n" + "https://h/c/noarch/a-1-0.conda\n" * 10_001
    with pytest.raises(PayloadTooLarge):
        read_environment_file("explicit.txt", lines.encode())


# What conda-lock runs as ``conda``: ``--version``, and ``create --dry-run --json`` answered by py-rattler
# the way conda answers it (the plan's FETCH and LINK actions). Virtual packages come from conda-lock's
# CONDA_OVERRIDE_* variables; its fake channel of virtual packages is solved like any channel.
STAND_IN_CONDA = r"""
import asyncio, json, os, sys
import rattler

args = sys.argv[1:]
if args == ["--version"]:
    print("conda 24.11.3")
    sys.exit(0)
if not args or args[0] != "create" or "--dry-run" not in args:
    print(f"stand-in conda: unsupported command {args}", file=sys.stderr)
    sys.exit(2)
channels, specs, i = [], [], 1
while i < len(args):
    if args[i] in ("--prefix", "-p", "--name", "-n", "--channel", "-c"):
        if args[i] in ("--channel", "-c"):
            channels.append(args[i + 1])
        i += 2
        continue
    if not args[i].startswith("-"):
        specs.append(args[i])
    i += 1
platform = os.environ["CONDA_SUBDIR"]
virtual = []
for key, value in os.environ.items():
    if key.startswith("CONDA_OVERRIDE_") and value and key != "CONDA_OVERRIDE_ARCHSPEC":
        name = "__" + key.removeprefix("CONDA_OVERRIDE_").lower()
        virtual.append(rattler.GenericVirtualPackage(
            rattler.PackageName(name), rattler.Version(value), rattler.BuildString("0")))
if platform.startswith(("linux", "osx")):
    virtual.append(rattler.GenericVirtualPackage(
        rattler.PackageName("__unix"), rattler.Version("0"), rattler.BuildString("0")))
try:
    gateway = rattler.Gateway(cache_dir=os.environ["CONDA_PKGS_DIRS"])
    records = asyncio.run(rattler.solve(
        channels, specs, gateway=gateway, platforms=[platform, "noarch"], virtual_packages=virtual))
except Exception as exc:
    print(json.dumps({"success": False, "message": str(exc)}), flush=True)
    os._exit(1)
fetch = [
    {"name": r.name.normalized, "version": str(r.version), "build": str(r.build), "build_number": r.build_number,
     "subdir": r.subdir, "fn": r.file_name, "url": r.url, "channel": r.channel, "depends": list(r.depends),
     "md5": r.md5.hex() if r.md5 else "", "sha256": r.sha256.hex() if r.sha256 else None}
    for r in records
    if not r.name.normalized.startswith("__")
]
print(json.dumps({"success": True, "dry_run": True, "actions": {"FETCH": fetch, "LINK": fetch}}), flush=True)
os._exit(0)  # py-rattler's runtime threads do not survive interpreter shutdown
"""
