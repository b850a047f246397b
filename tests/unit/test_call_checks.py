"""Every way of sending from a Task checks the call against the function's signature first: a wrong call raises
TaskArgumentsError (a TypeError) naming the task and what is wrong, and nothing is encoded or sent."""

from __future__ import annotations

import inspect
import itertools
from datetime import timedelta
from typing import Any

import pytest

from hexq import HexQ, current_task
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.core.services import sender
from hexq.core.services.sender import ArgumentCheck, TaskArgumentsError

QUEUES = [(0, "high"), "default"]


def producer() -> tuple[HexQ, MemoryBroker]:
    """redis:// over the in-memory broker: .delay() only stores, so what was stored can be counted."""
    broker = MemoryBroker()
    return HexQ(url="redis://127.0.0.1:1/0", broker=broker, clock=FakeClock(), queues=QUEUES), broker


def inline() -> HexQ:
    return HexQ(url="memory://", broker=MemoryBroker(), clock=FakeClock(), queues=QUEUES)


def stored(broker: MemoryBroker) -> int:
    return sum(s.pending + s.eta for s in broker.queue_stats(["high", "default"]))


def test_the_message_names_the_task_the_fault_and_the_signature() -> None:
    app, broker = producer()

    @app.task(name="reports.mytask")
    def mytask(x: int, y: int) -> None: ...

    with pytest.raises(TypeError) as caught:
        mytask.delay(1)  # type: ignore[call-arg]
    assert isinstance(caught.value, TaskArgumentsError)
    assert str(caught.value) == (
        "mytask() missing a required argument: 'y' (hexq checked the call to task 'reports.mytask' against its "
        "signature mytask(x, y); nothing was enqueued)")
    assert (caught.value.task, caught.value.reason) == ("reports.mytask", "missing a required argument: 'y'")
    assert stored(broker) == 0


WRONG_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("missing", (1,), {}, "missing a required argument: 'y'"),
    ("too many", (1, 2, 3), {}, "takes 2 positional arguments but 3 were given"),
    ("unknown keyword", (1, 2), {"z": 3}, "got an unexpected keyword argument 'z'"),
    ("twice", (1, 2), {"x": 3}, "got multiple values for argument 'x'"),
    ("nothing", (), {}, "missing a required argument: 'x'"),
]


@pytest.mark.parametrize(("label", "args", "kwargs", "reason"), WRONG_CALLS, ids=[c[0] for c in WRONG_CALLS])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_every_way_of_sending_refuses_a_wrong_call_and_stores_nothing(
        label: str, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str, is_async: bool) -> None:
    app, broker = producer()

    def mytask(x: int, y: int) -> None: ...

    async def mytask_async(x: int, y: int) -> None: ...

    mytask_async.__name__ = "mytask"
    task = app.task(mytask_async if is_async else mytask)
    sends: list[Any] = [
        lambda: task.delay(*args, **kwargs),
        lambda: task.options(queue="high", eta=timedelta(seconds=5)).delay(*args, **kwargs),
        lambda: task.apply(args, kwargs, queue="high"),
        lambda: task.bind(*args, **kwargs),
        lambda: task.options(queue="high").bind(*args, **kwargs),
        lambda: task.broadcast(*args, **kwargs),
    ]
    if not kwargs:  # a tuple in delay_many holds positional arguments only
        sends.append(lambda: task.delay_many([task.bind(1, 2), args]))
    for number, send in enumerate(sends):
        with pytest.raises(TaskArgumentsError, match=f"^mytask\\(\\) {reason} ") as caught:
            send()
        assert caught.value.reason == reason, number
    assert stored(broker) == 0
    assert broker.dead_letters() == []


def test_one_wrong_tuple_refuses_the_whole_batch() -> None:
    app, broker = producer()

    @app.task
    def add(x: int, y: int = 0) -> None: ...

    with pytest.raises(TaskArgumentsError, match="takes 2 positional arguments but 3 were given"):
        add.delay_many([(1,), (1, 2), add.bind(3), (1, 2, 3)])
    assert stored(broker) == 0
    assert len(add.delay_many([(1,), (1, 2), add.bind(3), add.options(queue="high").bind(4, y=5)])) == 4
    assert stored(broker) == 4


def test_a_broadcast_that_does_not_fit_never_runs() -> None:
    app = inline()
    ran: list[str] = []

    @app.task
    def announce(text: str) -> None:
        ran.append(text)

    with pytest.raises(TaskArgumentsError, match="got an unexpected keyword argument 'txt'"):
        announce.broadcast(txt="hello")  # type: ignore[call-arg]
    assert ran == []
    assert announce.broadcast("hello") == 1 and ran == ["hello"]


def bind_error(shape: Any, *args: Any, **kwargs: Any) -> str:
    """What ``Signature.bind`` of this Python says about a call to a function of that shape."""
    try:
        inspect.signature(shape).bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    raise AssertionError("the call fits")


def test_defaults_keyword_only_and_variadic_parameters() -> None:
    app, broker = producer()

    @app.task
    def defaults(x: int, y: int = 2, z: int = 3) -> None: ...

    @app.task
    def keywords(x: int, *, y: int, z: int = 0) -> None: ...

    @app.task
    def variadic(first: int, *rest: int, **options: Any) -> None: ...

    @app.task
    def only_keywords(**options: Any) -> None: ...

    @app.task
    def positional_only(x: int, /, y: int = 0) -> None: ...

    fine: list[Any] = [
        lambda: defaults.delay(1), lambda: defaults.delay(1, 2, 3), lambda: defaults.delay(1, z=5),
        lambda: defaults.delay(x=1, y=2), lambda: keywords.delay(1, y=2), lambda: keywords.delay(x=1, y=2, z=3),
        lambda: variadic.delay(1), lambda: variadic.delay(1, 2, 3, a=4, b=5), lambda: variadic.delay(first=1, z=1),
        lambda: only_keywords.delay(), lambda: only_keywords.delay(a=1, first=2),
        lambda: positional_only.delay(1), lambda: positional_only.delay(1, y=2),
    ]
    for send in fine:
        send()
    assert stored(broker) == len(fine)

    wrong: list[tuple[Any, str]] = [
        (lambda: defaults.delay(1, 2, 3, 4), "defaults() takes 3 positional arguments but 4 were given"),
        (lambda: defaults.delay(y=2), "defaults() missing a required argument: 'x'"),
        # Python's own wording, which 3.13 changed for these two ("keyword-only argument", "got some
        # positional-only arguments passed as keyword arguments"): the check says what Python would.
        (lambda: keywords.delay(1), "keywords() " + bind_error(lambda x, *, y, z=0: None, 1)),
        (lambda: keywords.delay(1, 2), "keywords() takes 1 positional argument but 2 were given"),
        (lambda: variadic.delay(), "variadic() missing a required argument: 'first'"),
        (lambda: variadic.delay(1, first=2), "variadic() got multiple values for argument 'first'"),
        (lambda: only_keywords.delay(1), "only_keywords() takes 0 positional arguments but 1 was given"),
        (lambda: positional_only.delay(x=1), "positional_only() " + bind_error(lambda x, /, y=0: None, x=1)),
    ]
    for send, message in wrong:
        with pytest.raises(TaskArgumentsError) as caught:
            send()
        assert str(caught.value).startswith(message), (message, str(caught.value))
    assert stored(broker) == len(fine)


def test_parameters_named_queue_and_eta() -> None:
    """``.delay(queue=..., eta=...)`` keeps WakaQ's meaning at run time (hexq's options, never the task's
    arguments), and says so when that leaves the task without them; ``.options().delay()`` and ``.apply()``
    pass them to the task."""
    app = inline()
    seen: list[tuple[Any, ...]] = []

    @app.task
    def route(queue: str, eta: int = 0) -> None:
        message = current_task.get()
        assert message is not None
        seen.append((queue, eta, message.queue))

    with pytest.raises(TaskArgumentsError) as caught:
        route.delay(queue="high")
    assert str(caught.value) == (
        "route() missing a required argument: 'queue' (hexq checked the call to task 'route' against its signature "
        "route(queue, eta=0); nothing was enqueued); .delay() took queue= as hexq's option, WakaQ's spelling: pass "
        "the task's own argument with .options().delay(queue=...) or .apply(kwargs={'queue': ...})")
    assert seen == []

    route.delay("to-the-task", queue="high")  # WakaQ's spelling: the keyword is the option
    route.options(queue="high").delay(queue="to-the-task", eta=7)  # the typed spelling: every keyword is the task's
    route.options().delay("positional", eta=8)
    route.apply(kwargs={"queue": "from-apply", "eta": 9}, queue="high")
    assert seen == [("to-the-task", 0, "high"), ("to-the-task", 7, "high"), ("positional", 8, "default"),
                    ("from-apply", 9, "high")]


def test_options_carry_queue_and_eta() -> None:
    app, broker = producer()

    @app.task
    def job(n: int) -> None: ...

    job.options(queue="high").delay(1)
    job.options(eta=timedelta(seconds=30)).delay(2)
    job.options(queue="high", eta=5).delay(n=3)
    job.delay_many([job.options(queue="high").bind(4), job.bind(5)], eta=10)
    assert [(s.pending, s.eta) for s in broker.queue_stats(["high", "default"])] == [(1, 2), (0, 2)]


def test_calling_the_task_runs_the_function_inline() -> None:
    app, broker = producer()

    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task
    async def fetch(url: str) -> str:
        return url.upper()

    assert add(1, y=2) == 3
    coroutine = fetch("u")
    assert inspect.iscoroutine(coroutine)
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    assert done.value.value == "U"
    assert stored(broker) == 0


def test_the_signature_is_read_once_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    app, broker = producer()

    @app.task
    def add(x: int, y: int = 0) -> None: ...

    @app.task
    def spread(*args: int) -> None: ...

    def no_more(*_: Any, **__: Any) -> Any:
        raise AssertionError("inspect.signature called per call")

    monkeypatch.setattr(sender.inspect, "signature", no_more)
    add.delay(1)
    add.delay(1, y=2)
    spread.delay(1, 2, 3)  # checked by Signature.bind, on the signature read at declaration
    with pytest.raises(TaskArgumentsError):
        add.delay()  # type: ignore[call-arg]
    assert stored(broker) == 3


def test_a_callable_without_a_readable_signature_is_not_checked() -> None:
    check = ArgumentCheck("none", _NoSignature())
    check((1, 2), {"x": 3})  # what the worker's call will say is left to the worker, as before


class _NoSignature:
    @property
    def __signature__(self) -> Any:
        raise ValueError("no signature")

    def __call__(self, *args: Any, **kwargs: Any) -> None: ...


# Every shape of function, every call of up to three positional and two keyword arguments: the fast path
# (counting) must agree with Signature.bind, which is what Python itself would accept.
SHAPES = [
    "def f(): ...",
    "def f(a): ...",
    "def f(a, b=1): ...",
    "def f(a=0, b=1): ...",
    "def f(a, *, b): ...",
    "def f(a, *, b=1): ...",
    "def f(*, a, b=1): ...",
    "def f(a, b, c): ...",
    "def f(a, /, b): ...",
    "def f(a, *rest): ...",
    "def f(a, **rest): ...",
]
NAMES = ["a", "b", "c", "z"]


@pytest.mark.parametrize("source", SHAPES)
def test_the_fast_check_agrees_with_signature_bind(source: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    fn = namespace["f"]
    check = ArgumentCheck("f", fn)
    signature = inspect.signature(fn)
    for given in range(4):
        for count in range(3):
            for keys in itertools.permutations(NAMES, count):
                args, kwargs = tuple(range(given)), {key: 0 for key in keys}
                try:
                    signature.bind(*args, **kwargs)
                    accepted = True
                except TypeError:
                    accepted = False
                try:
                    check(args, kwargs)
                    checked = True
                except TaskArgumentsError:
                    checked = False
                assert checked == accepted, (source, args, kwargs)
