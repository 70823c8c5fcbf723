"""Intrinsic calibration of one camera from views of a board (``edgefuse calibrate intrinsics``).

Models: ``plumb_bob`` (OpenCV's default k1 k2 p1 p2 k3), ``rational_polynomial``
(``CALIB_RATIONAL_MODEL``, 8 coefficients) and ``fisheye`` (``cv2.fisheye.calibrate``,
equidistant k1..k4). After a first fit, views whose reprojection error is an outlier (far above
the median of all views) are dropped one at a time, worst first, and the camera re-fitted, so a
blurred or mis-detected view cannot drag the result. Degenerate input (too few views, the same
pose over and over, a fit that does not converge) raises :class:`CalibrationError` saying what
to do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edgefuse.calib.boards import Board, CalibrationError, Detections, View, detect_all
from edgefuse.calib.coverage import CoverageReport, coverage
from edgefuse.calib.model import CameraIntrinsics

Model = Literal["plumb_bob", "rational_polynomial", "fisheye"]
MODELS: tuple[Model, ...] = ("plumb_bob", "rational_polynomial", "fisheye")
#: Fewest views a calibration accepts (each adds 6 unknowns; fewer is not trustworthy).
MIN_VIEWS = 6
#: A view is an outlier when its RMS exceeds both this multiple of the median view RMS...
OUTLIER_RATIO = 2.5
#: ... and the median plus this many robust standard deviations (MAD) ...
OUTLIER_SIGMAS = 5.0
#: ... and this many pixels: a view this good is never dropped, however good the others are.
OUTLIER_FLOOR_PX = 0.5
_CRITERIA = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9)


@dataclass
class IntrinsicsResult:
    """A fitted camera and how well each view agreed with it."""

    camera: CameraIntrinsics
    model: Model
    #: Reprojection RMS over all kept corners, pixels.
    rms_px: float
    views: list[View]
    per_view_rms_px: list[float]
    rvecs: list[np.ndarray]
    tvecs: list[np.ndarray]
    #: (view name, its RMS in the fit that dropped it, pixels).
    rejected: list[tuple[str, float]] = field(default_factory=list)
    #: Frames in which the board was not found.
    no_board: list[str] = field(default_factory=list)
    coverage: CoverageReport | None = None

    def summary(self) -> str:
        """A human-readable report: the camera, the errors, the rejections, the coverage."""
        K = self.camera.K
        lines = [
            f"model {self.model}: fx {K[0, 0]:.2f} fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} "
            f"cy {K[1, 2]:.2f} px, distortion {np.array2string(self.camera.D, precision=5)}",
            f"RMS reprojection error {self.rms_px:.3f} px over {len(self.views)} views",
        ]
        for v, e in zip(self.views, self.per_view_rms_px, strict=True):
            lines.append(f"  {v.name:24s} {e:.3f} px  ({len(v.image_points)} corners)")
        for name, e in self.rejected:
            lines.append(f"  rejected {name} ({e:.3f} px: an outlier)")
        if self.no_board:
            lines.append(
                f"  no board in {len(self.no_board)} frames: {', '.join(self.no_board[:8])}"
                + (" ..." if len(self.no_board) > 8 else "")
            )
        if self.coverage is not None:
            lines.append(self.coverage.summary())
        return "\n".join(lines)


def _fit(
    views: Sequence[View], image_size: tuple[int, int], model: Model, fix_k3: bool = False
) -> tuple[float, np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray], list[float]]:
    """One calibration: (rms, K, D, rvecs, tvecs, per-view rms)."""
    obj = [v.object_points.reshape(-1, 1, 3).astype(np.float64) for v in views]
    img = [v.image_points.reshape(-1, 1, 2).astype(np.float64) for v in views]
    try:
        if model == "fisheye":
            flags = cv2.fisheye.CALIB_RECOMPUTE_EXTRINSIC | cv2.fisheye.CALIB_FIX_SKEW
            rms, K, D, rvecs, tvecs = cv2.fisheye.calibrate(  # type: ignore[call-overload]
                obj, img, image_size, None, None, flags=flags, criteria=_CRITERIA
            )
            errs = []
            for o, i, r, t in zip(obj, img, rvecs, tvecs, strict=True):
                proj, _ = cv2.fisheye.projectPoints(o, r, t, K, D)
                errs.append(float(np.sqrt(np.mean(np.sum((proj - i) ** 2, axis=-1)))))
            return float(rms), K, D.ravel()[:4], list(rvecs), list(tvecs), errs
        flags = cv2.CALIB_RATIONAL_MODEL if model == "rational_polynomial" else 0
        if fix_k3:
            flags |= cv2.CALIB_FIX_K3  # k3 = 0: what Kalibr's radtan and ROS's default fit
        obj32 = [o.astype(np.float32) for o in obj]
        img32 = [i.astype(np.float32) for i in img]
        out = cv2.calibrateCameraExtended(  # type: ignore[call-overload]
            obj32, img32, image_size, None, None, flags=flags, criteria=_CRITERIA
        )
        rms, K, D, rvecs, tvecs, _, _, per_view = out
        n = 8 if model == "rational_polynomial" else 5
        return float(rms), K, D.ravel()[:n], list(rvecs), list(tvecs), list(per_view.ravel())
    except cv2.error as exc:
        raise CalibrationError(
            f"the {model} calibration did not converge ({str(exc).strip().splitlines()[-1]}); "
            "this usually means degenerate views: take views with the board tilted differently "
            "and at several places in the image"
        ) from None


def _check_enough(n: int, min_views: int, context: str) -> None:
    if n < min_views:
        raise CalibrationError(
            f"too few views: {context}; need at least {min_views}, take {min_views - n} more "
            "(15-30 views, board tilted and spread over the whole image, give a stable result)"
        )


def _check_distinct(views: Sequence[View], image_size: tuple[int, int]) -> None:
    """Refuse views that are all the same picture of the board (a camera on a tripod with the
    board never moved): they constrain nothing beyond one view."""
    ref = views[0]
    same = 0
    for v in views[1:]:
        if (
            len(v.ids) == len(ref.ids)
            and np.array_equal(v.ids, ref.ids)
            and float(np.max(np.abs(v.image_points - ref.image_points))) < 0.01 * max(image_size)
        ):
            same += 1
    if same == len(views) - 1:
        raise CalibrationError(
            f"degenerate poses: all {len(views)} views show the board in the same pose; move "
            "the board (or camera) between views: to every part of the image, closer and "
            "farther, tilted 20-45 deg both ways"
        )


def _check_tilted(rvecs: Sequence[np.ndarray]) -> None:
    """Refuse fits where the board was never tilted: focal length and distance trade off."""
    from edgefuse.calib.coverage import tilts

    worst = max(math.hypot(*tilts(r)) for r in rvecs)
    if worst < 5.0:
        raise CalibrationError(
            f"degenerate poses: the board faces the camera squarely in every view (largest "
            f"tilt {worst:.1f} deg), so the focal length cannot be told from the distance; "
            "add views with the board tilted 20-45 deg around both axes"
        )


def _check_sane(K: np.ndarray, image_size: tuple[int, int]) -> None:
    w, h = image_size
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (fx > 0 and fy > 0 and 0 < cx < w and 0 < cy < h and 0.5 < fx / fy < 2):
        raise CalibrationError(
            f"the fit gave an implausible camera (fx {fx:.1f}, fy {fy:.1f}, cx {cx:.1f}, "
            f"cy {cy:.1f} for {w}x{h}): degenerate poses; take views with the board tilted "
            "and spread over the whole image"
        )


def calibrate_views(
    views: Sequence[View],
    image_size: tuple[int, int],
    model: Model = "plumb_bob",
    *,
    reject: bool = True,
    min_views: int = MIN_VIEWS,
    fix_k3: bool = False,
) -> IntrinsicsResult:
    """Fit ``model`` to ``views`` (``fix_k3``: keep k3 at 0); drop outlier views one by one
    (when ``reject``) down to ``min_views``; check the result for degenerate poses. Raises
    :class:`CalibrationError`."""
    if model not in MODELS:
        raise CalibrationError(f"unknown camera model {model!r}; choose one of {', '.join(MODELS)}")
    kept = list(views)
    _check_enough(len(kept), min_views, f"{len(kept)} views")
    _check_distinct(kept, image_size)
    rejected: list[tuple[str, float]] = []
    while True:
        rms, K, D, rvecs, tvecs, errs = _fit(kept, image_size, model, fix_k3)
        if not reject or len(kept) <= min_views:
            break
        e = np.asarray(errs)
        med = float(np.median(e))
        sigma = 1.4826 * float(np.median(np.abs(e - med)))
        worst = int(np.argmax(e))
        if e[worst] <= max(OUTLIER_RATIO * med, med + OUTLIER_SIGMAS * sigma, OUTLIER_FLOOR_PX):
            break
        rejected.append((kept[worst].name, float(e[worst])))
        del kept[worst]
    _check_tilted(rvecs)
    _check_sane(K, image_size)
    dist_model = "equidistant" if model == "fisheye" else model
    camera = CameraIntrinsics(
        width=image_size[0],
        height=image_size[1],
        camera_matrix=tuple(tuple(float(v) for v in row) for row in K),  # type: ignore[arg-type]
        distortion_model=dist_model,
        distortion=tuple(float(v) for v in D),
    )
    return IntrinsicsResult(
        camera=camera,
        model=model,
        rms_px=rms,
        views=kept,
        per_view_rms_px=[float(x) for x in errs],
        rvecs=rvecs,
        tvecs=tvecs,
        rejected=rejected,
        coverage=coverage(kept, image_size, rvecs),
    )


def calibrate_detections(
    det: Detections,
    model: Model = "plumb_bob",
    *,
    context: str,
    reject: bool = True,
    min_views: int = MIN_VIEWS,
    fix_k3: bool = False,
) -> IntrinsicsResult:
    """Fit ``model`` to the views of ``det`` (see :func:`calibrate_views`); ``context`` says
    where the views came from in a too-few-views message (``the board was found in 3 of 40
    frames``)."""
    _check_enough(len(det.views), min_views, context)
    result = calibrate_views(
        det.views, det.image_size, model, reject=reject, min_views=min_views, fix_k3=fix_k3
    )
    result.no_board = det.no_board
    return result


def calibrate_intrinsics(
    source: str | Path,
    board: Board,
    model: Model = "plumb_bob",
    *,
    every: int = 1,
    reject: bool = True,
    min_views: int = MIN_VIEWS,
    fix_k3: bool = False,
) -> tuple[IntrinsicsResult, Detections]:
    """Detect ``board`` in a folder of images or a video (every ``every``-th frame) and fit
    ``model`` (see :func:`calibrate_views`). Returns the result and the detections."""
    det = detect_all(source, board, every=every)
    n_frames = len(det.views) + len(det.no_board)
    result = calibrate_detections(
        det,
        model,
        context=f"the board was found in {len(det.views)} of {n_frames} frames",
        reject=reject,
        min_views=min_views,
        fix_k3=fix_k3,
    )
    return result, det
