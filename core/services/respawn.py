"""When to start a worker child again after it exited: at once, unless it is crash-looping."""

from __future__ import annotations

import logging

import attrs

from hexq.core.ports import ChildExit

log = logging.getLogger("hexq.worker")

# A child that ends itself this soon after starting, again and again (an import error, a refused
# password), is crash-looping: it is started again after a growing pause instead of at once.
FAST_DEATH_SECONDS = 2.0
RESPAWN_BACKOFF_MAX = 30.0
SIGTERM, SIGKILL = 15, 9  # POSIX signal numbers, as ChildExit reports them (the core does not import signal)


@attrs.define
class RespawnPolicy:
    _fast_deaths: dict[int, int] = attrs.field(factory=dict)  # index -> consecutive quick deaths
    _respawn_at: dict[int, float] = attrs.field(factory=dict)  # index -> when to start it again

    def exited(self, index: int, exit_: ChildExit, lived: float, now: float) -> bool:
        """True: start child ``index`` again now; False: it is due later (see ``due``)."""
        # One killed from outside (the OOM killer, an operator, a hard timeout) is replaced at once; so is
        # one that exited cleanly (recycled) or lived long enough to have worked.
        killed = exit_.signal in (SIGKILL, SIGTERM)
        if exit_.code == 0 or killed or lived >= FAST_DEATH_SECONDS:
            self._fast_deaths.pop(index, None)
            return True
        deaths = self._fast_deaths.get(index, 0) + 1
        self._fast_deaths[index] = deaths
        if deaths == 1:
            return True
        delay = min(RESPAWN_BACKOFF_MAX, 0.5 * 2 ** (deaths - 2))
        log.error("child %d died %d times in a row within %.0fs of starting; starting it again in %.1fs",
                  index, deaths, FAST_DEATH_SECONDS, delay)
        self._respawn_at[index] = now + delay
        return False

    def due(self, now: float) -> list[int]:
        ready = [index for index, when in self._respawn_at.items() if now >= when]
        for index in ready:
            del self._respawn_at[index]
        return ready
