"""PointCloud2 <-> numpy against messages whose bytes are assembled here with ``struct``."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from edgefuse.record.pointcloud2 import (
    FLOAT32,
    FLOAT64,
    INT8,
    INT16,
    INT32,
    UINT8,
    UINT16,
    UINT32,
    PointCloud2,
    PointCloudError,
    PointField,
    from_array,
    from_lidar,
    to_array,
    to_lidar,
)

NAN = float("nan")


def velodyne_cloud(points: list[tuple[float, float, float, float, int, float]]) -> PointCloud2:
    """The Velodyne ROS driver's PointXYZIRT: x y z, 4 bytes of padding, intensity, uint16
    ring, 2 bytes of padding, float32 time (s after the stamp), padding to 32 bytes."""
    fmt = struct.Struct("<fff4xfH2xf4x")
    assert fmt.size == 32
    data = b"".join(fmt.pack(*p) for p in points)
    return PointCloud2(
        height=1,
        width=len(points),
        fields=(
            PointField("x", 0, FLOAT32),
            PointField("y", 4, FLOAT32),
            PointField("z", 8, FLOAT32),
            PointField("intensity", 16, FLOAT32),
            PointField("ring", 20, UINT16),
            PointField("time", 24, FLOAT32),
        ),
        is_bigendian=False,
        point_step=32,
        row_step=32 * len(points),
        data=data,
    )


VELO = [
    (1.5, -2.25, 0.125, 17.0, 0, 0.0),
    (-3.0, 4.0, -1.0, 255.0, 15, 0.05),
    (10.0, 0.5, 2.0, 0.0, 31, 0.099),
]


def test_velodyne_layout_with_padding() -> None:
    cloud = velodyne_cloud(VELO)
    arr = to_array(cloud)
    assert arr.shape == (1, 3)
    assert arr.dtype.names == ("x", "y", "z", "intensity", "ring", "time")
    assert arr.dtype["ring"] == np.dtype("=u2")
    flat = arr.reshape(-1)
    for got, want in zip(flat, VELO, strict=True):
        assert tuple(got.tolist()) == pytest.approx(want, abs=0, rel=1e-7)
    lidar = to_lidar(cloud, stamp_ns=123)
    assert lidar.missing == ()
    assert lidar.sources == {"intensity": "intensity", "time": "time", "ring": "ring"}
    assert lidar.points.dtype == np.float32 and lidar.points.shape == (3, 5)
    assert lidar.ring.dtype == np.uint8
    want = np.array([(*p[:4], p[5]) for p in VELO], np.float32)
    np.testing.assert_array_equal(lidar.points, want)
    np.testing.assert_array_equal(lidar.ring, [0, 15, 31])


def ouster_cloud_be() -> tuple[PointCloud2, list[tuple[float, ...]]]:
    """ouster-ros's point (x y z pad, intensity, uint32 t ns, uint16 reflectivity, uint16 ring,
    uint16 ambient, pad, uint32 range, pad to 48), big-endian to exercise byte order."""
    fmt = struct.Struct(">fff4xfIHHH2xI12x")
    assert fmt.size == 48
    pts = [
        (1.0, 2.0, 3.0, 100.0, 0, 7, 0, 11, 3742),
        (-1.0, -2.0, -3.0, 2.5, 50_000_000, 9, 127, 12, 3742),
    ]
    data = b"".join(fmt.pack(*p) for p in pts)
    fields = (
        PointField("x", 0, FLOAT32),
        PointField("y", 4, FLOAT32),
        PointField("z", 8, FLOAT32),
        PointField("intensity", 16, FLOAT32),
        PointField("t", 20, UINT32),
        PointField("reflectivity", 24, UINT16),
        PointField("ring", 26, UINT16),
        PointField("ambient", 28, UINT16),
        PointField("range", 32, UINT32),
    )
    return PointCloud2(1, 2, fields, True, 48, 96, data), pts


def test_big_endian_ouster_t_in_ns() -> None:
    cloud, _pts = ouster_cloud_be()
    arr = to_array(cloud).reshape(-1)
    assert arr.dtype["t"] == np.dtype("=u4")  # converted to native order
    assert arr["t"].tolist() == [0, 50_000_000]
    assert arr["reflectivity"].tolist() == [7, 9]
    assert arr["range"].tolist() == [3742, 3742]
    lidar = to_lidar(cloud)
    np.testing.assert_array_equal(lidar.points[:, :3], [[1, 2, 3], [-1, -2, -3]])
    # intensity wins over reflectivity; t is uint32 ns after the stamp
    np.testing.assert_array_equal(lidar.points[:, 3], [100.0, 2.5])
    np.testing.assert_array_equal(lidar.points[:, 4], np.float32([0.0, 0.05]))
    np.testing.assert_array_equal(lidar.ring, [0, 127])


def test_organized_cloud_with_row_padding_and_nans() -> None:
    # 2 rows x 3 points of 16 bytes (x y z, then 4 bytes of padding), each row ending in 8
    # bytes of padding filled with 0xEE so a wrong stride would read garbage.
    fmt = struct.Struct("<fff4x")
    rows = [
        [(0.0, 0.0, 1.0), (NAN, NAN, NAN), (1.0, 1.0, 1.0)],
        [(2.0, NAN, 2.0), (3.0, 3.0, 3.0), (math.inf, 0.0, 0.0)],
    ]
    data = b"".join(b"".join(fmt.pack(*p) for p in row) + b"\xee" * 8 for row in rows)
    fields = tuple(PointField(n, 4 * i, FLOAT32) for i, n in enumerate("xyz"))
    cloud = PointCloud2(2, 3, fields, False, 16, 56, data, is_dense=False)
    arr = to_array(cloud)
    assert arr.shape == (2, 3)
    assert arr[1, 1].tolist() == (3.0, 3.0, 3.0)
    assert np.isnan(arr[0, 1]["x"]) and np.isnan(arr[1, 0]["y"])
    kept = to_lidar(cloud, drop_nan=False)
    assert kept.points.shape == (6, 5)  # row-major order, invalid points kept
    dropped = to_lidar(cloud)
    np.testing.assert_array_equal(dropped.points[:, :3], [[0, 0, 1], [1, 1, 1], [3, 3, 3]])
    assert set(dropped.missing) == {"intensity", "ring", "time"}
    np.testing.assert_array_equal(dropped.points[:, 3:], 0)
    np.testing.assert_array_equal(dropped.ring, [0, 0, 0])


def test_every_datatype_and_counts() -> None:
    fmt = struct.Struct("<bBhHiIfd3f")
    vals = (-128, 255, -32768, 65535, -(2**31), 2**32 - 1, 1.5, -(2.0**60), 0.25, 0.5, 0.75)
    fields = (
        PointField("a", 0, INT8),
        PointField("b", 1, UINT8),
        PointField("c", 2, INT16),
        PointField("d", 4, UINT16),
        PointField("e", 6, INT32),
        PointField("f", 10, UINT32),
        PointField("g", 14, FLOAT32),
        PointField("h", 18, FLOAT64),
        PointField("normal", 26, FLOAT32, count=3),
    )
    cloud = PointCloud2(1, 1, fields, False, fmt.size, fmt.size, fmt.pack(*vals))
    p = to_array(cloud)[0, 0]
    assert [p[n].item() for n in "abcdefgh"] == list(vals[:8])
    assert p["normal"].tolist() == [0.25, 0.5, 0.75]
    assert [f.count for f in from_array(to_array(cloud)).fields] == [1] * 8 + [3]


def test_absolute_timestamps_hesai_seconds_and_livox_ns() -> None:
    stamp_ns = 1_700_000_000_123_456_789
    fields = (*(PointField(n, 4 * i, FLOAT32) for i, n in enumerate("xyz")),)
    hesai = (*fields, PointField("timestamp", 12, FLOAT64))
    fmt = struct.Struct("<fffd")
    t_abs = [stamp_ns / 1e9, stamp_ns / 1e9 + 0.0625]
    data = b"".join(fmt.pack(1.0, 2.0, 3.0, t) for t in t_abs)
    got = to_lidar(PointCloud2(1, 2, hesai, False, 20, 40, data), stamp_ns=stamp_ns)
    np.testing.assert_allclose(got.points[:, 4], [0.0, 0.0625], atol=1e-6)
    # Livox: float64 absolute ns; and an Ouster-style relative uint32 "offset_time"
    data = b"".join(fmt.pack(1.0, 2.0, 3.0, stamp_ns + d) for d in (0.0, 25e6))
    got = to_lidar(PointCloud2(1, 2, hesai, False, 20, 40, data), stamp_ns=stamp_ns)
    np.testing.assert_allclose(got.points[:, 4], [0.0, 0.025], atol=1e-6)
    livox = (*fields, PointField("offset_time", 12, UINT32))
    data = b"".join(struct.pack("<fffI", 1, 2, 3, d) for d in (0, 40_000_000))
    got = to_lidar(PointCloud2(1, 2, livox, False, 16, 32, data))
    np.testing.assert_array_equal(got.points[:, 4], np.float32([0.0, 0.04]))
    assert got.sources["time"] == "offset_time"


def test_pcl_padding_fields_ignored_and_i_reflectivity_aliases() -> None:
    fmt = struct.Struct("<fffxxxxH2x")
    fields = (
        *(PointField(n, 4 * i, FLOAT32) for i, n in enumerate("xyz")),
        PointField("_", 12, UINT8, count=4),
        PointField("reflectivity", 16, UINT16),
        PointField("_", 18, UINT8, count=2),
    )
    cloud = PointCloud2(1, 1, fields, False, 20, 20, fmt.pack(1, 2, 3, 900))
    assert to_array(cloud).dtype.names == ("x", "y", "z", "reflectivity")
    got = to_lidar(cloud)
    assert got.points[0, 3] == 900.0 and got.sources["intensity"] == "reflectivity"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": b"\0" * 95}, "holds 95 bytes"),
        ({"row_step": 40}, "row_step 40"),
        ({"point_step": 30}, "run past the point_step"),
        ({"fields": (PointField("x", 0, 9),)}, "datatype 9"),
        ({"fields": (PointField("x", 0, FLOAT32, 0),)}, "count is 0"),
        ({"fields": (PointField("x", 0, FLOAT32), PointField("x", 4, FLOAT32))}, "twice"),
        ({"fields": (PointField("y", 0, FLOAT32),)}, "no x/z field"),
        ({"fields": (*ouster_cloud_be()[0].fields[:3], PointField("ring", 28, INT32))}, "0..255"),
    ],
)
def test_inconsistent_clouds_are_clear_errors(change: dict[str, object], message: str) -> None:
    cloud, _ = ouster_cloud_be()
    fields = dict(
        height=cloud.height,
        width=cloud.width,
        fields=cloud.fields,
        is_bigendian=cloud.is_bigendian,
        point_step=cloud.point_step,
        row_step=cloud.row_step,
        data=cloud.data,
    )
    fields.update(change)
    with pytest.raises(PointCloudError, match=message):
        to_lidar(PointCloud2(**fields))  # type: ignore[arg-type]


def test_round_trip_numpy_msg_numpy() -> None:
    dt = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring", "t", "normal"],
            "formats": ["<f4", "<f4", "<f4", "<f4", "u1", "<u4", ("<f8", (2,))],
            "offsets": [0, 4, 8, 16, 20, 24, 32],
            "itemsize": 56,
        }
    )
    rng = np.random.default_rng(3)
    src = np.zeros((4, 5), dt)
    for n in ("x", "y", "z", "intensity"):
        src[n] = rng.normal(size=(4, 5))
    src["ring"] = np.arange(20).reshape(4, 5)
    src["t"] = rng.integers(0, 2**32 - 1, size=(4, 5), dtype=np.uint32)
    src["normal"] = rng.normal(size=(4, 5, 2))
    src["x"][1, 2] = np.nan
    for big in (False, True):
        cloud = from_array(src, is_bigendian=big, row_padding=12)
        assert (cloud.point_step, cloud.row_step, cloud.height, cloud.width) == (56, 292, 4, 5)
        assert not cloud.is_dense
        assert [(f.name, f.offset, f.count) for f in cloud.fields][-1] == ("normal", 32, 2)
        back = to_array(cloud)
        assert back.shape == (4, 5)
        for n in dt.names or ():
            np.testing.assert_array_equal(back[n], src[n])
    # The bytes are what the description says: a struct unpack of point (2, 3) agrees.
    cloud = from_array(src, is_bigendian=True, row_padding=12)
    off = 2 * cloud.row_step + 3 * cloud.point_step
    x, _, _, _, ring, t = struct.unpack_from(">fff4xfBxxxI", cloud.data, off)
    assert (x, ring, t) == (float(src["x"][2, 3]), 13, int(src["t"][2, 3]))
    # The lidar layout survives the Velodyne-style export.
    pts = np.column_stack([rng.normal(size=(6, 4)), np.linspace(0, 0.1, 6)]).astype(np.float32)
    ring = np.arange(6, dtype=np.uint8)
    got = to_lidar(from_lidar(pts, ring))
    np.testing.assert_array_equal(got.points, pts)
    np.testing.assert_array_equal(got.ring, ring)


def test_from_msg_reads_message_objects() -> None:
    class Field:
        def __init__(self, name: str, offset: int, datatype: int, count: int) -> None:
            self.name, self.offset, self.datatype, self.count = name, offset, datatype, count

    class Msg:
        height, width, is_bigendian, point_step, row_step, is_dense = 1, 3, 0, 32, 96, 1
        fields = [Field(f.name, f.offset, f.datatype, f.count) for f in velodyne_cloud(VELO).fields]
        data = np.frombuffer(velodyne_cloud(VELO).data, np.uint8)

    assert PointCloud2.from_msg(Msg()) == velodyne_cloud(VELO)
    with pytest.raises(PointCloudError, match="not a PointCloud2"):
        PointCloud2.from_msg(object())
    with pytest.raises(PointCloudError, match="no PointField datatype"):
        from_array(np.zeros(2, [("x", "<f4"), ("flag", "?")]))
