"""HexQ construction: the WakaQ README app builds, and every misconfiguration fails early and clearly."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import pytest

from hexq import ConfigError, CronTask, HexQ, Queue, UnknownQueueError
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.adapters.redis.settings import RedisSettings
from hexq.core.errors import CronError
from hexq.entrypoints.settings import Connection, InProcess

Q_HIGH = "a-high-priority-queue"
Q_MED = "a-medium-priority-queue"
Q_LOW = "a-low-priority-queue"
Q_OTHER = "another-queue"
Q_DEFAULT = "default-lowest-priority-queue"


def readme_app() -> HexQ:
    return HexQ(
        queues=[
            (0, Q_HIGH),
            (1, Q_MED),
            (2, Q_LOW),
            Queue(Q_OTHER, priority=3, max_retries=5, soft_timeout=300, hard_timeout=360),
            Q_DEFAULT,
        ],
        concurrency="cores*4",
        async_concurrency=0,
        soft_timeout=30,
        hard_timeout=timedelta(minutes=1),
        max_retries=3,
        max_mem_percent=98,
        max_tasks_per_worker=5000,
        schedules=[
            CronTask("* * * * *", "mytask", queue=Q_MED, args=[2, 2], kwargs={}),
            ("*/5 * * * *", "mytask", [1, 1], {}),
            ("*/10 * * * *", "anothertask"),
        ],
        url="memory://",
        broker=MemoryBroker(),
        clock=FakeClock(),
    )


def test_wakaq_readme_example_constructs() -> None:
    app = readme_app()

    @app.task(queue=Q_MED, max_retries=7, soft_timeout=420, hard_timeout=480)
    def mytask(x: int, y: int) -> None:
        print(x + y)

    @app.task
    def a_cpu_intensive_task() -> None:
        print("hello world")

    @app.task
    async def an_io_intensive_task() -> None:
        print("hello world")

    @app.wrap_tasks_with
    async def custom_task_decorator(fn: Any, args: Any, kwargs: Any) -> None:
        if inspect.iscoroutinefunction(fn):
            await fn(*args, **kwargs)
        else:
            fn(*args, **kwargs)

    assert app.queues.names == [Q_HIGH, Q_MED, Q_LOW, Q_OTHER, Q_DEFAULT]
    assert app.queues.default.name == Q_DEFAULT
    assert app.concurrency >= 4 and app.concurrency % 4 == 0
    assert app.async_concurrency == 0
    assert app.max_mem_percent == 98 and app.max_tasks_per_worker == 5000
    assert app.is_inline
    assert [(s.cron, s.task_name, s.queue, s.args) for s in app.schedules] == [
        ("* * * * *", "mytask", Q_MED, (2, 2)),
        ("*/5 * * * *", "mytask", None, (1, 1)),
        ("*/10 * * * *", "anothertask", None, ()),
    ]
    assert sorted(app.registry.tasks) == ["a_cpu_intensive_task", "an_io_intensive_task", "mytask"]
    assert app.registry.tasks["an_io_intensive_task"].is_async
    assert app.registry.hooks.wrappers == [custom_task_decorator]


def test_readme_limits_resolve_task_then_queue_then_app() -> None:
    app = readme_app()

    @app.task(queue=Q_MED, max_retries=7, soft_timeout=420, hard_timeout=480)
    def mytask() -> None: ...

    @app.task(queue=Q_OTHER)
    def other() -> None: ...

    @app.task
    def plain() -> None: ...

    registry = app.registry
    assert registry.limits(registry.get("mytask"), Q_MED).max_retries == 7
    assert (registry.limits(registry.get("mytask"), Q_MED).soft_timeout,
            registry.limits(registry.get("mytask"), Q_MED).hard_timeout) == (420.0, 480.0)
    other_limits = registry.limits(registry.get("other"), Q_OTHER)
    assert (other_limits.soft_timeout, other_limits.hard_timeout, other_limits.max_retries) == (300.0, 360.0, 5)
    plain_limits = registry.limits(registry.get("plain"), Q_DEFAULT)
    assert (plain_limits.soft_timeout, plain_limits.hard_timeout, plain_limits.max_retries) == (30.0, 60.0, 3)
    assert registry.queue_for(registry.get("plain"), None) == Q_DEFAULT
    assert registry.queue_for(registry.get("mytask"), None) == Q_MED
    assert registry.queue_for(registry.get("mytask"), Q_HIGH) == Q_HIGH


def app(**options: Any) -> HexQ:
    options.setdefault("url", "memory://")
    return HexQ(broker=MemoryBroker(), clock=FakeClock(), **options)


# (label, HexQ options, exception, message pattern)
BAD_APPS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("negative soft", {"soft_timeout": -1}, ConfigError, "soft_timeout must be zero or positive"),
    ("negative hard", {"hard_timeout": timedelta(seconds=-5)}, ConfigError, "hard_timeout must be zero"),
    ("soft as str", {"soft_timeout": "30"}, ConfigError, "soft_timeout must be seconds"),
    ("app hard below soft", {"soft_timeout": 60, "hard_timeout": 30}, ConfigError, "HexQ: hard_timeout"),
    ("app hard equal soft", {"soft_timeout": 30, "hard_timeout": timedelta(seconds=30)}, ConfigError,
     "must be greater than soft_timeout"),
    ("duplicate queues", {"queues": ["a", (1, "a")]}, ConfigError, "unique"),
    ("bad queue name", {"queues": ["bad name"]}, ConfigError, "invalid queue name"),
    ("concurrency 0", {"concurrency": 0}, ConfigError, "at least 1"),
    ("concurrency expression giving 0", {"concurrency": "cores-cores"}, ConfigError, "at least 1"),
    ("concurrency cores*0", {"concurrency": "cores*0"}, ConfigError, "at least 1"),
    ("concurrency negative", {"concurrency": -2}, ConfigError, "outside 0..10000"),
    ("concurrency code", {"concurrency": "__import__('os').getpid()"}, ConfigError, "may only use"),
    ("async concurrency garbage", {"async_concurrency": "lots"}, ConfigError, "async_concurrency"),
    ("max_retries negative", {"max_retries": -1}, ConfigError, "max_retries"),
    ("max_retries bool", {"max_retries": True}, ConfigError, "max_retries"),
    ("max_retries str", {"max_retries": "3"}, ConfigError, "max_retries"),
    ("max_deliveries 0", {"max_deliveries": 0}, ConfigError, "max_deliveries"),
    ("max_mem_percent 0", {"max_mem_percent": 0}, ConfigError, "max_mem_percent"),
    ("max_mem_percent negative", {"max_mem_percent": -5}, ConfigError, "max_mem_percent"),
    ("max_mem_percent over 100", {"max_mem_percent": 100.5}, ConfigError, "max_mem_percent"),
    ("max_mem_percent nan", {"max_mem_percent": float("nan")}, ConfigError, "max_mem_percent"),
    ("max_tasks_per_worker 0", {"max_tasks_per_worker": 0}, ConfigError, "max_tasks_per_worker"),
    ("max_tasks_per_worker negative", {"max_tasks_per_worker": -10}, ConfigError, "max_tasks_per_worker"),
    ("max_tasks_per_worker float", {"max_tasks_per_worker": 1.5}, ConfigError, "max_tasks_per_worker"),
    ("max_tasks_per_worker str", {"max_tasks_per_worker": "10"}, ConfigError, "max_tasks_per_worker"),
    ("lease under a second", {"lease_timeout": 0.5}, ConfigError, "lease_timeout"),
    ("empty prefix", {"prefix": ""}, ConfigError, "invalid prefix"),
    ("prefix with colon", {"prefix": "a:b"}, ConfigError, "invalid prefix"),
    ("prefix with space", {"prefix": "my app"}, ConfigError, "invalid prefix"),
    ("prefix with braces", {"prefix": "{x}"}, ConfigError, "invalid prefix"),
    ("prefix with newline", {"prefix": "x\n"}, ConfigError, "invalid prefix"),
    ("prefix too long", {"prefix": "x" * 101}, ConfigError, "invalid prefix .*use 1-100 characters from letters"),
    ("max_deliveries bool", {"max_deliveries": True}, ConfigError, "max_deliveries must be an int >= 1, got True"),
    ("exclude a bare str", {"exclude_queues": "default"}, ConfigError, "exclude_queues must be a list of queue names"),
    ("metrics port 0", {"metrics_port": 0}, ConfigError, "metrics_port .* from 1 to 65535 or None, got 0"),
    ("metrics port too big", {"metrics_port": 65536}, ConfigError, "metrics_port"),
    ("metrics port bool", {"metrics_port": True}, ConfigError, "metrics_port"),
    ("unknown log level", {"worker_log_level": "verbose"}, ConfigError, "worker_log_level must be a logging level"),
    ("log level bool", {"scheduler_log_level": True}, ConfigError, "scheduler_log_level"),
    ("negative log level", {"worker_log_level": -1}, ConfigError, "worker_log_level"),
    ("socket timeout 0", {"url": "redis://localhost", "socket_timeout": 0}, ConfigError,
     "socket_timeout must be a finite number of seconds > 0, got 0"),
    ("connect timeout str", {"url": "redis://localhost", "socket_connect_timeout": "5"}, ConfigError,
     "socket_connect_timeout"),
    ("password with memory url", {"password": "x"}, ConfigError, "need a redis:// or rediss:// URL, not memory://"),
    ("password with unix url", {"url": "unix:///tmp/r.sock", "password": "x"}, ConfigError, r"\?password="),
    ("credentials twice", {"url": "redis://u:p@h/0", "password": "x"}, ConfigError, "credentials given twice"),
    ("http url", {"url": "http://localhost:6379"}, ConfigError, "unsupported broker URL scheme 'http'"),
    ("no scheme", {"url": "localhost"}, ConfigError, "unsupported broker URL scheme ''"),
    ("typo scheme", {"url": "reddis://localhost"}, ConfigError, "redis://, rediss://"),
    ("invalid cron", {"schedules": [("* * * *", "t")]}, CronError, r"'\* \* \* \*'"),
    ("garbage cron", {"schedules": [("every day", "t")]}, CronError,
     "'every day'"),
    ("schedule not a tuple", {"schedules": [5]}, CronError, "invalid schedule 5"),
    ("cron queue unknown", {"schedules": [CronTask("* * * * *", "t", queue="nope")]}, UnknownQueueError,
     "unknown queue 'nope'"),
    ("signing key too short", {"signing_key": "short"}, ConfigError, "signing_key"),
    ("signing key not text", {"signing_key": 1234567890123456789}, ConfigError, "signing_key"),
    ("max_payload_bytes negative", {"max_payload_bytes": -1}, ConfigError, "max_payload_bytes"),
    ("exclude unknown queue", {"exclude_queues": ["nope"]}, UnknownQueueError, "'nope'"),
    ("exclude every queue", {"queues": ["a"], "exclude_queues": ["a"]}, ConfigError, "no queue left"),
]


@pytest.mark.parametrize(("label", "options", "error", "message"), BAD_APPS, ids=[b[0] for b in BAD_APPS])
def test_bad_configuration_raises_at_construction(label: str, options: dict[str, Any], error: type[Exception],
                                                  message: str) -> None:
    with pytest.raises(error, match=message):
        app(**options)


@pytest.mark.parametrize("make_queue", [
    lambda: Queue("q", soft_timeout=10, hard_timeout=5),
    lambda: Queue("q", soft_timeout=timedelta(seconds=5), hard_timeout=5),
])
def test_queue_hard_timeout_not_above_soft_raises(make_queue: Any) -> None:
    with pytest.raises(ConfigError, match="queue 'q': hard_timeout"):
        app(queues=[(0, "a"), make_queue()])


def test_config_errors_are_value_errors_and_unknown_queue_is_a_config_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(UnknownQueueError, ConfigError)
    assert issubclass(CronError, ConfigError)


@pytest.mark.parametrize("options", [
    {"max_mem_percent": "98"},
    {"max_mem_percent": True},
    {"max_tasks_per_worker": True},
    {"max_payload_bytes": 0},
    {"max_payload_bytes": "1mb"},
], ids=repr)
def test_more_bad_options_raise_config_error_too(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        app(**options)


def test_defaults() -> None:
    default = HexQ()
    assert default.queues.names == ["default"]
    assert default.connection.redacted == "redis://localhost:6379/0"
    assert not default.is_inline
    assert default.prefix == "hexq"
    assert default.concurrency >= 1


# -- tasks ------------------------------------------------------------------------------------------


def test_task_with_unknown_queue_raises() -> None:
    application = app(queues=["a"])
    with pytest.raises(UnknownQueueError) as info:
        @application.task(queue="b")
        def t() -> None: ...
    assert info.value.queue == "b" and info.value.known == ["a"]
    assert "t" not in application.registry.tasks


def test_delay_with_unknown_queue_raises_and_enqueues_nothing() -> None:
    broker = MemoryBroker()
    application = HexQ(queues=["a"], url="redis://127.0.0.1:1/0", broker=broker, clock=FakeClock())

    @application.task
    def t() -> None: ...

    with pytest.raises(UnknownQueueError, match="unknown queue 'b'"):
        t.delay(queue="b")
    assert broker.queue_stats(["a", "b"])[0].pending == 0
    assert broker.queue_stats(["a", "b"])[1].pending == 0


def test_duplicate_task_name_raises() -> None:
    application = app()

    @application.task
    def job() -> None: ...

    with pytest.raises(ConfigError, match="duplicate task name 'job'"):
        @application.task(name="job")
        def other() -> None: ...

    def job2() -> None: ...

    job2.__name__ = "job"
    with pytest.raises(ConfigError, match=r"name=\.\.\."):
        application.task(job2)


def test_registering_the_same_function_twice_is_allowed() -> None:
    application = app()

    def job() -> None: ...

    application.task(job)
    application.task(job)
    assert list(application.registry.tasks) == ["job"]


def test_task_name_option() -> None:
    application = app()

    @application.task(name="reports.build")
    def build() -> int:
        return 5

    assert build.name == "reports.build"
    assert application.registry.get("reports.build").fn is build.fn


# (label, decorator options, message)
BAD_TASKS: list[tuple[str, dict[str, Any], str]] = [
    ("negative soft", {"soft_timeout": -1}, "soft_timeout must be zero or positive"),
    ("negative hard", {"hard_timeout": -0.5}, "hard_timeout must be zero or positive"),
    ("hard below soft", {"soft_timeout": 10, "hard_timeout": 5}, "task 't': hard_timeout"),
    ("hard equal soft", {"soft_timeout": timedelta(seconds=5), "hard_timeout": 5}, "must be greater"),
    ("negative max_retries", {"max_retries": -1}, "max_retries"),
    ("str max_retries", {"max_retries": "2"}, "max_retries"),
    ("retry_on not a class", {"retry_on": ["ValueError"]}, "retry_on takes exception classes"),
    ("retry_on not an exception", {"retry_on": [int]}, "retry_on takes exception classes"),
    ("retry_on a str", {"retry_on": "ValueError"}, "retry_on takes exception classes, got 'ValueError'"),
    ("retry_on not iterable", {"retry_on": 5}, "retry_on takes exception classes, got 5"),
    ("infinite backoff_max", {"backoff_max": float("inf")}, "task 't' backoff_max must be a finite number"),
    ("unknown queue", {"queue": "nope"}, "unknown queue 'nope'"),
]


@pytest.mark.parametrize(("label", "options", "message"), BAD_TASKS, ids=[b[0] for b in BAD_TASKS])
def test_bad_task_options_raise(label: str, options: dict[str, Any], message: str) -> None:
    application = app()
    with pytest.raises(ConfigError, match=message):
        @application.task(**options)
        def t() -> None: ...
    assert "t" not in application.registry.tasks


def test_a_task_soft_timeout_at_or_above_the_hard_timeout_that_applies_is_refused_at_declaration() -> None:
    application = app(soft_timeout=30, hard_timeout=60)
    with pytest.raises(ConfigError, match=r"soft_timeout 120.*from the task.*hard_timeout 60.*from the app"):
        @application.task(soft_timeout=120)
        def long() -> None: ...


def test_a_task_may_raise_both_timeouts_above_the_apps() -> None:
    application = app(soft_timeout=30, hard_timeout=60)

    @application.task(soft_timeout=120, hard_timeout=180)
    def long() -> None: ...

    limits = application.registry.limits(application.registry.get("long"), "default")
    assert (limits.soft_timeout, limits.hard_timeout) == (120.0, 180.0)


@pytest.mark.parametrize("options", [
    {"backoff": -1.0}, {"backoff": "1"}, {"backoff_max": -5.0}, {"max_retries": True},
], ids=repr)
def test_bad_backoff_options_raise(options: dict[str, Any]) -> None:
    application = app()
    with pytest.raises(ConfigError):
        @application.task(retry_on=(ValueError,), **options)
        def t() -> None: ...


def test_retry_on_accepts_a_single_exception_class() -> None:
    application = app()

    @application.task(retry_on=ConnectionError)
    def t() -> None: ...

    assert application.registry.get("t").options.retry_on == (ConnectionError,)


# -- secrets ----------------------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"

# (label, HexQ options, expected redacted URL)
REDACTION: list[tuple[str, dict[str, Any], str]] = [
    ("password option", {"password": SECRET}, "redis://:***@localhost:6379/0"),
    ("username and password", {"username": "app", "password": SECRET, "host": "cache", "db": 2},
     "redis://app:***@cache:6379/2"),
    ("special characters", {"password": SECRET + "@:/#?%"}, "redis://:***@localhost:6379/0"),
    ("url with user", {"url": f"redis://app:{SECRET}@cache.internal:6380/1"}, "redis://app:***@cache.internal:6380/1"),
    ("url without user", {"url": f"rediss://:{SECRET}@cache.internal/3"}, "rediss://:***@cache.internal/3"),
    ("unix socket", {"url": f"unix://:{SECRET}@/var/run/redis.sock?db=1"}, "unix://:***@/var/run/redis.sock?db=1"),
]


@pytest.mark.parametrize(("label", "options", "redacted"), REDACTION, ids=[r[0] for r in REDACTION])
def test_password_never_appears_in_repr_or_redacted_url(label: str, options: dict[str, Any],
                                                        redacted: str) -> None:
    application = HexQ(**options)
    assert application.connection.redacted == redacted
    for text in (repr(application), str(application), application.connection.redacted,
                 repr(application.connection), str(application.connection)):
        assert SECRET not in text
        assert "Pa55" not in text
    assert redacted in repr(application)


def test_username_without_password_is_kept() -> None:
    assert HexQ(username="app").connection.redacted == "redis://app@localhost:6379/0"


def test_password_in_url_query_is_redacted() -> None:
    application = HexQ(url=f"redis://localhost:6379/0?socket_timeout=3&password={SECRET}&Ssl_Password=x{SECRET}")
    assert application.connection.redacted == (
        "redis://localhost:6379/0?socket_timeout=3&password=***&Ssl_Password=***")
    assert SECRET not in repr(application)


def test_signing_key_of_sixteen_characters_is_accepted() -> None:
    assert app(signing_key="0123456789abcdef").codec.signing_key == b"0123456789abcdef"
    assert app(signing_key=b"0123456789abcdef").codec.signing_key == b"0123456789abcdef"


def test_task_messages_name_the_registered_name() -> None:
    application = app()
    with pytest.raises(ConfigError, match=r"^task 'reports.build' max_retries must be an int >= 0 or None, got -1$"):
        @application.task(name="reports.build", max_retries=-1)
        def build() -> None: ...


# -- grouped options --------------------------------------------------------------------------------


def test_flat_attributes_read_the_grouped_options() -> None:
    application = app(concurrency=3, async_concurrency="cores*0", exclude_queues=("b",), queues=["a", "b"],
                      max_mem_percent=90, max_tasks_per_worker=7, lease_timeout=timedelta(seconds=4),
                      shutdown_timeout=None, worker_log_file="/tmp/w.log", worker_log_level=10,
                      scheduler_log_level="debug", metrics_port=9100)
    worker = application.worker_options
    assert (application.concurrency, application.async_concurrency) == (worker.concurrency, 0) == (3, 0)
    assert application.exclude_queues == ["b"] and worker.exclude_queues == ("b",)
    assert (application.max_mem_percent, application.max_tasks_per_worker) == (90, 7)
    assert (application.lease_timeout, application.shutdown_timeout) == (4.0, 0.0)
    assert (application.worker_log_file, application.scheduler_log_file) == ("/tmp/w.log", None)
    assert (application.worker_log_level, application.scheduler_log_level) == (10, "debug")
    assert application.metrics_port == 9100
    with pytest.raises(AttributeError):
        application.concurrency = 5  # type: ignore[misc]


def test_signing_key_stays_out_of_the_payload_options_repr() -> None:
    application = app(signing_key=SECRET * 2)
    assert application.payload_options.signing_key == (SECRET * 2).encode()
    assert SECRET not in repr(application.payload_options)


def test_prefix_accepts_dots_and_dashes() -> None:
    assert app(prefix="my.app-v2_x").prefix == "my.app-v2_x"


# -- connection -------------------------------------------------------------------------------------


def test_memory_url_is_the_in_process_marker() -> None:
    connection = HexQ(url="memory://").connection
    assert isinstance(connection, InProcess)
    assert (connection.scheme, connection.url, connection.redacted) == ("memory", "memory://", "memory://")


def test_redis_options_reach_the_redis_settings() -> None:
    connection = HexQ(url="rediss://cache:6380/1", socket_timeout=3, socket_connect_timeout=None,
                      ssl_ca_certs="/ca.pem", ssl_certfile="/c.pem", ssl_keyfile="/k.pem").connection
    assert connection == RedisSettings("rediss://cache:6380/1", 3, None, "/ca.pem", "/c.pem", "/k.pem")
    assert connection.scheme == "rediss" and connection.url == "rediss://cache:6380/1"


def test_redis_settings_repr_shows_options_but_not_the_password() -> None:
    settings = RedisSettings(f"redis://app:{SECRET}@cache/0", socket_timeout=2.0, ssl_ca_certs="/ca.pem")
    assert repr(settings) == ("RedisSettings('redis://app:***@cache/0', socket_timeout=2.0, "
                              "socket_connect_timeout=5.0, ssl_ca_certs='/ca.pem')")
    assert SECRET not in str(settings)


def test_redis_settings_refuse_other_schemes() -> None:
    with pytest.raises(ConfigError, match="unsupported Redis URL scheme 'memory'"):
        RedisSettings("memory://")
    assert Connection is RedisSettings  # the old name still builds them
