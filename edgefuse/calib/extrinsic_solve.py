"""The solve of target-based extrinsic calibration: the closed form from plane pairs, the joint
Levenberg-Marquardt refinement (corner reprojection, point-to-plane ranges and board edges) with
its covariance and a jackknife over poses, and the rejection of poses that disagree. Used by
:mod:`edgefuse.calib.extrinsic`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edgefuse.calib.boards import CalibrationError, View
from edgefuse.calib.extrinsic_edges import EdgeAssignment, edge_residuals
from edgefuse.calib.extrinsic_geometry import pose_matrix, pose_vector, range_residuals
from edgefuse.calib.model import CameraIntrinsics


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


def plane_residuals(xi: np.ndarray, b: np.ndarray, pts: np.ndarray, sigma: float) -> np.ndarray:
    """Range residuals (in sigmas) of the sensor's board points against the board plane that
    board pose ``b`` and extrinsic ``xi`` put in the sensor's frame."""
    T = pose_matrix(xi[:3], xi[3:])
    n_c = cv2.Rodrigues(b[:3].reshape(3, 1))[0][:, 2]
    n_s = T[:3, :3].T @ n_c
    d_s = float(n_c @ b[3:]) - float(n_c @ T[:3, 3])
    return range_residuals(pts, n_s, d_s) / sigma


def _edge_residuals(xi: np.ndarray, b: np.ndarray, edges: EdgeAssignment | None) -> np.ndarray:
    if edges is None or not len(edges.points):
        return np.zeros(0)
    T_board_sensor = np.linalg.inv(pose_matrix(b[:3], b[3:])) @ pose_matrix(xi[:3], xi[3:])
    return edge_residuals(edges, T_board_sensor)


@dataclass
class PoseData:
    """One pose as the solve sees it."""

    name: str
    view: View
    pts: np.ndarray  # board points used in the refinement (sensor frame)
    sigma_m: float
    b: np.ndarray  # rvec, tvec of T_cam_board
    n_s: np.ndarray
    d_s: float
    #: Corner noise (px) of this pose's view.
    sigma_px: float = 0.1
    #: The board's edge points and the side each is on (None: planes only).
    edges: EdgeAssignment | None = None


@dataclass(frozen=True)
class Refined:
    """The refinement's result: parameters (6 + 6K: extrinsic rotation vector and translation,
    then each board pose), the extrinsic's 6x6 covariance (model, and jackknife over poses)
    and the reduced chi-square of each
    group of residuals (corners, points, edges: about 1 when their sigmas are right)."""

    x: np.ndarray
    cov: np.ndarray
    cov_jackknife: np.ndarray
    chi2_corners: float
    chi2_points: float
    chi2_edges: float


def _pose_terms(
    xi: np.ndarray, b: np.ndarray, p: PoseData, camera: CameraIntrinsics
) -> list[np.ndarray]:
    uv, _ = cv2.projectPoints(
        p.view.object_points.astype(np.float64), b[:3], b[3:], camera.K, camera.D
    )
    r1 = (uv.reshape(-1) - p.view.image_points.astype(np.float64).ravel()) / p.sigma_px
    return [r1, plane_residuals(xi, b, p.pts, p.sigma_m), _edge_residuals(xi, b, p.edges)]


def _arrow_solve(H: np.ndarray, g: np.ndarray, skip: int = -1) -> np.ndarray:
    """``H⁻¹ g`` for the refinement's normal matrix, whose only off-diagonal blocks couple the
    extrinsic (first 6) with each board pose (6 each): the Schur complement on the extrinsic,
    then each pose's block. Pose ``skip`` is left out (its block and its coupling)."""
    k = (len(g) - 6) // 6
    idx = [i for i in range(k) if i != skip]
    B = np.stack([H[6 + 6 * i : 12 + 6 * i, 6 + 6 * i : 12 + 6 * i] for i in idx])
    C = np.stack([H[:6, 6 + 6 * i : 12 + 6 * i] for i in idx])
    gb = np.stack([g[6 + 6 * i : 12 + 6 * i] for i in idx])[..., None]
    rhs = np.linalg.solve(B, np.concatenate([np.swapaxes(C, 1, 2), gb], axis=2))
    S = H[:6, :6] - np.einsum("kij,kjl->il", C, rhs[..., :6])
    ge = g[:6] - np.einsum("kij,kj->i", C, rhs[..., 6])
    de = np.linalg.solve(S, ge)
    db = rhs[..., 6] - np.einsum("kij,j->ki", rhs[..., :6], de)
    out = np.zeros(len(g))
    out[:6] = de
    for j, i in enumerate(idx):
        out[6 + 6 * i : 12 + 6 * i] = db[j]
    return out


def refine(T0: np.ndarray, poses: list[PoseData], camera: CameraIntrinsics) -> Refined:
    """Joint Levenberg-Marquardt over ``T_cam_sensor`` and every board pose (corner
    reprojection, point-to-plane ranges and board edges, each in its own sigmas)."""
    k = len(poses)
    x = np.concatenate([pose_vector(T0), *[p.b for p in poses]])
    K, D = camera.K, camera.D

    def groups(x: np.ndarray) -> list[list[np.ndarray]]:
        return [
            _pose_terms(x[:6], x[6 + 6 * i : 12 + 6 * i], p, camera) for i, p in enumerate(poses)
        ]

    per_pose: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def normal_equations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = 6 + 6 * k
        H, g = np.zeros((n, n)), np.zeros(n)
        per_pose.clear()
        eps = 1e-7
        for i, p in enumerate(poses):
            cols = np.r_[0:6, 6 + 6 * i : 12 + 6 * i]
            b = x[6 + 6 * i : 12 + 6 * i]
            obj = p.view.object_points.astype(np.float64)
            uv, jac = cv2.projectPoints(obj, b[:3], b[3:], K, D)
            r1 = (uv.reshape(-1) - p.view.image_points.astype(np.float64).ravel()) / p.sigma_px
            J1 = np.zeros((len(r1), 12))
            J1[:, 6:] = jac[:, :6] / p.sigma_px

            def rest(xi: np.ndarray, bb: np.ndarray, p: PoseData = p) -> np.ndarray:
                return np.concatenate(
                    [plane_residuals(xi, bb, p.pts, p.sigma_m), _edge_residuals(xi, bb, p.edges)]
                )

            r2 = rest(x[:6], b)
            J2 = np.empty((len(r2), 12))
            for j in range(12):
                xi, bb = x[:6].copy(), b.copy()
                if j < 6:
                    xi[j] += eps
                else:
                    bb[j - 6] += eps
                J2[:, j] = (rest(xi, bb) - r2) / eps
            J = np.vstack([J1, J2])
            r = np.concatenate([r1, r2])
            H[np.ix_(cols, cols)] += J.T @ J
            g[cols] += J.T @ r
            per_pose.append((cols, J.T @ J, J.T @ r))
        return H, g

    def cost(x: np.ndarray) -> float:
        return float(sum(float(r @ r) for terms in groups(x) for r in terms))

    c = cost(x)
    lam = 1e-3
    for _ in range(40):
        H, g = normal_equations(x)
        step_ok, done = False, False
        for _ in range(10):
            A = H + lam * np.diag(np.diag(H))
            dx = _arrow_solve(A, -g)
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
    terms = groups(x)
    chi2 = []
    for j in range(3):
        r = np.concatenate([t[j] for t in terms])
        chi2.append(float(r @ r) / max(1, len(r)) if len(r) else 1.0)
    m = sum(len(r) for t in terms for r in t)
    total = c / max(1, m - len(x))
    cov = np.linalg.inv(H)[:6, :6] * max(total, 1.0)
    # Jackknife over poses (one Newton step from the solution without each pose): it holds
    # errors that all of one pose's corners or points share (a corner detector's bias on that
    # view, a plane tilted by the sensor's noise), which the model covariance above takes as
    # independent. (A residual "sandwich" estimator shrinks with the per-pose parameters
    # fitted to the same residuals; the jackknife does not.)
    steps = []
    for i, (_, Hi, gi) in enumerate(per_pose):
        Hm = H.copy()
        Hm[:6, :6] -= Hi[:6, :6]
        gv = np.zeros(len(x))
        gv[:6] = gi[:6]
        try:
            steps.append(_arrow_solve(Hm, gv, skip=i)[:6])
        except np.linalg.LinAlgError:
            continue
    if len(steps) >= 3:
        dev = np.array(steps) - np.mean(steps, axis=0)
        jack = dev.T @ dev * (len(steps) - 1) / len(steps)
    else:
        jack = np.zeros((6, 6))
    return Refined(x, cov, jack, chi2[0], chi2[1], chi2[2])


def closed_form_poses(poses: list[PoseData]) -> np.ndarray:
    Ts = [pose_matrix(p.b[:3], p.b[3:]) for p in poses]
    n_c = np.array([T[:3, 2] for T in Ts])
    d_c = np.array([float(T[:3, 2] @ T[:3, 3]) for T in Ts])
    return closed_form(n_c, d_c, np.array([p.n_s for p in poses]), np.array([p.d_s for p in poses]))


def drop_outliers(
    poses: list[PoseData], T: np.ndarray, rejected: list[tuple[str, str]]
) -> list[PoseData]:
    """Drop poses whose two planes disagree far more than the others' (a board seen while
    moving, another flat thing taken for it), at most a third of them."""
    if len(poses) < 4:
        return poses
    ang, dist = [], []
    for p in poses:
        Tb = pose_matrix(p.b[:3], p.b[3:])
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
