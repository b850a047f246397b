"""The layer rules, checked two ways: an AST scan of our own, and import-linter's contracts."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

REPO = Path(__file__).resolve().parents[2]

# Where each top-level source directory lives in the installed package (pyproject's package-dir).
PACKAGES = {"core": "hexq.core", "adapters": "hexq.adapters", "entrypoints": "hexq.entrypoints", "front": "hexq"}

# The core is sans-IO: no I/O libraries, no clocks, no processes, no outer layers.
FORBIDDEN_IN_CORE = (
    "redis", "psutil", "fakeredis", "signal", "subprocess", "socket", "threading", "multiprocessing", "time",
    "os", "mmap", "opentelemetry", "hexq.adapters", "hexq.entrypoints",
)
# From the repository root these import a second copy of a module; always go through ``hexq.``.
BARE_ROOTS = ("core", "adapters", "entrypoints", "front")


@attrs.frozen
class Violation:
    path: Path
    line: int
    module: str


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports_of(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, absolute, with its line: ``from a import b`` yields ``a`` and ``a.b``;
    relative imports are resolved; ``importlib.import_module("x")`` and ``__import__("x")`` count too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                keep = len(base) - node.level + (1 if is_package else 0)
                prefix = ".".join(base[:keep])
                source = f"{prefix}.{node.module}" if node.module else prefix
            else:
                source = node.module or ""
            yield node.lineno, source
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _matches(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


def _python_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def check_core(core_dir: Path) -> list[Violation]:
    """Imports in ``core_dir`` (the ``hexq.core`` package) of anything the core must not touch."""
    return [
        Violation(path, line, imported)
        for path in _python_files(core_dir)
        for line, imported in imports_of(path, _module_name(path, core_dir, "hexq.core"))
        if _matches(imported, FORBIDDEN_IN_CORE)
    ]


def check_bare_imports(repo: Path) -> list[Violation]:
    """Imports of ``core``/``adapters``/``entrypoints``/``front`` not spelled ``hexq.…``."""
    return [
        Violation(path, line, imported)
        for directory, package in PACKAGES.items()
        if (repo / directory).is_dir()
        for path in _python_files(repo / directory)
        for line, imported in imports_of(path, _module_name(path, repo / directory, package))
        if _matches(imported, BARE_ROOTS)
    ]


def _describe(violations: list[Violation]) -> str:
    return "\n".join(f"{v.path.relative_to(REPO) if v.path.is_relative_to(REPO) else v.path}:{v.line}: "
                     f"imports {v.module}" for v in violations)


def test_the_source_directories_exist() -> None:
    for directory in PACKAGES:
        assert _python_files(REPO / directory), directory


def test_core_imports_no_io_library_and_no_outer_layer() -> None:
    violations = check_core(REPO / "core")
    assert violations == [], _describe(violations)


def test_no_bare_core_adapters_or_entrypoints_imports() -> None:
    violations = check_bare_imports(REPO)
    assert violations == [], _describe(violations)


# -- the checker itself can fail ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the source directories for the whole module; each test adds a file and removes it."""
    root = tmp_path_factory.mktemp("repo")
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert check_core(root / "core") == []
    assert check_bare_imports(root) == []
    return root


@pytest.fixture
def add_file(tree_copy: Path) -> Iterator[Callable[[str, str], Path]]:
    added: list[Path] = []

    def add(relative: str, source: str) -> Path:
        path = tree_copy / relative
        path.write_text(source, encoding="utf-8")
        added.append(path)
        return path

    yield add
    for path in added:
        path.unlink()


LEAKS = [
    ("import redis", "redis"),
    ("import os.path", "os.path"),
    ("from time import monotonic", "time"),
    ("from threading import Lock as L", "threading"),
    ("import subprocess, json", "subprocess"),
    ("from hexq.adapters.memory import MemoryBroker", "hexq.adapters.memory"),
    ("from hexq import entrypoints", "hexq.entrypoints"),
    ("from .. import adapters", "hexq.adapters"),
    ("import importlib\nimportlib.import_module('socket')", "socket"),
    ("def f():\n    import psutil\n", "psutil"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fakeredis\n", "fakeredis"),
]


@pytest.mark.parametrize(("source", "module"), LEAKS, ids=[leak[1] for leak in LEAKS])
def test_core_checker_reports_a_forbidden_import(tree_copy: Path, add_file: Callable[[str, str], Path],
                                                 source: str, module: str) -> None:
    leaky = add_file("core/leaky.py", f'"""A module that breaks the rule."""\n{source}\n')
    violations = check_core(tree_copy / "core")
    assert {v.path for v in violations} == {leaky}
    assert module in {v.module for v in violations}


def test_core_checker_reports_a_leak_in_a_subpackage_with_its_line(
    tree_copy: Path, add_file: Callable[[str, str], Path]
) -> None:
    service = add_file("core/services/leaky.py", "from __future__ import annotations\n\nimport redis\n")
    assert check_core(tree_copy / "core") == [Violation(service, 3, "redis")]


@pytest.mark.parametrize("source", [
    "from datetime import time", "import timeit", "import osmosis", "from hexq.core import errors",
    "from . import errors", "import zoneinfo",
])
def test_core_checker_allows_near_misses(tree_copy: Path, add_file: Callable[[str, str], Path],
                                         source: str) -> None:
    add_file("core/fine.py", source + "\n")
    assert check_core(tree_copy / "core") == []


@pytest.mark.parametrize(("directory", "source"), [
    ("adapters", "from core.queues import Queue"),
    ("entrypoints", "import entrypoints.app"),
    ("front", "from adapters.memory import MemoryBroker"),
    ("core", "import core"),
])
def test_bare_import_checker_reports_them(tree_copy: Path, add_file: Callable[[str, str], Path],
                                          directory: str, source: str) -> None:
    bad = add_file(f"{directory}/bad.py", source + "\n")
    assert {v.path for v in check_bare_imports(tree_copy)} == {bad}


# -- import-linter ------------------------------------------------------------------------------------

def _lint_imports() -> str | None:
    found = shutil.which("lint-imports")
    if found:
        return found
    beside = Path(sys.executable).parent / "lint-imports"
    return str(beside) if beside.exists() else None


def wheel_layout(target: Path) -> Path:
    """The package as the wheel lays it out (``hexq/`` = front, ``hexq/core`` = core, ...), made of symlinks.

    import-linter finds packages on the file system; a default (non-strict) editable install maps
    ``hexq.core`` to ``core/`` with an import hook it cannot see, so it is shown this layout instead, and the
    check works however the package was installed."""
    package = target / "hexq"
    package.mkdir()
    for item in (REPO / "front").iterdir():
        (package / item.name).symlink_to(item)
    for name in ("core", "adapters", "entrypoints"):
        (package / name).symlink_to(REPO / name, target_is_directory=True)
    return target


def test_import_linter_contracts_are_kept(tmp_path: Path) -> None:
    command = _lint_imports()
    assert command is not None, "lint-imports not installed: pip install -e '.[test]'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(wheel_layout(tmp_path)), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([command, "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
