"""A producer process for the unique-task race (tests/integration/test_unique_tasks_on_workers.py): each round, it waits
at a barrier shared with the other producer, then sends the round's unique task at once."""

from __future__ import annotations

from typing import Any


def race(rounds: int, barrier: Any, out: Any, name: str) -> None:
    # Imported here: the spawned process reads the broker's URL and prefix from the environment it inherited.
    from tests.integration.apps.tasks import unique_record

    ids = []
    for round_ in range(rounds):
        barrier.wait(30)
        ids.append(unique_record.delay(f"round-{round_}"))
    out.put((name, ids))
