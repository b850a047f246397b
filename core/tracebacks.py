"""The traceback a dead letter keeps: the formatted traceback of the exception that ended the task, its
deepest part only when long, so that a list of dead letters (read whole by ``hexq dead`` and the dashboard)
stays bounded whatever the task raised (a RecursionError's traceback runs to megabytes)."""

from __future__ import annotations

import traceback

# The last part of a long traceback is kept: it names the line that raised and the exception.
MAX_DEAD_TRACEBACK_CHARS = 8192


def dead_letter_traceback(error: BaseException | None, limit: int = MAX_DEAD_TRACEBACK_CHARS) -> str:
    """``error``'s formatted traceback (its chained causes included), or "" for None; when longer than
    ``limit`` characters, its last ``limit`` at most, from a line's start, after a line saying what was cut."""
    if error is None:
        return ""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return cut_traceback(text, limit)


def cut_traceback(text: str, limit: int = MAX_DEAD_TRACEBACK_CHARS) -> str:
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    start = tail.find("\n") + 1  # from the start of a line, unless one line is the whole tail
    if 0 < start < len(tail):
        tail = tail[start:]
    cut = len(text) - len(tail)
    return f"[traceback cut: its first {cut} of {len(text)} characters are not kept]\n{tail}"
