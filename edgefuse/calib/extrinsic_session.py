"""Camera-lidar and camera-depth calibration from a recorded session (MCAP).

Still poses are found in the camera stream: a frame is still when, at quarter resolution, fewer
than 0.05 % of its pixels changed by more than 12 grey levels since the frame before (noise
does not reach that; a board moving by a pixel does). A run of at least two still frames is one
pose; the board is detected in its middle frame. The range sensor's messages that arrived
(``t_host_ns``) between one sweep (or frame) after the run's first frame and one camera frame
(at most 50 ms) before its last frame were captured while the board was still (the margin
holds a range sensor with less latency than the camera's); the first eight sweeps or five
depth frames of them are merged into the pose's points. Lidar points are used as recorded
(``xyzit_f32``: x, y, z first), depth images (``z16``) are back-projected with the depth
camera's intrinsics and ``meta.depth_scale_m``.

Intrinsics and the initial guess come from ``rig`` (a rig file) or else from the calibration
attached to the session; the result replaces the range sensor's ``T_base_link_<sensor>`` in
that rig, keeping the camera's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edgefuse import config
from edgefuse.calib.boards import (
    Board,
    CalibrationError,
    Detector,
    View,
    no_board_message,
    to_gray,
)
from edgefuse.calib.extrinsic import (
    ExtrinsicOptions,
    ExtrinsicResult,
    PoseObservation,
    calibrate_extrinsic,
)
from edgefuse.calib.model import CameraIntrinsics, RigCalibration, load_calibration, matrix4
from edgefuse.record import SessionReader

_STILL_LEVEL = 12
_STILL_SHARE = 0.0005
#: Range messages merged into one pose: every still sweep or frame lowers the plane's and the
#: edges' noise; depth frames are whole images, so fewer of them.
_MAX_FRAMES_PER_POSE = {"lidar": 8, "depth": 5}


def session_rig(reader: SessionReader) -> RigCalibration | None:
    """The rig calibration attached to a session (``calibration/<rig>.yaml``), if any."""
    for name, data in reader.attachments().items():
        if name.startswith("calibration/") and name.endswith(".yaml"):
            parsed, src = config.parse_yaml(data.decode(), file=f"{reader.path}:{name}")
            return config.build(RigCalibration, parsed, src=src)
    return None


def depth_points(img: np.ndarray, camera: CameraIntrinsics, scale_m: float) -> np.ndarray:
    """A depth image (0 = no return) back-projected to points (N, 3) in its optical frame."""
    v, u = np.nonzero(img)
    z = img[v, u].astype(np.float64) * scale_m
    pix = np.column_stack([u, v]).astype(np.float64)
    if camera.distortion_model != "none" and np.any(camera.D):
        xy = cv2.undistortPoints(pix.reshape(-1, 1, 2), camera.K, camera.D).reshape(-1, 2)
    else:
        K = camera.K
        xy = (pix - K[:2, 2]) / np.diag(K)[:2]
    return np.column_stack([xy * z[:, None], z])


@dataclass
class _Still:
    first_ns: int
    last_ns: int
    frames: int
    image: np.ndarray


def still_runs(reader: SessionReader, topic: str) -> tuple[list[_Still], int]:
    """Runs of still camera frames (see the module docstring) and the number of frames."""
    runs: list[_Still] = []
    prev: np.ndarray | None = None
    run: list[tuple[int, np.ndarray]] = []
    n = 0

    def close() -> None:
        if len(run) >= 2:
            runs.append(_Still(run[0][0], run[-1][0], len(run), run[len(run) // 2][1]))

    for msg in reader.messages([topic]):
        n += 1
        img = np.array(msg.arrays[0])  # a copy: the message's bytes go with its chunk
        small = cv2.resize(to_gray(img), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        t = msg.header.t_host_ns
        still = prev is not None and prev.shape == small.shape
        if still:
            assert prev is not None
            changed = np.count_nonzero(cv2.absdiff(small, prev) > _STILL_LEVEL)
            still = changed <= _STILL_SHARE * small.size
        if still:
            run.append((t, img))
        else:
            close()
            run = [(t, img)]
        prev = small
    close()
    return runs, n


def collect_observations(
    session: str | Path,
    board: Board,
    *,
    camera: str,
    sensor: str,
    kind: Literal["lidar", "depth"],
    rig: RigCalibration,
    camera_topic: str | None = None,
    sensor_topic: str | None = None,
) -> tuple[list[PoseObservation], list[tuple[str, str]]]:
    """The still poses of a session with the board found by the camera and the range sensor's
    points, and the poses left out with why."""
    cam_topic = camera_topic or f"{camera}/image"
    rng_topic = sensor_topic or (f"{sensor}/points" if kind == "lidar" else f"{sensor}/image")
    with SessionReader(session) as reader:
        topics = reader.topics()
        for t in (cam_topic, rng_topic):
            if t not in topics:
                raise CalibrationError(
                    f"{session}: no topic {t!r} (it has: {', '.join(sorted(topics)) or 'none'}); "
                    "name the sensors with --camera/--lidar/--depth"
                )
        runs, n_frames = still_runs(reader, cam_topic)
        if not runs:
            raise CalibrationError(
                f"{session}: the board is never held still in {cam_topic} ({n_frames} frames): "
                "hold it still for at least two frames at each pose"
            )
        det = Detector(board)
        skipped: list[tuple[str, str]] = []
        found: list[tuple[str, _Still, View]] = []
        misses: list[tuple[str, np.ndarray]] = []
        for i, r in enumerate(runs):
            name = f"pose {i} (t={(r.first_ns - runs[0].first_ns) * 1e-9:.1f} s)"
            view = det.detect(to_gray(r.image), name)
            if view is None:
                skipped.append((name, "no board found in the camera image"))
                if len(misses) < 4:
                    misses.append((name, to_gray(r.image)))
            else:
                found.append((name, r, view))
        if not found:
            raise CalibrationError(
                no_board_message(board, f"{cam_topic} of {session}", len(runs), misses).replace(
                    "images", "still poses"
                )
            )
        span_ns = _frame_span_ns(reader, rng_topic, kind)
        # A range sensor with less latency than the camera's sends a sweep captured after the
        # board began to move before the camera's last still frame arrives: keep a margin of
        # one camera frame, at most 50 ms (more than such latencies differ by).
        frame_ns = min(_frame_span_ns(reader, cam_topic, "camera") * 2 // 3, 50_000_000)
        pts: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in found}
        most = _MAX_FRAMES_PER_POSE[kind]
        scale = 0.001
        depth_cam = rig.sensor(sensor).camera if kind == "depth" else None
        if kind == "depth" and depth_cam is None:
            raise CalibrationError(f"sensor {sensor!r} of rig {rig.rig!r} has no intrinsics")
        for msg in reader.messages([rng_topic]):
            t_ns = msg.header.t_host_ns
            for name, r, _ in found:
                if r.first_ns + span_ns <= t_ns <= r.last_ns - frame_ns and len(pts[name]) < most:
                    if kind == "lidar":
                        p = np.asarray(msg.arrays[0][:, :3], np.float64)
                    else:
                        assert depth_cam is not None
                        scale = float(msg.header.meta.get("depth_scale_m", scale))
                        p = depth_points(msg.arrays[0], depth_cam, scale)
                    pts[name].append(p[np.all(np.isfinite(p), axis=1)])
    obs = []
    for name, r, view in found:
        if not pts[name]:
            skipped.append((name, f"no {kind} data captured while the board was still"))
            continue
        obs.append(PoseObservation(name, view, np.concatenate(pts[name]), r.image))
    return obs, skipped


def _frame_span_ns(reader: SessionReader, topic: str, kind: str) -> int:
    """How long before its arrival a message's data may have been captured (a lidar sweep's
    duration, from its meta or the message spacing; one frame interval for depth)."""
    stamps = []
    for msg in reader.messages([topic]):
        if kind == "lidar" and "sweep_s" in msg.header.meta:
            return round(float(msg.header.meta["sweep_s"]) * 1.5e9)
        stamps.append(msg.header.t_host_ns)
        if len(stamps) >= 20:
            break
    if len(stamps) < 2:
        return 0
    return round(1.5 * float(np.median(np.diff(stamps))))


def calibrate_session(
    session: str | Path,
    board: Board,
    *,
    kind: Literal["lidar", "depth"],
    camera: str = "camera",
    sensor: str | None = None,
    rig: RigCalibration | str | Path | None = None,
    options: ExtrinsicOptions | None = None,
) -> tuple[ExtrinsicResult, RigCalibration, list[PoseObservation]]:
    """Calibrate ``T_<camera>_optical_<sensor>`` from a session; returns the result, the rig
    with the sensor's new pose and the observations used (images for an overlay)."""
    sensor = sensor or kind
    if rig is None:
        with SessionReader(session) as reader:
            found = session_rig(reader)
        if found is None:
            raise CalibrationError(
                f"{session}: no rig calibration attached; give --rig calibration/<rig>.yaml "
                f"with the camera's intrinsics and rough poses of {camera} and {sensor}"
            )
        rig = found
    elif not isinstance(rig, RigCalibration):
        rig = load_calibration(rig)
    cam = rig.sensor(camera)
    if cam.camera is None:
        raise CalibrationError(
            f"sensor {camera!r} has no intrinsics: run edgefuse calibrate intrinsics first"
        )
    guess = rig.T(camera, sensor)
    obs, skipped = collect_observations(
        session, board, camera=camera, sensor=sensor, kind=kind, rig=rig
    )
    opts = options or ExtrinsicOptions()
    if len(obs) < opts.min_poses:
        why = "; ".join(f"{n}: {w}" for n, w in skipped[:6])
        raise CalibrationError(
            f"{session}: too few usable board poses: {len(obs)}, need at least "
            f"{opts.min_poses} ({why}); hold the board still (1 s or more) in more poses, "
            f"varied in distance and tilt, in view of {camera} and {sensor}"
        )
    result = calibrate_extrinsic(
        obs, board, cam.camera, guess, camera_name=camera, sensor_name=sensor, options=opts
    )
    result.rejected[:0] = skipped
    T_base = cam.T @ result.T_cam_sensor
    sensors = dict(rig.sensors)
    sensors[sensor] = replace(rig.sensor(sensor), T_base_link_sensor=matrix4(T_base))
    return result, replace(rig, sensors=sensors), obs
