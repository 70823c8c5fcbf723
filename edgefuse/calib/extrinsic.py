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
3. **Solve**: rotation from the plane normals (Kabsch, as in Unnikrishnan & Hebert's closed
   form), translation from the plane distances (least squares of ``n_c · t = d_c - d_s``); poses
   whose planes disagree with the rest are dropped; then a joint Levenberg-Marquardt refinement
   of the extrinsic and every board pose, minimising the corners' reprojection errors and the
   point-to-plane distances of all board points, each weighted by its own measured noise.
4. **Uncertainty**: per translation axis (m) and rotation axis (degrees), 1-sigma, the larger of
   the refinement's covariance (inverse normal matrix scaled by the reduced chi-square; it holds for
   independent noise per corner and point) and a bootstrap over poses of the closed form (which
   also holds errors shared by one pose's corners or points). Biases shared by all poses (a
   wrong square size, a warped board) are in neither.

Bad input (no board found, too few poses, boards all parallel, no range points on the board)
raises :class:`~edgefuse.calib.boards.CalibrationError` naming the problem and what to do.
Reading poses from a recorded session is in :mod:`edgefuse.calib._extrinsic_session`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgefuse.calib.boards import Board, CalibrationError, View
from edgefuse.calib.model import CameraIntrinsics
from edgefuse.errors import require_extra

#: A normal more than this (plus the search angle) off the expected one is not the board.
_MAX_NORMAL_OFF_DEG = 30.0


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
            f"{self.point_rms_m * 1000:.1f} mm in range off the board plane",
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


# --- small geometry helpers --------------------------------------------------------------------


def transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Points (N, 3) through a 4x4 transform."""
    return np.asarray(p @ T[:3, :3].T + T[:3, 3])


def _pose(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3, 1))[0]
    T[:3, 3] = np.asarray(tvec, np.float64).ravel()
    return T


def _vec(T: np.ndarray) -> np.ndarray:
    return np.concatenate([cv2.Rodrigues(np.asarray(T[:3, :3], np.float64))[0].ravel(), T[:3, 3]])


def rotation_error_deg(A: np.ndarray, B: np.ndarray) -> float:
    """Angle (degrees) of the rotation between the rotation parts of two transforms."""
    R = A[:3, :3] @ B[:3, :3].T
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def board_extent(board: Board, margin_m: float) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` of the board (outer squares plus ``margin_m``) in its own frame."""
    c, r = board.corners
    sq = board.square_m
    return (-sq - margin_m, c * sq + margin_m, -sq - margin_m, r * sq + margin_m)


def fit_plane(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Plane ``n · x = d`` (``d > 0``) of range points (N, 3) measured along their lines of
    sight from the sensor's origin. A range sensor's noise lies along the ray, not across the
    plane, so an orthogonal fit would tilt the plane; on the plane ``(n / d) · u = 1 / r`` for
    a point at range ``r`` in direction ``u``, which is linear in ``n / d``."""
    r = np.linalg.norm(points, axis=1)
    u = points / r[:, None]
    w, *_ = np.linalg.lstsq(u, 1.0 / r, rcond=None)
    d = 1.0 / float(np.linalg.norm(w))
    return np.asarray(w * d), d


def range_residuals(points: np.ndarray, n: np.ndarray, d: float) -> np.ndarray:
    """Measured minus predicted range (m) of points on the plane ``n · x = d``, along their
    lines of sight."""
    r = np.linalg.norm(points, axis=1)
    cos = np.maximum(points @ n / r, 1e-6)
    return np.asarray(r - d / cos)


def _robust_plane(
    points: np.ndarray, floor_m: float = 0.002
) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Plane of ``points`` with outliers gated at 3.5 robust sigmas of the range residual:
    (n, d, sigma, inlier mask)."""
    keep = np.ones(len(points), bool)
    n, d = fit_plane(points)
    sigma = floor_m
    for _ in range(4):
        res = range_residuals(points, n, d)
        sigma = max(floor_m, 1.4826 * float(np.median(np.abs(res[keep] - np.median(res[keep])))))
        new = np.abs(res) < 3.5 * sigma
        if new.sum() < 3:
            break
        keep = new
        n, d = fit_plane(points[keep])
    return n, d, sigma, keep


# --- per-pose measurements ---------------------------------------------------------------------


def solve_pnp(view: View, camera: CameraIntrinsics) -> tuple[np.ndarray, float]:
    """``T_cam_board`` of a view and its reprojection RMS (px)."""
    if camera.distortion_model == "equidistant":
        raise CalibrationError(
            "fisheye (equidistant) cameras are not supported by camera-lidar/depth yet: "
            "calibrate with a pinhole model"
        )
    obj = view.object_points.astype(np.float64)
    img = view.image_points.astype(np.float64)
    # IPPE gives both poses of a planar target (a far, tilted board has two that fit almost
    # equally well); keep the one that fits best after refinement.
    n, rvecs, tvecs, _ = cv2.solvePnPGeneric(obj, img, camera.K, camera.D, flags=cv2.SOLVEPNP_IPPE)
    if not n:
        raise CalibrationError(f"{view.name}: solvePnP failed on the board corners")
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for r0, t0 in zip(rvecs, tvecs, strict=True):
        r, t = cv2.solvePnPRefineLM(obj, img, camera.K, camera.D, r0.copy(), t0.copy())
        uv, _ = cv2.projectPoints(obj, r, t, camera.K, camera.D)
        err = float(np.sum((uv.reshape(-1, 2) - img) ** 2))
        if best is None or err < best[0]:
            best = (err, r, t)
    assert best is not None
    _, rvec, tvec = best
    uv, _ = cv2.projectPoints(obj, rvec, tvec, camera.K, camera.D)
    rms = float(np.sqrt(np.mean(np.sum((uv.reshape(-1, 2) - img) ** 2, axis=1))))
    return _pose(rvec, tvec), rms


def find_board_plane(
    points: np.ndarray,
    T_sensor_board: np.ndarray,
    board: Board,
    opts: ExtrinsicOptions,
) -> np.ndarray | None:
    """Indices of the points on the board near where ``T_sensor_board`` puts it, found by
    Open3D RANSAC plane segmentation (see the module docstring), or None."""
    o3d: Any = require_extra("open3d", "lidar")
    x0, x1, y0, y1 = board_extent(board, opts.margin_m)
    centre = transform(T_sensor_board, np.array([[(x0 + x1) / 2, (y0 + y1) / 2, 0.0]]))[0]
    normal = T_sensor_board[:3, 2]
    radius = 0.5 * math.hypot(x1 - x0, y1 - y0) + opts.search_m
    near = np.flatnonzero(np.linalg.norm(points - centre, axis=1) < radius)
    max_off = math.radians(_MAX_NORMAL_OFF_DEG + opts.search_deg)
    o3d.utility.random.seed(0)
    for _ in range(3):
        if len(near) < opts.min_points:
            return None
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[near]))
        model, inl = pcd.segment_plane(
            distance_threshold=opts.ransac_threshold_m, ransac_n=3, num_iterations=500
        )
        inl = np.asarray(inl, np.int64)
        n = np.asarray(model[:3], np.float64)
        n /= np.linalg.norm(n)
        if len(inl) >= opts.min_points and abs(float(n @ normal)) >= math.cos(max_off):
            return np.asarray(near[inl])
        near = np.delete(near, inl)  # the ground or a wall: try the next plane
    return None


def board_points(
    points: np.ndarray,
    T_sensor_board: np.ndarray,
    board: Board,
    opts: ExtrinsicOptions,
    *,
    tol_m: float,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Indices of the points inside the board's extent (grown by ``tol_m``) and on its plane
    (robust fit), with that plane ``(n, d)`` and its residual sigma (m)."""
    q = transform(np.linalg.inv(T_sensor_board), points)
    x0, x1, y0, y1 = board_extent(board, opts.margin_m)
    inside = (
        (q[:, 0] > x0 - tol_m)
        & (q[:, 0] < x1 + tol_m)
        & (q[:, 1] > y0 - tol_m)
        & (q[:, 1] < y1 + tol_m)
        # Wide across the plane: a narrow gate centred on the current estimate would cut the
        # noise asymmetrically and pull the fit towards that estimate; the robust fit below
        # gates around the fitted plane itself.
        & (np.abs(q[:, 2]) < 0.25)
    )
    idx = np.flatnonzero(inside)
    if len(idx) < 3:
        return idx, np.zeros(3), 0.0, 0.0
    n, d, sigma, keep = _robust_plane(points[idx])
    return idx[keep], n, d, sigma


# --- the solve ---------------------------------------------------------------------------------


def closed_form(
    n_cam: np.ndarray, d_cam: np.ndarray, n_sensor: np.ndarray, d_sensor: np.ndarray
) -> np.ndarray:
    """``T_cam_sensor`` from plane pairs (normals (K, 3), distances (K,)): Kabsch on the
    normals, then least squares on ``n_c · t = d_c - d_s``."""
    H = n_sensor.T @ n_cam
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(Vt.T @ U.T)))])
    R = Vt.T @ D @ U.T
    t, *_ = np.linalg.lstsq(n_cam, d_cam - d_sensor, rcond=None)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def check_spread(n_cam: np.ndarray, names: list[str], sensor: str) -> None:
    """Refuse board poses whose planes all face nearly the same way (the sensor's offset along
    them cannot be told apart)."""
    s = np.linalg.svd(n_cam, compute_uv=False)
    if len(s) < 3 or s[2] / s[0] < 0.06:
        mean = n_cam.mean(0)
        mean /= np.linalg.norm(mean)
        spread = max(math.degrees(math.acos(min(1.0, abs(float(n @ mean))))) for n in n_cam)
        raise CalibrationError(
            f"degenerate board poses: the {len(names)} boards all face nearly the same way "
            f"(every normal within {spread:.1f} deg of their mean), so the {sensor}'s offset "
            "along them is not observable; tilt the board by 15-30 deg up/down and left/right "
            "in different poses"
        )


def _pose_residuals(xi: np.ndarray, b: np.ndarray, pts: np.ndarray, sigma: float) -> np.ndarray:
    """Range residuals (in sigmas) of the sensor's board points against the board plane that
    board pose ``b`` and extrinsic ``xi`` put in the sensor's frame."""
    T = _pose(xi[:3], xi[3:])
    n_c = cv2.Rodrigues(b[:3].reshape(3, 1))[0][:, 2]
    n_s = T[:3, :3].T @ n_c
    d_s = float(n_c @ b[3:]) - float(n_c @ T[:3, 3])
    return range_residuals(pts, n_s, d_s) / sigma


@dataclass
class _Pose:
    name: str
    view: View
    pts: np.ndarray  # board points used in the refinement (sensor frame)
    sigma_m: float
    b: np.ndarray  # rvec, tvec of T_cam_board
    n_s: np.ndarray
    d_s: float
    #: Corner noise (px) of this pose's view.
    sigma_px: float = 0.1


def refine(
    T0: np.ndarray, poses: list[_Pose], camera: CameraIntrinsics
) -> tuple[np.ndarray, np.ndarray, float]:
    """Joint Levenberg-Marquardt over ``T_cam_sensor`` and every board pose (corner
    reprojection + point-to-plane); returns the parameters (6 + 6K), the 6x6 covariance of the
    extrinsic (rotation vector, translation) and the reduced chi-square."""
    k = len(poses)
    x = np.concatenate([_vec(T0), *[p.b for p in poses]])
    K, D = camera.K, camera.D

    def residuals(x: np.ndarray) -> list[np.ndarray]:
        out = []
        for i, p in enumerate(poses):
            b = x[6 + 6 * i : 12 + 6 * i]
            uv, _ = cv2.projectPoints(p.view.object_points.astype(np.float64), b[:3], b[3:], K, D)
            res = uv.reshape(-1) - p.view.image_points.astype(np.float64).ravel()
            out.append(res / p.sigma_px)
            out.append(_pose_residuals(x[:6], b, p.pts, p.sigma_m))
        return out

    def normal_equations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = 6 + 6 * k
        H, g = np.zeros((n, n)), np.zeros(n)
        eps = 1e-7
        for i, p in enumerate(poses):
            cols = np.r_[0:6, 6 + 6 * i : 12 + 6 * i]
            b = x[6 + 6 * i : 12 + 6 * i]
            obj = p.view.object_points.astype(np.float64)
            uv, jac = cv2.projectPoints(obj, b[:3], b[3:], K, D)
            r1 = (uv.reshape(-1) - p.view.image_points.astype(np.float64).ravel()) / p.sigma_px
            J1 = np.zeros((len(r1), 12))
            J1[:, 6:] = jac[:, :6] / p.sigma_px
            r2 = _pose_residuals(x[:6], b, p.pts, p.sigma_m)
            J2 = np.empty((len(r2), 12))
            for j in range(12):
                xi, bb = x[:6].copy(), b.copy()
                if j < 6:
                    xi[j] += eps
                else:
                    bb[j - 6] += eps
                J2[:, j] = (_pose_residuals(xi, bb, p.pts, p.sigma_m) - r2) / eps
            J = np.vstack([J1, J2])
            r = np.concatenate([r1, r2])
            H[np.ix_(cols, cols)] += J.T @ J
            g[cols] += J.T @ r
        return H, g

    def cost(x: np.ndarray) -> float:
        return float(sum(float(r @ r) for r in residuals(x)))

    c = cost(x)
    lam = 1e-3
    for _ in range(40):
        H, g = normal_equations(x)
        step_ok = False
        for _ in range(10):
            A = H + lam * np.diag(np.diag(H))
            dx = np.linalg.solve(A, -g)
            c_new = cost(x + dx)
            if c_new < c:
                x, step_ok = x + dx, True
                done = c - c_new < 1e-9 * c
                c = c_new
                lam = max(lam / 3, 1e-9)
                break
            lam *= 4
        if not step_ok or done:
            break
    H, _ = normal_equations(x)
    m = sum(len(r) for r in residuals(x))
    chi2 = c / max(1, m - len(x))
    cov = np.linalg.inv(H) * max(chi2, 1.0)
    return x, cov[:6, :6], chi2


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
    poses: list[_Pose] = []
    for tol in (0.1, 0.03):
        poses = []
        for ob, T_cb, _ in found:
            idx, n_s, d_s, sigma = board_points(
                ob.points, np.linalg.inv(T) @ T_cb, board, opts, tol_m=tol
            )
            if len(idx) < opts.min_points:
                continue
            poses.append(_Pose(ob.name, ob.view, ob.points[idx], sigma, _vec(T_cb), n_s, d_s))
        if len(poses) < 3:
            break
        T = _closed_form_poses(poses)
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
    poses = _drop_outliers(poses, T, rejected)
    _need_poses(len(poses), opts, "consistent between the two sensors", rejected, sensor_name)
    check_spread(
        np.array([_pose(p.b[:3], p.b[3:])[:3, 2] for p in poses]),
        [p.name for p in poses],
        sensor_name,
    )

    rng = np.random.default_rng(0)
    for p in poses:
        if opts.max_points_per_pose and len(p.pts) > opts.max_points_per_pose:
            p.pts = p.pts[rng.choice(len(p.pts), opts.max_points_per_pose, replace=False)]
    sigma_px = max(0.02, float(np.sqrt(np.mean(np.square(rms_px)) / 2)))
    for p in poses:
        p.sigma_px = sigma_px
    x, cov, _ = refine(T, poses, camera)
    T = _pose(x[:3], x[3:6])
    fits = []
    all_px, all_m = [], []
    boards = {}
    for i, p in enumerate(poses):
        b = x[6 + 6 * i : 12 + 6 * i]
        T_cb = _pose(b[:3], b[3:])
        boards[p.name] = T_cb
        uv, _ = cv2.projectPoints(
            p.view.object_points.astype(np.float64), b[:3], b[3:], camera.K, camera.D
        )
        e_px = uv.reshape(-1, 2) - p.view.image_points
        r_m = _pose_residuals(x[:6], b, p.pts, 1.0)
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
            )
        )
    boot_t, boot_r = _bootstrap(poses, list(boards.values()))
    return ExtrinsicResult(
        camera=camera_name,
        sensor=sensor_name,
        T_cam_sensor=T,
        sigma_t_m=np.maximum(np.sqrt(np.diag(cov)[3:]), boot_t),
        sigma_rot_deg=np.maximum(np.degrees(np.sqrt(np.diag(cov)[:3])), boot_r),
        poses=fits,
        rejected=rejected,
        reprojection_rms_px=float(np.sqrt(np.mean(np.concatenate(all_px)))),
        point_rms_m=float(np.sqrt(np.mean(np.concatenate(all_m)))),
        T_cam_board=boards,
    )


def _bootstrap(
    poses: list[_Pose], boards: list[np.ndarray], rounds: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Spread (1-sigma) of the closed-form solution over poses resampled with replacement: it
    holds what the refinement's covariance misses, errors shared by all of one pose's corners
    or points. Translation (m) and rotation about x, y, z (degrees)."""
    n_c = np.array([T[:3, 2] for T in boards])
    d_c = np.array([float(T[:3, 2] @ T[:3, 3]) for T in boards])
    n_s = np.array([p.n_s for p in poses])
    d_s = np.array([p.d_s for p in poses])
    T0 = closed_form(n_c, d_c, n_s, d_s)
    rng = np.random.default_rng(0)
    ts, rs = [], []
    for _ in range(rounds):
        i = rng.integers(0, len(poses), len(poses))
        if np.linalg.svd(n_c[i], compute_uv=False)[-1] < 1e-3:
            continue
        T = closed_form(n_c[i], d_c[i], n_s[i], d_s[i])
        ts.append(T[:3, 3])
        rs.append(cv2.Rodrigues(T[:3, :3] @ T0[:3, :3].T)[0].ravel())
    if len(ts) < 10:
        return np.zeros(3), np.zeros(3)
    return np.std(ts, axis=0), np.degrees(np.std(rs, axis=0))


def _closed_form_poses(poses: list[_Pose]) -> np.ndarray:
    Ts = [_pose(p.b[:3], p.b[3:]) for p in poses]
    n_c = np.array([T[:3, 2] for T in Ts])
    d_c = np.array([float(T[:3, 2] @ T[:3, 3]) for T in Ts])
    return closed_form(n_c, d_c, np.array([p.n_s for p in poses]), np.array([p.d_s for p in poses]))


def _drop_outliers(
    poses: list[_Pose], T: np.ndarray, rejected: list[tuple[str, str]]
) -> list[_Pose]:
    """Drop poses whose two planes disagree far more than the others' (a board seen while
    moving, another flat thing taken for it), at most a third of them."""
    if len(poses) < 4:
        return poses
    ang, dist = [], []
    for p in poses:
        Tb = _pose(p.b[:3], p.b[3:])
        n_c = Tb[:3, 2]
        ang.append(math.degrees(math.acos(min(1.0, abs(float(n_c @ (T[:3, :3] @ p.n_s)))))))
        dist.append(abs(float(n_c @ T[:3, 3]) + p.d_s - float(n_c @ Tb[:3, 3])))
    a_lim = max(1.5, 5 * float(np.median(ang)))
    d_lim = max(0.05, 5 * float(np.median(dist)))
    bad = [i for i in range(len(poses)) if ang[i] > a_lim or dist[i] > d_lim]
    bad = sorted(bad, key=lambda i: -ang[i] / a_lim - dist[i] / d_lim)[: len(poses) // 3]
    for i in bad:
        rejected.append(
            (
                poses[i].name,
                f"its planes disagree with the other poses' "
                f"({ang[i]:.2f} deg, {dist[i] * 1000:.0f} mm)",
            )
        )
    return [p for i, p in enumerate(poses) if i not in set(bad)]


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
