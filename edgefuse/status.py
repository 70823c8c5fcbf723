"""Live statistics of a running pipeline: aggregation of node reports, the status table and
the ``--report`` JSON.

Nodes send cumulative counters about twice a second (publishers: messages and bytes per
topic; subscribers: messages, drops from ``seq`` gaps, shared-memory overruns, malformed
messages, and new publish-to-receive latency samples). Counters are kept per node process,
so a restarted node's fresh counters add to, rather than replace, its predecessor's.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from edgefuse.transport.stats import percentiles_ms

_MAX_SAMPLES = 200_000


@dataclass(slots=True)
class _TopicAgg:
    published: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (msgs, bytes)
    received: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    latency_ns: list[int] = field(default_factory=list)
    recent_ns: deque[int] = field(default_factory=lambda: deque(maxlen=600))
    history: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=64))
    first: tuple[float, int] | None = None

    def totals(self) -> tuple[int, int]:
        return (
            sum(m for m, _ in self.published.values()),
            sum(b for _, b in self.published.values()),
        )

    def sub_sum(self, key: str) -> int:
        return sum(int(r.get(key, 0)) for r in self.received.values())

    def malformed(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.received.values():
            for k, v in r.get("malformed", {}).items():
                out[k] += int(v)
        return dict(out)


class StatusBoard:
    """Aggregates node reports per topic; renders the table and the JSON report."""

    def __init__(self, topics: dict[str, tuple[str, str, str]]) -> None:
        self.topics = topics
        self._agg: dict[str, _TopicAgg] = {t: _TopicAgg() for t in topics}
        self.node_errors: dict[str, dict[str, int]] = {}
        self.node_counters: dict[str, dict[str, int | float]] = {}
        self.unattributed: dict[str, int] = defaultdict(int)
        self.started = time.monotonic()

    def ingest(self, report: dict[str, Any]) -> None:
        """Take one node report (see :meth:`edgefuse.node.NodeRunner.stats`)."""
        node, pid = str(report.get("node")), int(report.get("pid", 0))
        now = time.monotonic()
        for topic, s in report.get("published", {}).items():
            agg = self._agg.get(topic)
            if agg is None:
                continue
            agg.published[pid] = (int(s["messages"]), int(s["bytes"]))
            msgs, nbytes = agg.totals()
            agg.history.append((now, msgs, nbytes))
            if agg.first is None:
                agg.first = (now, msgs)
        for topic, s in report.get("received", {}).items():
            agg = self._agg.get(topic)
            if agg is None:
                for k, v in s.get("malformed", {}).items():
                    self.unattributed[k] += int(v)
                continue
            samples = s.get("latency_ns", [])
            agg.received[(node, pid)] = {k: v for k, v in s.items() if k != "latency_ns"}
            if len(agg.latency_ns) < _MAX_SAMPLES:
                agg.latency_ns.extend(int(x) for x in samples)
            agg.recent_ns.extend(int(x) for x in samples)
        if report.get("errors"):
            self.node_errors[node] = dict(report["errors"])
        if report.get("counters"):
            self.node_counters[node] = dict(report["counters"])

    def _rate(self, agg: _TopicAgg, window_s: float = 2.0) -> tuple[float, float]:
        if len(agg.history) < 2:
            return 0.0, 0.0
        t1, m1, b1 = agg.history[-1]
        t0, m0, b0 = agg.history[0]
        for t, m, b in agg.history:
            if t1 - t <= window_s:
                t0, m0, b0 = t, m, b
                break
        dt = t1 - t0
        if dt <= 0:
            return 0.0, 0.0
        if time.monotonic() - t1 > 3 * window_s:
            return 0.0, 0.0  # nothing heard for a while: the publisher is stalled or gone
        return (m1 - m0) / dt, (b1 - b0) / dt

    def table(self, nodes: list[dict[str, Any]]) -> str:
        """The live status table: one line per topic, then one per node."""
        lines = [
            f"{'TOPIC':<24} {'ENC':<10} {'RATE Hz':>8} {'MB/s':>8} {'MSGS':>8} {'DROPS':>6} "
            f"{'OVERRUN':>7} {'BAD':>5} {'LAT p50/p99 ms':>16}"
        ]
        for topic, (_, _, enc) in sorted(self.topics.items()):
            agg = self._agg[topic]
            rate, bw = self._rate(agg)
            lat = percentiles_ms(agg.recent_ns)
            lat_s = f"{lat['p50']:.2f}/{lat['p99']:.2f}" if lat else "-"
            lines.append(
                f"{topic:<24} {enc:<10} {rate:8.1f} {bw / 1e6:8.2f} {agg.totals()[0]:8d} "
                f"{agg.sub_sum('dropped'):6d} {agg.sub_sum('overruns'):7d} "
                f"{sum(agg.malformed().values()):5d} {lat_s:>16}"
            )
        lines.append("")
        lines.append(
            f"{'NODE':<16} {'TYPE':<16} {'PID':>8} {'STATE':<10} {'RESTARTS':>8} {'ERRORS':>6} "
            "COUNTERS"
        )
        for n in nodes:
            errs = sum(self.node_errors.get(n["name"], {}).values())
            counters = " ".join(
                f"{k}={_short(v)}" for k, v in self.node_counters.get(n["name"], {}).items()
            )
            lines.append(
                f"{n['name']:<16} {n['type'][:16]:<16} {n.get('pid') or '-':>8} {n['state']:<10} "
                f"{n['restarts']:8d} {errs:6d} {counters}"
            )
        return "\n".join(lines)

    def report(self, nodes: list[dict[str, Any]], *, pipeline: str, run_id: str) -> dict[str, Any]:
        """The ``--report`` document: per-topic counts, rates, drops and latency percentiles."""
        topics = {}
        for topic, (node, stream, enc) in sorted(self.topics.items()):
            agg = self._agg[topic]
            msgs, nbytes = agg.totals()
            rate_hz = 0.0
            if agg.first is not None and agg.history:
                t0, m0 = agg.first
                t1, m1, _ = agg.history[-1]
                rate_hz = (m1 - m0) / (t1 - t0) if t1 > t0 else 0.0
            topics[topic] = {
                "node": node,
                "stream": stream,
                "encoding": enc,
                "messages": msgs,
                "bytes": nbytes,
                "rate_hz": round(rate_hz, 3),
                "bandwidth_MBps": round(rate_hz * (nbytes / msgs) / 1e6, 3) if msgs else 0.0,
                "subscribers": sorted({n for n, _ in agg.received}),
                "received": agg.sub_sum("messages"),
                "dropped": agg.sub_sum("dropped"),
                "overruns": agg.sub_sum("overruns"),
                "malformed": agg.malformed(),
                "latency_ms": percentiles_ms(agg.latency_ns),
            }
        return {
            "pipeline": pipeline,
            "run_id": run_id,
            "duration_s": round(time.monotonic() - self.started, 3),
            "topics": topics,
            "unattributed_malformed": dict(self.unattributed),
            "nodes": {
                n["name"]: {
                    **n,
                    "errors": self.node_errors.get(n["name"], {}),
                    "counters": self.node_counters.get(n["name"], {}),
                }
                for n in nodes
            },
        }


def _short(v: int | float) -> str:
    """A counter value for the table: ints as they are, floats with 3 significant digits."""
    return str(v) if isinstance(v, int) else f"{v:.3g}"
