"""The multiprocess exporter's scrape, on files laid out as prometheus_client's children write them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from hexq.adapters.prometheus.exporter import _Files


def write_counter(directory: Path, pid: int, value: float) -> None:
    values = MmapedDict(str(directory / f"counter_{pid}.db"))
    values.write_value(mmap_key("hexq_done", "hexq_done_total", [], [], "done"), value, 0.0)
    values.close()


def test_a_scrape_skips_a_file_a_child_has_only_just_created(tmp_path: Path) -> None:
    write_counter(tmp_path, 100, 3.0)
    (tmp_path / "counter_101.db").touch()  # created, not yet sized and given its header: it used to fail the scrape
    metrics = list(_Files(str(tmp_path)).collect())
    samples = [sample for metric in metrics for sample in metric.samples if sample.name == "hexq_done_total"]
    assert [sample.value for sample in samples] == [3.0]
    write_counter(tmp_path, 101, 2.0)  # the child's file, written: counted from the next scrape on
    metrics = list(_Files(str(tmp_path)).collect())
    assert [s.value for m in metrics for s in m.samples if s.name == "hexq_done_total"] == [5.0]
