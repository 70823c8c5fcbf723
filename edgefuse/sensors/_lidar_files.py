"""Lidar scans from files: KITTI ``.bin``, PCD and PLY (through Open3D), and folders of them.

A scan comes out in the layout of a live sweep (``xyzit_f32``): points ``(N, 5)`` float32
``[x, y, z, intensity, t_offset_s]`` and ``ring`` ``(N,)`` uint8. Files rarely carry ring and
time, so both are estimated the way a spinning sensor produces them: a scan stored line by line
(KITTI) is split into rings where the azimuth starts over, numbered from the lowest beam up;
the time of a point is its angle past the cut, clockwise, over one revolution. Intensity is on
the Velodyne byte scale 0..255 (KITTI's 0..1 reflectance is multiplied by 255).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.errors import ConfigError, require_extra

#: File suffixes read as scans.
SCAN_SUFFIXES = (".bin", ".pcd", ".ply")
#: Stamp files looked for beside (or above) a folder of scans, best first: KITTI raw's
#: ``timestamps_start.txt`` stamps the sweep start, ``timestamps.txt`` the forward crossing.
STAMP_FILES = ("timestamps_start.txt", "timestamps.txt", "stamps.txt")


@dataclass
class Scan:
    """One scan in the published layout."""

    points: np.ndarray
    ring: np.ndarray


def read_kitti_bin(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, 4)`` x, y, z, intensity (0..255) from a KITTI Velodyne ``.bin`` file (float32
    x, y, z, reflectance 0..1); no ring field."""
    data = np.fromfile(path, dtype="<f4")
    if data.size % 4:
        raise ValueError(
            f"{path}: {data.size * 4} bytes is not a whole number of KITTI points (16 bytes each)"
        )
    pts = data.reshape(-1, 4).astype(np.float32)
    pts[:, 3] *= 255.0
    return pts, None


def read_open3d(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, 4)`` x, y, z, intensity from a PCD or PLY file read by Open3D's tensor API
    (``intensity`` or ``reflectance`` attributes kept, else 0), and its ``ring`` if it has one."""
    o3d: Any = require_extra("open3d", "lidar")
    pcd = o3d.t.io.read_point_cloud(str(path))
    attrs = pcd.point
    if "positions" not in attrs:
        raise ValueError(f"{path}: no points (is it a point cloud file?)")
    xyz = attrs["positions"].numpy().astype(np.float32).reshape(-1, 3)
    pts = np.zeros((len(xyz), 4), np.float32)
    pts[:, :3] = xyz
    for name in ("intensity", "reflectance", "intensities"):
        if name in attrs:
            pts[:, 3] = attrs[name].numpy().reshape(-1)[: len(xyz)]
            break
    ring = attrs["ring"].numpy().reshape(-1).astype(np.uint8) if "ring" in attrs else None
    return pts, ring


def estimate_rings(xyz: np.ndarray, *, max_rings: int = 256) -> np.ndarray:
    """Rings of a scan stored line by line: a new line starts where the azimuth (counted
    counter-clockwise from 0 to 360) falls back by more than half a turn. Numbered from the
    lowest line (by median elevation) up; all 0 when the order does not look like scan lines."""
    n = len(xyz)
    if n < 2:
        return np.zeros(n, np.uint8)
    u = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360
    line = np.zeros(n, np.int64)
    np.cumsum(np.diff(u) < -180, out=line[1:])
    count = int(line[-1]) + 1
    if count > max_rings or count < 2:
        return np.zeros(n, np.uint8)
    el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
    order = np.argsort(np.argsort([np.median(el[line == k]) for k in range(count)]))
    return order[line].astype(np.uint8)


def read_scan(path: Path, *, cut_azimuth_deg: float = 0.0, sweep_s: float = 0.1) -> Scan:
    """Read one scan file; ring and per-point time as the module documentation says."""
    suffix = path.suffix.lower()
    if suffix == ".bin":
        xyzi, ring = read_kitti_bin(path)
    elif suffix in (".pcd", ".ply"):
        xyzi, ring = read_open3d(path)
    else:
        raise ValueError(f"{path}: not a scan file (expected {', '.join(SCAN_SUFFIXES)})")
    if ring is None or len(ring) != len(xyzi):
        ring = estimate_rings(xyzi[:, :3])
    pts = np.empty((len(xyzi), 5), np.float32)
    pts[:, :4] = xyzi
    yaw = np.degrees(np.arctan2(xyzi[:, 1], xyzi[:, 0]))
    # The sensor spins clockwise seen from above: a point's yaw falls behind the cut's.
    pts[:, 4] = ((cut_azimuth_deg - yaw) % 360.0) / 360.0 * sweep_s
    return Scan(pts, ring)


def find_stamps(folder: Path) -> Path | None:
    """The stamp file of a folder of scans (KITTI raw keeps it one level up from ``data/``)."""
    for where in (folder, folder.parent):
        for name in STAMP_FILES:
            if (where / name).is_file():
                return where / name
    return None


class ScanFiles:
    """The scans named by a ``source`` parameter: one file, or a folder of them in name order
    with an optional stamp file (one line per scan, KITTI ``timestamps.txt`` style)."""

    def __init__(self, source: str, *, stamps: str = "") -> None:
        path = Path(source).expanduser()
        if not path.exists():
            raise ConfigError(f"lidar source {source!r}: no such file or folder")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in SCAN_SUFFIXES)
            if not files:
                raise ConfigError(
                    f"lidar source {source!r}: no {', '.join(SCAN_SUFFIXES)} files in the folder"
                )
        elif path.suffix.lower() in SCAN_SUFFIXES:
            files = [path]
        else:
            raise ConfigError(
                f"lidar source {source!r}: not a scan file ({', '.join(SCAN_SUFFIXES)}) or folder"
            )
        self.files = files
        stamp_path = Path(stamps) if stamps else (find_stamps(path) if path.is_dir() else None)
        self.stamps_path = stamp_path
        self.stamps_ns: list[int] | None = None
        if stamp_path is not None:
            self.stamps_ns = read_stamps(stamp_path)
            if len(self.stamps_ns) < len(files):
                raise ConfigError(
                    f"{stamp_path}: {len(self.stamps_ns)} stamps for {len(files)} scans in {source}"
                )

    def __len__(self) -> int:
        return len(self.files)


def read_stamps(path: Path) -> list[int]:
    """The stamps (ns) of a stamp file; a clear :class:`ConfigError` if it cannot be read."""
    from edgefuse.sync.errors import AssociateError
    from edgefuse.sync.stamps import read_stamp_file

    try:
        return [e.stamp_ns for e in read_stamp_file(path).entries]
    except AssociateError as exc:
        raise ConfigError(f"lidar stamps: {exc}") from None
