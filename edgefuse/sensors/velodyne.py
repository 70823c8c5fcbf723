"""Velodyne VLP-16, VLP-32C and HDL-32E data packets: decoding (pure numpy).

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

Sweep assembly from decoded packets is in :mod:`edgefuse.sensors.velodyne_sweeps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
