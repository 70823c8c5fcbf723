"""Per-topic counters kept by publishers and subscribers, reported by nodes to the launcher."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATENCY_SAMPLES = 4096


@dataclass(slots=True)
class TopicStats:
    """Counters for one topic on one side (publisher or subscriber)."""

    messages: int = 0
    bytes: int = 0
    #: Messages lost between publisher and subscriber, from gaps in ``seq``.
    dropped: int = 0
    #: Shared-memory slots reused before the subscriber read them.
    overruns: int = 0
    #: Malformed messages by kind (``bad_header``, ``size_mismatch``, ...).
    malformed: Counter[str] = field(default_factory=Counter)
    #: Publish-to-receive latencies in ns (most recent samples).
    latency_ns: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the counters (latency as recent samples, in ns)."""
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "overruns": self.overruns,
            "malformed": dict(self.malformed),
            "latency_ns": list(self.latency_ns),
        }


def percentiles_ms(samples_ns: Any, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` in milliseconds, or {} when there are no samples."""
    arr = np.asarray(list(samples_ns), dtype=np.float64)
    if arr.size == 0:
        return {}
    vals = np.percentile(arr, qs) / 1e6
    out = {f"p{q:g}": round(float(v), 4) for q, v in zip(qs, vals, strict=True)}
    out["max"] = round(float(arr.max()) / 1e6, 4)
    return out
