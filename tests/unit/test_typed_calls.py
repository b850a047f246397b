"""mypy checks what is sent to a task against the function: it accepts ``examples/typed_calls.py`` and refuses
wrong calls, naming the argument. Runs ``python -m mypy`` on the working tree's hexq (mapped as the wheel maps
it, so it works with any editable install), with a minimal strict configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# How pyproject.toml's [tool.setuptools.package-dir] lays out the hexq package.
PACKAGE_DIRS = {"core": "core", "adapters": "adapters", "entrypoints": "entrypoints"}

WRONG_CALLS = '''\
from datetime import timedelta
from typing import Any
from typed_calls import add, fetch, notify

add.delay("1", 2)
add.delay(1, z=2)
notify.delay(7)
add.delay(1, queue="a-high-priority-queue")
add.bind(1, 2, 3)
fetch.options(queue="default", eta=timedelta(seconds=1)).delay(url=3)
notify.broadcast(7, txt="hello")
add.options(eta="tomorrow")
reveal_type(add)
reveal_type(fetch)
reveal_type(notify)
reveal_type(add(1))


async def from_an_event_loop() -> None:
    await add.adelay("1")
    await notify.options(queue="default").adelay(7)
    await add.aapply([1], queue=3)
    reveal_type(await add.adelay(1))
'''

# Per line: what mypy's message must contain (the wording around it varies between mypy versions).
EXPECTED = {
    5: ['error: Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"'],
    6: ['error: Unexpected keyword argument "z" for "delay" of "Task"'],
    7: ['error: Missing named argument "text" for "delay" of "Task"'],
    8: ['error: Unexpected keyword argument "queue" for "delay" of "Task"'],
    9: ['error: Too many arguments for "bind" of "Task"'],
    10: ['error: Argument "url" to "delay" of "TaskWithOptions" has incompatible type "int"; expected "str"'],
    11: ['error: Unexpected keyword argument "txt" for "broadcast" of "Task"'],
    12: ['error: Argument "eta" to "options" of "Task" has incompatible type "str"'],
    13: ["note: Revealed type is", "Task[[x: int, y: int =], int]"],
    14: ["note: Revealed type is", "Task[[url: str], ", "Coroutine[Any, Any, bytes]]"],
    15: ["note: Revealed type is", "Task[[user_id: int, *, text: str, urgent: bool =], None]"],
    16: ['note: Revealed type is "int"'],
    20: ['error: Argument 1 to "adelay" of "Task" has incompatible type "str"; expected "int"'],
    21: ['error: Missing named argument "text" for "adelay" of "TaskWithOptions"'],
    22: ['error: Argument "queue" to "aapply" of "Task" has incompatible type "int"; expected "str | None"'],
    23: ["note: Revealed type is", "TaskHandle"],  # a str: the task id, with status() and result()
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("typed_calls")
    package = root / "path" / "hexq"
    package.mkdir(parents=True)
    for front in (REPO / "front").iterdir():
        if front.suffix in (".py", ".typed"):
            (package / front.name).symlink_to(front)
    for name, folder in PACKAGE_DIRS.items():
        (package / name).symlink_to(REPO / folder, target_is_directory=True)
    # hexq's own modules are analysed but not reported on: `mypy` in CI does that, with the project's config.
    (root / "mypy.ini").write_text(
        "[mypy]\nstrict = True\n"
        f"mypy_path = {root / 'path'}\ncache_dir = {root / 'cache'}\n"
        "[mypy-hexq.*]\nfollow_imports = silent\n"
        "[mypy-fakeredis.*,croniter.*]\nignore_missing_imports = True\n")
    shutil.copy(REPO / "examples" / "typed_calls.py", root / "typed_calls.py")
    (root / "wrong_calls.py").write_text(WRONG_CALLS)
    return root


def mypy(workdir: Path, filename: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(workdir / "mypy.ini"), "--no-color-output",
         "--no-error-summary", filename],
        cwd=workdir, capture_output=True, text=True, timeout=120, check=False)


def test_the_typed_example_type_checks_cleanly(workdir: Path) -> None:
    result = mypy(workdir, "typed_calls.py")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_mypy_refuses_wrong_calls_naming_the_argument(workdir: Path) -> None:
    result = mypy(workdir, "wrong_calls.py")
    assert result.returncode == 1, result.stdout + result.stderr
    found: dict[int, str] = {}
    for line in result.stdout.splitlines():
        filename, number, message = line.split(":", 2)
        if filename == "wrong_calls.py" and (" error: " in line or "Revealed type" in line):
            assert int(number) not in found, line  # one message per line
            found[int(number)] = message.replace("builtins.", "")  # some mypy versions qualify builtins
    assert sorted(found) == sorted(EXPECTED), result.stdout
    for number, fragments in EXPECTED.items():
        assert all(fragment in found[number] for fragment in fragments), (number, found[number])
