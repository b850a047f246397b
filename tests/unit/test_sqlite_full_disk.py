"""A real full disk under the SQLite broker: a 1 MiB tmpfs that the database and its WAL fill up.

Mounting needs root (CI and these machines run as root); elsewhere the test is skipped and the
``max_page_count`` simulation in test_sqlite_errors.py still covers the error path.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hexq.adapters.sqlite import SqliteBroker, SqliteSettings
from hexq.core.errors import BrokerFullError
from hexq.core.ports import OutgoingTask


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_refuses_the_write_whole_and_the_broker_works_again_once_space_is_freed(
        tiny_disk: Path) -> None:
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(b"\0" * 300_000)  # what the operator deletes to free space
    broker = SqliteBroker.from_settings(SqliteSettings(str(tiny_disk / "hexq.db")))
    try:
        stored = 0
        with pytest.raises(BrokerFullError) as caught:
            for n in range(10_000):
                broker.enqueue([OutgoingTask(f"t{n}", "default", "x" * 2000)])
                stored += 1
        assert str(tiny_disk / "hexq.db") in str(caught.value)
        assert 0 < stored < 10_000
        assert broker.queue_stats(["default"])[0].pending == stored  # the refused task is not half stored
        assert broker.lookup(f"t{stored}") is None
        ballast.unlink()  # the operator frees disk space
        broker.enqueue([OutgoingTask("after", "default", "small")])
        assert broker.queue_stats(["default"])[0].pending == stored + 1
        assert broker.purge_queue("default") == (stored + 1, 0)
    finally:
        broker.close()
