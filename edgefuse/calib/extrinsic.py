"""Target-based camera-lidar and camera-depth extrinsic calibration.

The same planar board is seen by the camera and by a range sensor (a lidar, or a depth camera
whose image is back-projected to points) in several still poses. Per pose:

1. **Camera**: the board's corners, ``solvePnP`` with the camera's intrinsics → ``T_cam_board``,
   hence the board plane ``n_c · x = d_c`` in the camera frame.
2. **Range sensor**: the board's points. A first pass looks where the initial guess of
   ``T_cam_sensor`` puts the board: points within the board's half-diagonal plus ``search_m``
   of its centre go to Open3D's RANSAC ``segment_plane``; a plane whose normal is more than 30°
   (plus the search angle) off the expected one is set aside and the next one tried, so the
   ground or a wall near the board is not taken for it. Later passes use the board's edges: with
   the current estimate, the sensor's points are moved into the board frame and those inside the
   board's extent (its outer squares plus ``margin_m`` of white border, plus a tolerance) and
   near its plane are kept, then a plane is fitted robustly (median absolute deviation gate).
3. **Edges**: where the sensor's scan lines leave the board
   (:mod:`edgefuse.calib.extrinsic_edges`) says where the board lies within its plane, which
   the plane alone cannot.
4. **Solve** (:mod:`edgefuse.calib.extrinsic_solve`): rotation from the plane normals (Kabsch,
   as in Unnikrishnan & Hebert's closed form), translation from the plane distances (least
   squares of ``n_c · t = d_c - d_s``); poses whose planes disagree with the rest are dropped;
   then a joint Levenberg-Marquardt refinement of the extrinsic and every board pose, minimising
   the corners' reprojection errors, the point-to-plane distances of all board points and the
   edge points' offsets from the board's sides. Each group's sigma is then scaled to what its
   residuals show (reduced chi-square 1), edge points more than 4 sigmas off are dropped, and
   the refinement is run again.
5. **Uncertainty**: per translation axis (m) and rotation axis (degrees), 1-sigma, the larger of
   the refinement's covariance (it holds for independent noise per corner and point) and a
   jackknife over poses (one Newton step from the solution without each pose; it also holds
   errors shared by one pose's corners or points). Biases shared by all poses (a wrong square
   size, a warped board) are in neither.

Bad input (no board found, too few poses, boards all parallel, no range points on the board)
raises :class:`~edgefuse.calib.boards.CalibrationError` naming the problem and what to do.
Reading poses from a recorded session is in :mod:`edgefuse.calib.extrinsic_session`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from edgefuse.calib.boards import Board, CalibrationError, View
from edgefuse.calib.extrinsic_edges import assign_edges, edge_points, edge_residuals
from edgefuse.calib.extrinsic_geometry import (
    board_extent,
    board_points,
    find_board_plane,
    fit_plane,
    pose_matrix,
    pose_vector,
    range_residuals,
    rotation_error_deg,
    solve_pnp,
    transform,
)
from edgefuse.calib.extrinsic_solve import (
    PoseData,
    check_spread,
    closed_form,
    closed_form_poses,
    drop_outliers,
    plane_residuals,
    refine,
)
from edgefuse.calib.model import CameraIntrinsics

__all__ = [
    "ExtrinsicOptions",
    "ExtrinsicResult",
    "PoseFit",
    "PoseObservation",
    "board_extent",
    "board_points",
    "calibrate_extrinsic",
    "closed_form",
    "find_board_plane",
    "fit_plane",
    "range_residuals",
    "rotation_error_deg",
    "solve_pnp",
    "transform",
]


@dataclass(frozen=True)
class PoseObservation:
    """One still pose: the board's corners in the camera image and the range sensor's points."""

    name: str
    view: View
    #: Points (N, 3) in the range sensor's frame (whole sweeps or depth frames, unsegmented).
    points: np.ndarray
    #: The camera image (BGR) of the pose, for the overlay; may be None.
    image: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class ExtrinsicOptions:
    """How board points are searched for and what is required."""

    #: White border of the board beyond its outer squares (m), for the board's extent.
    margin_m: float = 0.05
    #: How far from where the initial guess puts it the board is searched for (m).
    search_m: float = 0.6
    #: Angle the initial guess may be off (degrees), widening the normal check.
    search_deg: float = 10.0
    #: RANSAC inlier distance of the first pass (m).
    ransac_threshold_m: float = 0.05
    #: Fewest poses accepted, and fewest board points a pose needs.
    min_poses: int = 6
    min_points: int = 30
    #: Points per pose used in the refinement (a random subset beyond; 0 = all).
    max_points_per_pose: int = 3000
    #: Use the board's edges in the sensor's scan lines for its in-plane position.
    edges: bool = True


@dataclass(frozen=True)
class PoseFit:
    """How one pose fits the result."""

    name: str
    n_points: int
    #: Reprojection RMS of the corners (px) and range RMS of the board points (m, along their
    #: lines of sight to the board plane) after refinement.
    reprojection_rms_px: float
    point_rms_m: float
    #: Disagreement of the two sensors' planes under the result: normals (deg), distance (m).
    normal_error_deg: float
    distance_error_m: float
    #: Edge points of the board's outline used (0: planes only).
    n_edge_points: int = 0


@dataclass
class ExtrinsicResult:
    """``T_<camera>_optical_<sensor>`` with its uncertainty and per-pose residuals."""

    camera: str
    sensor: str
    T_cam_sensor: np.ndarray
    #: 1-sigma of the translation (m) and of the rotation (degrees) about the camera's x, y, z axes.
    sigma_t_m: np.ndarray
    sigma_rot_deg: np.ndarray
    poses: list[PoseFit]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    reprojection_rms_px: float = 0.0
    point_rms_m: float = 0.0
    #: The camera's board poses after refinement, by pose name (for overlays and checks).
    T_cam_board: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for people: the transform, its uncertainty and the worst poses."""
        t = self.T_cam_sensor[:3, 3]
        rv = np.degrees(cv2.Rodrigues(self.T_cam_sensor[:3, :3])[0].ravel())
        lines = [
            f"T_{self.camera}_optical_{self.sensor} from {len(self.poses)} poses "
            f"({len(self.rejected)} rejected):",
            f"  translation [m]  {t[0]: .4f} {t[1]: .4f} {t[2]: .4f}  "
            f"±{self.sigma_t_m[0]:.4f} ±{self.sigma_t_m[1]:.4f} ±{self.sigma_t_m[2]:.4f} (1-sigma)",
            f"  rotation vector [deg] {rv[0]: .3f} {rv[1]: .3f} {rv[2]: .3f}  "
            f"±{self.sigma_rot_deg[0]:.3f} ±{self.sigma_rot_deg[1]:.3f} "
            f"±{self.sigma_rot_deg[2]:.3f} (1-sigma)",
            f"  corners RMS {self.reprojection_rms_px:.3f} px, board points RMS "
            f"{self.point_rms_m * 1000:.1f} mm in range off the board plane, "
            f"{sum(p.n_edge_points for p in self.poses)} edge points",
        ]
        worst = sorted(self.poses, key=lambda p: -p.normal_error_deg)[:3]
        for p in worst:
            lines.append(
                f"  {p.name}: {p.n_points} points, planes differ by {p.normal_error_deg:.2f} deg"
                f" / {p.distance_error_m * 1000:.1f} mm"
            )
        for name, why in self.rejected:
            lines.append(f"  rejected {name}: {why}")
        return "\n".join(lines)


def calibrate_extrinsic(
    observations: list[PoseObservation],
    board: Board,
    camera: CameraIntrinsics,
    initial_T_cam_sensor: np.ndarray,
    *,
    camera_name: str = "camera",
    sensor_name: str = "lidar",
    options: ExtrinsicOptions | None = None,
) -> ExtrinsicResult:
    """``T_<camera>_optical_<sensor>`` from still board poses (see the module docstring), from
    an initial guess good to a few tenths of a metre and about 10 degrees."""
    opts = options or ExtrinsicOptions()
    rejected: list[tuple[str, str]] = []
    cams: list[tuple[PoseObservation, np.ndarray]] = []
    rms_px = []
    pnp = [(ob, *solve_pnp(ob.view, camera)) for ob in observations]
    # A corner found in the wrong place shows as a fit far worse than the other views'.
    limit_px = max(0.5, 4 * float(np.median([rms for _, _, rms in pnp]))) if pnp else 0.0
    for ob, T_cb, rms in pnp:
        if rms > limit_px:
            rejected.append((ob.name, f"corners fit the board badly ({rms:.2f} px RMS)"))
            continue
        cams.append((ob, T_cb))
        rms_px.append(rms)
    _need_poses(len(cams), opts, "with the board found by the camera", rejected, sensor_name)

    # Pass 1: RANSAC where the initial guess puts the board.
    T = np.asarray(initial_T_cam_sensor, np.float64)
    found: list[tuple[PoseObservation, np.ndarray, np.ndarray]] = []
    for ob, T_cb in cams:
        idx = find_board_plane(ob.points, np.linalg.inv(T) @ T_cb, board, opts)
        if idx is None:
            rejected.append(
                (
                    ob.name,
                    f"no plane of >= {opts.min_points} {sensor_name} points where the "
                    "initial guess puts the board",
                )
            )
            continue
        found.append((ob, T_cb, idx))
    _need_poses(
        len(found),
        opts,
        f"with {sensor_name} points on the board",
        rejected,
        sensor_name,
        hint=f"check that the initial T_{camera_name}_{sensor_name} (the rig file) is "
        f"within ~{opts.search_m:g} m and ~{opts.search_deg:g} deg, that the board is in "
        f"the {sensor_name}'s view, or raise --search-m",
    )
    n_c = np.array([T_cb[:3, 2] for _, T_cb, _ in found])
    d_c = np.array([float(T_cb[:3, 2] @ T_cb[:3, 3]) for _, T_cb, _ in found])
    check_spread(n_c, [ob.name for ob, _, _ in found], sensor_name)
    planes = [fit_plane(ob.points[idx]) for ob, _, idx in found]
    T = closed_form(n_c, d_c, np.array([p[0] for p in planes]), np.array([p[1] for p in planes]))

    # Passes 2-3: the board's extent from the camera, through the current estimate.
    poses: list[PoseData] = []
    for tol in (0.1, 0.03):
        poses = []
        for ob, T_cb, _ in found:
            idx, n_s, d_s, sigma = board_points(
                ob.points, np.linalg.inv(T) @ T_cb, board, opts, tol_m=tol
            )
            if len(idx) < opts.min_points:
                continue
            poses.append(
                PoseData(ob.name, ob.view, ob.points[idx], sigma, pose_vector(T_cb), n_s, d_s)
            )
        if len(poses) < 3:
            break
        T = closed_form_poses(poses)
    kept_names = {p.name for p in poses}
    for ob, _, _ in found:
        if ob.name not in kept_names:
            rejected.append(
                (
                    ob.name,
                    f"fewer than {opts.min_points} {sensor_name} points on "
                    "the board once its edges are used",
                )
            )
    poses = drop_outliers(poses, T, rejected)
    _need_poses(len(poses), opts, "consistent between the two sensors", rejected, sensor_name)
    check_spread(
        np.array([pose_matrix(p.b[:3], p.b[3:])[:3, 2] for p in poses]),
        [p.name for p in poses],
        sensor_name,
    )

    rng = np.random.default_rng(0)
    for p in poses:
        if opts.max_points_per_pose and len(p.pts) > opts.max_points_per_pose:
            p.pts = p.pts[rng.choice(len(p.pts), opts.max_points_per_pose, replace=False)]
    sigma_px = max(0.02, float(np.sqrt(np.mean(np.square(rms_px)) / 2)))
    extent = board_extent(board, opts.margin_m)
    by_name = {ob.name: ob for ob, _, _ in found}
    for p in poses:
        p.sigma_px = sigma_px
        if opts.edges:
            T_sb = np.linalg.inv(T) @ pose_matrix(p.b[:3], p.b[3:])
            # Every board point, a sample or two past the edges too: the gate of the plane
            # fit must not cut the board where the current estimate is still off.
            idx, n_s, d_s, _ = board_points(by_name[p.name].points, T_sb, board, opts, tol_m=0.12)
            if len(idx) >= opts.min_points:
                edges = edge_points(by_name[p.name].points[idx], n_s, d_s)
                p.edges = assign_edges(edges, T_sb, extent, max_off_m=0.08)
    res = refine(T, poses, camera)
    # Each group's sigma to what its residuals show, then edge points far off dropped: a
    # pole, a board corner, a dropout where the sensor's noise is largest.
    k_px, k_m, k_e = (
        math.sqrt(max(c, 1e-6)) for c in (res.chi2_corners, res.chi2_points, res.chi2_edges)
    )
    T = pose_matrix(res.x[:3], res.x[3:6])
    for i, p in enumerate(poses):
        p.b = res.x[6 + 6 * i : 12 + 6 * i].copy()
        p.sigma_px *= k_px
        p.sigma_m *= k_m
        if p.edges is not None and len(p.edges.points):
            e = replace(p.edges, sigma_m=p.edges.sigma_m * k_e)
            r = edge_residuals(e, np.linalg.inv(pose_matrix(p.b[:3], p.b[3:])) @ T)
            keep = np.abs(r) < 4.0
            p.edges = replace(
                e,
                points=e.points[keep],
                axis=e.axis[keep],
                edge_m=e.edge_m[keep],
                sigma_m=e.sigma_m[keep],
            )
    res = refine(T, poses, camera)
    x = res.x
    T = pose_matrix(x[:3], x[3:6])
    cov = np.maximum(np.diag(res.cov), np.diag(res.cov_jackknife))
    fits = []
    all_px, all_m = [], []
    boards = {}
    for i, p in enumerate(poses):
        b = x[6 + 6 * i : 12 + 6 * i]
        T_cb = pose_matrix(b[:3], b[3:])
        boards[p.name] = T_cb
        uv, _ = cv2.projectPoints(
            p.view.object_points.astype(np.float64), b[:3], b[3:], camera.K, camera.D
        )
        e_px = uv.reshape(-1, 2) - p.view.image_points
        r_m = plane_residuals(x[:6], b, p.pts, 1.0)
        all_px.append(np.sum(e_px**2, axis=1))
        all_m.append(r_m**2)
        n_c_i = T_cb[:3, 2]
        n_pred = T[:3, :3] @ p.n_s
        fits.append(
            PoseFit(
                name=p.name,
                n_points=len(p.pts),
                reprojection_rms_px=float(np.sqrt(np.mean(np.sum(e_px**2, axis=1)))),
                point_rms_m=float(np.sqrt(np.mean(r_m**2))),
                normal_error_deg=math.degrees(math.acos(min(1.0, abs(float(n_c_i @ n_pred))))),
                distance_error_m=abs(float(n_c_i @ T[:3, 3]) + p.d_s - float(n_c_i @ T_cb[:3, 3])),
                n_edge_points=0 if p.edges is None else len(p.edges.points),
            )
        )
    return ExtrinsicResult(
        camera=camera_name,
        sensor=sensor_name,
        T_cam_sensor=T,
        sigma_t_m=np.sqrt(cov[3:]),
        sigma_rot_deg=np.degrees(np.sqrt(cov[:3])),
        poses=fits,
        rejected=rejected,
        reprojection_rms_px=float(np.sqrt(np.mean(np.concatenate(all_px)))),
        point_rms_m=float(np.sqrt(np.mean(np.concatenate(all_m)))),
        T_cam_board=boards,
    )


def _need_poses(
    n: int,
    opts: ExtrinsicOptions,
    what: str,
    rejected: list[tuple[str, str]],
    sensor: str,
    *,
    hint: str = "",
) -> None:
    if n >= opts.min_poses:
        return
    why = "; ".join(f"{name}: {reason}" for name, reason in rejected[:6])
    more = f" (and {len(rejected) - 6} more)" if len(rejected) > 6 else ""
    hint = hint or (
        "record more still poses of the board, varied in distance and tilt, in view of the "
        f"camera and the {sensor}"
    )
    raise CalibrationError(
        f"too few board poses {what}: {n}, need at least {opts.min_poses}"
        + (f" ({why}{more})" if why else "")
        + f"; {hint}"
    )
