"""Lidar decoding cost: Velodyne packets to sweeps, as the lidar node does it, on one core.

A synthetic stream of real-format data packets (a sensor at 600 rpm seeing a wavy wall 2..60 m
away, a tenth of the beams without a return) is fed to
:class:`~edgefuse.sensors.velodyne_sweeps.SweepAssembler` in the batches the node's poll
timer drains (``poll_ms`` of packets at a time). Measured: CPU seconds per sweep and the
fraction of one core that a 10 Hz stream costs (process CPU time over the stream's duration),
and the latency from the arrival of the packet that completes a sweep to the sweep being ready
to publish (the ``push`` call that decodes it; the node adds up to one poll period of waiting
to that).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgefuse.sensors.velodyne import (
    BLOCKS,
    CHANNELS,
    DUAL,
    HOUR_US,
    MODELS,
    PACKET_DTYPE,
)
from edgefuse.sensors.velodyne_sweeps import SweepAssembler


def synthetic_packets(
    model: str = "VLP-32C", *, seconds: float = 1.0, rpm: float = 600.0, dual: bool = False
) -> list[bytes]:
    """``seconds`` of data packets from a ``model`` spinning at ``rpm`` (vectorised)."""
    m = MODELS[model]
    mode = DUAL if dual else 0x37
    packet_us = m.packet_ns(mode) / 1000
    n = int(seconds * 1e6 / packet_us)
    k = np.arange(n)[:, None]
    firing = np.arange(BLOCKS) // 2 if dual else np.arange(BLOCKS)
    t_us = k * packet_us + firing[None, :] * (m.block_ns / 1000)
    az = (t_us * rpm * 360 / 60e6) % 360
    pk = np.zeros(n, PACKET_DTYPE)
    blocks = pk["blocks"]
    blocks["flag"] = 0xEEFF
    blocks["azimuth"] = np.round(az * 100).astype(np.uint16) % 36000
    rng = np.random.default_rng(0)
    dist_m = 31.0 + 29.0 * np.sin(np.radians(az * 3))[:, :, None] + rng.normal(0, 0.02, (1, 1, 32))
    counts = np.clip(dist_m / m.distance_unit_m, 1, 65535).astype(np.uint16)
    counts[rng.random(counts.shape) < 0.1] = 0
    blocks["channels"]["distance"] = counts
    blocks["channels"]["reflectivity"] = rng.integers(0, 256, (n, BLOCKS, CHANNELS))
    pk["stamp_us"] = (np.arange(n) * packet_us).round().astype(np.int64) % HOUR_US
    pk["return_mode"] = mode
    pk["product_id"] = m.product_id
    raw = pk.tobytes()
    size = PACKET_DTYPE.itemsize
    return [raw[i * size : (i + 1) * size] for i in range(n)]


def bench_lidar_decode(
    model: str = "VLP-32C", seconds: float = 5.0, *, poll_ms: float = 5.0, dual: bool = False
) -> dict[str, Any]:
    """Decode ``seconds`` of a 10 Hz ``model`` stream; return CPU per sweep, the fraction of
    one core, and the packet-to-sweep latency (ms percentiles)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")
    if seconds <= 0.2:
        raise ValueError(f"seconds must be > 0.2 (two sweeps), got {seconds}")
    packets = synthetic_packets(model, seconds=seconds, dual=dual)
    m = MODELS[model]
    per_poll = max(1, round(poll_ms * 1e6 / m.packet_ns(DUAL if dual else 0x37)))
    asm = SweepAssembler(model=model)
    # Warm up numpy and the decoder's tables on a copy of the first sweep.
    SweepAssembler(model=model).push(packets[: 2 * per_poll], [0] * (2 * per_poll))
    latencies_ns: list[int] = []
    points: list[int] = []
    cpu0 = time.process_time_ns()
    for i in range(0, len(packets), per_poll):
        batch = packets[i : i + per_poll]
        t0 = time.perf_counter_ns()
        sweeps = asm.push(batch, [t0] * len(batch))
        if sweeps:
            latencies_ns.append(time.perf_counter_ns() - t0)
            points.extend(len(s.points) for s in sweeps)
    cpu_s = (time.process_time_ns() - cpu0) / 1e9
    stream_s = len(packets) * m.packet_ns(DUAL if dual else 0x37) / 1e9
    n_sweeps = asm.counters.sweeps
    lat = np.array(latencies_ns) / 1e6
    return {
        "model": model,
        "return_mode": "dual" if dual else "strongest",
        "rpm": 600,
        "stream_s": round(stream_s, 3),
        "packets": len(packets),
        "packets_per_poll": per_poll,
        "sweeps": n_sweeps,
        "points_per_sweep": int(np.mean(points)) if points else 0,
        "cpu_s": round(cpu_s, 4),
        "cpu_ms_per_sweep": round(cpu_s / max(n_sweeps, 1) * 1e3, 3),
        "core_fraction": round(cpu_s / stream_s, 4),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "max": round(float(lat.max()), 3) if len(lat) else None,
        },
        "poll_ms": poll_ms,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_lidar_decode(), indent=2))
