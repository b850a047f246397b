"""One exception root for hexq, with specific subclasses that carry the data a caller needs."""

from __future__ import annotations


class HexqError(Exception):
    """Root of every error hexq raises on purpose."""


class ConfigError(HexqError, ValueError):
    """The application was configured wrongly (you misused the API); raised at construction time."""


class UnknownQueueError(ConfigError):
    def __init__(self, queue: str, known: list[str]) -> None:
        self.queue = queue
        self.known = known
        super().__init__(
            f"unknown queue {queue!r}: declare it in HexQ(queues=[...]); known queues are {known}"
        )


class UnknownTaskError(HexqError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        super().__init__(
            f"unknown task {name!r}: no function with that name is registered with @app.task "
            f"(registered: {shown or 'none'}); import the module that defines it in the app module"
        )


class SerializationError(HexqError, TypeError):
    """A task argument cannot travel as JSON."""

    def __init__(self, task: str, where: str, detail: str) -> None:
        self.task = task
        self.where = where
        super().__init__(
            f"task {task!r}: argument {where} cannot be sent as JSON ({detail}); pass JSON types, "
            "datetime, date, time, timedelta, Decimal, UUID or bytes, or convert it yourself"
        )


class PayloadTooLargeError(HexqError, ValueError):
    def __init__(self, task: str, size: int, limit: int) -> None:
        self.task = task
        self.size = size
        self.limit = limit
        super().__init__(
            f"task {task!r}: encoded payload is {size} bytes, over the limit of {limit} bytes; store big "
            "data elsewhere and pass a reference, or raise HexQ(max_payload_bytes=...)"
        )


class MalformedPayloadError(HexqError, ValueError):
    """Bytes found in the broker are not a valid hexq envelope (the other side misbehaved)."""


class SignatureError(MalformedPayloadError):
    """The payload's signature is missing or wrong: it was not written by a holder of the signing key."""


class BrokerError(HexqError):
    """The broker could not do what was asked; nothing was changed. Workers log, back off and retry."""


class BrokerUnavailableError(BrokerError, ConnectionError):
    """The broker cannot be reached right now; callers may retry later."""


class BrokerAuthError(BrokerError, PermissionError):
    """The broker refused our credentials or permissions."""


class BrokerFullError(BrokerError):
    """The broker refused a write because it is out of memory; nothing was stored."""


class SoftTimeout(HexqError):
    """Raised inside a task that ran past its soft timeout."""


class TaskCancelled(HexqError):
    """Raised inside a running sync task whose cancellation was requested (``app.cancel()``, ``hexq cancel``).
    Let it propagate: a task that swallows it is killed, with its worker child, after ``cancel_grace``."""


class DeadlineError(HexqError, ValueError):
    """A task's deadline (``expires``) leaves it no time to start: already past when sent, or before its eta.
    Raised at ``.delay()`` before anything is stored."""

    def __init__(self, task: str, deadline: float, problem: str) -> None:
        self.task = task
        self.deadline = deadline  # epoch seconds
        super().__init__(f"task {task!r}: {problem}; nothing was enqueued (give a later expires=, or none)")


class CronError(ConfigError):
    pass


class TaskFailed(HexqError):
    """Raised by ``TaskHandle.result()`` for a task that ended without a result: its code raised or timed out
    on its last attempt, or its value could not be kept (``status`` "failed"), it was dead-lettered without
    its code failing ("dead"), cancelled ("cancelled") or its deadline passed before it started ("expired").

    Carries the remote exception as text: ``type`` (its class name, e.g. "ValueError"), ``message`` and
    ``traceback`` (the worker's formatted traceback, "" when there is none, as for a dead letter)."""

    def __init__(self, task_id: str, task: str, status: str, type: str, message: str, traceback: str = "") -> None:
        self.task_id = task_id
        self.task = task
        self.status = status
        self.type = type
        self.message = message
        self.traceback = traceback
        text = f"task {task_id} ({task}) {status}: {type}: {message}"
        if traceback:
            text += f"\n\nRemote traceback:\n{traceback.rstrip()}"
        super().__init__(text)

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str, str, str, str, str]]:
        return type(self), (self.task_id, self.task, self.status, self.type, self.message, self.traceback)


class ResultNotFound(HexqError, LookupError):
    """``TaskHandle.result()`` of a task the broker knows nothing of: no such task is queued, scheduled or
    running, and no outcome is kept for it."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(
            f"task {task_id}: the broker holds neither this task nor its outcome: it never existed (check the "
            "id and the app's url and prefix), or it finished without keeping its outcome (set keep_result= on "
            "HexQ(...), its Queue or @app.task in the app the workers run), or its outcome's keep_result ran out"
        )
