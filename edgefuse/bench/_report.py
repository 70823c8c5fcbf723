"""The machine description, the goals summary and the tables of the transport benchmark."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Final

_PACKAGES: Final = ("edgefuse", "numpy", "pyzmq", "eclipse-zenoh", "iceoryx2")
_MiB: Final = 1 << 20
_GiB: Final = 1 << 30


def _cpuinfo_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) * 1024 / _GiB, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU, memory, kernel, Python and package versions of this host, for the results."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        versions["libzmq"] = None
    try:
        shm_gib: float | None = round(shutil.disk_usage("/dev/shm").total / _GiB, 1)
    except OSError:
        shm_gib = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpuinfo_model(),
        "mem_total_GiB": _mem_total_gib(),
        "dev_shm_GiB": shm_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _find(results: Iterable[dict[str, Any]], transport: str, size: str, rate: str) -> Any:
    for r in results:
        if (r["transport"], r["size"], r["rate"]) == (transport, size, rate) and not r["error"]:
            return r
    return None


def _p(res: dict[str, Any] | None, q: str) -> float | None:
    if res is None:
        return None
    v = res["latency_ms"].get(q)
    return None if v is None else float(v)


def _goal(
    goal_id: str, goal: str, target: str, measured: float | None, met: bool, **extra: Any
) -> dict[str, Any]:
    return {
        "id": goal_id,
        "goal": goal,
        "target": target,
        "measured": None if measured is None else round(measured, 4),
        "met": bool(met) and measured is not None,
        **extra,
    }


def _peer_ratio_goal(results: list[dict[str, Any]], peer: str) -> dict[str, Any]:
    """edgefuse-shm p50 / ``peer`` p50 at 30 Hz for every measured size of 1 MiB or more."""
    ratios: dict[str, float] = {}
    for r in results:
        if r["transport"] != "edgefuse-shm" or r["rate"] != "30" or r["bytes"] < _MiB:
            continue
        ours, theirs = _p(r, "p50"), _p(_find(results, peer, r["size"], "30"), "p50")
        if ours is not None and theirs:
            ratios[r["size"]] = round(ours / theirs, 3)
    worst = max(ratios.values()) if ratios else None
    return _goal(
        f"shm_vs_{peer}_p50_ratio_ge_1MiB_30Hz",
        f"edgefuse-shm no slower than {peer} at >= 1 MiB (p50 ratio edgefuse/{peer}, "
        "worst size, @30 Hz)",
        "<= 1.0",
        worst,
        worst is not None and worst <= 1.0,
        per_size=ratios,
    )


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals as measured facts (each with its target and ``met``), and p50 grids."""
    shm = _find(results, "edgefuse-shm", "6.2MiB", "30")
    pyzmq = _find(results, "pyzmq-copy", "6.2MiB", "30")
    tcp = _find(results, "edgefuse-tcp", "6.2MiB", "max")
    p50, p99 = _p(shm, "p50"), _p(shm, "p99")
    pz = _p(pyzmq, "p50")
    ratio = pz / p50 if pz is not None and p50 else None
    tcp_gbps = None
    if tcp is not None and tcp["throughput_MBps"] is not None:
        tcp_gbps = float(tcp["throughput_MBps"]) / 1000
    goals = [
        _goal(
            "shm_6.2MiB_30Hz_p50_ms",
            "same-host edgefuse-shm p50 latency, 6.2 MiB (1080p bgr8) @30 Hz",
            "<= 0.3 ms",
            p50,
            p50 is not None and p50 <= 0.3,
        ),
        _goal(
            "shm_6.2MiB_30Hz_p99_ms",
            "same-host edgefuse-shm p99 latency, 6.2 MiB @30 Hz",
            "<= 1.0 ms",
            p99,
            p99 is not None and p99 <= 1.0,
        ),
        _goal(
            "pyzmq_copy_over_shm_p50_ratio_6.2MiB_30Hz",
            "p50 of plain pyzmq (copying, ipc) / p50 of edgefuse-shm, 6.2 MiB @30 Hz",
            ">= 5",
            ratio,
            ratio is not None and ratio >= 5,
        ),
        _peer_ratio_goal(results, "iceoryx2"),
        _peer_ratio_goal(results, "zenoh"),
        _goal(
            "tcp_6.2MiB_max_GBps",
            "edgefuse-tcp loopback throughput received, 6.2 MiB at max rate (GB = 1e9 bytes)",
            ">= 1.0 GB/s",
            tcp_gbps,
            tcp_gbps is not None and tcp_gbps >= 1.0,
        ),
    ]
    grids: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in results:
        grids.setdefault(r["rate"], {}).setdefault(r["transport"], {})[r["size"]] = _p(r, "p50")
    return {
        "goals": goals,
        "goals_met": sum(g["met"] for g in goals),
        "goals_total": len(goals),
        "corrupt_total": sum(int(r["corrupt"] or 0) for r in results),
        "errors": sum(1 for r in results if r["error"]),
        "p50_ms": grids,
    }


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def progress_line(r: dict[str, Any]) -> str:
    """One line about a finished cell, for the progress output on stderr."""
    head = f"{r['transport']:<17} {r['size']:>7} @{r['rate']:<4}"
    if r["error"]:
        return f"{head} ERROR {r['error'][:160]}"
    lat = r["latency_ms"]
    return (
        f"{head} p50 {_fmt(lat.get('p50'), '8.3f')} ms  p99 {_fmt(lat.get('p99'), '8.3f')} ms  "
        f"{_fmt(r['throughput_msg_s'], '9.1f')} msg/s {_fmt(r['throughput_MBps'], '9.1f')} MB/s  "
        f"sent {r['sent']} lost {r['lost']} corrupt {r['corrupt']}"
    )


_COLUMNS: Final = (
    ("transport", "transport", "s"),
    ("size", "size", "s"),
    ("p50 ms", "p50", ".3f"),
    ("p99 ms", "p99", ".3f"),
    ("msg/s", "throughput_msg_s", ".1f"),
    ("MB/s", "throughput_MBps", ".1f"),
    ("sent", "sent", "d"),
    ("lost", "lost", "d"),
    ("corrupt", "corrupt", "d"),
)


def _rows(results: list[dict[str, Any]], rate: str) -> list[list[str]]:
    rows = []
    for r in results:
        if r["rate"] != rate:
            continue
        row = []
        for _, key, spec in _COLUMNS:
            v = r["latency_ms"].get(key) if key in ("p50", "p99") else r.get(key)
            row.append(_fmt(v, spec) if not r["error"] or key in ("transport", "size") else "-")
        if r["error"]:
            row[2] = "error"
        rows.append(row)
    return rows


def format_table(doc: dict[str, Any]) -> str:
    """The results and goals as plain-text tables (what ``edgefuse bench transport`` prints)."""
    results = doc["results"]
    m = doc["machine"]
    out = [
        f"{doc['command']}",
        f"{m['cpu_count']} x {m['cpu_model']}, {m['mem_total_GiB']} GiB, Python {m['python']}",
    ]
    for rate in dict.fromkeys(r["rate"] for r in results):
        out.append("")
        out.append(f"rate: {rate}{' Hz' if rate != 'max' else ''}")
        header = [c[0] for c in _COLUMNS]
        rows = _rows(results, rate)
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            cells = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            out.append("  ".join(cells))
    errors = [r for r in results if r["error"]]
    if errors:
        out.append("")
        out.extend(
            f"error: {r['transport']} {r['size']} @{r['rate']}: {r['error']}" for r in errors
        )
    out.append("")
    out.append("goals:")
    for g in doc["summary"]["goals"]:
        mark = "met" if g["met"] else "NOT met" if g["measured"] is not None else "n/a"
        out.append(f"  {mark:<8} {g['goal']}: {_fmt(g['measured'], '.3f')} (target {g['target']})")
    return "\n".join(out)


def format_markdown(doc: dict[str, Any]) -> str:
    """The results and goals as markdown tables (for docs/BENCHMARKS.md)."""
    results = doc["results"]
    out: list[str] = []
    for rate in dict.fromkeys(r["rate"] for r in results):
        out.append(f"**Rate: {rate}{' Hz' if rate != 'max' else ''}**")
        out.append("")
        out.append("| " + " | ".join(c[0] for c in _COLUMNS) + " |")
        out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(_COLUMNS))) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in _rows(results, rate))
        out.append("")
    out.append("| goal | target | measured | met |")
    out.append("|---|---|---:|---|")
    for g in doc["summary"]["goals"]:
        measured = _fmt(g["measured"], ".3f")
        if g.get("per_size"):
            measured += " (" + ", ".join(f"{k}: {v}" for k, v in g["per_size"].items()) + ")"
        met = "yes" if g["met"] else "no" if g["measured"] is not None else "not measured"
        out.append(f"| {g['goal']} | {g['target']} | {measured} | {met} |")
    return "\n".join(out)
