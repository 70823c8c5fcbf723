"""Calibration targets and their detection: chessboards and ChArUco boards, in images or videos.

A chessboard is given by its **inner corners** (``--cols 9 --rows 6`` for OpenCV's sample board
of 10x7 squares); a ChArUco board by its **squares** (corners are then (cols-1)x(rows-1)).
Chessboard corners are refined with ``cornerSubPix``; ChArUco corners are interpolated from the
markers and refined (``cornerSubPix`` inside) by ``cv2.aruco.CharucoDetector``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from edgefuse.errors import EdgefuseError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")
VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mjpg", ".mjpeg")
#: Fewest corners a ChArUco view needs to constrain a pose.
MIN_CHARUCO_CORNERS = 6
_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 30, 0.001)


class CalibrationError(EdgefuseError):
    """Calibration input that cannot give a result; the message says what to do about it."""


@dataclass(frozen=True, kw_only=True)
class Board:
    """A planar calibration target."""

    kind: Literal["chessboard", "charuco"] = "chessboard"
    #: Chessboard: inner corners per row. ChArUco: squares per row.
    cols: int
    #: Chessboard: inner corners per column. ChArUco: squares per column.
    rows: int
    #: Side of one square in metres (sets the unit of every translation).
    square_m: float = 1.0
    #: ChArUco marker side in metres (default 0.7 of the square).
    marker_m: float | None = None
    #: ChArUco marker dictionary (a ``cv2.aruco.DICT_*`` name).
    dictionary: str = "DICT_4X4_50"

    def __post_init__(self) -> None:
        low = 2 if self.kind == "chessboard" else 3
        if self.cols < low or self.rows < low:
            raise CalibrationError(
                f"board {self.cols}x{self.rows} is too small: --cols/--rows need >= {low} "
                f"({'inner corners' if self.kind == 'chessboard' else 'squares'})"
            )
        if self.square_m <= 0:
            raise CalibrationError(f"--square-m must be positive, got {self.square_m}")
        if self.kind == "charuco" and not hasattr(cv2.aruco, self.dictionary):
            raise CalibrationError(
                f"unknown ArUco dictionary {self.dictionary!r} (try DICT_4X4_50)"
            )

    @property
    def corners(self) -> tuple[int, int]:
        """Inner-corner grid (columns, rows)."""
        if self.kind == "chessboard":
            return self.cols, self.rows
        return self.cols - 1, self.rows - 1

    def object_points(self) -> np.ndarray:
        """All inner corners on the board plane (z = 0), metres, row-major, float32 (N, 3)."""
        c, r = self.corners
        grid = np.zeros((c * r, 3), np.float32)
        grid[:, :2] = np.mgrid[0:c, 0:r].T.reshape(-1, 2) * self.square_m
        return grid

    def describe(self) -> str:
        """``9x6 chessboard (inner corners)`` etc."""
        if self.kind == "chessboard":
            return f"{self.cols}x{self.rows} chessboard (inner corners)"
        return f"{self.cols}x{self.rows} ChArUco board (squares, {self.dictionary})"

    @classmethod
    def from_args(cls, args: Any) -> Board:
        """The board a ``calibrate`` action's options describe (``--board``, ``--cols``,
        ``--rows``, ``--square-m``, ``--marker-m``, ``--dict``)."""
        return cls(
            kind=args.board,
            cols=args.cols,
            rows=args.rows,
            square_m=args.square_m,
            marker_m=args.marker_m,
            dictionary=args.dict,
        )

    def charuco(self) -> Any:
        """The ``cv2.aruco.CharucoBoard`` of this board."""
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        marker = self.marker_m if self.marker_m is not None else 0.7 * self.square_m
        return cv2.aruco.CharucoBoard((self.cols, self.rows), self.square_m, marker, d)


@dataclass(frozen=True)
class View:
    """One image in which the board was found: its corners and their board coordinates."""

    name: str
    #: Pixel positions of the corners found, float32 (N, 2).
    image_points: np.ndarray
    #: The same corners on the board (z = 0), metres, float32 (N, 3).
    object_points: np.ndarray
    #: Corner ids (row-major index on the board), int (N,).
    ids: np.ndarray


class Detector:
    """Finds a board in grey images (one instance per board: the ChArUco detector is reused)."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self._charuco = None
        if board.kind == "charuco":
            self._charuco = cv2.aruco.CharucoDetector(board.charuco())

    def detect(self, gray: np.ndarray, name: str = "") -> View | None:
        """The board's corners in ``gray`` (refined to sub-pixel), or ``None`` if not found."""
        if self._charuco is not None:
            return self._detect_charuco(gray, name)
        size = self.board.corners
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
        found, corners = cv2.findChessboardCorners(gray, size, flags=flags)
        if not found:
            return None
        corners = _refine(gray, corners)
        obj = self.board.object_points()
        return View(name, corners.reshape(-1, 2), obj, np.arange(len(obj)))

    def _detect_charuco(self, gray: np.ndarray, name: str) -> View | None:
        assert self._charuco is not None
        corners, ids, _, _ = self._charuco.detectBoard(gray)
        if ids is None or len(ids) < MIN_CHARUCO_CORNERS:
            return None
        ids = ids.ravel().astype(int)
        # No second cornerSubPix: CharucoDetector already refines each corner with a window
        # that stays clear of the markers; a wider one here pulls corners towards the markers
        # (measured: 2% focal-length bias on synthetic views).
        corners = corners.astype(np.float32)
        obj = self.board.object_points()[ids]
        return View(name, corners.reshape(-1, 2), obj, ids)


def _refine(gray: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """``cornerSubPix`` with a half-window of 0.4 squares, at most 11 px (OpenCV's usual
    11x11): a window reaching the next corner would pull corners towards their neighbours."""
    pts = corners.reshape(-1, 2)
    if len(pts) > 1:
        d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
        d[d == 0] = np.inf
        spacing = float(np.min(d))
    else:
        spacing = 22.0
    half = int(max(2, min(11, spacing * 0.4)))
    return cv2.cornerSubPix(
        gray, corners.reshape(-1, 1, 2), (half, half), (-1, -1), _SUBPIX_CRITERIA
    )


def _numeric_key(path: Path) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` in natural order (``img2`` before ``img10``)."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=_numeric_key)


def _glob(pattern: Path) -> list[Path]:
    return [f for f in pattern.parent.glob(pattern.name) if f.suffix.lower() in IMAGE_EXTS]


def frames(source: str | Path, *, every: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, BGR image)`` of every image in a folder (or matching a glob such as
    ``calib/left*.jpg``), or of every ``every``-th frame of a video file (named
    ``frame_000123``). Recorded topics, live cameras and running pipelines are read by
    :mod:`edgefuse.calib.sources`."""
    p = Path(source)
    if p.is_dir() or (not p.exists() and any(ch in str(source) for ch in "*?[")):
        files = list_images(p) if p.is_dir() else sorted(_glob(p), key=_numeric_key)
        if not files:
            raise CalibrationError(
                f"{p}: no images match (looked for {', '.join(IMAGE_EXTS)})"
                if not p.is_dir()
                else f"{p}: no images in this folder (looked for {', '.join(IMAGE_EXTS)})"
            )
        for f in files[::every]:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise CalibrationError(f"{f}: not a readable image")
            yield f.name, img
        return
    if not p.exists():
        raise CalibrationError(f"{p}: no such folder or video file")
    if p.suffix.lower() not in VIDEO_EXTS:
        raise CalibrationError(
            f"{p}: not a folder of images or a video ({', '.join(VIDEO_EXTS)}); for a recording "
            "give SESSION.mcap --topic TOPIC, for a live camera its index, device or URL"
        )
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise CalibrationError(f"{p}: OpenCV cannot open this video")
    try:
        k = 0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            if k % every == 0:
                yield f"frame_{k:06d}", img
            k += 1
        if k == 0:
            raise CalibrationError(f"{p}: the video has no readable frames")
    finally:
        cap.release()


def to_gray(img: np.ndarray) -> np.ndarray:
    """A grey copy of a BGR (or already grey) image."""
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


@dataclass
class Detections:
    """What a pass over a source found."""

    views: list[View]
    image_size: tuple[int, int]
    no_board: list[str]
    #: The first image (BGR), kept for the annotated picture.
    first_image: np.ndarray


def detect_all(source: str | Path, board: Board, *, every: int = 1) -> Detections:
    """Detect ``board`` in every frame of ``source``. Raises :class:`CalibrationError` when
    sizes differ, or when the board is in no frame (checking other board sizes to say which
    one is there, e.g. squares counted instead of inner corners)."""
    det = Detector(board)
    views: list[View] = []
    misses: list[str] = []
    grays: list[tuple[str, np.ndarray]] = []
    size: tuple[int, int] | None = None
    first: np.ndarray | None = None
    for name, img in frames(source, every=every):
        h, w = img.shape[:2]
        if size is None:
            size, first = (w, h), img
        elif size != (w, h):
            raise CalibrationError(
                f"{name} is {w}x{h} but the first image is {size[0]}x{size[1]}: "
                "all views must come from the same camera at the same resolution"
            )
        gray = to_gray(img)
        v = det.detect(gray, name)
        if v is None:
            misses.append(name)
            if len(grays) < 4:
                grays.append((name, gray))
        else:
            views.append(v)
    assert size is not None and first is not None
    if not views:
        raise CalibrationError(no_board_message(board, source, len(misses), grays))
    return Detections(views, size, misses, first)


def no_board_message(
    board: Board, source: str | Path, n: int, samples: list[tuple[str, np.ndarray]]
) -> str:
    """Why no board was found, with a guess at the right ``--cols/--rows`` when another size
    of chessboard is in the images."""
    msg = f"no {board.describe()} found in any of the {n} images of {source}"
    if board.kind == "chessboard":
        c, r = board.cols, board.rows
        candidates = [
            (c - 1, r - 1),
            (r, c),
            (r - 1, c - 1),
            (c + 1, r + 1),
            (c - 1, r),
            (c, r - 1),
        ]
        for cc, rr in dict.fromkeys(candidates):
            if min(cc, rr) < 2 or (cc, rr) == (c, r):
                continue
            for name, gray in samples:
                found, _ = cv2.findChessboardCorners(
                    gray, (cc, rr), flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_FAST_CHECK
                )
                if found:
                    why = (
                        " (--cols/--rows count inner corners, i.e. squares minus one)"
                        if (cc, rr) in ((c - 1, r - 1), (r - 1, c - 1))
                        else ""
                    )
                    return (
                        f"{msg}; but a {cc}x{rr} chessboard is in {name}: check --cols/--rows"
                        f"{why}; try --cols {cc} --rows {rr}"
                    )
        return (
            f"{msg}; check --cols/--rows (inner corners: a board of 10x7 squares has 9x6), "
            "that the whole board is in view, sharp and evenly lit"
        )
    return (
        f"{msg}; check --cols/--rows (squares), --dict and that the markers are in view and sharp"
    )
