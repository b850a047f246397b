"""The results table (plain text for the terminal, Markdown for RESULTS.md) and machine info."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any

import psutil

# (metric, label, format, better): better is "high", "low", "zero" (closest to 0) or "" (no ratio)
ROWS: list[tuple[str, str, str, str]] = [
    ("setup", "worker processes", "text", ""),
    ("enqueue", "enqueue, single .delay() (tasks/s) ↑", "rate", "high"),
    ("batch", "enqueue, batch API in 1000s (tasks/s) ↑", "rate", "high"),
    ("proc", "processing, worker start → all done (tasks/s) ↑", "rate", "high"),
    ("proc_steady", "processing, steady middle 80% (tasks/s) ↑", "rate", "high"),
    ("lat_p50", "latency p50, idle workers (ms) ↓", "ms", "low"),
    ("lat_p99", "latency p99, idle workers (ms) ↓", "ms", "low"),
    ("eta_p50", "eta lateness p50 (ms, <0 = early)", "ms", "zero"),
    ("eta_p99", "eta lateness p99 (ms)", "ms", "zero"),
    ("eta_min", "eta lateness min (ms)", "ms", ""),
    ("rss", "worker RSS after processing (MiB) ↓", "mib", "low"),
    ("pss", "worker PSS after processing (MiB, shared pages split) ↓", "mib", "low"),
    ("proxy", "processing via +1 ms proxy, start → done (tasks/s) ↑", "rate", "high"),
    ("proxy_steady", "processing via +1 ms proxy, steady (tasks/s) ↑", "rate", "high"),
    ("ceiling", "ceiling: raw redis-py LPUSH+BLPOP loop (tasks/s)", "rate", ""),
    ("ceiling_proxy", "ceiling via +1 ms proxy (tasks/s)", "rate", ""),
]
NO_BATCH = "no batch API"
CEILING = "raw redis-py"


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
    for key, label, kind, better in ROWS:
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
        f"Command: `{results['command']}` — N={cfg['n']} tasks per throughput run, "
        f"{cfg['proxy_n']} through the proxy; median of {cfg['repeat']} run(s); latency: "
        f"{cfg['latency_count']} tasks {cfg['latency_interval'] * 1000:.0f} ms apart; eta: "
        f"{cfg['eta_count']} tasks due {cfg['eta_delay']:.0f} s later. Total time {results['seconds']:.0f} s.",
        "",
        render_markdown(header, rows),
        "",
        *notes(results),
    ]
    return "\n".join(lines) + "\n"


def notes(results: dict[str, Any]) -> list[str]:
    rtt = results.get("proxy_rtt_ms")
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
        "",
        "Worker commands:",
        "",
    ]
    for name, system in results["systems"].items():
        lines.append(f"- {name}: `{system['command']}` — {system['setup']}"
                     + (f" — **{system['reason']}**" if system.get("status") else ""))
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
    if problems:
        lines += ["", "Problems:", ""] + [f"- {n}: {e}" for n, e in problems]
    return lines
