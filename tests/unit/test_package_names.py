"""conda name -> PyPI name: the vendored grayskull table, overrides, the fall-back rule."""

from __future__ import annotations

from condagate.conda.package_names import (
    FALLBACK,
    GRAYSKULL,
    NONE,
    OVERRIDE,
    PypiNameTable,
    grayskull_table,
    is_pypi_name,
    map_to_pypi,
    normalize_ecosystem_name,
    normalize_pypi,
)


def test_pep503_normalisation() -> None:
    assert normalize_pypi("Pillow") == "pillow"
    assert normalize_pypi("PyYAML") == "pyyaml"
    assert normalize_pypi("zope.interface") == "zope-interface"
    assert normalize_pypi("typing__extensions") == "typing-extensions"
    assert normalize_pypi("A-_.B") == "a-b"
    assert normalize_ecosystem_name("PyPI", "Jinja2") == "jinja2"
    assert normalize_ecosystem_name("npm", "@Scope/Pkg") == "@Scope/Pkg"


def test_the_vendored_table_is_grayskulls() -> None:
    table = grayskull_table()
    assert "conda-pypi 0.13.1" in table.source
    assert len(table.names) > 12_000
    # conda-forge names that differ from PyPI's
    assert table.lookup("msgpack-python") == ("msgpack",)
    assert table.lookup("typing_extensions") == ("typing-extensions",)
    assert table.lookup("airflow") == ("apache-airflow",)
    assert table.lookup("docker-py") == ("docker",)
    assert table.lookup("pillow") is None and table.lookup("pyyaml") is None  # the fall-back rule finds them
    assert table.lookup("requests") == ("requests",)
    assert table.lookup("opencv") == ("opencv-python", "opencv-python-headless")
    assert table.lookup("no-such-package-here") is None
    # a bot entry whose PyPI name is a hash is left out of the vendored table
    assert table.lookup("django-jsoneditor") is None
    assert "msgpack-python" in table.conda_names_of("MsgPack")


def test_a_name_split_by_version() -> None:
    table = grayskull_table()
    assert table.lookup("pyqt", "4.11.4") == ("pyqt4",)
    assert table.lookup("pyqt", "5.15.9") == ("pyqt5",)
    assert table.lookup("pyqt", "6.0") == ()
    assert table.lookup("pyqt") == ("pyqt4", "pyqt5")


def test_mapping_sources() -> None:
    none: dict[str, str | None] = {}
    msgpack = map_to_pypi("msgpack-python", overrides=none)
    assert (msgpack.names, msgpack.source, msgpack.ecosystem_name) == (("msgpack",), GRAYSKULL, "PyPI:msgpack")
    # pillow and pyyaml: conda-forge keeps the PEP 503 name of Pillow and PyYAML
    pillow = map_to_pypi("pillow", overrides=none)
    assert pillow.ecosystem_name == "PyPI:pillow" and normalize_pypi("Pillow") in pillow.names
    assert (pillow.source, pillow.names) == (FALLBACK, ("pillow",))
    pyyaml = map_to_pypi("pyyaml", overrides=none)
    assert (pyyaml.ecosystem_name, normalize_pypi("PyYAML")) == ("PyPI:pyyaml", "pyyaml")
    fallback = map_to_pypi("some_private.pkg", overrides=none)
    assert (fallback.names, fallback.source) == (("some-private-pkg",), FALLBACK)
    unmappable = map_to_pypi("_libgcc_mutex", overrides=none)
    assert (unmappable.names, unmappable.source, unmappable.ecosystem_name) == ((), NONE, None)


def test_overrides_come_first() -> None:
    overrides: dict[str, str | None] = {"msgpack-python": "Other_Name", "requests": None}
    assert map_to_pypi("msgpack-python", overrides=overrides).names == ("other-name",)
    assert map_to_pypi("msgpack-python", overrides=overrides).source == OVERRIDE
    no_counterpart = map_to_pypi("requests", overrides=overrides)
    assert (no_counterpart.names, no_counterpart.source, no_counterpart.ecosystem_name) == ((), OVERRIDE, None)


def test_a_table_from_json() -> None:
    table = PypiNameTable.from_json(
        {"source": "t", "same": ["a_b"], "names": {"c": "D.E", "f": ["g", "h"]}, "by_version": {}}
    )
    assert table.lookup("a_b") == ("a-b",)
    assert table.lookup("c") == ("d-e",)
    assert map_to_pypi("c", overrides={}, table=table).source == GRAYSKULL


def test_valid_pypi_names() -> None:
    assert is_pypi_name("zope.interface") and is_pypi_name("A1")
    assert not is_pypi_name("_private") and not is_pypi_name("trailing-") and not is_pypi_name("a b")
