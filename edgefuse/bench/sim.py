"""``edgefuse bench sim``: can the simulated rig keep real time on one core?

Two measurements, side by side:

- **offline capacity**: each source rendered back to back in this process for ``seconds`` of
  world time; ``realtime_factor`` is generated seconds per wall second for that sensor alone,
  and ``cpu_share`` the share of one core it needs at its nominal rate (1 / factor).
- **live**: the default pipeline (``edgefuse run``, one process per sensor) for
  ``live_seconds``; CPU time of every node process read from ``/proc`` over a window that
  starts after the warm-up, so imports and scene set-up are not counted; achieved rate per
  topic against nominal (generated seconds per wall second), and how late deliveries were.

The goal: the whole rig at its default rates uses at most one core (``live.cpu_share_total``
<= 1.0) while every topic keeps its nominal rate.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefuse.sim.generate import TOPICS, make_sources
from edgefuse.sim.rig import SimParams

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_NOMINAL_HZ = {"camera": 30.0, "depth": 30.0, "lidar": 10.0, "mic": 100.0, "truth": 30.0}


def offline(*, scenario: str, seed: int, seconds: float) -> dict[str, Any]:
    """Render each source alone for ``seconds`` of world time; time it."""
    params = SimParams(scenario=scenario, seed=seed)
    out: dict[str, Any] = {}
    for name, src in make_sources(params).items():
        # Warm up (first scene build, caches) outside the measurement.
        src.sample(0)
        k0 = src.first_index(5.0)
        k1 = src.first_index(5.0 + seconds)
        times = []
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for k in range(k0, k1):
            t = time.perf_counter()
            src.sample(k)
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        times.sort()
        out[name] = {
            "samples": k1 - k0,
            "realtime_factor": round(seconds / wall, 2),
            "cpu_share": round(cpu / seconds, 3),
            "ms_per_sample_p50": round(1e3 * times[len(times) // 2], 3),
            "ms_per_sample_p99": round(1e3 * times[min(len(times) - 1, int(len(times) * 0.99))], 3),
        }
    out["cpu_share_total"] = round(sum(v["cpu_share"] for v in out.values()), 3)
    return out


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _node_name(pid: int) -> str:
    env = _cmdline(pid)
    for item in env.split("\0"):
        if item.startswith("EDGEFUSE_NODE_SPEC="):
            return str(json.loads(item.partition("=")[2])["name"])
    return f"pid{pid}"


def live(
    *,
    scenario: str,
    seed: int,
    seconds: float,
    warmup_s: float,
    pipeline: str,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``pipeline`` live and measure its nodes' CPU and rates after ``warmup_s``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pipe = Path(tmp) / "bench_sim.yaml"
        text = Path(pipeline).read_text()
        pipe.write_text(
            text.replace("scenario: day", f"scenario: {scenario}")
            .replace("seed: 0", f"seed: {seed}")
            .replace(
                "rig: calibration/", f"rig: {Path(pipeline).resolve().parents[1]}/calibration/"
            )
        )
        total = warmup_s + seconds + 1.0
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefuse",
                "run",
                str(pipe),
                "--duration",
                str(total),
                "--report",
                str(report),
                "--status",
                "off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(warmup_s)
        pids = _children(proc.pid)
        names = {p: _node_name(p) for p in pids}
        c0 = {p: _cpu_s(p) for p in pids}
        t0 = time.monotonic()
        if progress:
            progress(f"live: measuring {len(pids)} node processes for {seconds:.0f} s")
        time.sleep(seconds)
        c1 = {p: _cpu_s(p) for p in pids}
        wall = time.monotonic() - t0
        _, err = proc.communicate(timeout=total + 30)
        doc = json.loads(report.read_text()) if report.exists() else {}
    nodes = {}
    for p in pids:
        a, b = c0.get(p), c1.get(p)
        if a is not None and b is not None:
            nodes[names[p]] = {"cpu_share": round((b - a) / wall, 3)}
    nominal = {TOPICS[k]: v for k, v in _NOMINAL_HZ.items()}
    topics = {}
    for name, t in (doc.get("topics") or {}).items():
        rate = float(t.get("rate_hz", 0.0))
        topics[name] = {
            "messages": t.get("messages"),
            "rate_hz": rate,
            # Generated seconds per wall second for this sensor (drops make it slightly < 1).
            "realtime_factor": round(rate / nominal[name], 3) if name in nominal else None,
            "node_errors": (doc.get("nodes") or {}).get(t.get("node"), {}).get("errors"),
        }
    # The goal is about the simulated sensors; the rest of the pipeline (the aligner) is
    # reported beside them.
    rig_nodes = {topic.partition("/")[0] for topic in nominal}
    return {
        "nodes": nodes,
        "cpu_share_total": round(
            sum(v["cpu_share"] for n, v in nodes.items() if n in rig_nodes), 3
        ),
        "cpu_share_pipeline_total": round(sum(v["cpu_share"] for v in nodes.values()), 3),
        "window_s": round(wall, 2),
        "topics": topics,
        "launcher_exit": proc.returncode,
        "stderr_tail": err[-2000:] if proc.returncode else "",
    }


def run(
    *,
    scenario: str = "day",
    seed: int = 0,
    seconds: float = 10.0,
    live_seconds: float = 20.0,
    warmup_s: float = 6.0,
    pipeline: str = "pipelines/sim.yaml",
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark as one JSON-ready document."""
    if progress:
        progress(f"offline: each source for {seconds:g} s of world time")
    off = offline(scenario=scenario, seed=seed, seconds=seconds)
    liv = (
        live(
            scenario=scenario,
            seed=seed,
            seconds=live_seconds,
            warmup_s=warmup_s,
            pipeline=pipeline,
            progress=progress,
        )
        if live_seconds > 0
        else None
    )
    goals = {"offline_cpu_share_total<=1": off["cpu_share_total"] <= 1.0}
    if liv is not None:
        goals["live_cpu_share_total<=1"] = liv["cpu_share_total"] <= 1.0
    return {
        "benchmark": "sim",
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "scenario": scenario,
        "seed": seed,
        "nominal_hz": {TOPICS[k]: v for k, v in _NOMINAL_HZ.items()},
        "offline": off,
        "live": liv,
        "goals": goals,
    }


def format_table(doc: dict[str, Any]) -> str:
    """A few human lines for a terminal."""
    lines = [f"edgefuse bench sim  scenario={doc['scenario']} seed={doc['seed']}", "offline:"]
    for name, v in doc["offline"].items():
        if isinstance(v, dict):
            lines.append(
                f"  {name:7s} x{v['realtime_factor']:<8} real time  cpu {v['cpu_share']:.3f}  "
                f"p50 {v['ms_per_sample_p50']} ms/sample"
            )
    lines.append(f"  total cpu share {doc['offline']['cpu_share_total']}")
    if doc["live"] is not None:
        lines.append("live:")
        for name, v in doc["live"]["nodes"].items():
            lines.append(f"  {name:7s} cpu {v['cpu_share']:.3f}")
        for name, t in doc["live"]["topics"].items():
            lines.append(f"  {name:14s} {t['rate_hz']:7.2f} Hz  x{t['realtime_factor']} real time")
        lines.append(
            f"  total cpu share {doc['live']['cpu_share_total']} (simulated sensors), "
            f"{doc['live']['cpu_share_pipeline_total']} (whole pipeline)"
        )
    lines.append(f"goals: {doc['goals']}")
    return "\n".join(lines)
