"""Calling a task's function as a worker does: through the app's wrappers, with the event loop hidden from sync
tasks, and with the task's own exceptions kept apart from those of the machinery around it."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from hexq.core.message import TaskMessage
from hexq.core.registry import Hook, TaskDef, Wrapper


def call_task(task: TaskDef, message: TaskMessage, wrappers: Sequence[Wrapper]) -> Any:
    """Call ``task`` with the message's arguments inside ``wrappers`` (the first one outermost).

    Returns what the call returns: for an async task, or a sync one inside an async wrapper, an awaitable that
    is not awaited yet.
    """
    chain = tuple(wrappers)
    try:
        fn = composed(task.fn, task.is_async, chain)
    except TypeError:  # a callable object that cannot be hashed (one defining __eq__ alone): built afresh
        fn = composed.__wrapped__(task.fn, task.is_async, chain)
    return fn(*message.args, **message.kwargs)


@functools.lru_cache(maxsize=1024)
def composed(fn: Callable[..., Any], is_async: bool, wrappers: tuple[Wrapper, ...]) -> Callable[..., Any]:
    """``fn`` inside ``wrappers``, built once per task function and wrapper list rather than on every run (the
    wrapping costs a worker more per task than the call itself). The callables keep no state between calls."""
    if not is_async:
        fn = outside_loop(fn)
    for wrapper in reversed(wrappers):
        fn = bind(wrapper, fn)
    return fn


async def call_hooks(hooks: Sequence[Hook]) -> None:
    for hook in hooks:
        result = hook()
        if inspect.isawaitable(result):
            await result


def outside_loop(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Call a sync task as if no event loop were running in this thread.

    The child's loop is running while a sync task executes inline, so a task that itself calls
    ``asyncio.run()`` (or asgiref's ``async_to_sync``) would be refused. Nothing awaits during a sync call,
    so hiding the running loop for its duration is safe.
    """

    @functools.wraps(fn)  # a wrapper that logs fn.__name__ sees the task's name
    def call(*args: Any, **kwargs: Any) -> Any:
        running = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            return fn(*args, **kwargs)
        finally:
            asyncio.events._set_running_loop(running)

    return call


def bind(wrapper: Wrapper, inner: Callable[..., Any]) -> Callable[..., Any]:
    """``inner`` called through ``wrapper``. Its result is what the wrapper returns, or, when the wrapper returns
    None, what ``inner`` returned: a wrapper written like WakaQ's example calls the task and returns nothing,
    and the task's return value must still reach ``keep_result``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        box = _Returned()
        returned = wrapper(box.recording(inner), args, kwargs)
        return box.value if returned is None else returned

    # Keep the coroutine-ness visible so an outer wrapper written like WakaQ's example awaits us.
    if inspect.iscoroutinefunction(wrapper) or inspect.iscoroutinefunction(inner):
        async def acall(*args: Any, **kwargs: Any) -> Any:
            box = _Returned()
            returned = wrapper(box.recording(inner), args, kwargs)
            if inspect.isawaitable(returned):
                returned = await returned
            return box.value if returned is None else returned

        return acall
    return call


class _Returned:
    """What the wrapped function returned, seen from outside the wrapper."""

    def __init__(self) -> None:
        self.value: Any = None

    def recording(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        # As a coroutine function when ``inner`` is one, so that a wrapper can still tell whether to await it.
        if inspect.iscoroutinefunction(inner):
            @functools.wraps(inner)
            async def arecord(*args: Any, **kwargs: Any) -> Any:
                self.value = await inner(*args, **kwargs)
                return self.value

            return arecord

        @functools.wraps(inner)
        def record(*args: Any, **kwargs: Any) -> Any:
            self.value = inner(*args, **kwargs)
            return self.value

        return record


class Escaped(Exception):
    """Carries an exception raised by a task out of an asyncio task or ``wait_for`` unchanged.

    SystemExit and KeyboardInterrupt would be re-raised by the asyncio task into the event loop itself,
    stopping the worker child; a TimeoutError would be taken for ``wait_for``'s own timeout.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


async def contained(awaitable: Any) -> Any:
    """Await ``awaitable``, wrapping in Escaped what must not pass through asyncio's machinery as is."""
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt, TimeoutError, asyncio.TimeoutError) as exc:
        raise Escaped(exc) from None
