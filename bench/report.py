"""The results table (plain text for the terminal, Markdown for RESULTS.md) and machine info."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any

import psutil

from bench.harness import WORKLOADS

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
    ("ceiling", "ceiling: raw redis-py LPUSH+BLPOP loop (tasks/s)", "rate", "", "processing"),
    ("ceiling_proxy", "ceiling via +1 ms proxy (tasks/s)", "rate", "", "proxy"),
]
NO_BATCH = "no batch API"
NO_PRIORITY = "—"
CEILING = "raw redis-py"


def kind_of(key: str) -> str:
    """How a cell of this metric is formatted."""
    kinds = {row[0]: row[2] for row in ROWS}
    return kinds.get(key, "text" if key.endswith(("_sent", "_done", "_extra")) else "rate")


def workloads_of(results: dict[str, Any]) -> tuple[str, ...]:
    return tuple(results.get("config", {}).get("workloads", WORKLOADS))


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
    return str(value)


def ratio(row: dict[str, Any], peers: list[str], better: str) -> str:
    hexq = row.get("hexq")
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


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of cells, ready for either rendering."""
    systems = results["systems"]
    names = list(systems)
    peers = [n for n in names if n != "hexq"]
    header = ["workload", *[f"{n} {systems[n]['version']}" for n in names], CEILING, "hexq / best peer"]
    rows = []
    ran = workloads_of(results)
    for key, label, kind, better, workload in ROWS:
        if workload and workload not in ran:
            continue
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
        rows.append([label, *cells, fmt(ceiling, kind), ratio(row, peers, better) if key != "setup" else ""])
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


def machine(redis_version: str) -> dict[str, Any]:
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
    }


def markdown_document(results: dict[str, Any]) -> str:
    header, rows = table(results)
    m = results["machine"]
    cfg = results["config"]
    lines = [
        "# hexq benchmark results",
        "",
        "Generated by `python -m bench` — do not edit by hand; re-run it instead (see bench/README.md).",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, {m['platform']}; "
        f"Python {m['python']}; Redis {m['redis']}; {m['date']}. 1-minute load average {m['load_start']} at "
        f"the start, {m.get('load_end', '?')} at the end (anything else running skews the numbers).",
        "",
        f"Command: `{results['command']}` — {settings(results)}; median of {cfg['repeat']} run(s). "
        f"Total time {results['seconds']:.0f} s.",
        "",
        render_markdown(header, rows),
        "",
        *notes(results),
    ]
    return "\n".join(lines) + "\n"


def settings(results: dict[str, Any]) -> str:
    """The parameters of the workloads that ran, for the line under the title."""
    cfg = results["config"]
    ran = workloads_of(results)
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
    if ran != WORKLOADS:
        parts.append(f"workloads: {', '.join(ran)}")
    return "; ".join(parts)


def notes(results: dict[str, Any]) -> list[str]:
    rtt = results.get("proxy_rtt_ms")
    cfg = results["config"]
    ran = workloads_of(results)
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
        "- The ceiling is one redis-py client doing two round trips per task with no pipelining; systems that "
        "batch or run several processes can pass it.",
        "- Ratio: hexq divided by the best peer in that row (for ↓ rows below 1 is better; for eta, by distance "
        "from 0).",
        (f"- The proxy adds a measured {rtt:.2f} ms per Redis round trip between workers and Redis (the "
         "completion counter bypasses it)." if rtt is not None else "- The proxy run was skipped."),
    ]
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
            command = f"`{system['priority_command']}` — " if system.get("has_priority") else ""
            lines.append(f"- {name}: {command}{system.get('priority', '')}")
    problems = [(n, e) for n, s in results["systems"].items() for e in s.get("errors", [])]
    for name, system in results["systems"].items():
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
    if problems:
        lines += ["", "Problems:", ""] + [f"- {n}: {e}" for n, e in problems]
    return lines
