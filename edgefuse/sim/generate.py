"""``edgefuse sim generate``: simulated sessions written to a file, as fast as the machine goes.

The generator runs the same sources as the live nodes and merges their samples by simulated
delivery time, so a session is what a recorder would have received live, minus the machine's
own delays: ``t_host_ns`` is the simulated arrival on a host timeline whose world time 0 is
:data:`GENERATE_EPOCH_NS`. The file is a session of edgefuse envelopes in MCAP (see
:mod:`edgefuse.record.session`), with the rig calibration attached and the scenario, seed and
true clock parameters in its metadata. The same arguments give the same file, byte for byte.
"""

from __future__ import annotations

import heapq
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from edgefuse.envelope import Header
from edgefuse.record import SessionWriter
from edgefuse.sim.rig import (
    CameraSource,
    DepthSource,
    LidarSource,
    MicSource,
    Sample,
    SimParams,
    Source,
    TruthSource,
    load_rig,
    resolve_rig_path,
)

#: Host time (ns) of world time 0 in generated sessions (an arbitrary, fixed "uptime").
GENERATE_EPOCH_NS = 1_000_000_000_000
#: Topic of each source in a generated session (the default pipeline's node names).
TOPICS = {
    "camera": "camera/image",
    "depth": "depth/image",
    "lidar": "lidar/points",
    "mic": "mic/audio",
    "truth": "sim/truth",
}


def make_sources(
    params: SimParams, *, sensors: tuple[str, ...] = tuple(TOPICS)
) -> dict[str, Source]:
    """The default-rate sources of the simulated rig (keys as :data:`TOPICS`)."""
    rig = load_rig(params)
    makers: dict[str, Callable[[], Source]] = {
        "camera": lambda: CameraSource(params, rate_hz=30.0, rig=rig),
        "depth": lambda: DepthSource(params, rate_hz=30.0, rig=rig),
        "lidar": lambda: LidarSource(params, rate_hz=10.0, rig=rig),
        "mic": lambda: MicSource(params, rate_hz=16000, rig=rig),
        "truth": lambda: TruthSource(params, rate_hz=30.0, rig=rig),
    }
    unknown = set(sensors) - set(makers)
    if unknown:
        raise ValueError(f"unknown sensors {sorted(unknown)}; expected some of {list(makers)}")
    return {s: makers[s]() for s in sensors}


def session_metadata(
    params: SimParams, *, source: str, duration_s: float
) -> dict[str, dict[str, str]]:
    """The metadata every generated session starts with: what made it (``source``), its
    scenario, seed, duration and epoch, and the full simulation parameters as JSON."""
    return {
        "session": {
            "source": source,
            "scenario": params.scenario,
            "seed": str(params.seed),
            "duration_s": repr(float(duration_s)),
            "epoch_ns": str(GENERATE_EPOCH_NS),
        },
        "sim_params": {"json": json.dumps(asdict(params), sort_keys=True)},
    }


def session_writer(path: str | Path, params: SimParams, metadata: Any) -> SessionWriter:
    """A session file at ``path`` with ``metadata`` and the rig calibration of ``params``
    attached (``calibration/<file name>``)."""
    rig_path = resolve_rig_path(params.rig)
    attachments = {f"calibration/{rig_path.name}": rig_path.read_bytes()}
    return SessionWriter(path, metadata=metadata, attachments=attachments)


def sample_header(
    topic: str,
    seq: int,
    s: Sample,
    *,
    frame_id: str | None = None,
    t_ns: int | None = None,
    meta: dict[str, Any] | None = None,
) -> Header:
    """The envelope header of sample ``s`` as its sensor delivers it on ``topic``: host time
    its delivery on the generated sessions' epoch; frame, encoding and meta the sample's
    unless given."""
    t_host = GENERATE_EPOCH_NS + round(s.delivery_s * 1e9)
    return Header(
        stream=topic.partition("/")[2],
        seq=seq,
        t_sensor_ns=s.t_sensor_ns,
        t_host_ns=t_host,
        t_pub_ns=t_host,
        frame_id=s.frame_id if frame_id is None else frame_id,
        encoding=s.encoding,
        t_ns=t_ns,
        meta=s.meta if meta is None else meta,
    )


def samples(sources: dict[str, Source], *, duration_s: float) -> Iterator[tuple[str, Sample]]:
    """Every delivered sample describing world time in ``[0, duration_s)``, in delivery order
    (ties broken by source name, so the order is deterministic)."""
    heap: list[tuple[float, str, int, Sample]] = []
    next_k = dict.fromkeys(sources, 0)
    # One sensor's samples reach the host through one pipe, in order: a sample whose jitter
    # would overtake the one before waits for it (as the live nodes, which publish in order).
    last = dict.fromkeys(sources, -math.inf)

    def push(name: str) -> None:
        src = sources[name]
        while True:
            k = next_k[name]
            next_k[name] = k + 1
            if src.t_world_s(k) >= duration_s:
                return
            s = src.sample(k)
            if s is not None:
                if s.delivery_s < last[name]:
                    s = replace(s, delivery_s=last[name])
                last[name] = s.delivery_s
                heapq.heappush(heap, (s.delivery_s, name, k, s))
                return

    for name in sources:
        push(name)
    while heap:
        _, name, _, s = heapq.heappop(heap)
        yield name, s
        push(name)


def generate(
    path: str | Path,
    params: SimParams,
    *,
    duration_s: float,
    sensors: tuple[str, ...] = tuple(TOPICS),
    progress: Callable[[float], None] | None = None,
) -> dict[str, int]:
    """Write ``duration_s`` of the simulated rig to ``path``; return messages per topic."""
    if duration_s <= 0:
        raise ValueError(f"duration must be > 0, got {duration_s}")
    sources = make_sources(params, sensors=sensors)
    metadata = session_metadata(params, source="edgefuse sim generate", duration_s=duration_s)
    truth = sources.get("truth")
    if isinstance(truth, TruthSource):
        clocks = truth.clock_truth(epoch_ns=GENERATE_EPOCH_NS, until_s=duration_s)
        metadata["clocks"] = {"json": json.dumps(clocks, sort_keys=True)}
    seq: dict[str, int] = {}
    next_report = 0.0
    with session_writer(path, params, metadata) as out:
        for name, s in samples(sources, duration_s=duration_s):
            topic = TOPICS[name]
            n = seq.get(topic, 0)
            seq[topic] = n + 1
            meta: dict[str, Any] = s.meta
            if isinstance(sources[name], TruthSource):
                assert isinstance(truth, TruthSource)
                meta = {
                    **meta,
                    "clocks": truth.clock_truth(epoch_ns=GENERATE_EPOCH_NS, until_s=s.t_world_s),
                }
            t_ns = GENERATE_EPOCH_NS + round(s.t_world_s * 1e9) if name == "truth" else None
            header = sample_header(topic, n, s, t_ns=t_ns, meta=meta)
            out.write(topic, header, s.arrays)
            if progress is not None and s.t_world_s >= next_report:
                progress(s.t_world_s)
                next_report = s.t_world_s + 1.0
        counts = dict(out.counts)
    return counts


def print_progress(duration_s: float) -> Callable[[float], None]:
    """A progress callback that rewrites one line on stderr."""

    def report(t_s: float) -> None:
        sys.stderr.write(f"\r  generated {t_s:6.1f} / {duration_s:.1f} s")
        sys.stderr.flush()

    return report
