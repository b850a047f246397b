"""What tasks cost the Redis server itself: CPU time (``INFO cpu``) and commands (``INFO commandstats``).

A Redis server's own CPU is what bounds the work one server carries, whatever the clients cost. The
``cost`` workload reads both before and after each phase and divides the difference by the tasks:

- CPU: ``used_cpu_sys + used_cpu_user`` of the server process (getrusage, microsecond resolution), which
  includes the server's own housekeeping (serverCron) during the phase; it is small next to the work but
  it grows with the phase's length, so a slow system pays a little more of it.
- commands: the sum of ``calls`` over every command in ``INFO commandstats``. Redis counts a command run
  inside a Lua script or a MULTI/EXEC under its own name as well as the EVALSHA / EXEC that ran it, so a
  script that does five writes counts six. Every system is counted the same way. The harness's own
  ``INFO`` calls are not counted (the ``info`` line is left out: no system under test sends INFO per task).

The completion counter the harness polls lives on a second server for this workload, so neither the
polling nor the tasks' own ``INCR`` reaches the server being measured.
"""

from __future__ import annotations

from typing import Any

import attrs
import redis

# Our own reads of the figures: every INFO the measured server sees comes from here.
OWN_COMMANDS = frozenset({"info"})


@attrs.frozen
class Reading:
    cpu_s: float  # used_cpu_sys + used_cpu_user of the server, seconds
    user_s: float  # used_cpu_user alone: the server's own code (the rest is the kernel's, mostly sockets)
    calls: dict[str, int]  # command name -> calls so far

    def __sub__(self, earlier: Reading) -> Usage:
        names = set(self.calls) | set(earlier.calls)
        calls = {name: self.calls.get(name, 0) - earlier.calls.get(name, 0) for name in names}
        return Usage(self.cpu_s - earlier.cpu_s, self.user_s - earlier.user_s,
                     {k: v for k, v in calls.items() if v})


@attrs.frozen
class Usage:
    cpu_s: float
    user_s: float
    calls: dict[str, int]

    def cpu_us_per(self, tasks: int) -> float:
        return self.cpu_s * 1e6 / tasks

    def commands_per(self, tasks: int) -> float:
        return sum(self.calls.values()) / tasks

    def breakdown(self, tasks: int) -> dict[str, float]:
        """User and system CPU µs, then commands, per task by name, most frequent first (for profiling;
        written to the step's log)."""
        ranked = sorted(self.calls.items(), key=lambda item: -item[1])
        return {"cpu_user_us": round(self.user_s * 1e6 / tasks, 2),
                "cpu_sys_us": round((self.cpu_s - self.user_s) * 1e6 / tasks, 2),
                **{name: round(calls / tasks, 3) for name, calls in ranked}}


def read(client: redis.Redis) -> Reading:
    """One ``INFO cpu commandstats`` (one command, so the reading is of one instant)."""
    raw: Any = client.execute_command("INFO", "cpu", "commandstats")  # type: ignore[no-untyped-call]
    info = raw if isinstance(raw, dict) else {}
    user = float(info.get("used_cpu_user", 0.0))
    cpu = float(info.get("used_cpu_sys", 0.0)) + user
    calls: dict[str, int] = {}
    for key, value in info.items():
        if not key.startswith("cmdstat_") or not isinstance(value, dict):
            continue
        name = key.removeprefix("cmdstat_")
        if name not in OWN_COMMANDS:
            calls[name] = int(value.get("calls", 0))
    return Reading(cpu, user, calls)
