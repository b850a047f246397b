"""What the worker parent's state machine asks its driver to do (actions), and its record of a child.

Process actions are carried out at once by the driver's main thread; broker actions go to the driver's
broker thread, which reports each result back to the machine (``WorkerParent.completed``).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Spawn:
    """Start child ``index`` as ``consumer`` (report the pid with ``WorkerParent.spawned``)."""

    index: int
    consumer: str


@attrs.frozen
class Terminate:
    """Ask a child to finish its running tasks and exit (SIGTERM)."""

    pid: int


@attrs.frozen
class Kill:
    """Stop a child at once (SIGKILL)."""

    pid: int


@attrs.frozen
class RequestCancel:
    """Write on the board the child's tasks whose cancellation is requested, then interrupt the child (SIGUSR1)
    so that it reads them."""

    index: int
    pid: int
    task_ids: tuple[str, ...]


@attrs.frozen
class CheckMemory:
    """Read the machine's memory use and the children's RSS (report with ``WorkerParent.memory``)."""


@attrs.frozen
class Settle:
    """A child died: record the task it was killed for as a failed attempt (``hard_timed_out``), then put
    every task its consumer still owns back, counting a crash for those it was running (``crashed``)."""

    consumer: str
    crashed: tuple[str, ...]
    hard_timed_out: str | None = None


@attrs.frozen
class Beat:
    """Renew the live consumers' leases and write the worker's heartbeat; ``report_depths`` also reads the
    served queues' depths for metrics."""

    consumers: tuple[str, ...]
    lease_until_ms: int
    info: str
    now_ms: int
    report_depths: bool = False


@attrs.frozen
class Finish:
    """Every child is gone: forget the worker (its heartbeat, and its private broadcast queue with the copies
    still waiting there, in one step: see ``Supervision.forget_worker``)."""


ProcessAction = Spawn | Terminate | Kill | RequestCancel | CheckMemory
BrokerAction = Settle | Beat | Finish
Action = ProcessAction | BrokerAction


@attrs.define
class Child:
    index: int
    consumer: str
    pid: int
    started_at: float
    terminating_since: float | None = None
    hard_killed_for: str | None = None  # the task it was SIGKILLed for running past its hard timeout
    killed_at_stop: bool = False  # SIGKILLed because it outlived the shutdown timeout
    # Its tasks whose cancellation is requested -> when the parent first saw each running since (None: not yet).
    cancelling: dict[str, float | None] = attrs.field(factory=dict)
    cancel_killed_for: str | None = None  # SIGKILLed: this cancelled task was still running after the grace
