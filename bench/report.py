"""The results table (plain text for the terminal, Markdown for RESULTS.md) and machine info."""

from __future__ import annotations

import os
import platform
import sqlite3
from datetime import datetime, timezone
from typing import Any

import psutil

from bench.harness import WORKLOADS
from bench.systems import HEXQ_OF

# (metric, label, format, better, workload): better is "high", "low", "zero" (closest to 0) or "" (no
# ratio); a row is shown when its workload ran ("" = always)
ROWS: list[tuple[str, str, str, str, str]] = [
    ("setup", "worker processes", "text", "", ""),
    ("enqueue", "enqueue, single .delay() (tasks/s) ↑", "rate", "high", "processing"),
    ("batch", "enqueue, batch API in 1000s (tasks/s) ↑", "rate", "high", "batch"),
    ("proc", "processing, worker start → all done (tasks/s) ↑", "rate", "high", "processing"),
    ("proc_steady", "processing, steady middle 80% (tasks/s) ↑", "rate", "high", "processing"),
    ("lat_p50", "latency p50, idle workers (ms) ↓", "ms", "low", "latency"),
    ("lat_p99", "latency p99, idle workers (ms) ↓", "ms", "low", "latency"),
    ("eta_p50", "eta lateness p50 (ms, <0 = early)", "ms", "zero", "latency"),
    ("eta_p99", "eta lateness p99 (ms)", "ms", "zero", "latency"),
    ("eta_min", "eta lateness min (ms)", "ms", "", "latency"),
    ("prio_p50", "priority under load: high-priority p50, low queue busy (ms) ↓", "ms", "low", "priority"),
    ("prio_p99", "priority under load: high-priority p99, low queue busy (ms) ↓", "ms", "low", "priority"),
    ("rss", "worker RSS after processing (MiB) ↓", "mib", "low", "processing"),
    ("pss", "worker PSS after processing (MiB, shared pages split) ↓", "mib", "low", "processing"),
    ("proxy", "processing via +1 ms proxy, start → done (tasks/s) ↑", "rate", "high", "proxy"),
    ("proxy_steady", "processing via +1 ms proxy, steady (tasks/s) ↑", "rate", "high", "proxy"),
    ("cpu_enq", "Redis CPU per task, enqueue (µs) ↓", "us", "low", "cost"),
    ("cpu_proc", "Redis CPU per task, processing (µs) ↓", "us", "low", "cost"),
    ("cpu_total", "Redis CPU per task, total (µs) ↓", "us", "low", "cost"),
    ("cmd_total", "Redis commands per task (scripts' commands counted) ↓", "count", "low", "cost"),
    ("ceiling", "ceiling: raw redis-py LPUSH+BLPOP loop (tasks/s)", "rate", "", "processing"),
    ("ceiling_proxy", "ceiling via +1 ms proxy (tasks/s)", "rate", "", "proxy"),
    ("ceiling_sqlite", "ceiling: raw sqlite3 INSERT, then SELECT+DELETE (tasks/s)", "rate", "", "processing"),
]
NO_BATCH = "no batch API"
NO_PRIORITY = "—"
# One table per broker, in this order: (title, ceiling column, the ceiling rows it shows).
BROKERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "redis": ("", "raw redis-py", ("ceiling", "ceiling_proxy")),
    "sqlite": ("Embedded brokers (SQLite)", "raw sqlite3", ("ceiling_sqlite",)),
}
CEILING = BROKERS["redis"][1]
CEILING_ROWS = {key for _, _, keys in BROKERS.values() for key in keys}


def kind_of(key: str) -> str:
    """How a cell of this metric is formatted."""
    kinds = {row[0]: row[2] for row in ROWS}
    if key.startswith("cmd_"):
        return "count"
    if key.startswith("cpu_"):
        return "us"
    return kinds.get(key, "text" if key.endswith(("_sent", "_done", "_extra")) else "rate")


def workloads_of(results: dict[str, Any]) -> tuple[str, ...]:
    return tuple(results.get("config", {}).get("workloads", WORKLOADS))


def ran_for_some(results: dict[str, Any]) -> tuple[str, ...]:
    """The chosen workloads that at least one system runs (the SQLite systems skip priority and proxy)."""
    return tuple(w for w in workloads_of(results)
                 if any(w not in s.get("skips", ()) for s in results["systems"].values()))


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    if kind == "mib":
        return f"{value:.0f}"
    if kind == "us":
        return f"{value:.1f}"
    if kind == "count":
        return f"{value:.2f}"
    return str(value)


def ratio(row: dict[str, Any], peers: list[str], better: str, hexq_name: str = "hexq") -> str:
    hexq = row.get(hexq_name)
    values = [row[p] for p in peers if isinstance(row.get(p), (int, float))]
    if not better or not isinstance(hexq, (int, float)) or not values:
        return "—"
    if better == "high":
        best = max(values)
    elif better == "low":
        best = min(values)
    else:
        best = min(values, key=abs)
        hexq, best = abs(hexq), abs(best)
    return f"{hexq / best:.2f}x" if best else "—"


def broker_of(system: dict[str, Any]) -> str:
    return str(system.get("broker") or "redis")


def tables(results: dict[str, Any]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """(title, table) for each broker that had a system in the run; the Redis table first, untitled."""
    present = {broker_of(s) for s in results["systems"].values()}
    out = []
    for broker, (title, _, _) in BROKERS.items():
        if broker in present:
            out.append((title if broker != "redis" else "", table(results, broker)))
    return out


def table(results: dict[str, Any], broker: str = "redis") -> tuple[list[str], list[list[str]]]:
    """Header and rows of cells of one broker's systems, ready for either rendering."""
    systems = {n: s for n, s in results["systems"].items() if broker_of(s) == broker}
    names = list(systems)
    hexq_name = HEXQ_OF.get(broker, "hexq")
    peers = [n for n in names if n != hexq_name]
    _, ceiling_label, ceiling_rows = BROKERS[broker]
    # the embedded table has one peer: name it
    versus = f"{hexq_name} / {peers[0]}" if broker != "redis" and len(peers) == 1 else f"{hexq_name} / best peer"
    header = ["workload", *[f"{n} {systems[n]['version']}" for n in names], ceiling_label, versus]
    rows = []
    ran = workloads_of(results)
    for key, label, kind, better, workload in ROWS:
        if workload and workload not in ran:
            continue
        if key in CEILING_ROWS and key not in ceiling_rows:
            continue
        if workload and names and all(workload in systems[n].get("skips", ()) for n in names):
            continue  # e.g. the priority and proxy rows of the SQLite table
        row: dict[str, Any] = {}
        for name in names:
            system = systems[name]
            if key == "setup":
                row[name] = system["setup"]
            elif system.get("status"):
                row[name] = system["status"]
            elif key.startswith("ceiling"):
                row[name] = None
            elif key == "batch" and not system.get("has_batch"):
                row[name] = NO_BATCH
            elif key.startswith("prio") and not system.get("has_priority"):
                row[name] = NO_PRIORITY
            elif key.startswith("proxy") and results.get("proxy_rtt_ms") is None:
                row[name] = "—"
            else:
                row[name] = system["median"].get(key, "—")
        ceiling = results.get(key) if key.startswith("ceiling") else None
        cells = [fmt(row[n], kind) + ("*" if capped(systems[n], key) else "") for n in names]
        rows.append([label, *cells, fmt(ceiling, kind),
                     ratio(row, peers, better, hexq_name) if key != "setup" else ""])
    return header, rows


def capped(system: dict[str, Any], key: str) -> list[int]:
    """How many tasks each capped repetition of this processing row completed (empty: none capped)."""
    base = key.removesuffix("_steady")
    if base not in ("proc", "proxy"):
        return []
    return [r[base + "_done"] for r in system.get("reps", []) if isinstance(r.get(base + "_done"), int)]


def render_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(header, widths, strict=True)), line("-" * w for w in widths)]
    for row in rows:
        cells = zip(row, widths, strict=True)
        out.append(line((c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(cells)))
    return "\n".join(out)


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def file_system(path: Any) -> str:
    """The type of the file system holding ``path`` (``ext4``, ``tmpfs``...), or ``?``."""
    best, kind = "", "?"
    try:
        for part in psutil.disk_partitions(all=True):
            mount = part.mountpoint.rstrip("/") + "/"
            if (str(path).rstrip("/") + "/").startswith(mount) and len(mount) > len(best):
                best, kind = mount, part.fstype
    except (OSError, RuntimeError):
        pass
    return kind


def machine(redis_version: str, sqlite_dir: Any = None) -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": redis_version,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": round(os.getloadavg()[0], 2),
        **({"sqlite": sqlite3.sqlite_version, "sqlite_dir": str(sqlite_dir), "sqlite_fs": file_system(sqlite_dir)}
           if sqlite_dir is not None else {}),
    }


def markdown_document(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    body: list[str] = []
    for title, (header, rows) in tables(results):
        body += ([f"**{title}**", ""] if title else []) + [render_markdown(header, rows), ""]
    sqlite_info = (f" SQLite {m['sqlite']}, database files on {m.get('sqlite_fs', '?')}." if m.get("sqlite") else "")
    lines = [
        "# hexq benchmark results",
        "",
        "Generated by `python -m bench` — do not edit by hand; re-run it instead (see bench/README.md).",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, {m['platform']}; "
        f"Python {m['python']}; Redis {m['redis']}; {m['date']}. 1-minute load average {m['load_start']} at "
        f"the start, {m.get('load_end', '?')} at the end (anything else running skews the numbers).{sqlite_info}",
        "",
        f"Command: `{results['command']}` — {settings(results)}; median of {cfg['repeat']} run(s). "
        f"Total time {results['seconds']:.0f} s.",
        "",
        *body,
        *notes(results),
    ]
    return "\n".join(lines) + "\n"


def settings(results: dict[str, Any]) -> str:
    """The parameters of the workloads that ran, for the line under the title."""
    cfg = results["config"]
    ran = ran_for_some(results)
    parts = []
    if "processing" in ran or "batch" in ran:
        parts.append(f"N={cfg['n']} tasks per throughput run")
    if "proxy" in ran:
        parts.append(f"{cfg['proxy_n']} through the proxy")
    if "latency" in ran:
        parts.append(f"latency: {cfg['latency_count']} tasks {cfg['latency_interval'] * 1000:.0f} ms apart; "
                     f"eta: {cfg['eta_count']} tasks due {cfg['eta_delay']:.0f} s later")
    if "priority" in ran and "prio_low" in cfg:
        parts.append(f"priority: {cfg['prio_low']} low tasks of 2 ms, then up to {cfg['prio_count']} high "
                     f"ones {cfg['prio_interval'] * 1000:.0f} ms apart")
    if workloads_of(results) != WORKLOADS:
        parts.append(f"workloads: {', '.join(workloads_of(results))}")
    return "; ".join(parts)


def notes(results: dict[str, Any]) -> list[str]:
    rtt = results.get("proxy_rtt_ms")
    cfg = results["config"]
    ran = ran_for_some(results)
    on_redis = any(broker_of(s) == "redis" for s in results["systems"].values())
    sqlite = [n for n, s in results["systems"].items() if broker_of(s) == "sqlite"]
    lines = [
        "Notes:",
        "",
        "- Every task's only work is one Redis `INCR` (the harness polls that counter to see completions); "
        "latency/eta tasks record `time.time()` at start. Latency = start - enqueue; eta lateness = start - due.",
        "- Processing rates count from starting the worker command (so they include its start-up) to the last "
        "completion; 'steady' is the rate between 10% and 90% of completions.",
        f"- `*`: the run was still going after the {results['config']['cap']:.0f} s cap; its rates are over "
        "the tasks completed by then (counts under Problems).",
        "- RSS is the sum over the worker process tree (pages shared after fork are counted in every process); "
        "PSS splits each shared page between the processes sharing it, so its sum is the memory really used.",
        *(["- The ceiling is one redis-py client doing two round trips per task with no pipelining; systems "
            "that batch or run several processes can pass it."] if on_redis else []),
        "- Ratio: hexq divided by the best peer in that row (for ↓ rows below 1 is better; for eta, by distance "
        "from 0)" + ("; in the SQLite table, hexq-sqlite divided by the other embedded broker." if sqlite else "."),
        *([f"- The proxy adds a measured {rtt:.2f} ms per Redis round trip between workers and Redis (the "
           "completion counter bypasses it)." if rtt is not None else "- The proxy run was skipped."]
          if on_redis else []),
    ]
    if sqlite:
        m = results.get("machine", {})
        lines += [
            f"- Embedded brokers ({', '.join(sqlite)}): the queue is an SQLite database file (WAL), a new one for "
            f"each step, in a temp folder on {m.get('sqlite_fs', '?')} (SQLite {m.get('sqlite', '?')}), shared by "
            "the client process and the worker processes; the tasks, the workloads and the harness are the "
            "same as above, so the completion counter and the stamps stay in the harness's Redis (the broker "
            "under test is SQLite; Redis only counts). Priority and proxy workloads do not apply to them.",
            "- Durability as each ships it: hexq-sqlite commits with synchronous=NORMAL (the WAL is fsync'ed at "
            "checkpoints), SqliteHuey leaves SQLite's default synchronous=FULL (an fsync of the WAL on every "
            "commit, so each enqueue and dequeue waits for the disk). SqliteHuey's consumer polls its table: "
            "its defaults (0.1 s, backing off to 10 s) are tightened to a fixed 10 ms (`-d 0.01 -b 1 -m 0.01`); "
            "its scheduler (etas) keeps its 1 s tick.",
            "- The SQLite ceiling is one sqlite3 connection (WAL, synchronous=NORMAL) doing, per task, one INSERT "
            "and one BEGIN IMMEDIATE transaction that SELECTs the oldest row and DELETEs it.",
        ]
    if "cost" in ran:
        lines.append(
            "- Redis CPU and commands per task (`bench/cost.py`): the server's used_cpu_sys + used_cpu_user "
            "(`INFO cpu`) and the sum of `calls` over `INFO commandstats`, read before and after N single "
            "enqueues (no worker running) and again from starting the worker command (start-up included) to "
            "the last completion plus 0.25 s; divided by the tasks. Commands run inside Lua scripts and "
            "MULTI/EXEC count under their own names besides the EVALSHA/EXEC that ran them, for every system. "
            "The completion counter is on a second redis-server for this workload, so the harness's polling "
            "and the tasks' INCRs are not in the figures; the harness's INFO calls are left out.")
    if "priority" in ran:
        lines.append(
            f"- Priority under load: each system's priority app (`bench/apps/<system>_priority_app.py`), 2 worker "
            f"processes; {cfg.get('prio_low')} tasks that each sleep 2 ms are queued on the low-priority side, "
            f"then a high-priority task is sent every {cfg.get('prio_interval', 0) * 1000:.0f} ms (at most "
            f"{cfg.get('prio_count')}, and only while at least {cfg.get('prio_margin')} low tasks are still to "
            "do); p50/p99 of the high tasks' start - enqueue. How each system prefers the high side is under "
            "Priority below; `—`: no priorities.")
    lines += ["", "Worker commands:", ""]
    for name, system in results["systems"].items():
        lines.append(f"- {name}: `{system['command']}` — {system['setup']}"
                     + (f" — **{system['reason']}**" if system.get("status") else ""))
    if "priority" in ran:
        lines += ["", "Priority:", ""]
        for name, system in results["systems"].items():
            if "priority" in system.get("skips", ()):
                continue
            command = f"`{system['priority_command']}` — " if system.get("has_priority") else ""
            lines.append(f"- {name}: {command}{system.get('priority', '')}")
    problems = [(n, e) for n, s in results["systems"].items() for e in s.get("errors", [])]
    for name, system in results["systems"].items():
        done = [r["cost_done"] for r in system.get("reps", []) if isinstance(r.get("cost_done"), int)]
        if done:
            problems.append((name, f"cost: capped at {results['config']['cap']:.0f} s after "
                                   f"{', '.join(map(str, done))} tasks (processing figures per task done)"))
        for key, what in (("proc", "processing"), ("proxy", "processing via proxy")):
            extra = [r[key + "_extra"] for r in system.get("reps", []) if r.get(key + "_extra")]
            if extra:
                problems.append((name, f"{what}: the counter overshot N by {', '.join(map(str, extra))} "
                                       "(tasks run more than once)"))
            done = capped(system, key)
            if done:
                total = results["config"]["proxy_n" if key == "proxy" else "n"]
                problems.append((name, f"{what} capped at {results['config']['cap']:.0f} s: "
                                       f"{', '.join(map(str, done))} of {total} tasks done"))
        sent = [r["prio_sent"] for r in system.get("reps", []) if isinstance(r.get("prio_sent"), int)]
        if any(s < cfg.get("prio_count", 0) for s in sent):
            problems.append((name, f"priority: the low queue drained after {', '.join(map(str, sent))} of "
                                   f"{cfg['prio_count']} high-priority tasks (percentiles over those)"))
    goals = sqlite_goals(results)
    if goals:
        lines += ["", "SQLite goals (hexq-sqlite in this run, medians; eta: every repetition):", "", *goals]
    if problems:
        lines += ["", "Problems:", ""] + [f"- {n}: {e}" for n, e in problems]
    return lines


def sqlite_goals(results: dict[str, Any]) -> list[str]:
    """Whether hexq on SQLite met the goals set for it against SqliteHuey, in this run (nothing asserts)."""
    systems = results["systems"]
    ours, theirs = systems.get("hexq-sqlite"), systems.get("huey-sqlite")
    if not ours or ours.get("status"):
        return []
    mine = ours.get("median", {})
    other = theirs.get("median", {}) if theirs and not theirs.get("status") else {}

    def num(cells: dict[str, Any], key: str) -> float | None:
        value = cells.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**missed**")

    out = []
    a, b = num(mine, "proc_steady"), num(other, "proc_steady")
    if a is not None and b:
        out.append(f"- steady processing ≥ 2x huey-sqlite: {a:,.0f} vs {b:,.0f} tasks/s = {a / b:.2f}x: "
                   f"{verdict(a >= 2 * b)}")
    a, b = num(mine, "enqueue"), num(other, "enqueue")
    if a is not None and b:
        out.append(f"- single enqueue ≥ huey-sqlite: {a:,.0f} vs {b:,.0f} tasks/s = {a / b:.2f}x: "
                   f"{verdict(a >= b)}")
    a, b = num(mine, "batch"), num(mine, "enqueue")
    if a is not None and b:
        out.append(f"- batch enqueue ≥ 10x single: {a:,.0f} vs {b:,.0f} tasks/s = {a / b:.1f}x: "
                   f"{verdict(a >= 10 * b)}")
    a = num(mine, "lat_p99")
    if a is not None:
        out.append(f"- idle latency p99 ≤ 10 ms: {a:.1f} ms: {verdict(a <= 10)}")
    lows = [r["eta_min"] for r in ours.get("reps", []) if isinstance(r.get("eta_min"), (int, float))]
    if lows:
        out.append(f"- eta never early: earliest start {min(lows):+.1f} ms from due over {len(lows)} "
                   f"repetition(s): {verdict(min(lows) >= 0)}")
    return out
