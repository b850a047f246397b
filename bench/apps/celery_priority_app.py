"""Celery, priority workload: ``celery -A bench.apps.celery_priority_app worker -c 2 -P prefork -l WARNING``.

Celery's documented way to prioritise on Redis ("Redis Message Priorities" in its routing guide): message
priorities on one queue, which the transport splits into one list per priority step and pops in priority
order (0 is the highest), with prefetching limited to the task each process runs
(``worker_prefetch_multiplier=1`` and ``task_acks_late``, the optimizing guide's "reserve one task at a
time"), otherwise a new high-priority task waits behind low-priority ones the worker already holds.
(Separate queues with ``queue_order_strategy="priority"`` are not used: kombu keeps the consumed queues in
a set, so their order is arbitrary.)
"""

from celery import Celery

from bench.apps.common import BROKER_URL, record
from bench.apps.common import slow as slow_body

app = Celery("bench_priority", broker=BROKER_URL)
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True
app.conf.broker_transport_options = {"priority_steps": list(range(10)), "sep": ":",
                                     "queue_order_strategy": "priority"}
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True


@app.task(priority=0)
def urgent(sent: float) -> None:
    record(sent)


@app.task(priority=9)
def slow() -> None:
    slow_body()
