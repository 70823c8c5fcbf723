"""Stereo calibration of two cameras from synchronised board views (``edgefuse calibrate stereo``).

Each camera is first calibrated on its own (with outlier rejection, :mod:`.intrinsics`); then
``cv2.stereoCalibrate`` fits the pose of the right camera relative to the left on the image
pairs where both saw the board, with the intrinsics fixed (default) or refined. The result is
``T_right_left`` (p_right = T · p_left; the baseline is ``|t|`` in metres when ``--square-m`` is
the real square size), the stereo RMS, and the epipolar error: after ``cv2.stereoRectify`` the
same corner must lie on the same row in both images, so the row difference measures the
calibration where it matters for depth.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgefuse.calib.boards import Board, CalibrationError, View, detect_all
from edgefuse.calib.formats import inv
from edgefuse.calib.intrinsics import MIN_VIEWS, IntrinsicsResult, Model, calibrate_views
from edgefuse.calib.model import RigCalibration, SensorCalibration, matrix4

_CRITERIA = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9)


@dataclass
class StereoResult:
    """Both cameras, the right camera's pose relative to the left, and the errors."""

    left: IntrinsicsResult
    right: IntrinsicsResult
    #: ``T_right_left`` 4x4: p_right = T · p_left.
    T_right_left: np.ndarray
    rms_px: float
    #: RMS of the row difference of matching corners after rectification, pixels.
    epipolar_rms_px: float
    #: Names of the (left, right) image pairs used.
    pairs: list[tuple[str, str]]
    #: Rectification (cv2.stereoRectify): R1, R2, P1, P2.
    R1: np.ndarray
    R2: np.ndarray
    P1: np.ndarray
    P2: np.ndarray

    @property
    def baseline_m(self) -> float:
        """Distance between the two optical centres (in the unit of ``--square-m``)."""
        return float(np.linalg.norm(self.T_right_left[:3, 3]))

    @property
    def rotation_deg(self) -> float:
        """Angle of the rotation between the two cameras, degrees."""
        R = self.T_right_left[:3, :3]
        return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(R) - 1) / 2))))

    def summary(self) -> str:
        """Human-readable report."""
        t = self.T_right_left[:3, 3]
        rv = cv2.Rodrigues(self.T_right_left[:3, :3])[0].ravel()
        return "\n".join(
            [
                f"stereo: {len(self.pairs)} pairs, RMS {self.rms_px:.3f} px, rectified epipolar "
                f"error {self.epipolar_rms_px:.3f} px (RMS of row differences)",
                f"baseline {self.baseline_m:.4f} m, t_right_left [{t[0]:+.4f} {t[1]:+.4f} "
                f"{t[2]:+.4f}] m (x along the baseline: {abs(t[0]) / self.baseline_m:.1%})",
                f"rotation {self.rotation_deg:.3f} deg (axis-angle {np.degrees(rv).round(3)} deg)",
                "left camera:",
                self.left.summary(),
                "right camera:",
                self.right.summary(),
            ]
        )


def _pair_key(name: str) -> str:
    """The part of a file name that pairs left and right images: its numbers (``left07.jpg`` →
    ``07``), else the name without ``left``/``right``/``l``/``r``."""
    stem = Path(name).stem
    digits = re.findall(r"\d+", stem)
    if digits:
        return "_".join(digits)
    return re.sub(r"(?i)left|right|^l_|^r_|_l$|_r$", "", stem)


def pair_views(left: list[View], right: list[View]) -> list[tuple[View, View]]:
    """Left/right views of the same moment (same number in the file name), restricted to the
    corners both found (ChArUco views can see different corners)."""
    by_key = {_pair_key(v.name): v for v in right}
    pairs = []
    for lv in left:
        rv = by_key.get(_pair_key(lv.name))
        if rv is None:
            continue
        common, li, ri = np.intersect1d(lv.ids, rv.ids, return_indices=True)
        if len(common) < 6:
            continue
        pairs.append(
            (
                View(lv.name, lv.image_points[li], lv.object_points[li], common),
                View(rv.name, rv.image_points[ri], rv.object_points[ri], common),
            )
        )
    return pairs


def _epipolar_rms(
    pairs: list[tuple[View, View]],
    left: IntrinsicsResult,
    right: IntrinsicsResult,
    R1: np.ndarray,
    R2: np.ndarray,
    P1: np.ndarray,
    P2: np.ndarray,
) -> float:
    dy = []
    for lv, rv in pairs:
        pl = cv2.undistortPoints(
            lv.image_points.reshape(-1, 1, 2).astype(np.float64),
            left.camera.K,
            left.camera.D,
            R=R1,
            P=P1,
        )
        pr = cv2.undistortPoints(
            rv.image_points.reshape(-1, 1, 2).astype(np.float64),
            right.camera.K,
            right.camera.D,
            R=R2,
            P=P2,
        )
        dy.append((pl[:, 0, 1] - pr[:, 0, 1]).ravel())
    return float(np.sqrt(np.mean(np.concatenate(dy) ** 2)))


def calibrate_stereo(
    left_source: str | Path,
    right_source: str | Path,
    board: Board,
    model: Model = "plumb_bob",
    *,
    refine_intrinsics: bool = False,
    min_views: int = MIN_VIEWS,
    fix_k3: bool = False,
) -> StereoResult:
    """Calibrate each camera, then their relative pose (see the module docstring). Raises
    :class:`CalibrationError` on too few common views or unsupported models."""
    if model == "fisheye":
        raise CalibrationError(
            "stereo calibration supports plumb_bob and rational_polynomial for now; "
            "calibrate fisheye cameras one by one with 'edgefuse calibrate intrinsics'"
        )
    dl = detect_all(left_source, board)
    dr = detect_all(right_source, board)
    if dl.image_size != dr.image_size:
        raise CalibrationError(
            f"left images are {dl.image_size[0]}x{dl.image_size[1]} and right ones "
            f"{dr.image_size[0]}x{dr.image_size[1]}: stereo needs one resolution"
        )
    left = calibrate_views(dl.views, dl.image_size, model, min_views=min_views, fix_k3=fix_k3)
    right = calibrate_views(dr.views, dr.image_size, model, min_views=min_views, fix_k3=fix_k3)
    left.no_board, right.no_board = dl.no_board, dr.no_board
    rejected = {n for n, _ in left.rejected} | {n for n, _ in right.rejected}
    pairs = [
        (lv, rv)
        for lv, rv in pair_views(dl.views, dr.views)
        if lv.name not in rejected and rv.name not in rejected
    ]
    if len(pairs) < min_views:
        raise CalibrationError(
            f"too few views: the board was found in both images of {len(pairs)} pairs "
            f"(left {len(dl.views)}, right {len(dr.views)} views; pairs match by the number in "
            f"the file name); need at least {min_views}, take {min_views - len(pairs)} more "
            "with the board fully in view of both cameras"
        )
    flags = cv2.CALIB_USE_INTRINSIC_GUESS if refine_intrinsics else cv2.CALIB_FIX_INTRINSIC
    if model == "rational_polynomial":
        flags |= cv2.CALIB_RATIONAL_MODEL
    if fix_k3:
        flags |= cv2.CALIB_FIX_K3
    obj = [lv.object_points.reshape(-1, 1, 3).astype(np.float32) for lv, _ in pairs]
    il = [lv.image_points.reshape(-1, 1, 2).astype(np.float32) for lv, _ in pairs]
    ir = [rv.image_points.reshape(-1, 1, 2).astype(np.float32) for _, rv in pairs]
    try:
        rms, K1, D1, K2, D2, R, T, _, _ = cv2.stereoCalibrate(
            obj,
            il,
            ir,
            left.camera.K,
            left.camera.D,
            right.camera.K,
            right.camera.D,
            dl.image_size,
            flags=flags,
            criteria=_CRITERIA,
        )
    except cv2.error as exc:
        raise CalibrationError(
            f"stereo calibration did not converge ({str(exc).strip().splitlines()[-1]}); "
            "check that left and right images are of the same moments"
        ) from None
    if refine_intrinsics:
        from dataclasses import replace

        n = len(left.camera.distortion)
        for res, K, D in ((left, K1, D1), (right, K2, D2)):
            res.camera = replace(
                res.camera,
                camera_matrix=tuple(tuple(float(v) for v in row) for row in K),  # type: ignore[arg-type]
                distortion=tuple(float(v) for v in D.ravel()[:n]),
            )
    T_rl = np.eye(4)
    T_rl[:3, :3], T_rl[:3, 3] = R, T.ravel()
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(
        left.camera.K,
        left.camera.D,
        right.camera.K,
        right.camera.D,
        dl.image_size,
        R,
        T,
        flags=cv2.CALIB_ZERO_DISPARITY,
        alpha=0,
    )
    epi = _epipolar_rms(pairs, left, right, R1, R2, P1, P2)
    return StereoResult(
        left=left,
        right=right,
        T_right_left=T_rl,
        rms_px=float(rms),
        epipolar_rms_px=epi,
        pairs=[(lv.name, rv.name) for lv, rv in pairs],
        R1=R1,
        R2=R2,
        P1=P1,
        P2=P2,
    )


def stereo_rig(
    result: StereoResult, *, rig: str = "stereo", left: str = "left", right: str = "right"
) -> RigCalibration:
    """The stereo pair as a rig: the left camera at ``base_link``, the right one at
    ``inv(T_right_left)``; frames ``<name>_optical``."""
    return RigCalibration(
        rig=rig,
        sensors={
            left: SensorCalibration(
                frame_id=f"{left}_optical",
                T_base_link_sensor=matrix4(np.eye(4)),
                camera=result.left.camera,
            ),
            right: SensorCalibration(
                frame_id=f"{right}_optical",
                T_base_link_sensor=matrix4(inv(result.T_right_left)),
                camera=result.right.camera,
            ),
        },
    )
