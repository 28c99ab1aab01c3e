"""The multi-process scrape (``telemetry._WorkerFiles``): workers' metric files added up, and a file a
worker has just created but not yet sized (a scrape racing its first write) left out instead of failing
the whole scrape with a 500."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from condagate.telemetry import _WorkerFiles


def _counter_file(folder: Path, pid: int, value: float) -> None:
    values = MmapedDict(str(folder / f"counter_{pid}.db"))
    values.write_value(mmap_key("condagate_demo", "condagate_demo_total", [], [], "a demo counter"), value, 0.0)
    values.close()


def test_workers_files_add_up_and_a_file_not_yet_sized_is_left_out(tmp_path: Path) -> None:
    _counter_file(tmp_path, 101, 2.0)
    _counter_file(tmp_path, 102, 3.0)
    (tmp_path / "counter_103.db").touch()  # a worker's first write, caught between create and size

    families = list(_WorkerFiles(tmp_path).collect())

    samples = [sample for family in families for sample in family.samples]
    assert [(s.name, s.value) for s in samples] == [("condagate_demo_total", 5.0)]
