"""``edgefuse topics``, ``echo`` and ``hz``: look into a running pipeline, as ``ros2 topic``.

Running pipelines are found through their ``graph.json`` (see :mod:`edgefuse.rundir`); the
tools subscribe to a topic's publisher like any node (with the pipeline's CURVE keys, or
``--keys`` for another client pair) and never disturb it beyond one more subscriber.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import deque
from typing import Any, TextIO

import numpy as np

from edgefuse import rundir
from edgefuse.envelope import Message
from edgefuse.errors import EdgefuseError
from edgefuse.transport import CurveKeys, Subscriber, TransportOptions


class TopicNotFoundError(EdgefuseError):
    """No running pipeline publishes the topic asked for."""


def list_topics() -> list[dict[str, Any]]:
    """Every topic of every running pipeline: name, encoding, endpoint, pipeline."""
    rows = []
    for g in rundir.running_pipelines():
        for topic, t in sorted(g.get("topics", {}).items()):
            rows.append(
                {
                    "topic": topic,
                    "pipeline": g.get("name"),
                    "run_id": g.get("run_id"),
                    "encoding": t.get("encoding", ""),
                    "endpoint": t.get("endpoint", ""),
                    "keys": g.get("keys"),
                }
            )
    return rows


def find_topic(topic: str, *, pipeline: str | None = None) -> dict[str, Any]:
    """The running topic called ``topic`` (in ``pipeline`` if given, else the newest run)."""
    rows = [
        r
        for r in list_topics()
        if r["topic"] == topic and (pipeline is None or pipeline in (r["pipeline"], r["run_id"]))
    ]
    if not rows:
        known = (
            ", ".join(sorted({r["topic"] for r in list_topics()}))
            or "none (is a pipeline running? start one with 'edgefuse run')"
        )
        raise TopicNotFoundError(f"no running pipeline publishes {topic!r}; topics: {known}")
    return rows[0]


def subscribe(
    topic: str, *, pipeline: str | None = None, keys: str | None = None, client: str = "client"
) -> Subscriber:
    """A subscriber to a running topic (data is copied out, so it stays valid)."""
    row = find_topic(topic, pipeline=pipeline)
    keys_dir = keys or row["keys"]
    opts = TransportOptions(keys=CurveKeys.load(keys_dir, client=client) if keys_dir else None)
    return Subscriber(row["endpoint"], [topic], options=opts, copy=True)


def describe(msg: Message) -> str:
    """Header fields and a one-line summary per array (shape, dtype, min/max/mean)."""
    h = msg.header
    lines = [
        f"topic: {msg.topic}",
        f"seq: {h.seq}",
        f"t_sensor_ns: {h.t_sensor_ns}",
        f"t_host_ns: {h.t_host_ns}",
        f"t_ns: {h.t_ns if h.t_ns is not None else '(unknown)'}",
        f"frame_id: {h.frame_id!r}",
        f"encoding: {h.encoding!r}",
    ]
    if h.meta:
        lines.append(f"meta: {h.meta}")
    for i, a in enumerate(msg.arrays):
        desc = f"payload[{i}]: shape={list(a.shape)} dtype={a.dtype}"
        if a.size and a.dtype.kind in "biuf":
            desc += f" min={a.min():.6g} max={a.max():.6g} mean={a.mean(dtype=np.float64):.6g}"
        lines.append(desc)
    return "\n".join(lines) + "\n---"


def as_json_line(msg: Message) -> str:
    """One JSON line for ``msg``: detections decoded to their objects (class, score, boxes),
    any other message as its header and array summaries."""
    h = msg.header
    if h.encoding == "detections":
        from edgefuse.runtime.detections import from_message

        body: dict[str, Any] = from_message(msg).to_json()
    else:
        body = {
            "t_sensor_ns": h.t_sensor_ns,
            "t_host_ns": h.t_host_ns,
            "t_ns": h.t_ns,
            "frame_id": h.frame_id,
            "encoding": h.encoding,
            "arrays": [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in msg.arrays],
        }
    return json.dumps({"topic": msg.topic, "seq": h.seq, **body}, default=str)


def echo(
    topic: str,
    *,
    count: int = 0,
    timeout_s: float | None = None,
    pipeline: str | None = None,
    keys: str | None = None,
    out: TextIO | None = None,
    as_json: bool = False,
) -> int:
    """Print messages of ``topic`` (``count`` of them, 0 = until interrupted), as text blocks
    or with ``as_json`` one JSON line each; return how many. A message that cannot be decoded
    as its encoding says is reported on that line and echo goes on."""
    out = out or sys.stdout
    n = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with subscribe(topic, pipeline=pipeline, keys=keys) as sub:
        while count == 0 or n < count:
            wait = 200 if deadline is None else int(max(0, deadline - time.monotonic()) * 1000)
            msg = sub.recv(timeout_ms=min(wait, 200))
            if msg is not None:
                if as_json:
                    try:
                        line = as_json_line(msg)
                    except EdgefuseError as e:
                        line = json.dumps({"topic": msg.topic, "error": str(e)})
                    print(line, file=out, flush=True)
                else:
                    print(describe(msg), file=out, flush=True)
                n += 1
            if deadline is not None and time.monotonic() >= deadline:
                break
    return n


def hz(
    topic: str,
    *,
    window: int = 100,
    duration_s: float | None = None,
    print_every_s: float = 1.0,
    pipeline: str | None = None,
    keys: str | None = None,
    out: TextIO | None = None,
) -> dict[str, float]:
    """Print the receive rate of ``topic`` like ``ros2 topic hz``; return the last figures."""
    out = out or sys.stdout
    arrivals: deque[int] = deque(maxlen=window + 1)
    last: dict[str, float] = {}
    start = time.monotonic()
    next_print = start + print_every_s
    with subscribe(topic, pipeline=pipeline, keys=keys) as sub:
        while duration_s is None or time.monotonic() - start < duration_s:
            msg = sub.recv(timeout_ms=100)
            if msg is not None:
                arrivals.append(time.monotonic_ns())
            if time.monotonic() >= next_print:
                next_print += print_every_s
                if len(arrivals) >= 2:
                    gaps = np.diff(np.asarray(arrivals, dtype=np.int64)) / 1e9
                    last = {
                        "rate_hz": 1.0 / float(np.mean(gaps)),
                        "min_s": float(gaps.min()),
                        "max_s": float(gaps.max()),
                        "std_s": statistics.pstdev(gaps.tolist()),
                        "window": len(gaps),
                    }
                    print(
                        f"average rate: {last['rate_hz']:.3f}\n\tmin: {last['min_s']:.4f}s "
                        f"max: {last['max_s']:.4f}s std dev: {last['std_s']:.5f}s "
                        f"window: {len(gaps)}",
                        file=out,
                        flush=True,
                    )
                else:
                    print("no new messages", file=out, flush=True)
        st = sub.stats[topic]
        last["dropped"] = st.dropped
    return last
