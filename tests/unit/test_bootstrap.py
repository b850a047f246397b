"""The composition root: per-process randomness, the sender a task uses inside a worker child, and the
in-process mode chosen in one place."""

from __future__ import annotations

import contextvars
import os
import time
from pathlib import Path

from service_fixtures import make_app

from hexq import HexQ
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.adapters.posix.processes import PosixProcessControl
from hexq.core.services.sender import InlineSender, Sender
from hexq.entrypoints import bootstrap


def test_each_forked_child_draws_its_own_retry_jitter(tmp_path: Path) -> None:
    # The random source a worker child's runner gets must not be a copy of the parent's generator: a
    # random.Random is not reseeded by fork, and every child would draw the same "random" backoff.
    def child_main(index: int, consumer: str) -> int:
        draw = bootstrap.process_random()
        (tmp_path / f"child-{index}").write_text(" ".join(repr(draw()) for _ in range(3)))
        return 0

    bootstrap.process_random()()  # the parent has drawn before it forks, as a producer would
    processes = PosixProcessControl.start(child_main)
    try:
        for index in range(3):
            processes.start_child(index, f"c{index}")
        exits: list[object] = []
        deadline = time.monotonic() + 10
        while len(exits) < 3 and time.monotonic() < deadline:
            exits += processes.reap()
            time.sleep(0.01)
    finally:
        processes.close()
    draws = {(tmp_path / f"child-{index}").read_text() for index in range(3)}
    assert len(draws) == 3


def test_ids_made_in_forked_children_never_collide(tmp_path: Path) -> None:
    app = HexQ(url="redis://127.0.0.1:1/0")
    factory = bootstrap.task_factory(app, app.clock)
    parent_ids = {factory.ids.new() for _ in range(100)}
    pids = []
    for index in range(2):
        pid = os.fork()
        if pid == 0:
            (tmp_path / f"ids-{index}").write_text("\n".join(factory.ids.new() for _ in range(100)))
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    child_ids = [set((tmp_path / f"ids-{index}").read_text().split()) for index in range(2)]
    assert len(parent_ids | child_ids[0] | child_ids[1]) == 300
    assert all(len(i) == 32 for i in parent_ids)


def test_inside_a_worker_child_tasks_send_through_the_childs_own_sender_not_the_apps() -> None:
    app, broker, _ = make_app()

    @app.task
    def ping() -> None: ...

    child_broker = MemoryBroker()
    child_sender = Sender(app.registry, bootstrap.task_factory(app, app.clock), child_broker, app.clock)

    def in_child() -> None:
        bootstrap.enter_child(app, child_sender)
        ping.delay()

    contextvars.copy_context().run(in_child)
    assert [s.pending for s in child_broker.queue_stats(["low"])] == [1]
    assert [s.pending for s in broker.queue_stats(["low"])] == [0]
    ping.delay()  # outside that context: the app's own sender
    assert [s.pending for s in broker.queue_stats(["low"])] == [1]


def test_another_apps_tasks_are_not_routed_through_a_childs_sender() -> None:
    app, _, _ = make_app()
    other, other_broker, _ = make_app()

    @other.task
    def pong() -> None: ...

    child_sender = Sender(app.registry, bootstrap.task_factory(app, app.clock), MemoryBroker(), app.clock)

    def in_child() -> None:
        bootstrap.enter_child(app, child_sender)
        pong.delay()

    contextvars.copy_context().run(in_child)
    assert [s.pending for s in other_broker.queue_stats(["low"])] == [1]


def test_the_in_process_mode_is_chosen_by_the_composition_root_from_memory_urls() -> None:
    inline = HexQ(url="memory://", clock=FakeClock())
    assert isinstance(bootstrap.make_broker(inline), MemoryBroker)
    assert isinstance(bootstrap.sender_for(inline), InlineSender)
    remote = HexQ(url="redis://127.0.0.1:1/0")
    sender = bootstrap.sender_for(remote)
    assert type(sender) is Sender
    assert bootstrap.sender_for(remote) is sender  # built once per app and process
