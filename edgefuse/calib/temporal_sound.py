"""The clapper's distance to the microphone, from the board the camera sees.

The microphone hears a click ``d / 343 m/s`` after the event, so ``edgefuse calibrate time``
needs ``d``, the distance from the clapper to the microphone; a 30 cm tape error is 0.9 ms,
the whole budget. In a time-calibration recording the clapper clicks as the board passes the
middle of its travel between two stops, so the camera that sees the board knows where it is:

1. the board's still holds are found in the camera stream and the board is detected in each
   hold's middle frame (:func:`~edgefuse.calib.extrinsic_session.still_runs`, as
   ``calibrate camera-lidar`` does);
2. each hold's board pose comes from PnP with the rig's intrinsics of the camera;
3. for every two consecutive holds at different stops (a move), the clapper is midway between
   the two holds' clapper positions: the board's centre, or that plus ``clapper_offset_m``;
4. those points go to ``base_link`` with the camera's extrinsic, are averaged, and the
   distance to the microphone's origin is measured.

The clapper offset is given in a frame that does not depend on how the corners are numbered
(a chessboard with an even number of corners both ways is found either way up): origin at
the board's centre, Z through the board away from the camera, Y down along the board (the
``base_link`` vertical, -z, projected on the board's plane) and X = Y x Z, to the right as
seen from the camera. A clapper 35 cm below the centre and 20 cm in front of the board
(towards the camera) is ``(0, 0.35, -0.2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgefuse.calib.boards import Board, CalibrationError, Detector, View, no_board_message, to_gray
from edgefuse.calib.extrinsic_geometry import solve_pnp
from edgefuse.calib.extrinsic_session import session_rig, still_runs
from edgefuse.calib.model import CameraIntrinsics, RigCalibration
from edgefuse.calib.temporal_signals import TemporalCalibrationError

#: Fewest moves (pairs of holds at the two stops) accepted by default.
MIN_MOVES = 3
#: Two holds whose board centres are closer than this share a stop (a hold split in two by a
#: noisy frame, or the board put back where it was).
_SAME_STOP_M = 0.05
#: A board facing nearly straight up or down has no "down along the board" for the offset.
_MAX_UPRIGHT_COS = 0.95
_DOWN_BASE = np.array([0.0, 0.0, -1.0])


@dataclass(frozen=True)
class SoundDistance:
    """The clapper's distance to the microphone as the board's holds put it."""

    #: Distance (m) from the mean clapper position to the microphone's origin.
    distance_m: float
    #: Standard deviation (m) of the distance over the moves.
    spread_m: float
    #: Board holds used (each is one end of at least one move).
    holds: int
    #: Moves (pairs of consecutive holds at the two stops) averaged.
    moves: int
    #: Mean clapper position in ``base_link`` (m).
    clapper_m: tuple[float, float, float]
    #: Holds left out, with why.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "distance_m": round(self.distance_m, 4),
            "spread_m": round(self.spread_m, 4),
            "holds": self.holds,
            "moves": self.moves,
            "clapper_m": [round(v, 4) for v in self.clapper_m],
            "skipped": [[n, w] for n, w in self.skipped],
        }


def _pinhole_view(view: View, camera: CameraIntrinsics) -> tuple[View, CameraIntrinsics]:
    """A fisheye (equidistant) view as an undistorted pinhole one, for ``solve_pnp``."""
    if camera.distortion_model != "equidistant":
        return view, camera
    pts = view.image_points.astype(np.float64).reshape(-1, 1, 2)
    norm = cv2.fisheye.undistortPoints(pts, camera.K, camera.D).reshape(-1, 2)
    ideal = CameraIntrinsics(
        width=camera.width,
        height=camera.height,
        camera_matrix=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    )
    return View(view.name, norm.astype(np.float32), view.object_points, view.ids), ideal


def _centre(T_base_board: np.ndarray, board: Board) -> np.ndarray:
    """The board's centre (the middle of its corner grid) in base_link."""
    mid = board.object_points().astype(np.float64).mean(axis=0)
    return np.asarray(T_base_board[:3, :3] @ mid + T_base_board[:3, 3])


def _clapper_in_base(
    T_base_board: np.ndarray, board: Board, offset_m: np.ndarray, camera_at: np.ndarray
) -> np.ndarray:
    """Where the clapper is (base_link) for a board at ``T_base_board``: its centre plus
    ``offset_m`` in the frame of the module docstring."""
    centre = _centre(T_base_board, board)
    if not np.any(offset_m):
        return np.asarray(centre)
    z = T_base_board[:3, 2].copy()
    if np.dot(z, centre - camera_at) < 0:  # away from the camera
        z = -z
    if abs(float(np.dot(z, _DOWN_BASE))) > _MAX_UPRIGHT_COS:
        raise TemporalCalibrationError(
            "the board faces straight up or down: --clapper-offset-m has no 'down along the "
            "board'; hold the board upright or measure the distance (--sound-distance-m D)"
        )
    y = _DOWN_BASE - np.dot(_DOWN_BASE, z) * z
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    return np.asarray(centre + np.column_stack([x, y, z]) @ offset_m)


def _two_stops(centres: np.ndarray) -> np.ndarray:
    """Which of two stops (0 or 1) each board centre is at: two means, seeded with the first
    centre and the one farthest from it."""
    far = int(np.argmax(np.linalg.norm(centres - centres[0], axis=1)))
    means = np.stack([centres[0], centres[far]])
    labels = np.zeros(len(centres), int)
    for _ in range(5):
        d = np.linalg.norm(centres[:, None, :] - means[None, :, :], axis=2)
        labels = np.argmin(d, axis=1)
        if labels.min() == labels.max():
            break
        means = np.stack([centres[labels == k].mean(axis=0) for k in (0, 1)])
    return labels


def estimate_sound_distance(
    session: str | Path,
    rig: RigCalibration | None,
    *,
    camera_topic: str,
    camera: str,
    board: Board,
    mic: str,
    clapper_offset_m: Sequence[float] = (0.0, 0.0, 0.0),
    min_moves: int = MIN_MOVES,
) -> SoundDistance:
    """The distance (m) from the clapper to microphone ``mic`` in a time-calibration session:
    the board's still holds in ``camera_topic`` (sensor ``camera`` of ``rig``, or of the rig
    attached to the session when ``rig`` is None), their poses by PnP, the clapper midway
    between consecutive holds at the two stops (at the board's centre plus
    ``clapper_offset_m``, see the module docstring), averaged in ``base_link``. Raises
    :class:`TemporalCalibrationError` saying what to do when the rig lacks the camera's
    intrinsics or a sensor, the board is never still or found, or fewer than ``min_moves``
    moves are seen."""
    from edgefuse.record.session import SessionReader

    offset = np.asarray(clapper_offset_m, np.float64)
    if offset.shape != (3,) or not np.all(np.isfinite(offset)):
        raise TemporalCalibrationError(
            f"clapper offset must be three numbers X,Y,Z (m), got {clapper_offset_m!r}"
        )
    with SessionReader(session) as reader:
        topics = reader.topics()
        if topics.get(camera_topic, 0) == 0:
            have = ", ".join(sorted(topics)) or "none"
            raise TemporalCalibrationError(
                f"sound distance: camera topic {camera_topic!r} is not in {session} (it has: "
                f"{have}); choose the camera stream with --camera"
            )
        if rig is None:
            rig = session_rig(reader)
            if rig is None:
                raise TemporalCalibrationError(
                    f"sound distance: no rig calibration (--rig) and none attached to "
                    f"{session}: the camera's intrinsics and pose and the microphone's pose "
                    "are needed"
                )
        for s in (camera, mic):
            if s not in rig.sensors:
                raise TemporalCalibrationError(
                    f"sound distance: rig {rig.rig!r} has no sensor {s!r} (it has: "
                    f"{', '.join(sorted(rig.sensors))}); add its pose to the rig"
                )
        intr = rig.sensors[camera].camera
        if intr is None:
            raise TemporalCalibrationError(
                f"sound distance: sensor {camera!r} of rig {rig.rig!r} has no intrinsics: run "
                "edgefuse calibrate intrinsics first, or measure the distance "
                "(--sound-distance-m D)"
            )
        runs, n_frames = still_runs(reader, camera_topic)
    if not runs:
        raise TemporalCalibrationError(
            f"sound distance: the board is never still in {camera_topic} of {session} "
            f"({n_frames} frames): let it stop dead for a few frames at each end of its travel"
        )
    T_base_cam = rig.sensors[camera].T
    camera_at = T_base_cam[:3, 3]
    det = Detector(board)
    skipped: list[tuple[str, str]] = []
    misses: list[tuple[str, np.ndarray]] = []
    clappers: dict[int, np.ndarray] = {}
    centres: dict[int, np.ndarray] = {}
    for i, r in enumerate(runs):
        name = f"hold {i} (t={(r.first_ns - runs[0].first_ns) * 1e-9:.1f} s)"
        gray = to_gray(r.image)
        view = det.detect(gray, name)
        if view is None:
            skipped.append((name, "no board found in the camera image"))
            if len(misses) < 4:
                misses.append((name, gray))
            continue
        try:
            T_cam_board, _ = solve_pnp(*_pinhole_view(view, intr))
        except CalibrationError as exc:
            skipped.append((name, str(exc)))
            continue
        T_base_board = T_base_cam @ T_cam_board
        centres[i] = _centre(T_base_board, board)
        clappers[i] = _clapper_in_base(T_base_board, board, offset, camera_at)
    if not centres:
        raise TemporalCalibrationError(
            "sound distance: "
            + no_board_message(board, f"{camera_topic} of {session}", len(runs), misses).replace(
                "images", "board holds"
            )
        )
    found = sorted(centres)
    labels = dict(zip(found, _two_stops(np.stack([centres[i] for i in found])), strict=True))
    mids: list[np.ndarray] = []
    used: set[int] = set()
    for i in found:
        j = i + 1
        if j not in centres or labels[i] == labels[j]:
            continue
        if np.linalg.norm(centres[i] - centres[j]) < _SAME_STOP_M:
            continue
        mids.append((clappers[i] + clappers[j]) / 2)
        used.update((i, j))
    if len(mids) < max(min_moves, 1):
        why = "; ".join(f"{n}: {w}" for n, w in skipped[:4])
        raise TemporalCalibrationError(
            f"sound distance: too few board moves between two stops in {camera_topic} of "
            f"{session}: {len(mids)} from {len(centres)} holds with the board found, need "
            f"{max(min_moves, 1)}{f' ({why})' if why else ''}; move the board between two "
            "stops some tens of cm apart, holding it still at each, or measure the distance "
            "(--sound-distance-m D)"
        )
    pts = np.stack(mids)
    mic_at = rig.sensors[mic].T[:3, 3]
    per_move = np.linalg.norm(pts - mic_at, axis=1)
    mean = pts.mean(axis=0)
    return SoundDistance(
        distance_m=float(np.linalg.norm(mean - mic_at)),
        spread_m=float(per_move.std()),
        holds=len(used),
        moves=len(mids),
        clapper_m=(float(mean[0]), float(mean[1]), float(mean[2])),
        skipped=skipped,
    )
