"""``edgefuse bench record``: how fast does the recorder write, on one core?

The payloads are the simulated rig's own (a few samples of each sensor, rendered once and
cycled with new ``seq`` and stamps), fed to a :class:`~edgefuse.record.recorder.Recording`
exactly as the recorder node feeds it (the copy into session bytes included), as fast as the
writer thread takes them: the feeder waits while more than 64 MB are queued, so nothing is
dropped and the figure is the writer's. The process is pinned to one CPU for the measurement.
``MBps`` counts envelope bytes (payloads + headers) per wall second, file closed included.

zstd runs at the recorder's default level (1, as rosbag2); ``--compression all`` also measures
mcap's own default level (3) side by side.

The goals: at least 300 MB/s uncompressed, and with zstd at least 3x the simulated rig's data
rate, which is computed from its streams: each sensor's bytes per message times its rate.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.envelope import Header, Message
from edgefuse.record.session import DEFAULT_ZSTD_LEVEL, check_zstd_level

#: Nominal rates of the simulated rig's streams (messages per second), as pipelines/sim.yaml.
RIG_RATES_HZ = {"camera": 30.0, "depth": 30.0, "lidar": 10.0, "mic": 100.0, "truth": 30.0}
GOAL_UNCOMPRESSED_MBPS = 300.0
GOAL_ZSTD_RIG_FACTOR = 3.0
#: The level mcap's writer compresses with when nobody chooses (measured alongside).
_MCAP_ZSTD_LEVEL = 3
_QUEUE_HIGH = 64_000_000


def rig_samples(per_sensor: int = 6) -> dict[str, list[Message]]:
    """A few rendered messages of each simulated sensor (topic names as the sim pipeline)."""
    from edgefuse.sim.generate import TOPICS, make_sources
    from edgefuse.sim.rig import SimParams

    sources = make_sources(SimParams(scenario="day", seed=0))
    out: dict[str, list[Message]] = {}
    for name, src in sources.items():
        msgs: list[Message] = []
        k = 0
        n = per_sensor * (4 if name == "mic" else 1)
        while len(msgs) < n and k < 10 * n:
            s = src.sample(k)
            k += 1
            if s is None:
                continue
            h = Header(
                TOPICS[name].partition("/")[2],
                t_sensor_ns=s.t_sensor_ns,
                frame_id=s.frame_id,
                encoding=s.encoding,
                meta=s.meta,
            )
            msgs.append(Message(TOPICS[name], h, list(s.arrays)))
        out[name] = msgs
    return out


def rig_rate_bytes_per_s(samples: dict[str, list[Message]]) -> dict[str, float]:
    """Bytes per second of each stream at its nominal rate (mean message size x rate)."""
    from edgefuse.record.session import envelope_bytes

    rates = {}
    for name, msgs in samples.items():
        size = float(np.mean([len(envelope_bytes(m.topic, m.header, m.arrays)) for m in msgs]))
        rates[name] = size * RIG_RATES_HZ[name]
    return rates


@contextlib.contextmanager
def _one_core() -> Iterator[int | None]:
    """Pin this process to one CPU while measuring (restored afterwards)."""
    if not hasattr(os, "sched_getaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def _stream(samples: dict[str, list[Message]]) -> Iterator[Message]:
    """The rig's messages in rate proportion, forever, with fresh seq and host stamps."""
    period_ns = {n: round(1e9 / RIG_RATES_HZ[n]) for n in samples}
    next_ns = dict.fromkeys(samples, 0)
    seq = dict.fromkeys(samples, 0)
    t0 = 10**12
    while True:
        name = min(next_ns, key=lambda n: next_ns[n])
        msgs = samples[name]
        m = msgs[seq[name] % len(msgs)]
        h = Header(
            m.header.stream,
            seq=seq[name],
            t_sensor_ns=m.header.t_sensor_ns,
            t_host_ns=t0 + next_ns[name],
            frame_id=m.header.frame_id,
            encoding=m.header.encoding,
            meta=m.header.meta,
        )
        yield Message(m.topic, h, m.arrays)
        seq[name] += 1
        next_ns[name] += period_ns[name]


def measure(
    samples: dict[str, list[Message]],
    *,
    seconds: float,
    compression: str,
    foxglove: bool,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> dict[str, Any]:
    """Record the rig's stream for ``seconds``; MB/s of envelope bytes and the file size."""
    from edgefuse.record.recorder import Recording, RecordOptions

    with tempfile.TemporaryDirectory(prefix="edgefuse-bench-record-") as tmp:
        opts = RecordOptions(
            out=str(Path(tmp) / "bench.mcap"),
            compression=compression,  # type: ignore[arg-type]
            zstd_level=zstd_level,
            foxglove=foxglove,
            rig="calibration/sim_rig.yaml" if foxglove else "",
            queue_mb=2 * _QUEUE_HIGH / 1e6,
        )
        rec = Recording(opts)
        fed = messages = 0
        t0 = time.perf_counter()
        stream = _stream(samples)
        while time.perf_counter() - t0 < seconds:
            while rec.queued_bytes > _QUEUE_HIGH:
                time.sleep(0.0005)
            m = next(stream)
            if not rec.feed(m):
                raise RuntimeError("the bench queue dropped a message")
            messages += 1
        report = rec.close()
        wall = time.perf_counter() - t0
        fed = sum(t["bytes"] for t in report["topics"].values())
        size = sum(Path(f).stat().st_size for f in report["files"])
    return {
        "compression": compression,
        **({"zstd_level": zstd_level} if compression == "zstd" else {}),
        "foxglove": foxglove,
        "messages": messages,
        "seconds": round(wall, 3),
        "MBps": round(fed / wall / 1e6, 1),
        "envelope_MB": round(fed / 1e6, 1),
        "file_MB": round(size / 1e6, 1),
        "ratio": round(fed / size, 2) if size else None,
        "lost": report["lost"],
    }


def bench_record(
    *,
    seconds: float = 3.0,
    compression: str = "all",
    foxglove: bool = False,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> dict[str, Any]:
    """Measure recording throughput on one core: ``compression`` one of ``none``, ``zstd``,
    ``lz4`` or ``all`` (which adds ``zstd_mcap_default``: zstd at mcap's own level 3, for
    comparison); ``foxglove`` adds the Foxglove channels (more bytes, more CPU). Returns the
    figures, the rig's data rate and whether the goals are met."""
    kinds = ["none", "zstd", "lz4"] if compression == "all" else [compression]
    if any(k not in ("none", "zstd", "lz4") for k in kinds):
        raise ValueError(f"compression {compression!r} is not one of none, zstd, lz4, all")
    check_zstd_level(zstd_level)
    samples = rig_samples()
    per_stream = rig_rate_bytes_per_s(samples)
    rig_mbps = sum(per_stream.values()) / 1e6
    with _one_core() as cpu:
        results = {
            k: measure(
                samples, seconds=seconds, compression=k, foxglove=foxglove, zstd_level=zstd_level
            )
            for k in kinds
        }
        if compression == "all" and zstd_level != _MCAP_ZSTD_LEVEL:
            results["zstd_mcap_default"] = measure(
                samples,
                seconds=seconds,
                compression="zstd",
                foxglove=foxglove,
                zstd_level=_MCAP_ZSTD_LEVEL,
            )
    out: dict[str, Any] = {
        "cpu": cpu,
        "rig_data_rate_MBps": round(rig_mbps, 2),
        "rig_streams_MBps": {k: round(v / 1e6, 3) for k, v in per_stream.items()},
        "results": results,
        "goals": {},
    }
    if "none" in results:
        out["goals"]["uncompressed_MBps_ge_300"] = results["none"]["MBps"] >= GOAL_UNCOMPRESSED_MBPS
    if "zstd" in results:
        factor = results["zstd"]["MBps"] / rig_mbps
        out["zstd_rig_factor"] = round(factor, 2)
        out["goals"]["zstd_ge_3x_rig"] = factor >= GOAL_ZSTD_RIG_FACTOR
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m edgefuse.bench.record [SECONDS] [--foxglove]``: print the JSON figures."""
    args = list(sys.argv[1:] if argv is None else argv)
    fox = "--foxglove" in args
    rest = [a for a in args if a != "--foxglove"]
    seconds = float(rest[0]) if rest else 3.0
    print(json.dumps(bench_record(seconds=seconds, foxglove=fox), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
