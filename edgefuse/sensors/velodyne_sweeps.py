"""Velodyne sweeps: decoded packets assembled into one message per revolution (pure numpy).

:class:`SweepAssembler` turns a stream of packets (decoded by :mod:`edgefuse.sensors.velodyne`)
into sweeps cut where the rotor crosses a configurable azimuth, counting what goes wrong on the
way (malformed packets, gaps, reordering, duplicates, the hour wrap, clock jumps). A sweep is
what :class:`~edgefuse.sim.rig.LidarSource` publishes (encoding ``xyzit_f32``): points
``(N, 5)`` float32 ``[x, y, z, intensity, t_offset_s]`` in the lidar frame plus ``ring``
``(N,)`` uint8 (0 = the lowest beam), stamped with the sensor clock at its first firing, which
is never unwrapped here (the aligner does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from edgefuse.sensors.velodyne import (
    BLOCKS,
    CHANNELS,
    DUAL,
    FIELDS,
    HOUR_NS,
    HOUR_US,
    MODEL_BY_PRODUCT_ID,
    MODELS,
    PACKET_BYTES,
    RETURN_MODES,
    DecodedPackets,
    VelodyneModel,
    decode_packets,
    packet_problems,
    parse_packets,
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
