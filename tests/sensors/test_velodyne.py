"""Velodyne packet decoding and sweep assembly, on packets built here from the user manuals.

The packet builder and the expected geometry below are written from the VLP-16, VLP-32C and
HDL-32E manuals independently of ``edgefuse.sensors.velodyne`` (its own copy of the tables, in
scalar Python), and ``velodyne-decoder`` (PyPI) decodes the same packets as a reference.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from edgefuse.sensors.velodyne import (
    HOUR_NS,
    MODELS,
    decode_packets,
    parse_packets,
)
from edgefuse.sensors.velodyne_sweeps import SweepAssembler

HOUR_US = 3_600_000_000
STRONGEST, LAST, DUAL = 0x37, 0x38, 0x39


@dataclass(frozen=True)
class Manual:
    """What a user manual says about one model."""

    product_id: int
    elevation_deg: list[float]
    azimuth_offset_deg: list[float]
    vertical_mm: list[float]
    unit_m: float
    block_us: float  # one data block
    slot_us: Callable[[int], float]  # firing time of channel slot c inside its block
    laser: Callable[[int], int]  # laser id of channel slot c


MANUALS = {
    "VLP-16": Manual(
        0x22,
        [-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15],
        [0.0] * 16,
        [11.2, -0.7, 9.7, -2.2, 8.1, -3.7, 6.6, -5.1, 5.1, -6.6, 3.7, -8.1, 2.2, -9.7, 0.7, -11.2],
        0.002,
        110.592,
        lambda c: 55.296 * (c // 16) + 2.304 * (c % 16),
        lambda c: c % 16,
    ),
    "VLP-32C": Manual(
        0x28,
        [-25, -1, -1.667, -15.639, -11.31, 0, -0.667, -8.843, -7.254, 0.333, -0.333, -6.148,
         -5.333, 1.333, 0.667, -4, -4.667, 1.667, 1, -3.667, -3.333, 3.333, 2.333, -2.667,
         -3, 7, 4.667, -2.333, -2, 15, 10.333, -1.333],
        [1.4, -4.2, 1.4, -1.4, 1.4, -1.4, 4.2, -1.4, 1.4, -4.2, 1.4, -1.4, 4.2, -1.4, 4.2, -1.4,
         1.4, -4.2, 1.4, -4.2, 4.2, -1.4, 1.4, -1.4, 1.4, -1.4, 1.4, -4.2, 4.2, -1.4, 1.4, -1.4],
        [0.0] * 32,
        0.004,
        55.296,
        lambda c: 2.304 * (c // 2),
        lambda c: c,
    ),
    "HDL-32E": Manual(
        0x21,
        [-30.67, -9.33, -29.33, -8.0, -28.0, -6.67, -26.67, -5.33, -25.33, -4.0, -24.0, -2.67,
         -22.67, -1.33, -21.33, 0.0, -20.0, 1.33, -18.67, 2.67, -17.33, 4.0, -16.0, 5.33,
         -14.67, 6.67, -13.33, 8.0, -12.0, 9.33, -10.67, 10.67],
        [0.0] * 32,
        [0.0] * 32,
        0.002,
        46.08,
        lambda c: 1.152 * c,
        lambda c: c,
    ),
}  # fmt: skip


def build_packet(
    model: str,
    stamp_us: int,
    azimuth_cdeg: list[int],
    distance: list[list[int]],
    reflectivity: list[list[int]],
    mode: int = STRONGEST,
) -> bytes:
    """A 1206-byte data packet, written field by field as the manual lays it out."""
    out = bytearray()
    for b in range(12):
        out += bytes([0xFF, 0xEE]) + struct.pack("<H", azimuth_cdeg[b])
        for c in range(32):
            out += struct.pack("<HB", distance[b][c], reflectivity[b][c])
    out += struct.pack("<I", stamp_us % HOUR_US) + bytes([mode, MANUALS[model].product_id])
    assert len(out) == 1206
    return bytes(out)


def scene_distance_m(laser: int, azimuth_deg: float, second: bool) -> float:
    """What the virtual sensor sees: a wavy wall; the second (strongest) return 40 cm closer."""
    d = 6.0 + 2.5 * math.sin(math.radians(3 * azimuth_deg)) + 0.07 * laser
    return d - 0.4 if second else d


@dataclass
class Spin:
    """Packets of a virtual sensor spinning at ``rpm`` (``azimuth(t)`` known exactly)."""

    model: str
    rpm: float = 600.0
    t0_us: float = 0.0
    az0_deg: float = 0.0
    mode: int = STRONGEST

    @property
    def packet_us(self) -> float:
        return MANUALS[self.model].block_us * (6 if self.mode == DUAL else 12)

    def rotor_deg(self, t_us: float) -> float:
        return (self.az0_deg + self.rpm * 360 / 60e6 * (t_us - self.t0_us)) % 360

    def packet(self, k: int) -> tuple[int, bytes]:
        """Packet ``k``: its stamp (µs, unwrapped) and bytes."""
        m = MANUALS[self.model]
        t = self.t0_us + k * self.packet_us
        az, dist, refl = [], [], []
        for b in range(12):
            fire = b // 2 if self.mode == DUAL else b
            a = self.rotor_deg(t + fire * m.block_us)
            az.append(round(a * 100) % 36000)
            second = self.mode == DUAL and b % 2 == 1
            row_d, row_r = [], []
            for c in range(32):
                d = scene_distance_m(m.laser(c), a, second)
                hole = (c * 7 + b * 3 + k) % 23 == 0  # some beams see nothing
                row_d.append(0 if hole else round(d / m.unit_m))
                row_r.append((c * 8 + b + k) % 256)
            dist.append(row_d)
            refl.append(row_r)
        stamp = round(t)
        return stamp, build_packet(self.model, stamp, az, dist, refl, self.mode)

    def packets(self, n: int, start: int = 0) -> list[bytes]:
        return [self.packet(k)[1] for k in range(start, start + n)]


def expected_points(model: str, pkt: bytes) -> list[tuple[float, ...]]:
    """Per the manual, scalar: (x, y, z, intensity, t_us) of each return in firing order."""
    m = MANUALS[model]
    stamp = struct.unpack_from("<I", pkt, 1200)[0]
    dual = pkt[1204] == DUAL
    az = [struct.unpack_from("<H", pkt, 100 * b + 2)[0] / 100 for b in range(12)]
    out = []
    for b in range(12):
        fire = b // 2 if dual else b
        nxt = b + 2 if dual else b + 1
        # The last firing repeats the step before it.
        prev = b - 2 if dual else b - 1
        step = (az[nxt] - az[b]) % 360 if nxt < 12 else (az[b] - az[prev]) % 360
        for c in range(32):
            d, refl = struct.unpack_from("<HB", pkt, 100 * b + 4 + 3 * c)
            if d == 0:
                continue
            laser = m.laser(c)
            alpha = math.radians(
                az[b] + step * m.slot_us(c) / m.block_us + m.azimuth_offset_deg[laser]
            )
            omega = math.radians(m.elevation_deg[laser])
            r = d * m.unit_m
            # Velodyne: X right, Y forward; REP 103: x forward (= Y), y left (= -X).
            vel_x = r * math.cos(omega) * math.sin(alpha)
            vel_y = r * math.cos(omega) * math.cos(alpha)
            z = r * math.sin(omega) + m.vertical_mm[laser] / 1000
            t = stamp + fire * m.block_us + m.slot_us(c)
            out.append((vel_y, -vel_x, z, float(refl), t))
    return out


@pytest.mark.parametrize("model", list(MANUALS))
@pytest.mark.parametrize("mode", [STRONGEST, DUAL])
def test_decoded_points_follow_the_manual(model: str, mode: int) -> None:
    spin = Spin(model, az0_deg=359.0, mode=mode, t0_us=1000.0)
    pkts = spin.packets(3)
    dec = decode_packets(parse_packets(pkts), MODELS[model])
    for p, pkt in enumerate(pkts):
        want = np.array(expected_points(model, pkt))
        v = dec.valid[p]
        got = dec.xyzi[p][v]
        assert len(got) == len(want) > 300
        np.testing.assert_allclose(got, want[:, :4], atol=2e-4)
        stamp = struct.unpack_from("<I", pkt, 1200)[0]
        np.testing.assert_allclose(stamp + dec.offset_ns[p][v] / 1000, want[:, 4], atol=1e-6)
    # Rings count from the lowest beam up, as ROS and the simulated lidar do.
    el = np.array(MANUALS[model].elevation_deg)
    ring_of_slot = dec.ring[0][:32]
    lasers = [MANUALS[model].laser(c) for c in range(32)]
    assert list(ring_of_slot) == [int(np.argsort(np.argsort(el))[i]) for i in lasers]


@pytest.mark.parametrize("model", list(MANUALS))
def test_same_points_as_velodyne_decoder(model: str) -> None:
    vd = pytest.importorskip("velodyne_decoder", reason="velodyne-decoder (PyPI) not installed")
    spin = Spin(model, az0_deg=10.0, t0_us=5_000.0)
    pkts = spin.packets(6)
    vd_model = {"VLP-16": vd.Model.VLP16, "VLP-32C": vd.Model.VLP32C, "HDL-32E": vd.Model.HDL32E}
    decoder = vd.ScanDecoder(vd.Config(model=vd_model[model], min_range=0.0, max_range=500.0))
    packets = vd.PacketVector([vd.VelodynePacket(float(i), list(p)) for i, p in enumerate(pkts)])
    _, ref = decoder.decode(packets)
    dec = decode_packets(parse_packets(pkts), MODELS[model])
    v = dec.valid.reshape(-1)
    mine = dec.xyzi.reshape(-1, 4)[v]
    stamps_ns = np.array([struct.unpack_from("<I", p, 1200)[0] for p in pkts]) * 1000
    t_ns = (stamps_ns[:, None] + dec.offset_ns).reshape(-1)[v]
    assert ref.shape[0] == len(mine)
    ring = dec.ring.reshape(-1)[v]
    np.testing.assert_array_equal(ref[:, 6], ring)  # ring, lowest beam 0
    np.testing.assert_array_equal(ref[:, 3], mine[:, 3])  # intensity
    # Times: the same firing table (velodyne-decoder stamps relative to its scan stamp).
    np.testing.assert_allclose((ref[:, 4] - ref[0, 4]) * 1e9, t_ns - t_ns[0], atol=5.0)
    # Range in the horizontal plane: the same distance unit and vertical angles.
    np.testing.assert_allclose(
        np.hypot(ref[:, 0], ref[:, 1]), np.hypot(mine[:, 0], mine[:, 1]), atol=1e-4
    )
    # Azimuth: velodyne-decoder rounds the VLP-16's interpolated azimuth to 0.01°, and uses the
    # block azimuth for every laser of a 32-laser block (no interpolation inside the block).
    d_az = (
        np.degrees(np.arctan2(ref[:, 1], ref[:, 0]) - np.arctan2(mine[:, 1], mine[:, 0])) + 180
    ) % 360 - 180
    step_deg = spin.rpm * 360 / 60e6 * MANUALS[model].block_us
    assert np.abs(d_az).max() <= (0.015 if model == "VLP-16" else step_deg)
    dz = ref[:, 2] - mine[:, 2]
    if model == "VLP-16":
        assert np.abs(dz).max() < 1e-4  # both apply the manual's vertical corrections
    else:
        # velodyne-decoder adds a small fixed height per beam that these manuals do not give:
        # the same for every point of a ring, a couple of centimetres at most.
        for r in np.unique(ring):
            on = dz[ring == r]
            assert np.ptp(on) < 1e-4 and abs(on[0]) < 0.025


def sweep_stream(spin: Spin, n: int, batch: int = 7) -> tuple[SweepAssembler, list]:  # type: ignore[type-arg]
    asm = SweepAssembler(model=spin.model)
    out = []
    pkts = [spin.packet(k) for k in range(n)]
    for i in range(0, n, batch):
        chunk = pkts[i : i + batch]
        out += asm.push([p for _, p in chunk], [s for s, _ in chunk])
    return asm, out


@pytest.mark.parametrize("model", list(MANUALS))
def test_sweeps_cut_at_the_azimuth_and_stamped_at_their_first_firing(model: str) -> None:
    spin = Spin(model, az0_deg=200.0, t0_us=HOUR_US - 150_000)  # the hour wraps in sweep 2
    n = math.ceil(350_000 / spin.packet_us)
    asm, sweeps = sweep_stream(spin, n)
    assert len(sweeps) == 3, asm.counters
    assert asm.counters.hour_wraps == 1 and asm.counters.lost == 0
    starts = []
    for s in sweeps:
        pts = s.points
        assert pts.dtype == np.float32 and pts.shape[1] == 5 and s.ring.dtype == np.uint8
        assert s.meta["sweep_s"] == pytest.approx(0.1, abs=1e-4)
        t = pts[:, 4]
        assert t.min() >= 0 and t.max() < s.meta["sweep_s"]
        # Clockwise from the cut at yaw 0: yaw falls from 0 through -180 back to 0.
        yaw = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
        # A point's time is its angle past the cut over a revolution, up to the beam's azimuth
        # offset (the VLP-32C's lasers point up to 4.2° off the rotor).
        d = ((-yaw) % 360 / 360 * 0.1 - t + 0.05) % 0.1 - 0.05
        tol = (max(abs(a) for a in MANUALS[model].azimuth_offset_deg) + 0.3) / 360 * 0.1
        assert np.abs(d).max() < tol
        assert 0 <= s.t_sensor_ns < HOUR_NS
        # The sensor crosses azimuth 0 at t0 + (360 - 200)/360 * 0.1 s, then every 0.1 s.
        starts.append(s.t_sensor_ns)
    crossing_us = spin.t0_us + (160 / 360 + np.arange(3)) * 100_000
    want = (crossing_us * 1000) % HOUR_NS
    # The first firing at or after the crossing: within one firing step of it (less the
    # rounding of stamps to whole µs).
    late_ns = (np.array(starts) - want + HOUR_NS / 2) % HOUR_NS - HOUR_NS / 2
    assert np.all((late_ns > -1000) & (late_ns < MANUALS[model].block_us * 1000))
    assert starts[2] < starts[1]  # wrapped, not unwrapped


def test_loss_reordering_duplicates_malformed_and_dual_return() -> None:
    spin = Spin("VLP-32C", mode=DUAL, az0_deg=90.0, t0_us=1e6)
    pkts = [spin.packet(k)[1] for k in range(1200)]
    stream = list(pkts)
    del stream[600:603]  # three lost
    stream[500], stream[501] = stream[501], stream[500]  # reordered inside a sweep
    stream.insert(200, stream[199])  # a duplicate
    stream.insert(100, b"\x00" * 512)  # a position packet on the wrong port
    bad = bytearray(pkts[0])
    bad[100] = 0x12  # block 1 without its 0xFFEE flag
    stream.insert(50, bytes(bad))
    asm = SweepAssembler(model="VLP-32C")
    sweeps = []
    for i in range(0, len(stream), 9):
        sweeps += asm.push(stream[i : i + 9], list(range(i, min(i + 9, len(stream)))))
    c = asm.counters.as_dict()
    assert c["bad_size"] == 1 and c["malformed"] == 1 and c["duplicates"] == 1
    assert c["reordered"] == 1 and c["late"] == 0 and c["lost"] == 3
    assert len(sweeps) == 3
    # Dual: two returns per firing, the strongest 40 cm closer; time order restored.
    s = sweeps[0]
    assert np.all(np.diff(s.points[:, 4]) >= 0)
    r = np.linalg.norm(s.points[:, :3], axis=1)
    assert len(s.points) > 1.8 * 32 * 1800  # both returns of nearly every beam
    assert s.meta["return_mode"] == "dual"
    assert [sw.meta["lost_packets"] for sw in sweeps] == [0, 3, 0]
    assert [sw.meta["reordered_packets"] for sw in sweeps] == [1, 0, 0]
    only = SweepAssembler(model="VLP-32C", return_mode="strongest")
    strongest = []
    for i in range(0, 1200, 10):
        strongest += only.push(pkts[i : i + 10], [0] * len(pkts[i : i + 10]))
    assert len(strongest[0].points) == pytest.approx(len(s.points) / 2, rel=0.01)
    assert np.median(np.linalg.norm(strongest[0].points[:, :3], axis=1)) < np.median(r)


def test_wrong_model_and_return_mode_and_clock_jump() -> None:
    spin = Spin("VLP-16", az0_deg=0.0)
    asm = SweepAssembler(model="HDL-32E")
    assert asm.push(spin.packets(20), [0] * 20) == []
    assert asm.counters.wrong_model == 20 and "0x22" in asm.problems["wrong_model"]
    last = SweepAssembler(model="auto", return_mode="last")
    assert last.push(spin.packets(20), [0] * 20) == []
    assert last.counters.wrong_return_mode == 20 and last.model is MODELS["VLP-16"]
    # A stamp that steps back 2 s is a clock jump: the open sweep is given up.
    asm = SweepAssembler()
    first = spin.packets(160)
    assert len(asm.push(first, [0] * 160)) == 1
    jumped = Spin("VLP-16", az0_deg=spin.rotor_deg(160 * spin.packet_us), t0_us=-2e6)
    asm.push([jumped.packet(k)[1] for k in range(5)], [0] * 5)
    assert asm.counters.clock_jumps == 1 and asm.counters.incomplete == 1


def test_cut_azimuth_is_a_rep103_yaw() -> None:
    spin = Spin("HDL-32E", az0_deg=0.0)
    asm = SweepAssembler(model="HDL-32E", cut_azimuth_deg=90.0)  # start on the left (+y)
    sweeps = []
    for k in range(0, 500, 10):
        sweeps += asm.push(spin.packets(10, start=k), [0] * 10)
    assert len(sweeps) >= 2
    first = sweeps[0].points[sweeps[0].points[:, 4] < 1e-4]
    yaw = np.degrees(np.arctan2(first[:, 1], first[:, 0]))
    assert np.all(np.abs(yaw - 90.0) < 0.5)


def test_bench_lidar_decode_reports_its_figures() -> None:
    from edgefuse.bench.sensors_lidar import bench_lidar_decode

    r = bench_lidar_decode("VLP-16", seconds=0.5)
    assert r["sweeps"] >= 3 and r["points_per_sweep"] > 20_000
    assert 0 < r["core_fraction"] < 1 and r["cpu_ms_per_sweep"] > 0
    assert r["latency_ms"]["p50"] > 0
