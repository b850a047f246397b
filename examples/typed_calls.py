"""Typed calls: ``@app.task`` returns ``Task[P, R]``, so mypy and pyright check what you send against the function.

    python -m examples.typed_calls                  # runs in-process (memory://), no broker needed
    python -m mypy --strict examples/typed_calls.py  # type-checks cleanly (tests/unit/test_typed_calls.py)

Each line that mypy refuses is shown in a comment, with mypy's error; every one of them is also refused at run
time, before anything is sent, by ``TaskArgumentsError`` (a ``TypeError``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hexq import HexQ, TaskHandle

Q_HIGH = "a-high-priority-queue"

app = HexQ(url="memory://", queues=[(0, Q_HIGH), "default"])


@app.task
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(queue=Q_HIGH, max_retries=3)
def notify(user_id: int, *, text: str, urgent: bool = False) -> None:
    print(f"to {user_id}: {text}{' (urgent)' if urgent else ''}")


@app.task
async def fetch(url: str) -> bytes:
    await asyncio.sleep(0)
    return url.encode()


def main() -> None:
    # The task's arguments, checked against add(x: int, y: int = 0):
    add.delay(1, 2)
    add.delay(1, y=2)
    # add.delay("1", 2)        error: Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"
    # add.delay(1, z=2)        error: Unexpected keyword argument "z" for "delay" of "Task"

    # hexq's options, kept apart from the task's arguments: every keyword of .delay() is the task's.
    notify.options(queue="default", eta=timedelta(seconds=1)).delay(7, text="hello")
    notify.options(eta=30).delay(user_id=7, text="later", urgent=True)
    # notify.delay(7)          error: Missing named argument "text" for "delay" of "Task"
    # add.delay(1, queue=Q_HIGH)   WakaQ's spelling: runs, but mypy says
    #                          error: Unexpected keyword argument "queue" for "delay" of "Task"

    # Batches and broadcasts take the task's arguments too.
    ids: list[TaskHandle] = add.delay_many([add.bind(n, n) for n in range(3)] + [add.options(queue=Q_HIGH).bind(9)])
    workers: int = notify.broadcast(0, text="to every worker")
    # add.bind(1, 2, 3)        error: Too many arguments for "bind" of "Task"

    # An argument list built at run time: .apply() (checked at run time only).
    add.apply(args=[1], kwargs={"y": 2}, queue=Q_HIGH)

    # Calling the task runs the function here, with its own return type (a coroutine for async def).
    total: int = add(1, 2)
    body: bytes = asyncio.run(fetch("https://example.org"))
    fetch.delay("https://example.org")
    print(f"sent {len(ids)} in a batch, broadcast to {workers}; add(1, 2) = {total}; fetched {body!r}")
    asyncio.run(from_an_event_loop())


async def from_an_event_loop() -> None:
    # In async def code (a FastAPI or aiohttp handler), the same calls awaited: typed as .delay() is.
    await add.adelay(1, y=2)
    await notify.options(eta=30).adelay(7, text="later")
    await add.aapply(args=[1], kwargs={"y": 2}, queue=Q_HIGH)
    # await add.adelay("1")    error: Argument 1 to "adelay" of "Task" has incompatible type "str"; expected "int"


if __name__ == "__main__":
    main()
