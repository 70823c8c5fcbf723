"""Velodyne VLP-16, VLP-32C and HDL-32E data packets: decoding and sweep assembly (pure numpy).

A data packet is the 1206-byte payload of a UDP datagram (port 2368 by default), laid out as
the user manuals describe it: 12 data blocks of 100 bytes (flag ``0xFFEE``, azimuth in 0.01°,
32 channels of distance (u16, little-endian) and calibrated reflectivity (u8)), then a
4-byte timestamp (µs past the top of the hour, wrapping at 3600 s), the return-mode byte
(``0x37`` strongest, ``0x38`` last, ``0x39`` dual) and the product-id byte (``0x21`` HDL-32E,
``0x22`` VLP-16, ``0x28`` VLP-32C).

Per point the decoder computes the firing time from the manuals' timing tables (the packet
stamp is the first firing of the first block), the rotor azimuth by interpolating between the
block azimuths at that time, then x, y, z. Velodyne's own frame has y forward and x to the
right, with the azimuth counted clockwise from y; points come out in the ROS REP 103 frame
(x forward, y left, z up): ``x = r cos(el) cos(az)``, ``y = -r cos(el) sin(az)``,
``z = r sin(el)``. In
dual-return packets the blocks come in pairs that share one firing (even: last return, odd:
strongest, or second strongest when the strongest is also the last).

:class:`SweepAssembler` turns a stream of packets into sweeps cut where the rotor crosses a
configurable azimuth, counting what goes wrong on the way (malformed packets, gaps, reordering,
duplicates, the hour wrap, clock jumps). A sweep is what :class:`~edgefuse.sim.rig.LidarSource`
publishes (encoding ``xyzit_f32``): points ``(N, 5)`` float32 ``[x, y, z, intensity,
t_offset_s]`` in the lidar frame plus ``ring`` ``(N,)`` uint8 (0 = the lowest beam), stamped
with the sensor clock at its first firing, which is never unwrapped here (the aligner does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

#: Bytes in a data packet's UDP payload.
PACKET_BYTES = 1206
BLOCKS = 12
CHANNELS = 32
#: The sensor clock wraps at the top of the hour.
HOUR_US = 3_600_000_000
HOUR_NS = HOUR_US * 1000
#: ``0xFF 0xEE``, read as a little-endian u16.
BLOCK_FLAG = 0xEEFF
RETURN_MODES: dict[int, str] = {0x37: "strongest", 0x38: "last", 0x39: "dual"}
DUAL = 0x39

_CHANNEL = np.dtype([("distance", "<u2"), ("reflectivity", "u1")])
_BLOCK = np.dtype([("flag", "<u2"), ("azimuth", "<u2"), ("channels", _CHANNEL, (CHANNELS,))])
#: One data packet as a numpy record (packed: no padding, fields unaligned like the wire).
PACKET_DTYPE = np.dtype(
    [
        ("blocks", _BLOCK, (BLOCKS,)),
        ("stamp_us", "<u4"),
        ("return_mode", "u1"),
        ("product_id", "u1"),
    ]
)
assert PACKET_DTYPE.itemsize == PACKET_BYTES

#: Fields of a published sweep's points array (as the simulated lidar's).
FIELDS = ("x", "y", "z", "intensity", "t_offset_s")


@dataclass(frozen=True)
class VelodyneModel:
    """One sensor model: beam angles and firing timing from its user manual."""

    name: str
    product_id: int
    #: Vertical angle of each laser id (degrees, up positive).
    elevation_deg: tuple[float, ...]
    #: Azimuth offset of each laser id (degrees, added to the rotor azimuth).
    azimuth_offset_deg: tuple[float, ...]
    #: Metres per distance count.
    distance_unit_m: float
    #: One firing sequence of all lasers, recharge included (ns).
    sequence_ns: int
    #: Time between consecutive firings inside a sequence (ns).
    step_ns: int
    #: Lasers fired together at each step (the VLP-32C fires pairs).
    lasers_per_step: int = 1
    #: Height of each laser's beam origin above the sensor origin (m), where the manual gives
    #: it (the VLP-16's "vertical correction"); added to z.
    vertical_offset_m: tuple[float, ...] = ()

    @property
    def lasers(self) -> int:
        """Number of lasers."""
        return len(self.elevation_deg)

    @property
    def block_ns(self) -> int:
        """Duration of one data block (the VLP-16 packs two firing sequences into a block)."""
        return self.sequence_ns * (CHANNELS // self.lasers)

    def packet_ns(self, return_mode: int) -> int:
        """Time from one packet to the next (dual-return packets cover half the firings)."""
        return self.block_ns * (BLOCKS // 2 if return_mode == DUAL else BLOCKS)


# VLP-16 user manual (63-9243), table 9-1: lasers interleave down/up, 2° apart.
_VLP16_EL = (-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15)
_VLP16_VERTICAL_MM = (
    11.2, -0.7, 9.7, -2.2, 8.1, -3.7, 6.6, -5.1, 5.1, -6.6, 3.7, -8.1, 2.2, -9.7, 0.7, -11.2
)  # fmt: skip
# VLP-32C user manual (63-9325), table 9-1: vertical angles and azimuth offsets.
_VLP32C_EL = (
    -25.0, -1.0, -1.667, -15.639, -11.31, 0.0, -0.667, -8.843,
    -7.254, 0.333, -0.333, -6.148, -5.333, 1.333, 0.667, -4.0,
    -4.667, 1.667, 1.0, -3.667, -3.333, 3.333, 2.333, -2.667,
    -3.0, 7.0, 4.667, -2.333, -2.0, 15.0, 10.333, -1.333,
)  # fmt: skip
_VLP32C_AZ = (
    1.4, -4.2, 1.4, -1.4, 1.4, -1.4, 4.2, -1.4,
    1.4, -4.2, 1.4, -1.4, 4.2, -1.4, 4.2, -1.4,
    1.4, -4.2, 1.4, -4.2, 4.2, -1.4, 1.4, -1.4,
    1.4, -1.4, 1.4, -4.2, 4.2, -1.4, 1.4, -1.4,
)  # fmt: skip
# HDL-32E user manual (63-9113), appendix: lasers interleave from -30.67° to +10.67°.
_HDL32E_EL = (
    -30.67, -9.33, -29.33, -8.0, -28.0, -6.67, -26.67, -5.33,
    -25.33, -4.0, -24.0, -2.67, -22.67, -1.33, -21.33, 0.0,
    -20.0, 1.33, -18.67, 2.67, -17.33, 4.0, -16.0, 5.33,
    -14.67, 6.67, -13.33, 8.0, -12.0, 9.33, -10.67, 10.67,
)  # fmt: skip

#: The supported models by name (the names the node's ``model`` parameter takes).
MODELS: dict[str, VelodyneModel] = {
    m.name: m
    for m in (
        VelodyneModel(
            name="VLP-16",
            product_id=0x22,
            elevation_deg=tuple(float(e) for e in _VLP16_EL),
            azimuth_offset_deg=(0.0,) * 16,
            distance_unit_m=0.002,
            sequence_ns=55_296,
            step_ns=2_304,
            vertical_offset_m=tuple(mm * 1e-3 for mm in _VLP16_VERTICAL_MM),
        ),
        VelodyneModel(
            name="VLP-32C",
            product_id=0x28,
            elevation_deg=_VLP32C_EL,
            azimuth_offset_deg=_VLP32C_AZ,
            # The VLP-32C counts 4 mm (manual 9.3.1.3; VeloView's calibration agrees).
            distance_unit_m=0.004,
            sequence_ns=55_296,
            step_ns=2_304,
            lasers_per_step=2,
        ),
        VelodyneModel(
            name="HDL-32E",
            product_id=0x21,
            elevation_deg=_HDL32E_EL,
            azimuth_offset_deg=(0.0,) * 32,
            distance_unit_m=0.002,
            sequence_ns=46_080,
            step_ns=1_152,
        ),
    )
}
MODEL_BY_PRODUCT_ID: dict[int, VelodyneModel] = {m.product_id: m for m in MODELS.values()}


class _Tables:
    """Per-channel-slot constants of one model, precomputed for the vectorised decoder."""

    def __init__(self, model: VelodyneModel) -> None:
        slot = np.arange(CHANNELS)
        laser = slot % model.lasers
        sequence = slot // model.lasers  # 0, or 1 for the VLP-16's second firing sequence
        slot_ns = sequence * model.sequence_ns + (laser // model.lasers_per_step) * model.step_ns
        block = np.arange(BLOCKS)[:, None]
        self.offset_ns = {
            False: (block * model.block_ns + slot_ns).astype(np.int64),
            True: ((block // 2) * model.block_ns + slot_ns).astype(np.int64),
        }
        #: Where in its block's azimuth step each slot fires (0..1).
        self.fraction = (slot_ns / model.block_ns).astype(np.float32)
        el = np.radians(np.asarray(model.elevation_deg))[laser]
        self.cos_el = np.cos(el).astype(np.float32)
        self.sin_el = np.sin(el).astype(np.float32)
        self.azimuth_offset_deg = np.asarray(model.azimuth_offset_deg, np.float32)[laser]
        offset = model.vertical_offset_m or (0.0,) * model.lasers
        self.z_offset_m = np.asarray(offset, np.float32)[laser]
        # Ring 0 is the lowest beam (ROS and the simulated lidar number rings that way).
        rank = np.argsort(np.argsort(np.asarray(model.elevation_deg), kind="stable"))
        self.ring = rank[laser].astype(np.uint8)
        self.unit_m = np.float32(model.distance_unit_m)


_TABLES: dict[str, _Tables] = {}


def tables(model: VelodyneModel) -> _Tables:
    """The precomputed per-slot tables of ``model`` (cached)."""
    t = _TABLES.get(model.name)
    if t is None:
        t = _TABLES[model.name] = _Tables(model)
    return t


@dataclass
class DecodedPackets:
    """Points of ``P`` packets, ``(P, 384)`` each (12 blocks x 32 slots, firing order)."""

    #: ``(P, 384, 4)`` float32: x, y, z (m, REP 103 sensor frame), intensity (0..255).
    xyzi: np.ndarray
    ring: np.ndarray
    #: Firing time after the packet stamp (ns).
    offset_ns: np.ndarray
    #: Rotor azimuth at the firing (degrees, Velodyne's clockwise convention, 0..360).
    rotor_deg: np.ndarray
    #: A return was measured (distance > 0) and is of the kind asked for.
    valid: np.ndarray


def parse_packets(payloads: Sequence[bytes]) -> np.ndarray:
    """View equally sized 1206-byte payloads as a ``(P,)`` array of :data:`PACKET_DTYPE`."""
    buf = b"".join(payloads)
    if len(buf) != PACKET_BYTES * len(payloads):
        raise ValueError(f"every payload must be {PACKET_BYTES} bytes")
    return np.frombuffer(buf, PACKET_DTYPE)


def packet_problems(packets: np.ndarray) -> list[str]:
    """Per packet, what is wrong with it: ``""`` if nothing, else ``bad_flag`` (a block not
    starting with 0xFFEE), ``bad_azimuth`` (>= 36000) or ``bad_return_mode``."""
    blocks = packets["blocks"]
    mode = packets["return_mode"]
    flag: list[bool] = np.any(blocks["flag"] != BLOCK_FLAG, axis=1).tolist()
    azimuth: list[bool] = np.any(blocks["azimuth"] >= 36000, axis=1).tolist()
    bad_mode: list[bool] = ((mode < 0x37) | (mode > 0x39)).tolist()
    out = [""] * len(packets)
    for i, (f, a, m) in enumerate(zip(flag, azimuth, bad_mode, strict=True)):
        if f or a or m:
            out[i] = "bad_flag" if f else "bad_azimuth" if a else "bad_return_mode"
    return out


def decode_packets(
    packets: np.ndarray, model: VelodyneModel, *, keep: str = "all"
) -> DecodedPackets:
    """Decode ``(P,)`` well-formed packets of ``model`` (vectorised over all of them).

    ``keep`` selects returns in dual-return packets: ``all``, ``strongest`` (odd blocks) or
    ``last`` (even blocks); single-return packets are kept whole.
    """
    t = tables(model)
    blocks = packets["blocks"]
    dual = packets["return_mode"] == DUAL
    az = blocks["azimuth"].astype(np.float32) * np.float32(0.01)  # (P, 12)
    # Azimuth step of each block's firing to the next; the last firing repeats the one before.
    step = np.empty_like(az)
    step[:, :-1] = np.diff(az, axis=1) % 360
    step[:, -1] = step[:, -2]
    if dual.any():
        fire = az[:, ::2]
        step2 = np.empty_like(fire)
        step2[:, :-1] = np.diff(fire, axis=1) % 360
        step2[:, -1] = step2[:, -2]
        step = np.where(dual[:, None], np.repeat(step2, 2, axis=1), step)
    rotor = az[:, :, None] + step[:, :, None] * t.fraction  # (P, 12, 32)
    rotor %= 360
    alpha = np.radians(rotor + t.azimuth_offset_deg)
    ch = blocks["channels"]
    dist = ch["distance"]
    r = dist.astype(np.float32) * t.unit_m
    xy = r * t.cos_el
    valid = dist > 0
    if keep != "all" and dual.any():
        odd = (np.arange(BLOCKS) % 2 == 1)[None, :, None]
        wanted = odd if keep == "strongest" else ~odd
        valid &= wanted | ~dual[:, None, None]
    offset = np.where(dual[:, None, None], t.offset_ns[True], t.offset_ns[False])
    n = len(packets)
    shape = (n, BLOCKS * CHANNELS)
    xyzi = np.empty((n, BLOCKS, CHANNELS, 4), np.float32)
    np.multiply(xy, np.cos(alpha), out=xyzi[..., 0])
    np.multiply(xy, np.sin(np.negative(alpha)), out=xyzi[..., 1])  # y = -r cos(el) sin(az)
    np.multiply(r, t.sin_el, out=xyzi[..., 2])
    xyzi[..., 2] += t.z_offset_m
    xyzi[..., 3] = ch["reflectivity"]
    return DecodedPackets(
        xyzi=xyzi.reshape(*shape, 4),
        ring=np.broadcast_to(t.ring, (n, BLOCKS, CHANNELS)).reshape(shape),
        offset_ns=offset.reshape(shape),
        rotor_deg=rotor.reshape(shape),
        valid=valid.reshape(shape),
    )


@dataclass
class Sweep:
    """One sweep, ready to publish as ``xyzit_f32``."""

    points: np.ndarray
    ring: np.ndarray
    #: Sensor clock at the sweep's first firing (ns past the hour, wraps).
    t_sensor_ns: int
    #: Host monotonic time at which the packet completing the sweep arrived.
    t_host_ns: int
    meta: dict[str, Any]


@dataclass
class LidarCounters:
    """What a lidar stream did so far (shown in the status table)."""

    packets: int = 0
    sweeps: int = 0
    #: Payloads that are not 1206 bytes.
    bad_size: int = 0
    #: Blocks without the 0xFFEE flag, azimuths over 359.99°, unknown return-mode bytes.
    malformed: int = 0
    #: Packets of another product than the configured model.
    wrong_model: int = 0
    #: Single-return packets of the other kind than asked for.
    wrong_return_mode: int = 0
    duplicates: int = 0
    #: Packets missing when the next one came (per the stamp sequence).
    missing: int = 0
    #: Packets arriving after a newer one (used when their sweep is still open).
    reordered: int = 0
    #: Reordered packets whose sweep was already published (dropped).
    late: int = 0
    hour_wraps: int = 0
    #: The stamp went backwards by more than a reordering could explain.
    clock_jumps: int = 0
    #: Stamp gaps too long to keep the open sweep (sensor gone, stopped, or restarted).
    gaps: int = 0
    #: Open sweeps given up because of an outage or a clock jump.
    incomplete: int = 0

    @property
    def lost(self) -> int:
        """Packets that never arrived (missing minus those that turned up late)."""
        return max(0, self.missing - self.reordered)

    def as_dict(self) -> dict[str, int]:
        """All counters, ``lost`` included."""
        d = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        d["lost"] = self.lost
        return d


#: A decrease of the rotor azimuth (relative to the cut) by more than this is a crossing.
_CROSS_DEG = 10.0
#: Stamp gaps longer than this end the open sweep: less than a revolution at 1200 rpm, so a
#: crossing is never missed.
MAX_GAP_US = 45_000
#: The stamp stepping back by more than this is a clock jump, not reordering.
MAX_REORDER_US = 100_000


class _Open:
    """The sweep being assembled: points written straight into growing buffers."""

    def __init__(self, start_ns: int, capacity: int) -> None:
        self.start_ns = start_ns  # unwrapped sensor time of its first firing
        self.points = np.empty((capacity, 5), np.float32)
        self.ring = np.empty(capacity, np.uint8)
        self.n = 0
        self.packets = 1
        self.missing = 0
        self.reordered = 0
        self.in_order = True

    def add(self, xyzi: np.ndarray, t_ns: np.ndarray, ring: np.ndarray) -> None:
        """Append points (``t_ns``: unwrapped sensor time of each)."""
        k = len(t_ns)
        if self.n + k > len(self.points):
            size = max(2 * len(self.points), self.n + k)
            self.points = np.resize(self.points, (size, 5))
            self.ring = np.resize(self.ring, size)
        rows = self.points[self.n : self.n + k]
        rows[:, :4] = xyzi
        rows[:, 4] = (t_ns - self.start_ns) * 1e-9
        self.ring[self.n : self.n + k] = ring
        self.n += k


class SweepAssembler:
    """Packets in, sweeps out; see the module documentation.

    ``model``: a name in :data:`MODELS`, or ``auto`` to take it from the first well-formed
    packet's product id. ``return_mode``: ``any`` (whatever the sensor sends), ``strongest``,
    ``last`` or ``dual``. The first partial sweep (before the first crossing) is dropped.
    """

    def __init__(
        self, *, model: str = "auto", return_mode: str = "any", cut_azimuth_deg: float = 0.0
    ) -> None:
        if model != "auto" and model not in MODELS:
            raise ValueError(f"unknown Velodyne model {model!r}; expected auto or {list(MODELS)}")
        if return_mode not in ("any", "strongest", "last", "dual"):
            raise ValueError(f"return_mode must be any, strongest, last or dual: {return_mode!r}")
        if not math.isfinite(cut_azimuth_deg):
            raise ValueError(f"cut_azimuth_deg must be finite, got {cut_azimuth_deg}")
        self.model: VelodyneModel | None = None if model == "auto" else MODELS[model]
        self.return_mode = return_mode
        # The parameter is a REP 103 yaw (counter-clockwise from x); Velodyne azimuths run
        # clockwise from the front, so the cut in packet azimuth is its negation.
        self.cut_deg = (-cut_azimuth_deg) % 360.0
        self.counters = LidarCounters()
        #: Per kind of problem, a description of the first occurrence (for a one-time log).
        self.problems: dict[str, str] = {}
        self._last_raw_us: int | None = None
        self._newest_us = 0  # unwrapped stamp of the newest in-order packet
        self._prev_r: float | None = None
        self._open: _Open | None = None
        self._last_points = 64 * 1024
        self.sensor_return_mode = ""

    def _problem(self, kind: str, detail: str) -> None:
        self.problems.setdefault(kind, detail)

    def _accept(
        self, payloads: Sequence[bytes], host_ns: Sequence[int]
    ) -> tuple[np.ndarray, list[int]]:
        """The well-formed packets of the right model and return mode, and their host times."""
        c = self.counters
        good = [i for i, p in enumerate(payloads) if len(p) == PACKET_BYTES]
        if len(good) < len(payloads):
            c.bad_size += len(payloads) - len(good)
            size = next(len(p) for p in payloads if len(p) != PACKET_BYTES)
            self._problem("bad_size", f"a {size}-byte datagram (data packets are {PACKET_BYTES})")
        pk = parse_packets([payloads[i] for i in good])
        hosts = [host_ns[i] for i in good]
        if not len(pk):
            return pk, hosts
        bad = packet_problems(pk)
        ok = np.array([not b for b in bad], dtype=bool)
        if not ok.all():
            c.malformed += int((~ok).sum())
            self._problem("malformed", f"{next(b for b in bad if b)} in a data packet")
        pid = pk["product_id"]
        if self.model is None and ok.any():
            first = int(pid[ok][0])
            self.model = MODEL_BY_PRODUCT_ID.get(first)
            if self.model is None:
                self._problem("wrong_model", f"unknown product id 0x{first:02x}")
        if self.model is not None:
            right = pid == self.model.product_id
            if not right[ok].all():
                c.wrong_model += int((ok & ~right).sum())
                other = int(pid[ok & ~right][0])
                self._problem(
                    "wrong_model",
                    f"product id 0x{other:02x} from a sensor configured as {self.model.name} "
                    f"(0x{self.model.product_id:02x})",
                )
            ok &= right
        else:
            c.wrong_model += int(ok.sum())
            ok[:] = False
        mode = pk["return_mode"]
        if self.return_mode != "any":
            want = {"strongest": 0x37, "last": 0x38, "dual": DUAL}[self.return_mode]
            fits = (mode == want) | ((mode == DUAL) & (want != DUAL))
            if not fits[ok].all():
                c.wrong_return_mode += int((ok & ~fits).sum())
                got = RETURN_MODES.get(int(mode[ok & ~fits][0]), "?")
                self._problem(
                    "wrong_return_mode",
                    f"the sensor sends {got} returns, the node asks {self.return_mode}",
                )
            ok &= fits
        if ok.any():
            self.sensor_return_mode = RETURN_MODES[int(mode[ok][-1])]
        idx = np.flatnonzero(ok)
        return pk[idx], [hosts[i] for i in idx]

    def _sequence(self, pk: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Unwrapped stamps (µs), a kind per packet: ``in`` (in order), ``break`` (in order,
        after an outage or a clock jump), ``late`` (reordered) or ``dup``, and the number of
        packets missing just before each."""
        assert self.model is not None
        c = self.counters
        unwrapped = np.empty(len(pk), np.int64)
        gaps = np.zeros(len(pk), np.int64)
        kinds: list[str] = []
        half = HOUR_US // 2
        for i, (s_np, mode) in enumerate(zip(pk["stamp_us"], pk["return_mode"], strict=True)):
            s = int(s_np)
            if self._last_raw_us is None:
                self._last_raw_us, self._newest_us = s, s
                unwrapped[i] = s
                kinds.append("break")
                continue
            d = (s - self._last_raw_us + half) % HOUR_US - half
            kind = "in"
            if d == 0:
                kind = "dup"
                c.duplicates += 1
            elif d < -MAX_REORDER_US:
                kind = "break"
                c.clock_jumps += 1
                self._problem("clock_jump", f"the stamp stepped back {-d / 1e6:.3f} s")
                self._newest_us = s
            elif d < 0:
                kind = "late"
                c.reordered += 1
            else:
                if d > MAX_GAP_US:
                    kind = "break"
                    c.gaps += 1
                else:
                    expected_us = self.model.packet_ns(int(mode)) / 1000
                    if d > 1.5 * expected_us:
                        gaps[i] = round(d / expected_us) - 1
                        c.missing += int(gaps[i])
                if s < self._last_raw_us:
                    c.hour_wraps += 1
                self._newest_us += d
            unwrapped[i] = self._newest_us + (d if kind == "late" else 0)
            if kind in ("in", "break"):
                self._last_raw_us = s
            kinds.append(kind)
        return unwrapped, kinds, gaps

    def push(self, payloads: Sequence[bytes], host_ns: Sequence[int]) -> list[Sweep]:
        """Feed datagram payloads in arrival order, each with its host receipt time (ns);
        return the sweeps they complete."""
        if len(payloads) != len(host_ns):
            raise ValueError("one host time per payload")
        self.counters.packets += len(payloads)
        pk, hosts = self._accept(payloads, host_ns)
        if not len(pk):
            return []
        unwrapped_us, kinds, gaps = self._sequence(pk)
        assert self.model is not None
        keep = "all" if self.return_mode in ("any", "dual") else self.return_mode
        dec = decode_packets(pk, self.model, keep=keep)
        t_ns = unwrapped_us[:, None] * 1000 + dec.offset_ns
        r = (dec.rotor_deg - np.float32(self.cut_deg)) % 360
        drop = np.diff(r, axis=1) < -_CROSS_DEG
        inside = np.where(drop.any(axis=1), drop.argmax(axis=1) + 1, -1)
        width = BLOCKS * CHANNELS
        flat = _Flat(dec, t_ns)
        out: list[Sweep] = []
        seg_lo: int | None = None  # start (flat index) of the open sweep's run in this batch
        for p, kind in enumerate(kinds):
            if kind in ("dup", "late"):
                # Not part of the run of in-order packets: close the run before it.
                if seg_lo is not None:
                    flat.add_to(self._open, seg_lo, p * width)
                    seg_lo = None
                if kind == "late":
                    self._late(p, flat, t_ns)
                continue
            if kind == "break":
                seg_lo = None
                if self._open is not None:
                    self.counters.incomplete += 1
                    self._problem("incomplete", "a sweep was cut short by a gap in the stream")
                    self._open = None
                self._prev_r = None
            cross = -1
            if self._prev_r is not None and r[p, 0] < self._prev_r - _CROSS_DEG:
                cross = 0
            elif inside[p] >= 0:
                cross = int(inside[p])
            if cross >= 0:
                # The crossing packet is split by time, not position: in a dual-return packet
                # the second block of a pair repeats firings from before the crossing.
                start = int(t_ns[p, cross])
                before = t_ns[p] < start
                row = slice(p * width, (p + 1) * width)
                if self._open is not None:
                    if cross > 0:
                        self._open.packets += 1
                        self._open.missing += int(gaps[p])
                    if seg_lo is not None:
                        flat.add_to(self._open, seg_lo, row.start)
                    flat.add_to(self._open, row.start, row.stop, before)
                    out.append(self._finish(start, hosts[p]))
                opened = self._start(start)
                if cross == 0:
                    opened.missing += int(gaps[p])
                flat.add_to(opened, row.start, row.stop, ~before)
                seg_lo = None
            elif self._open is not None:
                self._open.packets += 1
                self._open.missing += int(gaps[p])
                if seg_lo is None:
                    seg_lo = p * width
            self._prev_r = float(r[p, -1])
        if seg_lo is not None:
            flat.add_to(self._open, seg_lo, len(kinds) * width)
        return out

    def _late(self, p: int, flat: _Flat, t_ns: np.ndarray) -> None:
        """A reordered packet: its points join the open sweep if they belong to it."""
        op = self._open
        width = BLOCKS * CHANNELS
        after = t_ns[p] >= op.start_ns if op is not None else None
        if op is None or after is None or not after.any():
            self.counters.late += 1
            return
        flat.add_to(op, p * width, (p + 1) * width, after)
        op.packets += 1
        op.reordered += 1
        op.in_order = False

    def _start(self, start_ns: int) -> _Open:
        # Room for a little more than the last sweep, so that buffers rarely grow.
        capacity = self._last_points + self._last_points // 4 + 1024
        self._open = _Open(start_ns, capacity)
        return self._open

    def _finish(self, end_ns: int, t_host_ns: int) -> Sweep:
        op = self._open
        assert op is not None and self.model is not None
        pts, ring = op.points[: op.n], op.ring[: op.n]
        if not op.in_order:
            order = np.argsort(pts[:, 4], kind="stable")
            pts, ring = pts[order], ring[order]
        self._last_points = op.n
        self.counters.sweeps += 1
        meta: dict[str, Any] = {
            "fields": list(FIELDS),
            "beams": self.model.lasers,
            "model": self.model.name,
            "return_mode": self.sensor_return_mode,
            "sweep_s": (end_ns - op.start_ns) * 1e-9,
            "packets": op.packets,
            "lost_packets": max(0, op.missing - op.reordered),
            "reordered_packets": op.reordered,
        }
        return Sweep(
            points=pts,
            ring=ring,
            t_sensor_ns=op.start_ns % HOUR_NS,
            t_host_ns=t_host_ns,
            meta=meta,
        )


class _Flat:
    """A batch's decoded points as flat arrays, to cut runs of packets out of at once."""

    def __init__(self, dec: DecodedPackets, t_ns: np.ndarray) -> None:
        self.xyzi = dec.xyzi.reshape(-1, 4)
        self.t = t_ns.reshape(-1)
        self.ring = dec.ring.reshape(-1)
        self.valid = dec.valid.reshape(-1)

    def add_to(self, op: _Open | None, lo: int, hi: int, also: np.ndarray | None = None) -> None:
        """Append the valid points of flat range ``[lo, hi)`` (where ``also``, if given) to
        the open sweep."""
        if op is None or hi <= lo:
            return
        m = self.valid[lo:hi] if also is None else self.valid[lo:hi] & also
        op.add(self.xyzi[lo:hi][m], self.t[lo:hi][m], self.ring[lo:hi][m])
