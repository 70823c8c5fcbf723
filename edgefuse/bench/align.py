"""``edgefuse bench align``: the aligner alone — throughput, added latency, clock accuracy.

The input is the simulated rig's *timing* (every sample's stamp on its sensor clock, its
arrival on the host and the instant it truly describes; see ``Source.timing``), without
rendering: payloads are shared placeholder arrays of the real shapes, so the aligner does
all its real work (clock models, policies, the audio window copy) and nothing else. Four
measurements, side by side with a peer on the same input:

- **throughput**: messages per second through :class:`Aligner` on one core, driven as live
  (a timer fires at each set's deadline), median of ``repeats`` runs; the peer is ROS 2
  message_filters' ApproximateTime (our port, :mod:`edgefuse.sync.approximate`) over the
  same messages on their arrival stamps.
- **added latency**: per set, the event time at which it was emitted minus the set time;
  never above ``max_wait_ms`` (the goal).
- **clock accuracy**: per stream, corrected ``t_ns`` minus the truth after ``settle_s``
  (RMS, p50, p99, max) and the share of estimates within their error bound; the peer is the
  raw arrival stamp minus the calibrated latency.
- **pairing**: the true time between the camera frame and the depth frame put together, for
  our sets and for ApproximateTime's.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgefuse.envelope import Header, Message
from edgefuse.sim.clocks import DEFAULT_CLOCKS, ClockConfig, ClocksConfig
from edgefuse.sim.generate import make_sources
from edgefuse.sim.rig import MicSource, SimParams
from edgefuse.sync.aligned_set import AlignedSet
from edgefuse.sync.aligner import Aligner, StreamConfig
from edgefuse.sync.approximate import ApproximateTimeSync
from edgefuse.sync.clock import ClockModel

SENSORS = ("camera", "depth", "lidar", "mic")
#: Host time of world time 0 in the generated input (any value: only differences matter).
EPOCH_NS = 1_000_000_000_000


def clock_preset(name: str) -> ClocksConfig:
    """``default``: the simulator's realistic clocks (drifts drawn from the seed, the depth
    camera's resets, the lidar's wrap 60 s in). ``acceptance``: every sensor 50 ppm fast,
    0.25 s offset, exponential delivery jitter of mean 3 ms (the issue's scenario), the depth
    camera resetting every 40 s, the lidar keeping its µs-past-the-hour wrap."""
    if name == "default":
        return ClocksConfig()
    if name == "acceptance":
        per: dict[str, ClockConfig] = {
            s: replace(
                DEFAULT_CLOCKS[s],
                offset_s=3540.0 if s == "lidar" else 0.25,
                drift_ppm=50.0,
                jitter_ms=3.0,
                jitter_shape=1.0,
                reset_interval_s=40.0 if s == "depth" else 0.0,
            )
            for s in SENSORS
        }
        return ClocksConfig(
            camera=per["camera"], depth=per["depth"], lidar=per["lidar"], mic=per["mic"]
        )
    raise ValueError(f"unknown clock preset {name!r}; expected default or acceptance")


@dataclass(frozen=True)
class Feed:
    """The benchmark's input: messages in arrival order with the truth of each."""

    messages: list[tuple[str, Message]]
    #: Per message: the instant it describes (host ns); for audio, its first sample.
    truth_ns: list[int]
    streams: dict[str, StreamConfig]
    offsets_ns: dict[str, int]


def rig_feed(*, seconds: float, seed: int, clocks: ClocksConfig, window_ms: float = 1000.0) -> Feed:
    """The simulated rig's messages over ``seconds`` of world time, timing only."""
    sources = make_sources(SimParams(seed=seed, clocks=clocks))
    placeholders: dict[str, list[np.ndarray]] = {
        "camera": [np.zeros((480, 640, 3), np.uint8)],
        "depth": [np.zeros((240, 320), np.uint16)],
        "lidar": [np.zeros((32768, 5), np.float32), np.zeros(32768, np.uint8)],
    }
    rows: list[tuple[int, int, int, str, Message]] = []
    for order, name in enumerate(SENSORS):
        src = sources[name]
        stream = f"{name}/{src.stream}"
        k = 0
        last_arrival = 0
        while True:
            timing = src.timing(k)
            if timing is not None:
                t_world, stamp, delivery = timing
                if t_world > seconds:
                    break
                meta: dict[str, Any] = {"index": k}
                arrays: list[np.ndarray]
                if isinstance(src, MicSource):
                    meta.update(rate_hz=src.rate_hz, channels=1, first_sample=k * src.chunk)
                    arrays = [np.zeros((src.chunk, 1), np.int16)]
                else:
                    arrays = placeholders[name]
                if name == "lidar":
                    meta["sweep_s"] = src.period_s
                # One sensor's messages come through one pipe, in order (FIFO).
                arrival = max(EPOCH_NS + round(delivery * 1e9), last_arrival)
                last_arrival = arrival
                h = Header(
                    stream=src.stream, seq=k, t_sensor_ns=stamp, t_host_ns=arrival, meta=meta
                )
                rows.append(
                    (
                        arrival,
                        order,
                        EPOCH_NS + round(t_world * 1e9),
                        name,
                        Message(stream, h, arrays),
                    )
                )
            k += 1
    rows.sort(key=lambda r: (r[0], r[1]))
    cal = sources["camera"].rig
    clock_cfg = {s: sources[s].clock.cfg for s in SENSORS}
    latency = {s: sources[s].min_delay_ms() for s in SENSORS}
    streams = {
        "camera": StreamConfig(latency_ms=latency["camera"]),
        "depth": StreamConfig(policy="nearest", tolerance_ms=20, latency_ms=latency["depth"]),
        "lidar": StreamConfig(
            policy="sweep", latency_ms=latency["lidar"], wrap_s=clock_cfg["lidar"].wrap_s
        ),
        "mic": StreamConfig(policy="window", window_ms=window_ms, latency_ms=latency["mic"]),
    }
    return Feed(
        messages=[(r[3], r[4]) for r in rows],
        truth_ns=[r[2] for r in rows],
        streams=streams,
        offsets_ns={s: cal.sensor(s).time_offset_ns for s in SENSORS},
    )


def drive(feed: Feed, *, max_wait_ns: int) -> tuple[float, list[tuple[int, AlignedSet]]]:
    """Run the aligner over the feed as live (a timer at every deadline); return the CPU
    seconds it took and every set with the event time it was emitted at."""
    a = Aligner(
        feed.streams, reference="camera", max_wait_ns=max_wait_ns, time_offsets_ns=feed.offsets_ns
    )
    out: list[tuple[int, AlignedSet]] = []
    t0 = time.process_time()
    for stream, msg in feed.messages:
        now = msg.header.t_host_ns
        due = a.next_deadline_ns()
        while due is not None and due <= now:
            out.extend((due, s) for s in a.advance(due))
            nxt = a.next_deadline_ns()
            if nxt == due:
                break
            due = nxt
        out.extend((now, s) for s in a.push(stream, msg))
    end = feed.messages[-1][1].header.t_host_ns
    out.extend((end, s) for s in a.flush())
    return time.process_time() - t0, out


def time_clock_models(feed: Feed) -> float:
    """CPU seconds to feed every message's stamps through fresh clock models (the share of
    the aligner's time that is clock estimation)."""
    models = {s: ClockModel(cfg.clock_config()) for s, cfg in feed.streams.items()}
    pairs = [(models[s].update, m.header.t_sensor_ns, m.header.t_host_ns) for s, m in feed.messages]
    t0 = time.process_time()
    for update, stamp, arrival in pairs:
        update(stamp, arrival)
    return time.process_time() - t0


def drive_approximate(feed: Feed) -> tuple[float, list[tuple[tuple[int, Any], ...]]]:
    """ROS ApproximateTime (queue 10, no bounds) on the arrival stamps, as ROS users run it
    when headers carry the arrival time; returns CPU seconds and the sets."""
    index = {s: i for i, s in enumerate(SENSORS)}
    sync: ApproximateTimeSync[int] = ApproximateTimeSync(len(SENSORS), queue_size=10)
    out: list[tuple[tuple[int, Any], ...]] = []
    t0 = time.process_time()
    for i, (stream, msg) in enumerate(feed.messages):
        out.extend(sync.add(index[stream], msg.header.t_host_ns, i))
    out.extend(sync.flush())
    return time.process_time() - t0, out


def _dist_ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.abs(np.asarray(values, dtype=np.float64)) / 1e6
    return {
        "rms": round(float(np.sqrt(np.mean(a**2))), 4),
        "p50": round(float(np.percentile(a, 50)), 4),
        "p99": round(float(np.percentile(a, 99)), 4),
        "max": round(float(a.max()), 4),
    }


def clock_accuracy(feed: Feed, *, settle_s: float) -> dict[str, Any]:
    """Per stream: corrected-time error against the truth after ``settle_s``, with the raw
    arrival stamps (minus the calibrated latency) as the peer."""
    models = {s: ClockModel(cfg.clock_config()) for s, cfg in feed.streams.items()}
    errors: dict[str, list[float]] = {s: [] for s in SENSORS}
    raw: dict[str, list[float]] = {s: [] for s in SENSORS}
    within: dict[str, int] = dict.fromkeys(SENSORS, 0)
    events: dict[str, dict[str, int]] = {s: {} for s in SENSORS}
    start = EPOCH_NS + round(settle_s * 1e9)
    for (stream, msg), truth in zip(feed.messages, feed.truth_ns, strict=True):
        h = msg.header
        est = models[stream].update(h.t_sensor_ns, h.t_host_ns)
        if est.event:
            events[stream][est.event] = events[stream].get(est.event, 0) + 1
        if truth < start:
            continue
        cfg = feed.streams[stream]
        err = est.t_ns + feed.offsets_ns[stream] - truth
        errors[stream].append(err)
        raw[stream].append(
            h.t_host_ns - round(cfg.latency_ms * 1e6) + feed.offsets_ns[stream] - truth
        )
        within[stream] += abs(err) <= est.bound_ns
    out: dict[str, Any] = {}
    for s in SENSORS:
        n = len(errors[s])
        out[s] = {
            "estimates": n,
            "error_ms": _dist_ms(errors[s]),
            "raw_arrival_error_ms": _dist_ms(raw[s]),
            "within_bound": round(within[s] / n, 4) if n else None,
            "events": events[s],
        }
    return out


def _pairing(
    feed: Feed, ours: list[tuple[int, AlignedSet]], peer: list[tuple[tuple[int, Any], ...]]
) -> dict[str, Any]:
    """True camera-depth time difference of the frames each method put together."""
    truth_of = {
        (stream, msg.header.seq): t
        for (stream, msg), t in zip(feed.messages, feed.truth_ns, strict=True)
    }
    mine = []
    for _, s in ours:
        d = s.members["depth"]
        if d.present:
            cam = truth_of[("camera", int(s.members["camera"].info["seq"]))]
            mine.append(truth_of[("depth", int(d.info["seq"]))] - cam)
    theirs = []
    for members in peer:
        (_, i_cam), (_, i_depth) = members[0], members[1]
        theirs.append(feed.truth_ns[i_depth] - feed.truth_ns[i_cam])
    return {
        "edgefuse": {"pairs": len(mine), "true_gap_ms": _dist_ms(mine)},
        "ros_approximate_time_on_arrival": {"pairs": len(theirs), "true_gap_ms": _dist_ms(theirs)},
    }


def run(
    *,
    seconds: float = 300.0,
    seed: int = 0,
    clocks: str = "default",
    max_wait_ms: float = 250.0,
    repeats: int = 3,
    settle_s: float = 10.0,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark as one JSON-ready document."""
    if progress:
        progress(f"building {seconds:g} s of simulated rig timing (clocks {clocks})")
    feed = rig_feed(seconds=seconds, seed=seed, clocks=clock_preset(clocks))
    n = len(feed.messages)
    max_wait_ns = round(max_wait_ms * 1e6)
    ours_s, peer_s, clock_s = [], [], []
    sets: list[tuple[int, AlignedSet]] = []
    peer_sets: list[tuple[tuple[int, Any], ...]] = []
    for r in range(repeats):
        if progress:
            progress(f"run {r + 1}/{repeats}: {n} messages through the aligner and the peer")
        cpu, sets = drive(feed, max_wait_ns=max_wait_ns)
        ours_s.append(cpu)
        cpu, peer_sets = drive_approximate(feed)
        peer_s.append(cpu)
        clock_s.append(time_clock_models(feed))
    ours_rate = n / statistics.median(ours_s)
    peer_rate = n / statistics.median(peer_s)
    added = [emitted - s.t_ns for emitted, s in sets]
    added_ms = np.asarray(added, dtype=np.float64) / 1e6
    missing: dict[str, int] = {}
    for _, s in sets:
        for m in s.missing:
            missing[m] = missing.get(m, 0) + 1
    if progress:
        progress("clock accuracy")
    accuracy = clock_accuracy(feed, settle_s=settle_s)
    goals = {
        "messages_per_s>=100k": ours_rate >= 100_000,
        "added_latency_max<=max_wait": bool(added_ms.max() <= max_wait_ms) if len(added) else True,
    }
    return {
        "benchmark": "align",
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "input": {
            "seconds": seconds,
            "seed": seed,
            "clocks": clocks,
            "messages": n,
            "per_stream": {s: sum(1 for x, _ in feed.messages if x == s) for s in SENSORS},
            "max_wait_ms": max_wait_ms,
        },
        "throughput": {
            "edgefuse_messages_per_s": round(ours_rate),
            "ros_approximate_time_messages_per_s": round(peer_rate),
            "ratio": round(ours_rate / peer_rate, 3),
            "edgefuse_cpu_s": [round(x, 4) for x in ours_s],
            "peer_cpu_s": [round(x, 4) for x in peer_s],
            "us_per_message": round(1e6 / ours_rate, 3),
            "clock_model_us_per_update": round(1e6 * statistics.median(clock_s) / n, 3),
        },
        "sets": {
            "emitted": len(sets),
            "complete": sum(1 for _, s in sets if s.complete),
            "timed_out": sum(1 for _, s in sets if s.timed_out),
            "missing": missing,
        },
        "added_latency_ms": {
            "p50": round(float(np.percentile(added_ms, 50)), 3),
            "p90": round(float(np.percentile(added_ms, 90)), 3),
            "p99": round(float(np.percentile(added_ms, 99)), 3),
            "max": round(float(added_ms.max()), 3),
        },
        "clock_accuracy_after_s": settle_s,
        "clock_accuracy": accuracy,
        "pairing": _pairing(feed, sets, peer_sets),
        "goals": goals,
    }


def format_table(doc: dict[str, Any]) -> str:
    """A few human lines for a terminal."""
    t = doc["throughput"]
    lat = doc["added_latency_ms"]
    lines = [
        f"edgefuse bench align  {doc['input']['messages']} messages, "
        f"{doc['input']['seconds']:g} s, clocks {doc['input']['clocks']}",
        f"  throughput  edgefuse {t['edgefuse_messages_per_s']:,}/s  "
        f"ROS ApproximateTime {t['ros_approximate_time_messages_per_s']:,}/s  x{t['ratio']}",
        f"  added latency ms  p50 {lat['p50']}  p99 {lat['p99']}  max {lat['max']}  "
        f"(max wait {doc['input']['max_wait_ms']})",
        f"  sets {doc['sets']['emitted']}  complete {doc['sets']['complete']}  "
        f"missing {doc['sets']['missing']}",
        f"  clock error after {doc['clock_accuracy_after_s']:g} s (ms rms / p99; raw arrival rms):",
    ]
    for s, v in doc["clock_accuracy"].items():
        e, r = v["error_ms"], v["raw_arrival_error_ms"]
        lines.append(
            f"    {s:7s} {e.get('rms')} / {e.get('p99')}   raw {r.get('rms')}   "
            f"within bound {v['within_bound']}  {v['events']}"
        )
    p = doc["pairing"]
    lines.append(
        f"  camera-depth true gap p99 ms: edgefuse {p['edgefuse']['true_gap_ms'].get('p99')}  "
        f"ApproximateTime {p['ros_approximate_time_on_arrival']['true_gap_ms'].get('p99')}"
    )
    lines.append(f"goals: {doc['goals']}")
    return "\n".join(lines)
