"""``sensor_msgs/PointCloud2`` <-> numpy, and to the lidar layout the pipeline consumes.

A PointCloud2 is ``height x width`` points of ``point_step`` bytes each, rows ``row_step`` bytes
apart (``row_step >= width * point_step``: rows may end in padding). Each point holds the
``fields``: a name, a byte ``offset`` inside the point, a ``datatype`` (``INT8`` .. ``FLOAT64``
as in ``sensor_msgs/PointField``) and a ``count`` of consecutive elements. Bytes between fields
are padding; ``is_bigendian`` applies to every field. ``height == 1`` is an unorganized cloud;
``height > 1`` an organized one (an image of points, invalid ones NaN). ``is_dense`` claims that
there are no invalid points; it is informative only: :func:`to_lidar` checks the values.

The lidar layout (encoding ``xyzit_f32``, as the simulated lidar publishes it) is two arrays:
``points`` ``(N, 5)`` float32 ``[x, y, z, intensity, t_offset_s]`` in the cloud's frame and
``ring`` ``(N,)`` uint8. Columns are taken from these fields, the first name present winning:

- intensity: ``intensity``, ``i``, ``reflectivity`` -- the sensor's own unit, not rescaled
  (Velodyne 0..255, Ouster photon counts);
- ring: ``ring``, ``line`` (Livox);
- t_offset_s, seconds after the cloud's ``header.stamp`` (a point's time is
  ``stamp + t_offset_s``): ``time`` (Velodyne ROS driver: float32 s after the stamp),
  ``t`` (Ouster: uint32 ns after the stamp; a float ``t`` is read as seconds),
  ``timestamp`` (Hesai: float64 absolute s; Livox: float64 absolute ns; an integer one is ns)
  and ``offset_time`` (Livox: uint32 ns after the stamp). A ``timestamp`` is taken as absolute,
  and the stamp subtracted, when its values are beyond 10^6 s (float) or 10^15 ns (integer);
  a float ``timestamp`` beyond 10^12 is in ns.

A missing intensity, ring or time column is filled with zeros and named in ``missing``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from edgefuse.errors import EdgefuseError

INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
#: sensor_msgs/PointField datatype -> numpy type letter and size (byte order added per cloud).
DATATYPES: Final[dict[int, str]] = {
    INT8: "i1",
    UINT8: "u1",
    INT16: "i2",
    UINT16: "u2",
    INT32: "i4",
    UINT32: "u4",
    FLOAT32: "f4",
    FLOAT64: "f8",
}
_DATATYPE_OF: Final = {v: k for k, v in DATATYPES.items()}
LIDAR_COLUMNS: Final = ("x", "y", "z", "intensity", "t_offset_s")
INTENSITY_NAMES: Final = ("intensity", "i", "reflectivity")
RING_NAMES: Final = ("ring", "line")
TIME_NAMES: Final = ("time", "t", "timestamp", "offset_time")
#: Fields named like this are PCL's padding placeholders: they carry no data and may repeat.
_PADDING_NAMES: Final = frozenset({"", "_"})


class PointCloudError(EdgefuseError):
    """A PointCloud2 whose description and bytes disagree, or that cannot become points."""


@dataclass(frozen=True, slots=True)
class PointField:
    """One field of a point: ``name``, byte ``offset`` in the point, ``datatype``, ``count``."""

    name: str
    offset: int
    datatype: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class PointCloud2:
    """The layout and bytes of a ``sensor_msgs/PointCloud2`` (without its header)."""

    height: int
    width: int
    fields: tuple[PointField, ...]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: bytes
    is_dense: bool = True

    @classmethod
    def from_msg(cls, msg: Any) -> PointCloud2:
        """Take the layout of any PointCloud2 message object (rosbags, rclpy, rospy)."""
        try:
            fields = tuple(
                PointField(str(f.name), int(f.offset), int(f.datatype), int(f.count))
                for f in msg.fields
            )
            data = msg.data
            raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
            return cls(
                height=int(msg.height),
                width=int(msg.width),
                fields=fields,
                is_bigendian=bool(msg.is_bigendian),
                point_step=int(msg.point_step),
                row_step=int(msg.row_step),
                data=raw,
                is_dense=bool(msg.is_dense),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise PointCloudError(f"not a PointCloud2 message: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LidarPoints:
    """A cloud in the lidar layout: ``points`` (N, 5) float32, ``ring`` (N,) uint8."""

    points: np.ndarray
    ring: np.ndarray
    #: Columns the cloud had no field for (filled with 0): of ``intensity``, ``ring``, ``time``.
    missing: tuple[str, ...] = ()
    #: Which cloud field each filled column came from, e.g. ``{"intensity": "reflectivity"}``.
    sources: dict[str, str] = field(default_factory=dict)


def point_dtype(
    fields: Sequence[PointField], point_step: int, *, is_bigendian: bool
) -> np.dtype[Any]:
    """The numpy structured dtype of one point (itemsize ``point_step``, padding kept).

    Raises ``PointCloudError`` for an unknown datatype, a count of 0, a field that runs past
    ``point_step`` or a name used twice (PCL's ``_`` padding fields are left out).
    """
    order = ">" if is_bigendian else "<"
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    if point_step <= 0:
        raise PointCloudError(f"point_step is {point_step}")
    for f in fields:
        if f.name in _PADDING_NAMES:
            continue
        letter = DATATYPES.get(f.datatype)
        if letter is None:
            raise PointCloudError(
                f"field {f.name!r}: datatype {f.datatype} is not one of 1..8 (INT8..FLOAT64)"
            )
        if f.count < 1:
            raise PointCloudError(f"field {f.name!r}: count is {f.count}")
        size = int(letter[1]) * f.count
        if f.offset < 0 or f.offset + size > point_step:
            raise PointCloudError(
                f"field {f.name!r}: bytes {f.offset}..{f.offset + size} run past the "
                f"point_step of {point_step}"
            )
        if f.name in names:
            raise PointCloudError(f"field {f.name!r} appears twice")
        names.append(f.name)
        formats.append(order + letter if f.count == 1 else (order + letter, (f.count,)))
        offsets.append(f.offset)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step}
    )


def to_array(cloud: PointCloud2) -> np.ndarray:
    """The points as a structured array of shape ``(height, width)`` in native byte order.

    Padding between fields and at row ends is dropped; values are copied out of the message.
    Raises ``PointCloudError`` when the sizes in the description and the data disagree.
    """
    if cloud.height < 0 or cloud.width < 0:
        raise PointCloudError(f"size {cloud.height}x{cloud.width} is negative")
    dt = point_dtype(cloud.fields, cloud.point_step, is_bigendian=cloud.is_bigendian)
    if cloud.row_step < cloud.width * cloud.point_step:
        raise PointCloudError(
            f"row_step {cloud.row_step} is less than width {cloud.width} x point_step "
            f"{cloud.point_step}"
        )
    need = cloud.row_step * cloud.height
    if len(cloud.data) < need:
        raise PointCloudError(
            f"data holds {len(cloud.data)} bytes, {cloud.height} rows of {cloud.row_step} "
            f"need {need}"
        )
    parts: Mapping[str, Any] = dt.fields or {}
    native = np.dtype([(n, parts[n][0].newbyteorder("=")) for n in dt.names or ()])
    if cloud.height == 0 or cloud.width == 0:
        return np.zeros((cloud.height, cloud.width), native)
    view = np.ndarray(
        (cloud.height, cloud.width),
        dtype=dt,
        buffer=cloud.data,
        strides=(cloud.row_step, cloud.point_step),
    )
    out = np.empty(view.shape, native)
    for name in native.names or ():
        out[name] = view[name]
    return out


def from_array(
    points: np.ndarray,
    *,
    is_bigendian: bool = False,
    row_padding: int = 0,
    is_dense: bool | None = None,
) -> PointCloud2:
    """A PointCloud2 holding a structured array of shape ``(width,)`` or ``(height, width)``.

    The point layout is the array's own (field offsets and padding kept); ``row_padding``
    bytes of zeros end every row. ``is_dense`` defaults to "x, y, z all finite" (True when
    there are no such fields). Raises ``PointCloudError`` for a field type PointCloud2 cannot
    carry (bool, 64-bit integers, complex, nested records).
    """
    dt = points.dtype
    if dt.names is None:
        raise PointCloudError(f"need a structured array, got dtype {dt}")
    if points.ndim not in (1, 2):
        raise PointCloudError(f"need shape (width,) or (height, width), got {points.shape}")
    grid = points.reshape(1, -1) if points.ndim == 1 else points
    order = ">" if is_bigendian else "<"
    fields: list[PointField] = []
    formats: list[Any] = []
    for name in dt.names:
        fdt, offset = dt.fields[name][:2]  # type: ignore[index]
        base, shape = (fdt.subdtype[0], fdt.subdtype[1]) if fdt.subdtype else (fdt, ())
        datatype = _DATATYPE_OF.get(f"{base.kind}{base.itemsize}")
        if datatype is None:
            raise PointCloudError(f"field {name!r}: {base} has no PointField datatype")
        count = int(np.prod(shape)) if shape else 1
        fields.append(PointField(name, int(offset), datatype, count))
        letter = order + DATATYPES[datatype]
        formats.append(letter if count == 1 else (letter, (count,)))
    wire = np.dtype(
        {
            "names": list(dt.names),
            "formats": formats,
            "offsets": [f.offset for f in fields],
            "itemsize": dt.itemsize,
        }
    )
    height, width = grid.shape
    point_step = dt.itemsize
    row_step = width * point_step + row_padding
    buf = np.zeros((height, row_step), np.uint8)
    packed = np.zeros((height, width), wire)  # zeros: padding bytes are 0, not memory garbage
    for name in dt.names:
        packed[name] = grid[name]
    buf[:, : width * point_step] = packed.view(np.uint8).reshape(height, width * point_step)
    if is_dense is None:
        xyz = [n for n in ("x", "y", "z") if n in dt.names]
        is_dense = all(bool(np.isfinite(grid[n]).all()) for n in xyz)
    return PointCloud2(
        height=height,
        width=width,
        fields=tuple(fields),
        is_bigendian=is_bigendian,
        point_step=point_step,
        row_step=row_step,
        data=buf.tobytes(),
        is_dense=is_dense,
    )


def _first(names: Sequence[str], have: Sequence[str]) -> str | None:
    return next((n for n in names if n in have), None)


def _column(arr: np.ndarray, name: str) -> np.ndarray:
    col = arr[name]
    if col.ndim != 1:
        raise PointCloudError(f"field {name!r} has count {col.shape[1]}, need 1")
    return col


def _time_offsets_s(arr: np.ndarray, name: str, stamp_ns: int) -> np.ndarray:
    """Per-point seconds after the stamp from a time field, following the rules in the module
    docstring. Absolute times are reduced in float64 against the stamp split in whole seconds
    and a remainder, so epoch seconds keep sub-microsecond precision."""
    col = _column(arr, name)
    is_int = col.dtype.kind in "iu"
    absolute = False
    if name == "timestamp" and col.size:
        peak = float(np.nanmax(np.abs(col.astype(np.float64)))) if col.size else 0.0
        absolute = peak > (1e15 if is_int else 1e6)
        in_ns = is_int or peak > 1e12
    else:
        in_ns = is_int and name in ("t", "offset_time")
    if absolute:
        whole_s, rem_ns = divmod(stamp_ns, 1_000_000_000)
        if in_ns:
            if is_int:
                return ((col.astype(np.int64) - stamp_ns) * 1e-9).astype(np.float64)
            return (col.astype(np.float64) - whole_s * 1e9 - rem_ns) * 1e-9
        return col.astype(np.float64) - whole_s - rem_ns * 1e-9
    return col.astype(np.float64) * (1e-9 if in_ns else 1.0)


def to_lidar(cloud: PointCloud2, *, stamp_ns: int = 0, drop_nan: bool = True) -> LidarPoints:
    """The cloud in the lidar layout (see the module docstring); points in row-major order.

    ``stamp_ns`` is the cloud's ``header.stamp``, needed only for absolute ``timestamp``
    fields. With ``drop_nan`` (the default) points whose x, y or z is not finite are left out,
    whatever ``is_dense`` says; otherwise every point is kept. Raises ``PointCloudError`` when
    x, y or z is missing or a ring does not fit in 0..255.
    """
    arr = to_array(cloud).reshape(-1)
    names = arr.dtype.names or ()
    missing_xyz = [n for n in ("x", "y", "z") if n not in names]
    if missing_xyz:
        raise PointCloudError(f"no {'/'.join(missing_xyz)} field (fields: {', '.join(names)})")
    if drop_nan:
        ok = np.ones(len(arr), bool)
        for n in ("x", "y", "z"):
            ok &= np.isfinite(_column(arr, n))
        if not ok.all():
            arr = arr[ok]
    points = np.zeros((len(arr), 5), np.float32)
    for i, n in enumerate(("x", "y", "z")):
        points[:, i] = _column(arr, n)
    sources: dict[str, str] = {}
    missing: list[str] = []
    intensity = _first(INTENSITY_NAMES, names)
    if intensity is None:
        missing.append("intensity")
    else:
        points[:, 3] = _column(arr, intensity)
        sources["intensity"] = intensity
    time_name = _first(TIME_NAMES, names)
    if time_name is None:
        missing.append("time")
    else:
        points[:, 4] = _time_offsets_s(arr, time_name, stamp_ns)
        sources["time"] = time_name
    ring_name = _first(RING_NAMES, names)
    ring = np.zeros(len(arr), np.uint8)
    if ring_name is None:
        missing.append("ring")
    else:
        col = _column(arr, ring_name)
        if col.size and (col.dtype.kind not in "iu" or int(col.min()) < 0 or int(col.max()) > 255):
            raise PointCloudError(
                f"field {ring_name!r} ({col.dtype}) holds values outside 0..255 "
                f"({col.min()}..{col.max()})"
            )
        ring[:] = col
        sources["ring"] = ring_name
    return LidarPoints(points, ring, tuple(missing), sources)


def from_lidar(points: np.ndarray, ring: np.ndarray | None = None) -> PointCloud2:
    """The lidar layout as a Velodyne-style PointCloud2: float32 ``x y z intensity``, uint16
    ``ring``, float32 ``time`` (s after the stamp), 22 bytes a point, unorganized."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 5:
        raise PointCloudError(
            f"points must be (N, 5) [x y z intensity t_offset_s], got {pts.shape}"
        )
    out = np.zeros(
        len(pts),
        [
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("intensity", "<f4"),
            ("ring", "<u2"),
            ("time", "<f4"),
        ],
    )
    for i, n in enumerate(("x", "y", "z", "intensity")):
        out[n] = pts[:, i]
    out["time"] = pts[:, 4]
    if ring is not None:
        out["ring"] = ring
    return from_array(out)
