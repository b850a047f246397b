"""One app per system, each declaring the same two tasks through that system's documented API:

* ``noop()``: its only work is one ``INCR bench:done`` (the harness polls that counter);
* ``stamp(sent)``: records ``"<sent> <time.time() at start>"`` in the list ``bench:stamps`` and INCRs the
  counter (one pipelined round trip), for latency and eta lateness.

For the priority workload, ``<system>_priority_app.py`` declares two queues, high and low, through the
system's own priority mechanism, with ``urgent(sent)`` (the stamp task) on the high one and ``slow()`` (sleeps
2 ms, then ``INCR bench:low``) on the low one. Kept apart so that the other workloads' apps and worker
commands stay exactly as they were.

The broker URL comes from ``BENCH_REDIS_URL``; the counter's from ``BENCH_COUNTER_URL`` (always the bench
redis-server directly, so the proxy run delays only the queue's own round trips). The embedded-broker apps
(``hexq_sqlite_app.py``, ``huey_sqlite_app.py``) keep their queue in the SQLite file ``BENCH_SQLITE_PATH``
and their counter in that same Redis.
"""
