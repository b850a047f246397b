"""The suite's own layout: pytest imports test files by basename (rootdir mode, no packages), so two test
files of one name in different folders stop the whole run at collection. A file run on its own by path
passes, so without this check the clash is first seen by ``make test``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_no_two_test_files_share_a_basename() -> None:
    folders: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        folders[path.name].append(str(path.parent.relative_to(TESTS)))
    clashes = {name: where for name, where in folders.items() if len(where) > 1}
    assert not clashes, f"rename one of each pair (pytest cannot collect both): {clashes}"
