"""The ports: what the core needs from the outside world, as ``typing.Protocol``s, and the records that
cross them. ``broker`` holds the broker's roles, ``runtime`` time, processes and metrics."""

from hexq.core.ports.broker import (
    Administration,
    AsyncProducer,
    Broker,
    Canceller,
    Consumer,
    CronStore,
    Inspection,
    Producer,
    Supervision,
)
from hexq.core.ports.records import (
    Cancelled,
    ChildExit,
    DeadLetter,
    Delivery,
    InFlight,
    OutgoingTask,
    QueueStats,
    Reservation,
    UniqueLock,
    Unrun,
    WorkerBeat,
)
from hexq.core.ports.runtime import Clock, Metrics, NoMetrics, ProcessControl, RunningBoard

__all__ = [
    "Administration",
    "AsyncProducer",
    "Broker",
    "Cancelled",
    "Canceller",
    "ChildExit",
    "Clock",
    "Consumer",
    "CronStore",
    "DeadLetter",
    "Delivery",
    "InFlight",
    "Inspection",
    "Metrics",
    "NoMetrics",
    "OutgoingTask",
    "ProcessControl",
    "Producer",
    "QueueStats",
    "Reservation",
    "RunningBoard",
    "Supervision",
    "UniqueLock",
    "Unrun",
    "WorkerBeat",
]
