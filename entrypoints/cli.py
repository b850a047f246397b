"""The ``hexq`` command: thin wrappers that parse, validate, call the composition root, return a code."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

from hexq.core.errors import BrokerUnavailableError, ConfigError, DeadlineError, HexqError, UnknownTaskError
from hexq.core.ports import Cancelled
from hexq.core.services.sender import TaskArgumentsError
from hexq.entrypoints.app import HexQ
from hexq.entrypoints.loading import load_app
from hexq.entrypoints.logs import setup_logging

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_NOTHING_TO_CANCEL = 3  # hexq cancel: some id was finished or unknown (nothing was done for it)


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hexq", description="hexq: a Redis-backed background task queue.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.add_argument("--app", required=True,
                         help="the HexQ app: 'package.module:attribute', or a module holding one HexQ")
        return sub

    worker = command("worker", "Run a worker: a parent process and `concurrency` child processes.")
    worker.add_argument("--concurrency", type=int, help="number of child processes (overrides the app)")
    worker.add_argument("--queues", type=_names, help="comma-separated queues to serve (default: all)")
    worker.add_argument("--exclude-queues", type=_names, default=[], help="comma-separated queues to skip")
    worker.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default: the app's)")
    worker.add_argument("--log-file", help="write logs here instead of stderr")
    worker.add_argument("--log-tasks", action=argparse.BooleanOptionalAction, default=None,
                        help="log an INFO line for each task that succeeds (default: the app's log_tasks, on); "
                             "failures are logged either way")
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on this port at /metrics (needs hexq[prometheus])")
    worker.add_argument("--metrics-host", default="0.0.0.0", metavar="ADDRESS",
                        help="the address the metrics endpoint listens on (default: all interfaces)")

    scheduler = command("scheduler", "Run a scheduler that enqueues the app's CronTasks at their times.")
    scheduler.add_argument("--log-level")
    scheduler.add_argument("--log-file")

    info = command("info", "Show queues (pending, eta, in flight), dead letters and live workers.")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")

    purge = command("purge", "Delete every pending and eta task of one queue.")
    purge.add_argument("queue", help="the queue to empty")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    enqueue = command("enqueue", "Enqueue one task from the shell; arguments are JSON values.")
    enqueue.add_argument("task", help="the task name")
    enqueue.add_argument("args", nargs="*", help="positional arguments, each a JSON value (e.g. 1 '\"a\"')")
    enqueue.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    enqueue.add_argument("--queue", help="override the task's queue")
    enqueue.add_argument("--eta", type=float, help="run after this many seconds")
    enqueue.add_argument("--expires", type=float, metavar="SECONDS",
                         help="never start it later than this many seconds from now")

    cancel = command("cancel", "Cancel tasks by id: one line per id says what it was (exit 0 when every id was "
                     "cancelled or is being stopped, 3 when some were finished or unknown).")
    cancel.add_argument("ids", nargs="+", metavar="TASK_ID", help="the ids of the tasks to cancel")

    dead = command("dead", "List, requeue or purge dead letters.")
    dead.add_argument("action", choices=["list", "requeue", "purge"])
    dead.add_argument("ids", nargs="*", help="for requeue: the ids to requeue (default: all)")
    dead.add_argument("--limit", type=int, default=50)
    dead.add_argument("--json", action="store_true", help="for list: as JSON, each letter's traceback included")
    dead.add_argument("--traceback", action="store_true",
                      help="for list: print each letter's traceback (of the exception its last attempt raised) "
                           "under it")

    dashboard = command("dashboard", "Serve the web dashboard: queues, workers, dead letters, schedules, tasks "
                        "(needs hexq[dashboard]).")
    dashboard.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                           help="the address to listen on (default: 127.0.0.1, this machine only)")
    dashboard.add_argument("--port", type=int, default=8080, help="the TCP port (default: 8080)")
    dashboard.add_argument("--token", help="enables requeue and delete for whoever logs in with it (at least 16 "
                           "characters; default: the HEXQ_DASHBOARD_TOKEN environment variable; none: read-only)")
    dashboard.add_argument("--read-only", action="store_true", help="refuse every change, token or not")

    migrate = command("migrate-from-wakaq", "Move WakaQ's pending and eta tasks into this app's broker, each "
                      "exactly once; safe to run again and to resume (docs/MIGRATING_FROM_WAKAQ.md).")
    migrate.add_argument("--wakaq-url", help="WakaQ's Redis (default: the app's URL, if it is a Redis URL)")
    migrate.add_argument("--wakaq-prefix", default="wakaq", help="WakaQ's key prefix (default: wakaq)")
    migrate.add_argument("--dry-run", action="store_true",
                         help="print what would move, per queue, and what would be rejected; change nothing")
    migrate.add_argument("--retry-rejected", action="store_true",
                         help="first put the entries of <prefix>:migrate:rejected back where they came from")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        app = load_app(args.app)
        handler = globals()[f"_cmd_{args.command.replace('-', '_')}"]
        return int(handler(app, args))
    except (ConfigError, UnknownTaskError, TaskArgumentsError, DeadlineError) as exc:
        print(f"hexq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerUnavailableError as exc:
        print(f"hexq: broker unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except HexqError as exc:
        print(f"hexq: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def worker_main() -> int:
    """``hexq-worker --app=...`` for WakaQ users."""
    return main(["worker", *sys.argv[1:]])


def scheduler_main() -> int:
    return main(["scheduler", *sys.argv[1:]])


def _cmd_worker(app: HexQ, args: argparse.Namespace) -> int:
    from hexq.entrypoints.worker import run_worker

    if app.is_inline:
        raise ConfigError("a worker needs a real broker: this app uses memory:// (in-process runs)")
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise ConfigError(f"--metrics-port must be a TCP port (1-65535), got {args.metrics_port}")
    app.queues.select(args.queues, [*app.exclude_queues, *args.exclude_queues])
    setup_logging(args.log_level or app.worker_log_level, args.log_file or app.worker_log_file)
    return run_worker(app, args.queues, args.exclude_queues, args.concurrency, args.metrics_port,
                      args.metrics_host, args.log_tasks)


def _cmd_scheduler(app: HexQ, args: argparse.Namespace) -> int:
    import signal

    from hexq.entrypoints import bootstrap
    from hexq.entrypoints.scheduler_driver import SchedulerDriver

    setup_logging(args.log_level or app.scheduler_log_level, args.log_file or app.scheduler_log_file)
    scheduler = bootstrap.scheduler(app)
    scheduler.check()
    if not app.schedules:
        print("hexq: warning: the app has no schedules; the scheduler will idle", file=sys.stderr)
    driver = SchedulerDriver(scheduler, app.clock)
    signal.signal(signal.SIGTERM, lambda *_: driver.request_stop())
    signal.signal(signal.SIGINT, lambda *_: driver.request_stop())
    return driver.run()


def _snapshot(app: HexQ) -> dict[str, Any]:
    broker = app.broker
    now_ms = int(app.clock.now() * 1000)
    stats = broker.queue_stats(app.queues.names)
    return {
        "broker": app.connection.redacted,
        "queues": [{"name": s.name, "priority": app.queues.get(s.name).priority, "pending": s.pending,
                    "eta": s.eta, "in_flight": s.in_flight, "expired": s.expired} for s in stats],
        # Counted by the broker: fetching the letters would move every payload, and a fetch limit caps the count.
        "dead": broker.dead_count(),
        "in_flight": [{"id": f.id, "queue": f.queue, "consumer": f.consumer,
                       "age_seconds": round((now_ms - f.since_ms) / 1000, 3)} for f in broker.in_flight(100)],
        "workers": [{"worker": w.worker_id, "heartbeat_age_seconds": round((now_ms - w.last_beat_ms) / 1000, 3),
                     **_json_or_raw(w.info)} for w in broker.workers()],
        "partitions": _partitions(broker, app.queues.names),
    }


def _partitions(broker: Any, queues: list[str]) -> list[dict[str, Any]]:
    """Per partition of an app spread over several (``partitions=N``, or a cluster): depths and node."""
    if not hasattr(broker, "partition_stats"):
        return []
    rows = []
    for index, (stats, node) in enumerate(zip(broker.partition_stats(queues), broker.partition_nodes(), strict=True)):
        rows.append({"partition": index, "node": node, "pending": sum(s.pending for s in stats),
                     "eta": sum(s.eta for s in stats), "in_flight": sum(s.in_flight for s in stats),
                     "queues": {s.name: {"pending": s.pending, "eta": s.eta, "in_flight": s.in_flight}
                                for s in stats}})
    return rows


def _json_or_raw(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"info": text}
    return value if isinstance(value, dict) else {"info": value}


def _print_snapshot(snapshot: dict[str, Any]) -> None:
    print(f"broker: {snapshot['broker']}")
    print(f"{'queue':<32} {'prio':>4} {'pending':>9} {'eta':>7} {'in flight':>10} {'expired':>8}")
    for q in snapshot["queues"]:
        print(f"{q['name']:<32} {q['priority']:>4} {q['pending']:>9} {q['eta']:>7} {q['in_flight']:>10} "
              f"{q['expired']:>8}")
    if snapshot["partitions"]:
        print(f"{'partition':<32} {'node':>21} {'pending':>9} {'eta':>7} {'in flight':>10}")
        for p in snapshot["partitions"]:
            print(f"{p['partition']:<32} {p['node'] or '-':>21} {p['pending']:>9} {p['eta']:>7} {p['in_flight']:>10}")
    print(f"dead letters: {snapshot['dead']}")
    if snapshot["in_flight"]:
        print("in flight (oldest first):")
        for f in snapshot["in_flight"][:20]:
            print(f"  {f['id']}  {f['queue']}  {f['consumer']}  {f['age_seconds']:.1f}s")
    print(f"workers: {len(snapshot['workers'])}")
    for w in snapshot["workers"]:
        print(f"  {w['worker']}  heartbeat {w['heartbeat_age_seconds']:.1f}s ago  "
              f"children={w.get('children', '?')}")


def _cmd_info(app: HexQ, args: argparse.Namespace) -> int:
    while True:
        snapshot = _snapshot(app)
        if args.json:
            print(json.dumps(snapshot, indent=2))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            _print_snapshot(snapshot)
        if not args.watch:
            return EXIT_OK
        time.sleep(args.watch)


def _cmd_purge(app: HexQ, args: argparse.Namespace) -> int:
    app.queues.get(args.queue)
    (stats,) = app.broker.queue_stats([args.queue])
    print(f"queue {args.queue!r}: {stats.pending} pending and {stats.eta} eta task(s) will be deleted "
          f"({stats.in_flight} in flight are left alone)")
    if not args.yes:
        if not sys.stdin.isatty():
            print("hexq: refusing to purge without --yes when not at a terminal", file=sys.stderr)
            return EXIT_USAGE
        if input("type the queue name to confirm: ").strip() != args.queue:
            print("aborted")
            return EXIT_FAILURE
    pending, eta = app.broker.purge_queue(args.queue)
    print(f"deleted {pending} pending and {eta} eta task(s)")
    return EXIT_OK


def _cmd_enqueue(app: HexQ, args: argparse.Namespace) -> int:
    from hexq.entrypoints.app import Task

    definition = app.registry.get(args.task)
    try:
        positional = [json.loads(value) for value in args.args]
        kwargs = json.loads(args.kwargs)
    except ValueError as exc:
        raise ConfigError(f"arguments must be JSON values (quote strings: '\"text\"'): {exc}") from None
    if not isinstance(kwargs, dict):
        raise ConfigError("--kwargs must be a JSON object")
    task: Task[Any, Any] = Task(app, definition)
    # Checked against the task's signature like .delay(): a wrong call is refused here, not dead-lettered later.
    print(task.apply(positional, kwargs, queue=args.queue, eta=args.eta, expires=args.expires))
    return EXIT_OK


_CANCELLED_SAYS = {
    Cancelled.REMOVED: "it was queued or waiting: it will never run",
    Cancelled.RUNNING: "a worker holds it: it is stopped within about a second, and never runs again",
    Cancelled.FINISHED: "it had already ended: nothing done",
    Cancelled.UNKNOWN: "no such task, or its record has expired: nothing done",
}


def _cmd_cancel(app: HexQ, args: argparse.Namespace) -> int:
    code = EXIT_OK
    for task_id in args.ids:
        found = app.cancel(task_id)
        print(f"{task_id} {found.value} ({_CANCELLED_SAYS[found]})")
        if found in (Cancelled.FINISHED, Cancelled.UNKNOWN):
            code = EXIT_NOTHING_TO_CANCEL
    return code


def _cmd_dead(app: HexQ, args: argparse.Namespace) -> int:
    if args.action == "list":
        letters = app.broker.dead_letters(args.limit)
        if args.json:
            print(json.dumps([{"id": d.id, "queue": d.queue, "reason": d.reason, "failed_at_ms": d.failed_at_ms,
                               "payload": d.payload, "traceback": d.traceback} for d in letters], indent=2))
        else:
            for d in letters:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.failed_at_ms / 1000))
                print(f"{d.id}  {d.queue}  {when}Z  {d.reason}")
                if args.traceback and d.traceback:
                    print(textwrap.indent(d.traceback.rstrip("\n"), "    "))
            print(f"{len(letters)} dead letter(s) shown")
            if not args.traceback and any(d.traceback for d in letters):
                print("(their tracebacks: hexq dead list --traceback)")
        return EXIT_OK
    if args.action == "requeue":
        count = app.broker.requeue_dead(args.ids or None)
        print(f"requeued {count} dead letter(s)")
        return EXIT_OK
    count = app.broker.purge_dead()
    print(f"deleted {count} dead letter(s)")
    return EXIT_OK


def _cmd_dashboard(app: HexQ, args: argparse.Namespace) -> int:
    from hexq.entrypoints.dashboard.server import serve

    return serve(app, args.bind, args.port, args.token, args.read_only)


def _cmd_migrate_from_wakaq(app: HexQ, args: argparse.Namespace) -> int:
    from redis import RedisError

    from hexq.entrypoints import migrate_wakaq

    if app.is_inline:
        raise ConfigError("migrating needs a real broker: this app uses memory:// (in-process runs)")
    if args.dry_run and args.retry_rejected:
        raise ConfigError("--dry-run and --retry-rejected do not go together")
    client = migrate_wakaq.wakaq_client(app, args.wakaq_url)
    migration = migrate_wakaq.Migration(app, client, args.wakaq_prefix)
    try:
        report = migration.plan() if args.dry_run else migration.run(args.retry_rejected)
        waiting = migration.rejected_waiting()
    except migrate_wakaq.MigrationLockError as exc:
        print(f"hexq: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except RedisError as exc:
        print(f"hexq: WakaQ's Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        client.close()
    migrate_wakaq.print_report(report, args.dry_run)
    if waiting:
        print(f"{waiting} rejected entr{'y waits' if waiting == 1 else 'ies wait'} in "
              f"{args.wakaq_prefix}:migrate:rejected; fix the app (task names, queues), then run again with "
              "--retry-rejected")
    return EXIT_FAILURE if report.rejected else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
