"""The bad-input catalogue (docs/BAD_INPUTS.md): one test per row.

Each test feeds hexq one bad input and checks what it does: a clear error that names the wrong thing, or a
dead letter with the reason; and that no other task is lost and no worker is taken down for good. Rows
that involve a worker use real ``hexq worker`` processes (tests/integration/apps/bad_tasks.py). Most of them
share one worker, ``shared``, with concurrency 1: queues are FIFO, so once a probe task enqueued after the
bad input has run, the bad input has been dealt with.

Every row that involves the broker runs on each broker (``[redis]``, ``[sqlite]``): a raw entry is written
the way a hostile producer would, straight into the broker's storage (``Cluster.push_raw``: HSET + RPUSH,
or an INSERT into the ``tasks`` table), and hexq's state is read through hexq (dead letters, workers,
counts) or ``Cluster.state``. Rows about Redis itself (its password, its absence, maxmemory, PUBLISH on
the channel earlier versions used) are ``redis_only``; SQLite's own bad inputs (a corrupt or foreign file,
a missing or read-only folder, a full disk, a lock held too long, a newer schema) are
tests/unit/test_sqlite_*.py. Rows that never reach a broker (configuration, the ``--app`` option) run once.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import psutil
import pytest
import redis
from redis_server import RedisServer, free_port
from workers import ROOT, Cluster, Proc, wait_for

from hexq import Call, Cancelled, ConfigError, CronTask, HexQ, Queue, SerializationError, UnknownQueueError
from hexq.core.errors import BrokerAuthError, BrokerFullError, CronError, DeadlineError, PayloadTooLargeError
from hexq.core.message import Codec, TaskMessage
from hexq.core.services.sender import TaskArgumentsError
from hexq.core.unique import UniqueKeyError
from tests.integration.broker_state import topology_url, url_for

pytestmark = pytest.mark.integration

BAD_MODULE = "tests.integration.apps.bad_tasks"
BAD_APP = f"{BAD_MODULE}:app"
SIGNING_KEY = "a-signing-key-of-32-characters!!"


# -- helpers -----------------------------------------------------------------------------------------------
class BadCluster(Cluster):
    """``Cluster`` running the misbehaving app instead of ``tasks.py``."""

    def start(self, command: str, *args: str, **env: str) -> Proc:
        log = self.tmp / f"{command}-{len(self.procs)}.log"
        proc = Proc([command, f"--app={BAD_APP}", *args], self.env(**env), log)
        self.procs.append(proc)
        return proc

    def key(self, name: str) -> str:
        """A key of hexq's Redis layout, for the rows about Redis itself."""
        return f"{{{self.prefix}}}:{name}"

    def tasks(self, **env: str) -> ModuleType:
        """bad_tasks.py imported in this process on this cluster's broker, prefix and bookkeeping store."""
        return load_bad_app(self.url, self.prefix, book_url=self.book_url, **env)


def worker_children(worker: Proc) -> list[int]:
    """The worker's child processes, without short-lived helpers: importing croniter runs ``file`` once
    (platform.architecture())."""
    pids = []
    for pid in worker.children():
        try:
            if "hexq.entrypoints.cli" in " ".join(psutil.Process(pid).cmdline()):
                pids.append(pid)
        except psutil.Error:
            pass
    return pids


def load_bad_app(url: str, prefix: str, book_url: str | None = None, **env: str) -> ModuleType:
    """Import bad_tasks.py in this process, configured like a worker started with the same ``env``."""
    names = ("HEXQ_TEST_URL", "HEXQ_TEST_BOOK_URL", "HEXQ_TEST_PREFIX", *env)
    old = {name: os.environ.get(name) for name in names}
    os.environ.update(HEXQ_TEST_URL=url, HEXQ_TEST_BOOK_URL=book_url or url, HEXQ_TEST_PREFIX=prefix, **env)
    sys.modules.pop(BAD_MODULE, None)
    try:
        return importlib.import_module(BAD_MODULE)
    finally:
        sys.modules.pop(BAD_MODULE, None)
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def hexq_cli(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hexq.entrypoints.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def envelope(**fields: Any) -> dict[str, Any]:
    """A valid v1 envelope for ``record``; pass a field as ``None`` to leave it out."""
    document: dict[str, Any] = {"v": 1, "id": uuid.uuid4().hex, "task": "record", "queue": "default",
                                "args": ["raw"], "kwargs": {}, "retries": 0, "enqueued_at": time.time()}
    document.update(fields)
    return {key: value for key, value in document.items() if value is not None}


@attrs.define
class Shared:
    cluster: BadCluster
    worker: Proc
    tasks: ModuleType

    def still_serving(self, tag: str) -> None:
        """A task enqueued now completes, and the worker is up with its one child."""
        assert_still_serving(self.cluster, self.worker, self.tasks, tag)


def assert_still_serving(cluster: BadCluster, worker: Proc, tasks: ModuleType, tag: str, children: int = 1) -> None:
    tasks.record.delay(tag)
    cluster.wait_for_tags(1, timeout=20, suffix=tag)
    assert worker.handle.poll() is None, f"the worker exited:\n{worker.output()[-3000:]}"
    wait_for(lambda: len(worker_children(worker)) == children, 10, f"{children} live child(ren)")
    assert cluster.live_workers(), "the worker stopped sending heartbeats"


def dead_with(cluster: BadCluster, task_id: str, timeout: float = 20) -> dict[str, Any]:
    wait_for(lambda: task_id in cluster.dead(), timeout, f"a dead letter for {task_id}\n{cluster.logs()}")
    letter = cluster.dead()[task_id]
    assert not cluster.state.stored(task_id)  # moved, not copied
    assert task_id not in cluster.in_flight_ids()
    return letter


def dead_by_tag(cluster: BadCluster, tag: str, timeout: float = 20) -> dict[str, Any]:
    """The dead letter of the task whose first argument is ``tag``."""

    def first_arg(payload: str | None) -> Any:
        try:
            document = json.loads(payload or "")
        except ValueError:
            return None
        args = document.get("args") if isinstance(document, dict) else None
        return args[0] if isinstance(args, list) and args else None

    def find() -> dict[str, Any] | None:
        return next((d for d in cluster.dead().values() if first_arg(d["payload"]) == tag), None)

    wait_for(lambda: find() is not None, timeout, f"a dead letter for {tag}\n{cluster.logs()}")
    letter = find()
    assert letter is not None
    return letter


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(broker_kind: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Shared]:
    """One worker (one child) for every row that needs no special configuration, one per broker kind."""
    tmp = tmp_path_factory.mktemp(f"bad-{broker_kind}")
    url = url_for(broker_kind, redis_server.url, tmp, lambda kind: topology_url(request, kind))
    cluster = BadCluster(url, f"test-bad-{uuid.uuid4().hex[:10]}", tmp, book_url=redis_server.url)
    try:
        worker = cluster.worker("--concurrency=1")
        yield Shared(cluster, worker, cluster.tasks())
    finally:
        cluster.close()
        cluster.wipe()


@pytest.fixture
def cluster(broker_url: str, redis_url: str, hexq_prefix: str, tmp_path: Path) -> Iterator[BadCluster]:
    """Processes of the test's own, on the broker under test and the test's own prefix."""
    running = BadCluster(broker_url, hexq_prefix, tmp_path, book_url=redis_url)
    try:
        yield running
    finally:
        running.close()
        running.wipe()


# -- payloads found in the broker --------------------------------------------------------------------------
def test_malformed_json_payload_is_dead_lettered(shared: Shared) -> None:
    task_id = shared.cluster.push_raw("{this is not json")
    shared.still_serving("after-malformed-json")
    letter = dead_with(shared.cluster, task_id)
    assert letter["reason"].startswith("MalformedPayloadError: not valid JSON")
    assert letter["payload"] == "{this is not json"  # kept for inspection
    listed = hexq_cli(shared.cluster.env(), "dead", "list", "--json", "--limit=1000", f"--app={BAD_APP}")
    assert listed.returncode == 0, listed.stderr
    assert task_id in {d["id"] for d in json.loads(listed.stdout)}
    assert f"task {task_id} from queue default sent to the dead-letter list" in shared.worker.output()


def test_non_utf8_payload_is_dead_lettered(cluster: BadCluster) -> None:
    # Fixed in fefdba2: it used to kill the child in reserve and crash-loop the worker, starving the queue.
    task_id = cluster.push_raw(b"\xff\xfe not utf-8")  # SQLite: a BLOB where the payload's text belongs
    worker = cluster.worker("--concurrency=1")
    tasks = cluster.tasks()
    assert_still_serving(cluster, worker, tasks, "after-non-utf8")
    letter = dead_with(cluster, task_id)
    assert letter["reason"] == ("MalformedPayloadError: payload is not UTF-8: 'utf-8' codec can't decode byte 0xff "
                                "in position 0: invalid start byte")
    assert letter["payload"] == "\\xff\\xfe not utf-8"  # readable, with the bad bytes escaped
    assert "worker child crashed" not in worker.output()


def test_payload_missing_fields_is_dead_lettered(shared: Shared) -> None:
    task_id = shared.cluster.push_raw(json.dumps(envelope(task=None, args=None)))
    shared.still_serving("after-missing-fields")
    letter = dead_with(shared.cluster, task_id)
    assert letter["reason"] == "MalformedPayloadError: envelope is missing the field 'task'"


def test_payload_with_wrong_field_types_is_dead_lettered(shared: Shared) -> None:
    wrong = {
        "args": envelope(args="raw"),
        "kwargs": envelope(kwargs=["raw"]),
        "retries": envelope(retries="0"),
        "broadcast": envelope(broadcast="yes"),
        "whole envelope": ["v", 1],
    }
    ids = {what: shared.cluster.push_raw(json.dumps(document)) for what, document in wrong.items()}
    shared.still_serving("after-wrong-types")
    reasons = {what: dead_with(shared.cluster, task_id)["reason"] for what, task_id in ids.items()}
    assert reasons["args"] == "MalformedPayloadError: envelope field 'args' has the wrong type: 'raw'"
    assert reasons["kwargs"] == "MalformedPayloadError: envelope field 'kwargs' has the wrong type: ['raw']"
    assert reasons["retries"] == "MalformedPayloadError: envelope field 'retries' has the wrong type: '0'"
    assert "'broadcast' must be true or false" in reasons["broadcast"]
    assert reasons["whole envelope"] == "MalformedPayloadError: envelope must be a JSON object, got list"
    assert "raw" not in shared.cluster.tags()  # none of them ran


def test_unknown_task_name_is_dead_lettered(shared: Shared) -> None:
    task_id = shared.cluster.push_raw(json.dumps(envelope(task="no_such_task")))
    shared.still_serving("after-unknown-task")
    reason = dead_with(shared.cluster, task_id)["reason"]
    assert reason.startswith("UnknownTaskError: unknown task 'no_such_task'")
    assert "registered: " in reason and "record" in reason  # names what does exist
    assert "import the module that defines it" in reason


def test_a_malformed_trace_context_is_ignored_with_a_warning(shared: Shared) -> None:
    document = envelope(args=["badly-traced"], trace=["not", "a", "context"])
    task_id = shared.cluster.push_raw(json.dumps(document))
    shared.cluster.wait_for_tags(1, timeout=20, suffix="badly-traced")  # it ran, and only once
    shared.still_serving("after-bad-trace")
    assert shared.cluster.tags().count("badly-traced") == 1
    assert task_id not in shared.cluster.dead()
    assert (f"task {document['id']}: ignoring the trace context in its envelope (expected an object of strings, "
            "got list); it runs outside its producer's trace") in shared.worker.output()


def test_newer_envelope_version_is_dead_lettered(shared: Shared) -> None:
    task_id = shared.cluster.push_raw(json.dumps(envelope(v=2)))
    shared.still_serving("after-v2")
    reason = dead_with(shared.cluster, task_id)["reason"]
    assert reason == ("MalformedPayloadError: envelope version 2 is not supported by this hexq (speaks 1); "
                      "upgrade the workers before the producers")


def test_queue_entry_without_payload_is_skipped_and_acknowledged(shared: Shared) -> None:
    # Redis: an id on the queue list, nothing in {p}:tasks. SQLite: a queued row whose payload is NULL (what a
    # late ack leaves of a task that went back to its queue).
    task_id = shared.cluster.push_raw(None)
    shared.still_serving("after-no-payload")
    wait_for(lambda: f"skipping task {task_id}: no stored payload" in shared.worker.output(), 10,
             "the skip log line")
    # Acknowledged, not redelivered and not dead-lettered: nothing of it is left anywhere.
    wait_for(lambda: task_id not in shared.cluster.in_flight_ids(), 10, "its ack")
    wait_for(lambda: not shared.cluster.state.stored(task_id), 10, "nothing of it left")
    assert task_id not in shared.cluster.dead()


def test_unknown_value_tag_is_dead_lettered_never_unpickled(shared: Shared) -> None:
    evil = {"__hexq__": "pickle", "v": "gASVIAAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAR0cnVllIWUUpQu"}
    task_id = shared.cluster.push_raw(json.dumps(envelope(args=[evil])))
    shared.still_serving("after-unknown-tag")
    reason = dead_with(shared.cluster, task_id)["reason"]
    assert reason == "MalformedPayloadError: unknown value tag 'pickle'; was it written by a newer hexq?"


def test_oversized_payload_already_in_the_queue_is_dead_lettered(shared: Shared) -> None:
    limit = shared.tasks.MAX_PAYLOAD_BYTES
    task_id = shared.cluster.push_raw(json.dumps(envelope(args=["x" * (2 * limit + 10)])))
    shared.still_serving("after-oversized-in-queue")
    reason = dead_with(shared.cluster, task_id)["reason"]
    assert reason.startswith("MalformedPayloadError: payload of ")
    assert reason.endswith("bytes is over twice max_payload_bytes")


def test_arguments_not_matching_the_signature_are_dead_lettered(shared: Shared) -> None:
    # .delay() and `hexq enqueue` refuse such a call (row 54); one sent without that check (a hand-built Call
    # passed to enqueue_many, or a producer of an older hexq) reaches the worker, whose call raises TypeError.
    record = shared.tasks.record
    (task_id,) = shared.tasks.app.enqueue_many([Call(record, ("sig-mismatch", "one too many"), {})])
    shared.still_serving("after-signature-mismatch")
    reason = dead_with(shared.cluster, task_id)["reason"]
    assert reason == "raised TypeError: record() takes 1 positional argument but 2 were given"


# -- producer-side mistakes (no worker involved) -----------------------------------------------------------
def test_arguments_not_matching_the_signature_are_refused_at_delay(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    kept = bad_app.record.delay("kept")
    with pytest.raises(TypeError) as caught:
        bad_app.record.delay("a", "one too many")
    assert isinstance(caught.value, TaskArgumentsError)
    assert str(caught.value) == (
        "record() takes 1 positional argument but 2 were given (hexq checked the call to task 'record' against its "
        "signature record(tag); nothing was enqueued)")
    with pytest.raises(TaskArgumentsError, match=r"^record\(\) got an unexpected keyword argument 'tga' "):
        bad_app.record.delay(tga="typo")
    with pytest.raises(TaskArgumentsError, match=r"^record\(\) missing a required argument: 'tag' "):
        bad_app.record.delay_many([("fine",), ()])
    assert cluster.state.queued_ids("default") == [kept]  # nothing more stored, nothing lost
    assert {task_id for where, task_id in cluster.state.footprint() if where != "key"} == {kept}


def test_a_deadline_already_past_at_delay_is_refused(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    kept = bad_app.record.delay("kept")
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    with pytest.raises(DeadlineError) as caught:
        bad_app.record.options(expires=past).delay("too-late")
    assert caught.value.task == "record" and caught.value.deadline == past.timestamp()
    assert str(caught.value).startswith(f"task 'record': its deadline {past.isoformat(timespec='milliseconds')} "
                                        "has already passed (")
    assert str(caught.value).endswith("s ago); nothing was enqueued (give a later expires=, or none)")
    with pytest.raises(DeadlineError, match=r"^task 'record': its eta .* is after its deadline .*, so it would "
                                            r"never run; nothing was enqueued"):
        bad_app.record.options(eta=60, expires=30).delay("never")
    assert cluster.state.queued_ids("default") == [kept]  # nothing more stored, nothing lost
    assert {task_id for where, task_id in cluster.state.footprint() if where != "key"} == {kept}


def test_an_invalid_expires_value_is_refused(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    kept = bad_app.record.delay("kept")
    for value, message in ((0, "expires must be a positive, finite duration, got 0"),
                           ("5m", "expires must be seconds (int/float) or a timedelta, got '5m'")):
        with pytest.raises(ConfigError) as caught:
            bad_app.record.options(expires=value).delay("x")
        assert str(caught.value).startswith(message)
    with pytest.raises(ConfigError) as declared:
        bad_app.app.task(expires=datetime(2030, 1, 1))(lambda: None)
    assert str(declared.value) == (
        "task '<lambda>' expires must be a duration (seconds or a timedelta, counted from each .delay()), got the "
        "datetime datetime.datetime(2030, 1, 1, 0, 0): give a moment to one call with .options(expires=...)")
    assert cluster.state.queued_ids("default") == [kept]


def test_a_unique_key_that_is_not_json_is_refused(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    kept = bad_app.unique_record.delay("kept")
    with pytest.raises(UniqueKeyError) as caught:
        bad_app.unique_record.options(unique_key={1, 2}).delay("a")
    assert str(caught.value) == (
        "task 'unique_record': unique_key {1, 2} cannot be encoded as JSON (type builtins.set is not supported); "
        "pass a str, a number, or a list or dict of those (nothing was enqueued)")
    assert isinstance(caught.value, TypeError)
    with pytest.raises(UniqueKeyError, match=r"^task 'unique_record': unique_key \[<object object at .*>\] cannot "
                                             r"be encoded as JSON \(type builtins.object is not supported\)"):
        bad_app.unique_record.delay_many([bad_app.unique_record.options(unique_key=[object()]).bind("b"),
                                          bad_app.unique_record.bind("c")])
    with pytest.raises(UniqueKeyError) as caught:
        bad_app.record.options(unique_key="x")
    assert str(caught.value) == (
        "task 'record' was given unique_key='x' but is not declared unique: declare it with "
        "@app.task(unique=timedelta(...)) (nothing was enqueued)")
    assert {task_id for where, task_id in cluster.state.footprint() if where != "key"} == {kept}


def test_an_invalid_unique_window_is_refused() -> None:
    app = HexQ(url="memory://")
    for window in (0, -5, 0.0001, timedelta(days=400), float("nan")):
        with pytest.raises(ConfigError, match=r"^task 'job': unique window must be from 1 ms to 366 days, got "):
            app.task(unique=window, name="job")(lambda: None)
    for window in (True, "10m", [60]):
        with pytest.raises(ConfigError, match=r"^task 'job': unique must be a timedelta or a number of seconds "
                                              r"\(how long at most an identical task is refused while this one "
                                              r"waits or runs\), got .*; for example unique=timedelta\(minutes=10\)$"):
            app.task(unique=window, name="job")(lambda: None)
def test_cancelling_an_unknown_id_is_a_clear_no_op(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    kept = bad_app.record.delay("kept")
    assert bad_app.app.cancel("no-such-task") is Cancelled.UNKNOWN
    done = hexq_cli(cluster.env(), "cancel", f"--app={BAD_APP}", "no-such-task", kept)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [
        "no-such-task unknown (no such task, or its record has expired: nothing done)",
        f"{kept} cancelled (it was queued or waiting: it will never run)"]
    assert {task_id for where, task_id in cluster.state.footprint() if where != "key"} == set()
    again = hexq_cli(cluster.env(), "cancel", f"--app={BAD_APP}", kept)  # its "cancelled" outcome is kept
    assert (again.returncode, again.stdout) == (3, f"{kept} finished (it had already ended: nothing done)\n")


def test_huge_payload_is_refused_at_delay(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    kept = bad_app.record.delay("kept")
    with pytest.raises(PayloadTooLargeError) as caught:
        bad_app.record.delay("x" * (bad_app.MAX_PAYLOAD_BYTES + 1))
    message = str(caught.value)
    assert message.startswith("task 'record': encoded payload is ")
    assert f"over the limit of {bad_app.MAX_PAYLOAD_BYTES} bytes" in message
    assert "max_payload_bytes" in message  # says how to fix it
    assert cluster.state.queued_ids("default") == [kept]  # nothing more stored, nothing lost
    assert {task_id for where, task_id in cluster.state.footprint() if where != "key"} == {kept}
    assert cluster.state.stored_many([kept]) == [True]


def test_non_json_arguments_are_refused_at_delay(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    with pytest.raises(SerializationError) as as_set:
        bad_app.record.delay({1, 2})
    assert str(as_set.value).startswith("task 'record': argument args[0] cannot be sent as JSON "
                                        "(type builtins.set is not supported)")
    with pytest.raises(SerializationError) as as_object:
        bad_app.record.delay(tag=object())
    assert str(as_object.value).startswith("task 'record': argument tag cannot be sent as JSON "
                                           "(type builtins.object is not supported)")
    with pytest.raises(SerializationError) as nested:
        bad_app.record.delay({"deep": [1, {"deeper": {3}}]})
    assert "argument args[0]['deep'][1]['deeper']" in str(nested.value)
    with pytest.raises(SerializationError):  # one bad call in a batch: nothing of the batch is stored
        bad_app.record.delay_many([("a",), ("b",), (object(),)])
    assert cluster.state.footprint() == []


def test_eta_in_the_past_runs_now(shared: Shared) -> None:
    enqueued = time.time()
    shared.tasks.record.delay("eta-past", eta=datetime.now(timezone.utc) - timedelta(hours=1))
    shared.cluster.wait_for_tags(1, timeout=10, suffix="eta-past")
    ran = next(r["at"] for r in shared.cluster.results() if r["tag"] == "eta-past")
    assert ran - enqueued < 2.0
    shared.still_serving("after-eta-past")


def test_eta_far_in_the_future_waits_and_shows_in_info(shared: Shared) -> None:
    cluster = shared.cluster
    task_id = shared.tasks.record.delay("eta-far", eta=timedelta(days=365))
    try:
        shared.still_serving("after-eta-far")  # the worker is not stuck waiting for it
        assert "eta-far" not in cluster.tags()
        info = hexq_cli(cluster.env(), "info", "--json", f"--app={BAD_APP}")
        assert info.returncode == 0, info.stderr
        (queue,) = json.loads(info.stdout)["queues"]
        assert (queue["name"], queue["eta"], queue["pending"]) == ("default", 1, 0)
        due_ms = cluster.state.eta_ms(task_id)
        assert due_ms is not None and due_ms / 1000 - time.time() > 364 * 86400
    finally:
        # Nothing else is queued now (the probe has run): hexq's own purge takes the waiting task away.
        cluster.inspect.purge_queue("default")


def test_eta_beyond_int64_milliseconds(shared: Shared) -> None:
    # Epoch nanoseconds passed where seconds from now belong: once accepted, its due time overflowed in
    # Redis and made idle children spin. Now refused at .delay(), naming the eta and the fix.
    wait_for(lambda: not shared.cluster.in_flight_ids(), 10, "the last probe's ack")  # a still store
    before = shared.cluster.state.footprint()
    with pytest.raises(ConfigError, match="more than 100 years away: a number eta means seconds from now"):
        shared.tasks.record.delay("eta-nanoseconds", eta=time.time_ns())
    assert shared.cluster.state.footprint() == before  # nothing stored
    shared.still_serving("after-eta-nanoseconds")


def test_naive_eta_means_utc(shared: Shared) -> None:
    cluster = shared.cluster
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"  # local time 9 hours ahead of UTC: a naive-as-local eta would be past
    time.tzset()
    try:
        due = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        naive = due.replace(tzinfo=None)
        naive_id = shared.tasks.record.delay("eta-naive", eta=naive)
        aware_id = shared.tasks.record.delay("eta-aware", eta=due)
        assert naive.timestamp() != due.timestamp()  # Python itself reads naive as local time
    finally:
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    scores = [cluster.state.eta_ms(i) for i in (naive_id, aware_id)]
    assert scores == [math.ceil(due.timestamp() * 1000)] * 2  # rounded up: never visible early
    cluster.wait_for_tags(1, timeout=10, suffix="eta-naive")
    cluster.wait_for_tags(1, timeout=10, suffix="eta-aware")
    started = {r["tag"]: r["at"] for r in cluster.results()}
    assert started["eta-naive"] >= due.timestamp()  # not early
    assert started["eta-naive"] - due.timestamp() < 2.0  # and not 9 hours late
    shared.still_serving("after-eta-naive")


def test_unknown_queue_at_delay(cluster: BadCluster) -> None:
    bad_app = cluster.tasks()
    with pytest.raises(UnknownQueueError) as caught:
        bad_app.record.delay("x", queue="nope")
    assert str(caught.value) == ("unknown queue 'nope': declare it in HexQ(queues=[...]); known queues are "
                                 "['default']")
    assert cluster.state.footprint() == []


def test_queue_names_with_odd_characters() -> None:
    for name in ("a:b", "a b", "a{b}", "", "x\n"):
        with pytest.raises(ConfigError) as caught:
            Queue(name)
        assert str(caught.value) == (f"invalid queue name {name!r}: use 1-200 characters from letters, "
                                     "digits, '_', '.', '-'")
    with pytest.raises(ConfigError, match="invalid queue name 'a:b'"):
        HexQ(queues=["default", (1, "a:b")], url="memory://")


def test_invalid_cron_expression() -> None:
    with pytest.raises(CronError) as fields:
        CronTask("* * *", "record")
    assert str(fields.value) == ("invalid cron '* * *': expected 5 fields (min hour day month weekday) or 6 "
                                 "with seconds last")
    with pytest.raises(CronError, match=r"invalid cron '61 \* \* \* \*': croniter cannot parse it"):
        CronTask("61 * * * *", "record")
    with pytest.raises(ConfigError, match="unknown timezone 'Mars/Olympus'"):
        HexQ(url="memory://", schedules=[CronTask("0 9 * * *", "record", timezone="Mars/Olympus")])


def test_cron_task_naming_an_unknown_task_stops_the_scheduler(cluster: BadCluster) -> None:
    # Fixed in fefdba2: the scheduler used to exit 1 ("hexq: UnknownTaskError: ...").
    scheduler = cluster.start("scheduler", HEXQ_TEST_BAD_SCHEDULE="1")
    assert scheduler.wait(20) == 2
    output = scheduler.output()
    assert output.startswith("hexq: error: unknown task 'no_such_task': no function with that name is registered")
    assert "(registered: awaits_a_cancelled_future, exit_process, " in output
    assert "import the module that defines it" in output
    assert "Traceback" not in output
    assert cluster.state.cron_claims() == {}  # nothing fired


def test_concurrency_expression_cannot_run_code() -> None:
    marker = Path(f"/tmp/hexq-pwned-{uuid.uuid4().hex[:8]}")  # short: the expression must stay under 100 chars
    attack = f"__import__('os').system('touch {marker}')"
    for option in ("concurrency", "async_concurrency"):
        with pytest.raises(ConfigError) as caught:
            HexQ(url="memory://", **{option: attack})
        assert str(caught.value).startswith(f"{option} ")
        assert "may only use numbers, 'cores', + - * / // and parentheses" in str(caught.value)
    assert not marker.exists()
    assert HexQ(url="memory://", concurrency="cores*2").concurrency == 2 * (os.cpu_count() or 1)


def test_hard_timeout_not_above_soft_timeout() -> None:
    with pytest.raises(ConfigError) as app_level:
        HexQ(url="memory://", soft_timeout=10, hard_timeout=5)
    assert str(app_level.value) == "HexQ: hard_timeout (5.0s) must be greater than soft_timeout (10.0s)"
    with pytest.raises(ConfigError, match=r"queue 'q': hard_timeout \(3.0s\) must be greater"):
        Queue("q", soft_timeout=3, hard_timeout=3)
    app = HexQ(url="memory://")
    with pytest.raises(ConfigError, match=r"task 'job': hard_timeout \(1.0s\) must be greater"):
        @app.task(soft_timeout=timedelta(seconds=2), hard_timeout=1)
        def job() -> None: ...


def test_a_timeout_of_zero_is_refused_at_every_level() -> None:
    for make in (lambda: HexQ(url="memory://", soft_timeout=0),
                 lambda: Queue("q", hard_timeout=timedelta(0))):
        with pytest.raises(ConfigError, match="use None for no timeout"):
            make()
    app = HexQ(url="memory://")
    with pytest.raises(ConfigError, match="use None for no timeout"):
        @app.task(soft_timeout=0)
        def job() -> None: ...


def test_a_task_soft_timeout_not_below_the_hard_timeout_that_applies_is_refused() -> None:
    app = HexQ(url="memory://", queues=[Queue("slow", hard_timeout=60), "default"])
    with pytest.raises(ConfigError, match=r"task 'job': soft_timeout 90s \(from the task\) is not below "
                                          r"hard_timeout 60s \(from queue 'slow'\)"):
        @app.task(queue="slow", soft_timeout=90)
        def job() -> None: ...


def test_a_task_id_longer_than_a_worker_can_track_is_dead_lettered_unrun(shared: Shared) -> None:
    long_id = "raw-" + "x" * 300
    shared.cluster.push_raw(json.dumps(envelope(args=["too-long-id"])), task_id=long_id)
    shared.still_serving("after-long-id")
    letter = dead_with(shared.cluster, long_id)
    assert letter["reason"] == "task id is 304 bytes long in UTF-8, over the 255 a worker can track"
    assert "too-long-id" not in shared.cluster.tags()


def test_an_async_tasks_own_cancelled_error_is_a_failure_not_a_soft_timeout(shared: Shared) -> None:
    shared.tasks.awaits_a_cancelled_future.delay("own-cancel")
    letter = dead_by_tag(shared.cluster, "own-cancel")
    assert letter["reason"].startswith("raised CancelledError")
    assert "soft timeout" not in letter["reason"]
    assert shared.cluster.tags().count("own-cancel:start") == 1  # not retried: no retry_on
    shared.still_serving("after-own-cancel")


# -- the broker itself -------------------------------------------------------------------------------------
# Redis only: a Redis server's password, its absence and its memory limit. An sqlite: URL takes no password
# (a file is protected by its permissions); a missing folder, a read-only one, a file that is not a database
# and a full disk are tests/unit/test_sqlite_errors.py and test_sqlite_full_disk.py.
@pytest.mark.redis_only
def test_wrong_redis_password(private_redis: Callable[..., RedisServer], hexq_prefix: str) -> None:
    """Redis only: a Redis server refusing the password (SQLite has none)."""
    server = private_redis(password="right-secret-pw")
    url = f"redis://:wrong-secret-pw@127.0.0.1:{server.port}/0"
    app = HexQ(url=url, prefix=hexq_prefix)

    @app.task
    def job() -> None: ...

    with pytest.raises(BrokerAuthError) as caught:
        job.delay()
    message = str(caught.value)
    assert message.startswith(f"Redis at redis://:***@127.0.0.1:{server.port}/0 refused hexq's credentials")
    assert "check the password and the ACL user in the broker URL" in message
    assert "secret-pw" not in message and "secret-pw" not in repr(app)
    env = dict(os.environ, HEXQ_TEST_URL=url, HEXQ_TEST_PREFIX=hexq_prefix)
    info = hexq_cli(env, "info", f"--app={BAD_APP}")
    assert info.returncode == 1
    assert info.stderr.startswith("hexq: BrokerAuthError: Redis at redis://:***@")
    assert "secret-pw" not in info.stdout + info.stderr


@pytest.mark.redis_only
def test_worker_with_a_wrong_redis_password_exits_with_a_clear_message(
        private_redis: Callable[..., RedisServer], hexq_prefix: str, tmp_path: Path) -> None:
    """Redis only: a Redis server refusing the password (SQLite has none)."""
    # Fixed in fefdba2: the worker used to start and crash-loop its children (~4 deaths a second).
    server = private_redis(password="right-secret-pw")
    cluster = BadCluster(f"redis://:wrong-secret-pw@127.0.0.1:{server.port}/0", hexq_prefix, tmp_path)
    try:
        worker = cluster.start("worker", "--concurrency=1")  # not .worker(): its heartbeat check needs Redis
        assert worker.wait(20) == 1  # restarting cannot fix a password: it refuses to start
        output = worker.output()
        assert output.startswith(f"hexq: BrokerAuthError: Redis at redis://:***@127.0.0.1:{server.port}/0 "
                                 "refused hexq's credentials")
        assert "secret-pw" not in output
        assert "worker child crashed" not in output and "Traceback" not in output
    finally:
        cluster.close()


@pytest.mark.redis_only
def test_unreachable_redis_at_start_up(private_redis: Callable[..., RedisServer], hexq_prefix: str,
                                       tmp_path: Path) -> None:
    """Redis only: no server listening yet (an SQLite database is a file, created on first use)."""
    port = free_port()
    cluster = BadCluster(f"redis://127.0.0.1:{port}/0", hexq_prefix, tmp_path)
    try:
        info = hexq_cli(cluster.env(), "info", f"--app={BAD_APP}")
        assert info.returncode == 1
        assert info.stderr.startswith(f"hexq: broker unavailable: cannot use Redis at redis://127.0.0.1:{port}/0")
        worker = cluster.start("worker", "--log-level=DEBUG", "--concurrency=1")
        wait_for(lambda: len(worker_children(worker)) == 1, 10, "the worker's child")
        processes = [psutil.Process(worker.pid), psutil.Process(worker_children(worker)[0])]
        time.sleep(0.5)
        before = [sum(p.cpu_times()[:2]) for p in processes]
        time.sleep(2.0)
        used = [sum(p.cpu_times()[:2]) - b for p, b in zip(processes, before, strict=True)]
        assert sum(used) / 2.0 < 0.25, f"CPU seconds per second while Redis is down: {used}"
        assert worker.handle.poll() is None and worker_children(worker) == [processes[1].pid]  # no crash loop
        output = worker.output()
        assert "cannot use the broker (cannot use Redis at" in output and "retrying quietly" in output
        # Redis comes up: the same worker, with the same child, serves tasks.
        server = private_redis(port=port)
        cluster.book = server.client()
        tasks = cluster.tasks()
        tasks.record.delay("after-outage")
        cluster.wait_for_tags(1, timeout=15, suffix="after-outage")
        assert worker_children(worker) == [processes[1].pid]
    finally:
        cluster.close()


@pytest.mark.redis_only
def test_redis_maxmemory_reached_on_enqueue(private_redis: Callable[..., RedisServer], hexq_prefix: str,
                                           tmp_path: Path) -> None:
    """Redis only: Redis's maxmemory (SQLite's full disk is tests/unit/test_sqlite_full_disk.py)."""
    server = private_redis(args=["--maxmemory-policy", "noeviction"])
    cluster = BadCluster(server.url, hexq_prefix, tmp_path)
    try:
        tasks = cluster.tasks()
        kept = [tasks.record.delay(f"kept{n}") for n in range(5)]
        used = int(cluster.redis.info("memory")["used_memory"])
        cluster.redis.config_set("maxmemory", used + 1_000_000)
        filler = "f" * 40_000
        stored = list(kept)
        with pytest.raises(BrokerFullError) as caught:
            for _ in range(1000):
                stored.append(tasks.record.delay(filler))
        assert str(caught.value).startswith(f"Redis at {server.url} is out of memory and refused the write")
        assert "nothing was stored" in str(caught.value) and "raise maxmemory" in str(caught.value)
        assert 5 < len(stored) < 1000
        # The refused task left nothing behind; everything stored before is intact.
        assert sorted(cluster.redis.hkeys(cluster.key("tasks"))) == sorted(stored)
        assert cluster.redis.lrange(cluster.key("q:default"), 0, -1) == stored
        cluster.redis.config_set("maxmemory", 0)
        cluster.worker("--concurrency=1")
        cluster.wait_for_tags(len(stored), timeout=30)
        assert sorted(t for t in cluster.tags() if t.startswith("kept")) == [f"kept{n}" for n in range(5)]
    finally:
        cluster.close()


# -- tasks that misbehave ----------------------------------------------------------------------------------
def test_task_calling_os_exit_is_dead_lettered_after_max_deliveries(shared: Shared) -> None:
    child_before = worker_children(shared.worker)
    shared.tasks.exit_process.delay("os-exit", 0)  # exit code 0: must not pass for a clean exit
    shared.still_serving("after-os-exit")
    letter = dead_by_tag(shared.cluster, "os-exit")
    assert letter["reason"] == "worker died while running it 2 times (max_deliveries=2)"
    assert shared.cluster.tags().count("os-exit:start") == 2
    assert worker_children(shared.worker) != child_before  # replaced, twice
    assert "died (exit code 0) while running" in shared.worker.output()


def assert_dead_lettered_without_restart(shared: Shared, task: str, reason: str) -> None:
    child_before = worker_children(shared.worker)
    getattr(shared.tasks, task).delay(task)
    shared.still_serving(f"after-{task}")
    assert dead_by_tag(shared.cluster, task)["reason"] == reason
    assert shared.cluster.tags().count(f"{task}:start") == 1  # not retried
    assert worker_children(shared.worker) == child_before  # the child was not even restarted


def test_task_raising_system_exit_is_dead_lettered(shared: Shared) -> None:
    assert_dead_lettered_without_restart(shared, "raise_system_exit", "raised SystemExit: 3")


def test_task_raising_keyboard_interrupt_is_dead_lettered(shared: Shared) -> None:
    assert_dead_lettered_without_restart(shared, "raise_keyboard_interrupt",
                                         "raised KeyboardInterrupt: pressed by a task")


def test_task_raising_a_base_exception_subclass_is_dead_lettered(shared: Shared) -> None:
    assert_dead_lettered_without_restart(shared, "raise_base_exception", "raised Doomsday: the end")


def test_task_recursing_forever_is_dead_lettered(shared: Shared) -> None:
    child_before = worker_children(shared.worker)
    shared.tasks.recurse_forever.delay("recursion")
    shared.still_serving("after-recursion")
    assert dead_by_tag(shared.cluster, "recursion")["reason"] == (
        "raised RecursionError: maximum recursion depth exceeded")
    assert worker_children(shared.worker) == child_before


def test_task_raising_an_unprintable_exception_is_dead_lettered(shared: Shared) -> None:
    # Fixed in fefdba2: str(error) raising in the failure path used to kill the child, and the task reran forever.
    child_before = worker_children(shared.worker)
    shared.tasks.raise_unprintable.delay("unprintable")
    shared.still_serving("after-unprintable")
    letter = dead_by_tag(shared.cluster, "unprintable")
    assert letter["reason"] == "raised Unprintable: <unprintable Unprintable>"
    assert shared.cluster.tags().count("unprintable:start") == 1
    assert worker_children(shared.worker) == child_before


def test_nan_or_infinity_in_a_payload_is_dead_lettered(shared: Shared) -> None:
    # Fixed in fefdba2: the decoder accepted what the encoder refuses; a retry then re-encoded the arguments,
    # SerializationError killed the child, and the task reran forever.
    ids = {constant: shared.cluster.push_raw(json.dumps(envelope(task="fail_and_retry", args=["nan", value])))
           for constant, value in (("NaN", float("nan")), ("Infinity", float("inf")))}
    shared.still_serving("after-nan")
    for constant, task_id in ids.items():
        assert dead_with(shared.cluster, task_id)["reason"] == (
            f"MalformedPayloadError: {constant} is not valid JSON (hexq never writes it)")
    assert "nan:start" not in shared.cluster.tags()  # refused before it ran


def test_sync_task_calling_asyncio_run(shared: Shared) -> None:
    # Fixed in 7e8cc29: sync tasks ran on the child's running loop, so asyncio.run() raised RuntimeError.
    task_id = shared.tasks.sync_calls_asyncio_run.delay("asyncio-run")
    shared.still_serving("after-asyncio-run")
    assert task_id not in shared.cluster.dead(), shared.cluster.dead().get(task_id, {}).get("reason")
    assert "asyncio-run" in shared.cluster.tags()


def test_task_leaking_memory_is_recycled_by_max_tasks_per_worker(cluster: BadCluster) -> None:
    worker = cluster.worker("--concurrency=1", HEXQ_TEST_MAX_TASKS="2")
    tasks = cluster.tasks()
    for n in range(4):
        tasks.leak.delay(f"leak{n}")
    cluster.wait_for_tags(4, timeout=30, suffix="")
    runs = [r for r in cluster.results() if r["tag"].startswith("leak")]
    assert [r["held"] for r in runs] == [1, 2, 1, 2]  # never more than two leaks in one process
    assert runs[0]["pid"] == runs[1]["pid"] != runs[2]["pid"] == runs[3]["pid"]
    assert runs[1]["rss"] - runs[0]["rss"] > 15 * 1024 * 1024  # the leak is real
    assert_still_serving(cluster, worker, tasks, "after-leak")


def test_forged_or_unsigned_payload_with_a_signing_key(cluster: BadCluster) -> None:
    worker = cluster.worker("--concurrency=1", HEXQ_TEST_SIGNING_KEY=SIGNING_KEY)
    tasks = cluster.tasks(HEXQ_TEST_SIGNING_KEY=SIGNING_KEY)

    def message(tag: str) -> TaskMessage:
        return TaskMessage(uuid.uuid4().hex, "record", "default", (tag,), {}, 0, time.time())

    unsigned = cluster.push_raw(Codec(None).encode(message("unsigned-ran")))
    forged = cluster.push_raw(Codec(b"someone-else's-key-0123456789").encode(message("forged-ran")))
    assert_still_serving(cluster, worker, tasks, "after-signed")  # hexq's own, signed, runs
    assert dead_with(cluster, unsigned)["reason"] == (
        "SignatureError: payload is not signed, but this app requires signed payloads")
    assert dead_with(cluster, forged)["reason"] == (
        "SignatureError: payload signature does not match: forged, or signed with another key")
    assert not {"unsigned-ran", "forged-ran"} & set(cluster.tags())


@pytest.mark.redis_only
def test_messages_published_on_the_old_broadcast_channel_reach_nobody(cluster: BadCluster) -> None:
    """Redis only: foreign messages PUBLISHed on ``{p}:broadcast``, the channel of earlier versions, non-UTF-8
    bytes included. hexq subscribes to no channel any more (a broadcast is copied into each live worker's
    private queue), so nothing receives them; a malformed payload in that queue is a bad task like any other
    (rows 1-4: dead-lettered by the child). On SQLite there is no channel at all."""
    # Fixed in 7e8cc29, when workers subscribed: non-UTF-8 bytes broke the parent's subscription for good.
    worker = cluster.worker("--concurrency=1")
    tasks = cluster.tasks()
    wait_for(lambda: cluster.redis.zcard(cluster.key("workers")) == 1, 10, "the worker's heartbeat")
    raw = redis.Redis.from_url(cluster.url)  # no decode_responses: publishes the bytes as they are
    assert cluster.redis.publish(cluster.key("broadcast"), "{not json") == 0
    assert raw.publish(cluster.key("broadcast"), b"\xff\xfe not utf-8") == 0
    raw.close()
    assert tasks.record.broadcast("broadcast-after") == 1
    cluster.wait_for_tags(1, timeout=5, suffix="broadcast-after")
    assert "malformed" not in worker.output() and "worker chores failed" not in worker.output()
    assert_still_serving(cluster, worker, tasks, "after-bad-broadcast")


# -- the command line --------------------------------------------------------------------------------------
# Run once: the --app option is refused before any broker is touched.
def assert_app_refused(spec: str, message: str, redis_url: str, prefix: str) -> None:
    env = dict(os.environ, HEXQ_TEST_URL=redis_url, HEXQ_TEST_PREFIX=prefix)
    result = hexq_cli(env, "worker", f"--app={spec}")
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_app_option_naming_a_missing_module(redis_url: str, hexq_prefix: str) -> None:
    assert_app_refused("no_such_module_xyz:app",
                       "hexq: error: --app 'no_such_module_xyz:app': no module named 'no_such_module_xyz'",
                       redis_url, hexq_prefix)


def test_app_option_naming_a_missing_attribute(redis_url: str, hexq_prefix: str) -> None:
    assert_app_refused(f"{BAD_MODULE}:nope",
                       f"hexq: error: --app '{BAD_MODULE}:nope': module '{BAD_MODULE}' has no attribute 'nope'",
                       redis_url, hexq_prefix)


def test_app_option_naming_something_that_is_not_a_hexq(redis_url: str, hexq_prefix: str) -> None:
    assert_app_refused(f"{BAD_MODULE}:not_an_app",
                       f"hexq: error: --app '{BAD_MODULE}:not_an_app': 'not_an_app' is a str, not a HexQ app",
                       redis_url, hexq_prefix)


def test_cli_enqueue_with_non_json_argument(shared: Shared) -> None:
    result = hexq_cli(shared.cluster.env(), "enqueue", "record", "{not json", f"--app={BAD_APP}")
    assert result.returncode == 2
    assert result.stderr.startswith("hexq: error: arguments must be JSON values (quote strings: '\"text\"')")
    wrong = hexq_cli(shared.cluster.env(), "enqueue", "record", '"a"', '"one too many"', f"--app={BAD_APP}")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("hexq: error: ") and "task 'record'" in wrong.stderr, wrong.stderr
    ok = hexq_cli(shared.cluster.env(), "enqueue", "record", '"from-cli"', f"--app={BAD_APP}")
    assert ok.returncode == 0, ok.stderr
    shared.cluster.wait_for_tags(1, timeout=10, suffix="from-cli")
