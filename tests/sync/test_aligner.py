"""The aligner core: policies, deadlines, masks, determinism under any interleaving."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytest

from edgefuse.envelope import Header, Message, decode, encode
from edgefuse.errors import EnvelopeError
from edgefuse.sync.aligned_set import AlignedSet
from edgefuse.sync.aligner import Aligner, StreamConfig

MS = 1_000_000
S = 1_000_000_000


def msg(
    stream: str,
    seq: int,
    t_host_ns: int,
    arrays: Sequence[np.ndarray] = (),
    *,
    t_sensor_ns: int | None = None,
    **meta: Any,
) -> Message:
    """A decoded message as the transport hands it to a node."""
    h = Header(
        stream=stream,
        seq=seq,
        t_sensor_ns=t_host_ns if t_sensor_ns is None else t_sensor_ns,
        t_host_ns=t_host_ns,
        meta=dict(meta),
    )
    return Message(f"{stream}/x", h, list(arrays))


def host(**kw: Any) -> StreamConfig:
    """A stream timed by its arrival (t = t_host - latency): exact times for policy tests."""
    return StreamConfig(clock="host", **kw)


def run(aligner: Aligner, feed: Iterable[tuple[str, Message]]) -> list[AlignedSet]:
    out: list[AlignedSet] = []
    for stream, m in feed:
        out += aligner.push(stream, m)
    return out + aligner.flush()


def run_in_arrival_order(
    aligner: Aligner, feed: list[tuple[str, Message]]
) -> tuple[list[AlignedSet], dict[int, int]]:
    """Push ``feed`` in arrival order, then flush: the sets, and for each set time the arrival
    (host ns) of the message that let it out (flushed sets have none)."""
    emitted_at: dict[int, int] = {}
    sets: list[AlignedSet] = []
    for stream, m in sorted(feed, key=lambda f: f[1].header.t_host_ns):
        for s in aligner.push(stream, m):
            emitted_at[s.t_ns] = m.header.t_host_ns
            sets.append(s)
    return sets + aligner.flush(), emitted_at


def camera(n: int, *, period_ns: int = 33 * MS, t0_ns: int = S) -> list[tuple[str, Message]]:
    return [("camera", msg("camera", k, t0_ns + k * period_ns, [np.full(2, k)])) for k in range(n)]


# --- nearest -----------------------------------------------------------------------------
def test_nearest_picks_the_closest_within_tolerance_and_ties_go_to_the_earlier() -> None:
    a = Aligner(
        {"camera": host(), "depth": host(policy="nearest", tolerance_ms=10)},
        reference="camera",
        max_wait_ns=100 * MS,
    )
    feed = camera(3)
    # Set times 1.000, 1.033, 1.066 s. Depth at 0.996 and 1.004 (tie: 4 ms each way),
    # 1.040 (7 ms), and nothing within 10 ms of 1.066 (1.080 is 14 ms away).
    depth_t = [996, 1004, 1040, 1080]
    feed += [("depth", msg("depth", i, t * MS, [np.full(1, i)])) for i, t in enumerate(depth_t)]
    sets = run(a, sorted(feed, key=lambda f: f[1].header.t_host_ns))
    assert [s.t_ns for s in sets] == [S, S + 33 * MS, S + 66 * MS]
    d = [s.members["depth"] for s in sets]
    assert d[0].present and d[0].info["seq"] == 0 and d[0].skew_ns == -4 * MS
    assert d[1].present and d[1].info["seq"] == 2 and d[1].skew_ns == 7 * MS
    assert not d[2].present and "within 10 ms" in d[2].reason
    assert sets[2].missing == ["depth"] and sets[2].mask == {"camera": True, "depth": False}


def test_nearest_settles_without_waiting_when_the_next_frame_cannot_be_nearer() -> None:
    a = Aligner(
        {"camera": host(), "depth": host(policy="nearest", tolerance_ms=20)},
        reference="camera",
        max_wait_ns=S,
    )
    # Depth every 33 ms up to 1.327 s (ten spacings known).
    for i in range(11):
        assert a.push("depth", msg("depth", i, S - 3 * MS + i * 33 * MS)) == []
    # A camera frame 5 ms after the newest depth: the next depth (1.360 s) is 28 ms away, so
    # the newest is the answer now.
    out = a.push("camera", msg("camera", 0, S + 332 * MS))
    assert len(out) == 1 and out[0].members["depth"].info["seq"] == 10
    # 20 ms after it: the next depth may be nearer (13 ms): the set waits for it.
    assert a.push("camera", msg("camera", 1, S + 347 * MS)) == []
    out = a.push("depth", msg("depth", 11, S + 360 * MS))
    assert len(out) == 1 and out[0].members["depth"].info["seq"] == 11


def test_nearest_max_ahead_never_holds_the_set_for_a_frame_after_it() -> None:
    def aligner(max_ahead_ms: float | None) -> Aligner:
        depth = host(policy="nearest", tolerance_ms=34, max_ahead_ms=max_ahead_ms)
        return Aligner({"camera": host(), "depth": depth}, reference="camera", max_wait_ns=S)

    bounded, free = aligner(2.0), aligner(None)
    for a in (bounded, free):  # depth every 33 ms up to 1.327 s (ten spacings known)
        for i in range(11):
            assert a.push("depth", msg("depth", i, S - 3 * MS + i * 33 * MS)) == []
    # A camera frame 28 ms after the newest depth: the next (1.360 s) would be 5 ms away, the
    # nearest, but 5 ms after the frame. Unbounded, the set waits for it; with max_ahead 2 ms
    # the newest one is the member at once (28 ms old).
    assert free.push("camera", msg("camera", 0, S + 355 * MS)) == []
    (now,) = bounded.push("camera", msg("camera", 0, S + 355 * MS))
    assert now.members["depth"].info["seq"] == 10 and now.members["depth"].skew_ns == -28 * MS
    (later,) = free.push("depth", msg("depth", 11, S + 360 * MS))
    assert later.members["depth"].info["seq"] == 11
    # A frame within the bound (1.5 ms after the set time) is still taken, and waited for.
    assert bounded.push("depth", msg("depth", 11, S + 360 * MS)) == []
    assert bounded.push("camera", msg("camera", 1, S + 391 * MS + MS // 2)) == []
    (within,) = bounded.push("depth", msg("depth", 12, S + 393 * MS))
    assert within.members["depth"].info["seq"] == 12 and within.members["depth"].skew_ns == 1.5 * MS
    # With nothing at or before the set time within tolerance, the stream is missing, not late.
    lone = aligner(0.0)
    assert lone.push("depth", msg("depth", 0, S + 10 * MS)) == []
    (s,) = lone.push("camera", msg("camera", 0, S)) + lone.flush()
    assert not s.members["depth"].present


def test_max_ahead_is_refused_where_it_means_nothing() -> None:
    with pytest.raises(ValueError, match="max_ahead_ms applies to"):
        StreamConfig(policy="window", max_ahead_ms=5)
    with pytest.raises(ValueError, match=r"not to sweep \(covering\)"):
        StreamConfig(policy="sweep", max_ahead_ms=5)
    with pytest.raises(ValueError, match="max_ahead_ms must be >= 0"):
        StreamConfig(policy="nearest", max_ahead_ms=-1)


def test_a_set_is_emitted_as_soon_as_it_is_settled_not_at_the_deadline() -> None:
    a = Aligner(
        {"camera": host(), "depth": host(policy="nearest", tolerance_ms=10)},
        reference="camera",
        max_wait_ns=10 * S,
    )
    assert a.push("camera", msg("camera", 0, S)) == []
    assert a.push("depth", msg("depth", 0, S - 2 * MS)) == []  # a later one could be closer
    (s,) = a.push("depth", msg("depth", 1, S + 30 * MS))  # now nothing can be closer
    assert s.complete and s.members["depth"].info["seq"] == 0 and not s.timed_out
    assert s.wait_ns == 0  # its latest member (the camera frame itself) arrived at t


def test_deadline_emits_with_the_missing_stream_named_never_drops() -> None:
    a = Aligner(
        {"camera": host(), "lidar": host(policy="sweep", tolerance_ms=5)},
        reference="camera",
        max_wait_ns=50 * MS,
    )
    out = []
    for _, m in camera(10):
        out += a.push("camera", m)
        out += a.advance(m.header.t_host_ns)  # the wall clock, as live
    assert a.next_deadline_ns() is not None
    out += a.advance(10 * S)
    assert len(out) == 10  # one set per reference frame, none silently dropped
    assert all(s.timed_out and s.missing == ["lidar"] for s in out)
    assert all(s.wait_ns == 50 * MS for s in out)
    assert a.counters["timed_out"] == 10 and a.counters["missing.lidar"] == 10


def test_only_messages_that_arrived_by_the_deadline_join() -> None:
    a = Aligner(
        {"camera": host(), "depth": host(policy="nearest", tolerance_ms=10, latency_ms=80)},
        reference="camera",
        max_wait_ns=50 * MS,
    )
    a.push("camera", msg("camera", 0, S))
    # Describes t = 1.0 s exactly but arrived 80 ms later, after the 50 ms deadline.
    (s,) = a.push("depth", msg("depth", 0, S + 80 * MS))
    assert s.missing == ["depth"] and s.timed_out


def test_late_arrivals_are_counted_in_the_next_set() -> None:
    a = Aligner(
        {"camera": host(), "depth": host(policy="nearest", tolerance_ms=10)},
        reference="camera",
        max_wait_ns=50 * MS,
    )
    a.push("camera", msg("camera", 0, S))
    (s0,) = a.advance(S + 60 * MS)  # the wall clock passed the deadline first
    assert s0.missing == ["depth"]
    a.push("depth", msg("depth", 0, S + 2 * MS))  # arrived in time, processed too late
    a.push("camera", msg("camera", 1, S + 100 * MS))
    (s1,) = a.push("depth", msg("depth", 1, S + 101 * MS))
    assert s1.late == 1 and a.counters["late"] == 1 and s1.complete


# --- window (audio) ----------------------------------------------------------------------
RATE = 16000


def audio(n_chunks: int, *, chunk: int = 160, drop: frozenset[int] = frozenset()):
    """Chunks whose sample n is taken at n / RATE s after 1 s and holds the value n % 32000."""
    out = []
    for k in range(n_chunks):
        if k in drop:
            continue
        first = k * chunk
        t = S + first * S // RATE
        data = (np.arange(first, first + chunk) % 32000).astype(np.int16).reshape(-1, 1)
        out.append(("mic", msg("mic", k, t, [data], rate_hz=RATE, channels=1, first_sample=first)))
    return out


def test_window_takes_exactly_the_samples_before_the_set_time_across_chunks() -> None:
    a = Aligner(
        {"camera": host(), "mic": host(policy="window", window_ms=100)},
        reference="camera",
        max_wait_ns=S,
    )
    feed = camera(20, period_ns=33_333_333, t0_ns=S + 200 * MS) + audio(150)
    sets = run(a, sorted(feed, key=lambda f: f[1].header.t_host_ns))
    assert len(sets) == 20
    for s in sets:
        m = s.members["mic"]
        assert m.present and m.info["missing_samples"] == 0
        (w,) = m.arrays
        assert w.shape == (1600, 1) and w.dtype == np.int16
        end = (s.t_ns - S) * RATE // S  # the last sample taken at or before t
        assert m.info["first_sample"] == end - 1599
        np.testing.assert_array_equal(w[:, 0], np.arange(end - 1599, end + 1) % 32000)
        assert -S // RATE < m.skew_ns <= 0


def test_window_fills_a_dropped_chunk_with_zeros_and_counts_it() -> None:
    a = Aligner(
        {"camera": host(), "mic": host(policy="window", window_ms=100)},
        reference="camera",
        max_wait_ns=S,
    )
    feed = camera(1, t0_ns=S + 100 * MS) + audio(20, drop=frozenset({5}))
    (s,) = run(a, sorted(feed, key=lambda f: f[1].header.t_host_ns))
    m = s.members["mic"]
    assert m.present and m.info["missing_samples"] == 160
    w = m.arrays[0][:, 0]
    first = m.info["first_sample"]
    assert (w[800 - first : 960 - first] == 0).all()  # chunk 5 = samples 800..959
    assert w[960 - first] == 960


# --- sweep (lidar) -----------------------------------------------------------------------
def sweeps(n: int, *, period_ns: int = 100 * MS, t0_ns: int = S - 50 * MS):
    """Sweeps starting every period, each delivered when complete."""
    out = []
    for k in range(n):
        start = t0_ns + k * period_ns
        pts = np.zeros((4, 5), np.float32)
        pts[:, 4] = np.linspace(0, 0.099, 4)  # per-point time offsets
        ring = np.arange(4, dtype=np.uint8)
        out.append(("lidar", msg("lidar", k, start + period_ns, [pts, ring], sweep_s=0.1)))
    return out


def test_sweep_covering_the_set_time_with_its_per_point_timing() -> None:
    a = Aligner(
        {"camera": host(), "lidar": host(policy="sweep", latency_ms=100, sweeps=2)},
        reference="camera",
        max_wait_ns=200 * MS,
    )
    feed = camera(9, period_ns=33 * MS, t0_ns=S + 60 * MS) + sweeps(6)
    sets = run(a, sorted(feed, key=lambda f: f[1].header.t_host_ns))
    for s in sets:
        m = s.members["lidar"]
        assert m.present
        start = m.info["t_ns"]
        assert start <= s.t_ns < start + m.info["duration_ns"]  # covers t
        # Two sweeps: the covering one last, with each its own array range and start.
        sw = m.info["sweeps"]
        assert len(sw) == 2 and sw[1]["t_ns"] == start and sw[0]["t_ns"] == start - 100 * MS
        assert len(m.arrays) == 4 and m.arrays[2].shape == (4, 5)


def test_sweep_completed_takes_the_newest_finished_sweep_without_waiting() -> None:
    a = Aligner(
        {
            "camera": host(),
            "lidar": host(policy="sweep", latency_ms=100, select="completed"),
        },
        reference="camera",
        max_wait_ns=200 * MS,
    )
    # Sweeps start at 0.95, 1.05, ... s and arrive as they end; cameras from 1.15 s.
    feed = camera(9, period_ns=33 * MS, t0_ns=S + 150 * MS) + sweeps(6)
    sets, emitted_at = run_in_arrival_order(a, feed)
    assert len(sets) == 9
    for s in sets:
        m = s.members["lidar"]
        assert m.present
        end = m.info["t_ns"] + m.info["duration_ns"]
        # The newest sweep finished by t: it ended at most one period before t.
        assert end <= s.t_ns < end + 100 * MS
        # Out on the camera frame's own arrival: the lidar held nothing back.
        assert emitted_at[s.t_ns] == s.t_ns


def test_sweep_completed_waits_for_a_sweep_that_must_have_finished() -> None:
    a = Aligner(
        {
            "camera": host(),
            "lidar": host(policy="sweep", latency_ms=100, select="completed"),
        },
        reference="camera",
        max_wait_ns=200 * MS,
    )
    # Sweep [0.95, 1.05) s is in; the camera at 1.20 s is processed before sweep [1.05, 1.15)
    # s (which ended before it, so must be the answer): the older sweep cannot settle it.
    out = a.push("lidar", sweeps(1)[0][1])
    out += a.push("camera", msg("camera", 0, S + 200 * MS))
    assert out == []
    late = msg("lidar", 1, S + 150 * MS, [np.zeros((4, 5), np.float32)], sweep_s=0.1)
    out = a.push("lidar", late)
    assert len(out) == 1 and out[0].members["lidar"].info["t_ns"] == S + 50 * MS
    with pytest.raises(ValueError, match="select"):
        Aligner(
            {"camera": host(), "lidar": host(policy="sweep", select="newest")},  # type: ignore[arg-type]
            reference="camera",
            max_wait_ns=S,
        ).push("camera", msg("camera", 0, S))


def sector_sweeps(n: int, *, look_s: float, t0_ns: int = S) -> list[tuple[str, Message]]:
    """Sweeps starting every 100 ms, delivered when complete, whose points straight ahead
    were taken ``look_s`` into the sweep (the points behind at its start)."""
    out = []
    for k in range(n):
        pts = np.zeros((4, 5), np.float32)
        pts[:2, 0], pts[:2, 4] = 10.0, look_s  # ahead (azimuth 0)
        pts[2:, 0], pts[2:, 4] = -10.0, 0.0  # behind
        ring = np.zeros(4, np.uint8)
        start = t0_ns + k * 100 * MS
        out.append(("lidar", msg("lidar", k, start + 100 * MS, [pts, ring], sweep_s=0.1)))
    return out


@pytest.mark.parametrize("max_ahead_ms", [50.0, 20.0])
def test_sweep_sector_takes_the_sweep_that_looked_ahead_nearest_the_set_time(
    max_ahead_ms: float,
) -> None:
    a = Aligner(
        {
            "camera": host(),
            "lidar": host(
                policy="sweep", latency_ms=100, select="sector", max_ahead_ms=max_ahead_ms
            ),
        },
        reference="camera",
        max_wait_ns=200 * MS,
    )
    # The front is scanned 90 ms into each sweep: at 1.09, 1.19, ... s.
    feed = camera(12, period_ns=33 * MS, t0_ns=S + 150 * MS) + sector_sweeps(6, look_s=0.09)
    sets, emitted_at = run_in_arrival_order(a, feed)
    assert len(sets) == 12
    ahead_ns = round(max_ahead_ms * MS)
    for s in sets:
        m = s.members["lidar"]
        assert m.present
        tau = m.info["sector_t_ns"]
        assert abs(tau - (m.info["t_ns"] + 90 * MS)) < 1000  # float32 offsets: ns rounding
        # The nearest look at the front that is at most max_ahead after t.
        looks = [S + 90 * MS + k * 100 * MS for k in range(6)]
        allowed = [x for x in looks if x - s.t_ns <= ahead_ns]
        assert m.info["t_ns"] == min(allowed, key=lambda x: (abs(x - s.t_ns), x)) - 90 * MS
        # Waited at most for that sweep's delivery (10 ms after its look at the front).
        assert emitted_at[s.t_ns] <= max(s.t_ns, tau + 10 * MS)


def test_a_stream_with_its_own_max_wait_holds_a_set_no_longer_than_that() -> None:
    a = Aligner(
        {
            "camera": host(),
            "depth": host(policy="nearest", tolerance_ms=40, max_wait_ms=50),
            "mic": host(policy="nearest", tolerance_ms=40),
        },
        reference="camera",
        max_wait_ns=200 * MS,
    )
    # Depth every 33 ms, but the frame at 1.006 s is dropped: the set at 1.000 s waits for
    # it (the newest depth, 0.973 s, is 27 ms away) until its own deadline, 1.050 s.
    out: list[AlignedSet] = []
    for i, t in enumerate([907, 940, 973]):
        out += a.push("depth", msg("depth", i, t * MS))
    out += a.push("mic", msg("mic", 0, S + 30 * MS))
    out += a.push("camera", msg("camera", 0, S))
    assert out == [] and a.next_deadline_ns() == S + 50 * MS
    assert a.advance(S + 49 * MS) == []
    out = a.advance(S + 50 * MS)
    assert len(out) == 1
    d = out[0].members["depth"]
    assert d.present and d.info["seq"] == 2 and not out[0].timed_out
    # Without a deadline of its own the stream waits for the set's (200 ms).
    b = Aligner(
        {"camera": host(), "depth": host(policy="nearest", tolerance_ms=40)},
        reference="camera",
        max_wait_ns=200 * MS,
    )
    for i, t in enumerate([907, 940, 973]):
        b.push("depth", msg("depth", i, t * MS))
    b.push("camera", msg("camera", 0, S))
    assert b.next_deadline_ns() == S + 200 * MS and b.advance(S + 50 * MS) == []
    with pytest.raises(ValueError, match="max_wait_ms"):
        StreamConfig(max_wait_ms=0)


# --- interpolate ----------------------------------------------------------------------------
def test_interpolate_blends_the_two_neighbours() -> None:
    a = Aligner(
        {"camera": host(), "imu": host(policy="interpolate", tolerance_ms=10)},
        reference="camera",
        max_wait_ns=S,
    )
    feed = camera(2, period_ns=33 * MS)
    feed += [
        ("imu", msg("imu", i, S - 5 * MS + i * 5 * MS, [np.array([float(i), 10.0 * i])]))
        for i in range(12)
    ]
    sets = run(a, sorted(feed, key=lambda f: f[1].header.t_host_ns))
    # t = 1.000 s is exactly sample 1; t = 1.033 s is 3/5 of the way from 7 to 8.
    np.testing.assert_allclose(sets[0].members["imu"].arrays[0], [1.0, 10.0])
    np.testing.assert_allclose(sets[1].members["imu"].arrays[0], [7.6, 76.0])


# --- idle streams, optional streams ----------------------------------------------------------
def test_a_silent_stream_stops_holding_sets_after_idle_time() -> None:
    a = Aligner(
        {"camera": host(), "depth": host()},
        reference="camera",
        max_wait_ns=10 * S,
        idle_ns=200 * MS,
    )
    out = run_no_flush(a, camera(20))
    # Event time reaches 200 ms past the start, then depth (never heard) is idle.
    assert out and all(s.missing == ["depth"] for s in out)
    assert out[0].t_ns == S


def run_no_flush(a: Aligner, feed: Iterable[tuple[str, Message]]) -> list[AlignedSet]:
    out: list[AlignedSet] = []
    for stream, m in feed:
        out += a.push(stream, m)
    return out


def test_an_optional_stream_joins_when_there_and_never_holds_a_set() -> None:
    a = Aligner(
        {"camera": host(), "truth": host(required=False, tolerance_ms=1)},
        reference="camera",
        max_wait_ns=10 * S,
    )
    a.push("truth", msg("truth", 0, S))
    (s,) = a.push("camera", msg("camera", 0, S))
    assert s.complete
    (s,) = a.push("camera", msg("camera", 1, 2 * S))
    assert s.missing == ["truth"]
    # Its message after the set went out is neither late nor makes the set partial: counted
    # as missing only (a required stream's would be both).
    a.push("truth", msg("truth", 1, 2 * S + MS // 2))
    c = a.counters
    assert c["missing.truth"] == 1 and c["partial"] == 0 and c["late"] == 0


# --- wire format ---------------------------------------------------------------------------
def test_a_set_round_trips_through_the_envelope() -> None:
    a = Aligner(
        {
            "camera": host(),
            "mic": host(policy="window", window_ms=50),
            "depth": host(tolerance_ms=1),
        },
        reference="camera",
        max_wait_ns=S,
    )
    feed = camera(1, t0_ns=S + 100 * MS) + audio(20)
    (s,) = run(a, sorted(feed, key=lambda f: f[1].header.t_host_ns))
    arrays, _ = s.to_payload()
    h = s.header()
    frames = encode("sync/set", h, arrays)
    back = AlignedSet.from_message(decode(frames))
    assert back.t_ns == s.t_ns and back.mask == s.mask and back.missing == ["depth"]
    assert back.members["depth"].reason == s.members["depth"].reason
    np.testing.assert_array_equal(back.members["mic"].arrays[0], s.members["mic"].arrays[0])
    assert back.members["mic"].info["first_sample"] == s.members["mic"].info["first_sample"]
    h.encoding = "bgr8"
    with pytest.raises(EnvelopeError, match="aligned_set"):
        AlignedSet.from_message(decode(encode("sync/set", h, arrays)))


# --- determinism -----------------------------------------------------------------------------
def digest(sets: Sequence[AlignedSet]) -> str:
    """Everything a consumer sees of the sets, except the interleaving diagnostics."""
    h = hashlib.sha256()
    for s in sets:
        arrays, meta = s.to_payload()
        meta.pop("late")
        h.update(json.dumps([s.t_ns, s.t_host_ns, meta], sort_keys=True).encode())
        for x in arrays:
            h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def rig_streams() -> dict[str, StreamConfig]:
    return {
        "camera": host(),
        "depth": host(policy="nearest", tolerance_ms=20),
        "lidar": host(policy="sweep", latency_ms=100),
        "mic": host(policy="window", window_ms=200),
    }


def rig_feed(seconds: float, *, seed: int) -> list[tuple[str, Message]]:
    rng = np.random.default_rng(seed)
    n_cam = int(seconds * 30)
    feed = camera(n_cam, period_ns=33_333_333, t0_ns=S + 300 * MS)
    depth = []
    for k in range(int(seconds * 30)):
        if rng.random() < 0.05:
            continue  # a dropped frame
        t = S + 310 * MS + k * 33_333_333 + int(rng.integers(0, 3 * MS))
        depth.append(("depth", msg("depth", k, t, [np.full(3, k, np.uint16)])))
    return feed + depth + sweeps(int(seconds * 10) + 3) + audio(int(seconds * 100) + 40)


def interleave(feed: list[tuple[str, Message]], *, seed: int, max_skew_ns: int):
    """The same per-stream order, the streams mixed by random processing delays."""
    rng = random.Random(seed)
    keyed = []
    last: dict[str, int] = {}
    for i, (stream, m) in enumerate(feed):  # feed is in per-stream order
        t = max(last.get(stream, 0), m.header.t_host_ns + rng.randrange(max_skew_ns))
        last[stream] = t
        keyed.append((t, i))
    return [feed[i] for _, i in sorted(keyed)]


def test_same_input_same_sets_whatever_the_interleaving() -> None:
    feed = rig_feed(4.0, seed=1)
    reference = None
    for trial in range(4):
        mixed = (
            interleave(feed, seed=trial, max_skew_ns=300 * MS)
            if trial
            else sorted(feed, key=lambda f: f[1].header.t_host_ns)
        )
        a = Aligner(rig_streams(), reference="camera", max_wait_ns=250 * MS)
        sets = run(a, mixed)
        assert len(sets) == 120
        d = digest(sets)
        reference = reference or d
        assert d == reference, f"interleaving {trial} gave different sets"


def test_live_deadlines_give_the_same_sets_when_the_aligner_keeps_up() -> None:
    feed = sorted(rig_feed(3.0, seed=2), key=lambda f: f[1].header.t_host_ns)
    batch = run(Aligner(rig_streams(), reference="camera", max_wait_ns=250 * MS), feed)
    a = Aligner(rig_streams(), reference="camera", max_wait_ns=250 * MS)
    live: list[AlignedSet] = []
    for stream, m in feed:
        # A wall clock that ticks at every arrival, as the node's timer does.
        live += a.advance(m.header.t_host_ns)
        live += a.push(stream, m)
    live += a.flush()
    assert digest(live) == digest(batch)
    assert max(s.wait_ns for s in live) <= 250 * MS


def test_window_places_a_chunk_that_came_out_of_order() -> None:
    a = Aligner(
        {"camera": host(), "mic": host(policy="window", window_ms=100)},
        reference="camera",
        max_wait_ns=S,
    )
    chunks = audio(20)
    # Chunk 5 stuck behind chunk 6 (t_host is the clock here, so keep its own stamp).
    chunks[5], chunks[6] = chunks[6], chunks[5]
    feed = chunks + camera(1, t0_ns=S + 100 * MS)
    (s,) = run(a, feed)
    m = s.members["mic"]
    assert m.present and m.info["missing_samples"] == 0
    first = m.info["first_sample"]
    np.testing.assert_array_equal(m.arrays[0][:, 0], np.arange(first, first + 1600))


def test_same_sets_with_sensor_clocks_whatever_the_interleaving() -> None:
    from edgefuse.bench.align import clock_preset, rig_feed

    feed = rig_feed(seconds=20.0, seed=3, clocks=clock_preset("default"))
    digests = set()
    for trial in range(3):
        mixed = interleave(feed.messages, seed=trial, max_skew_ns=150 * MS)
        a = Aligner(
            feed.streams,
            reference="camera",
            max_wait_ns=250 * MS,
            time_offsets_ns=feed.offsets_ns,
        )
        sets = run(a, mixed)
        assert len(sets) > 580
        digests.add(digest(sets))
    assert len(digests) == 1
