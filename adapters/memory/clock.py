"""A clock that tests move by hand: ``sleep`` advances it instead of blocking."""

from __future__ import annotations

import attrs


@attrs.define
class FakeClock:
    wall: float = 1_700_000_000.0
    mono: float = 1000.0
    slept: list[float] = attrs.field(factory=list)

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
