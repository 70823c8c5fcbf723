"""Collecting calibration views from a stream of frames: a recorded topic or a live camera.

A stream holds the board in the same pose for many frames, and while it moves the frames are
blurred; :func:`collect_views` keeps a frame only when :func:`edgefuse.calib.guide.judge` says
so (the board found, still, sharp, and not a near-duplicate of a kept view). In the guided mode
(``--live``) it also prints one line whenever the situation changes (what the current frame
lacks, each view kept with the X / Y / Size / Tilt bars, what view to take next), optionally
shows the annotated frames in a window, and stops when the coverage is sufficient, at
``max_views``, when the source ends, on Ctrl-C, or on ``q`` / Esc in the window.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import cv2
import numpy as np

from edgefuse.calib import guide
from edgefuse.calib.boards import (
    Board,
    CalibrationError,
    Detections,
    Detector,
    View,
    no_board_message,
    to_gray,
)
from edgefuse.calib.sources import FrameSource

_STATUS = {
    "no board": "no board in view: show the whole board to the camera",
    "moving": "hold the board still",
    "blurred": "the board is blurred: hold it still, check the focus and the light",
}
_WINDOW = "edgefuse calibrate intrinsics"


@dataclass
class Collected:
    """What a pass over a stream kept, and why frames were not kept."""

    detections: Detections
    #: The kept views' features, in order.
    features: list[guide.ViewFeatures]
    #: Frames seen, and how many were not kept for each reason (``moving``, ``duplicate``...).
    frames: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    #: Why collecting stopped: ``sufficient``, ``max-views``, ``end``, ``interrupted``, ``quit``.
    stopped: str = "end"
    #: Live frames never looked at because the detector was busy (the newest is taken).
    dropped: int = 0

    def summary(self) -> str:
        """One line: frames seen, views kept, frames skipped by reason, why it stopped."""
        skipped = ", ".join(f"{n} {k}" for k, n in self.skipped.items() if n)
        return (
            f"{len(self.detections.views)} views kept of {self.frames} frames"
            + (f" (skipped: {skipped})" if skipped else "")
            + (f", {self.dropped} not looked at (detector busy)" if self.dropped else "")
            + f"; stopped: {self.stopped}"
        )


def display_available() -> bool:
    """A screen to open a window on (X11 or Wayland)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def annotate(
    image: np.ndarray,
    view: View | None,
    board: Board,
    accepted: list[guide.ViewFeatures],
    lines: list[str],
) -> np.ndarray:
    """A copy of ``image`` with the detected corners, the progress bars and ``lines`` drawn."""
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if view is not None:
        size = board.corners
        if board.kind == "chessboard" and len(view.image_points) == size[0] * size[1]:
            cv2.drawChessboardCorners(out, size, view.image_points.reshape(-1, 1, 2), True)
        else:
            for p in view.image_points:
                cv2.circle(out, (round(p[0]), round(p[1])), 3, (0, 255, 0), 1, cv2.LINE_AA)
    y = 18
    for name, v in guide.progress(accepted).items():
        cv2.putText(out, name, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        cv2.rectangle(out, (60, y - 10), (60 + 100, y), (255, 255, 255), 1)
        colour = (0, 200, 0) if v >= 1 else (0, 200, 255)
        cv2.rectangle(out, (60, y - 10), (60 + round(100 * v), y), colour, -1)
        y += 16
    for line in lines:
        y += 4
        cv2.putText(out, line[:80], (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
        y += 14
    return out


class _Window:
    """An OpenCV window when a display and a GUI backend exist; otherwise nothing, said once."""

    def __init__(self, wanted: bool, say: Callable[[str], None]) -> None:
        self.on = False
        if not wanted:
            return
        if not display_available():
            say("--show: no display (DISPLAY is not set): running without a window")
            return
        try:
            cv2.namedWindow(_WINDOW, cv2.WINDOW_AUTOSIZE)
            self.on = True
        except cv2.error:
            say(
                "--show: this OpenCV has no GUI (opencv-python-headless?): running without a window"
            )

    def show(self, img: np.ndarray) -> str:
        """Show ``img``; return the key pressed (``""`` for none)."""
        if not self.on:
            return ""
        try:
            cv2.imshow(_WINDOW, img)
            k = cv2.waitKey(1) & 0xFF
        except cv2.error:
            self.on = False
            return ""
        return "" if k == 0xFF else chr(k)

    def close(self) -> None:
        if self.on:
            try:
                cv2.destroyWindow(_WINDOW)
                cv2.waitKey(1)
            except cv2.error:
                pass


def collect_views(
    source: FrameSource,
    board: Board,
    *,
    guided: bool = False,
    show: bool = False,
    max_views: int | None = None,
    min_views: int = guide.MIN_GUIDED_VIEWS,
    out: TextIO | None = None,
) -> Collected:
    """Keep the frames of ``source`` that add a still, sharp, new view of ``board`` (see the
    module docstring); with ``guided``, say what to do and stop once :func:`guide.sufficient`.
    Raises :class:`CalibrationError` when frame sizes change or no frame shows the board."""
    stream = out if out is not None else sys.stderr

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    det = Detector(board)
    views: list[View] = []
    feats: list[guide.ViewFeatures] = []
    misses: list[str] = []
    samples: list[tuple[str, np.ndarray]] = []
    skipped = {"moving": 0, "blurred": 0, "duplicate": 0}
    size: tuple[int, int] | None = None
    first: np.ndarray | None = None
    previous: View | None = None
    status = ""
    hint = ""
    n = 0
    stopped = "end"
    window = _Window(show and guided, say)
    if guided:
        say(f"reading {source.description}; looking for a {board.describe()}")
        hint = guide.next_hint(feats, min_views)
        say(f"next: {hint}")
    try:
        for name, img in source:
            n += 1
            h, w = img.shape[:2]
            if size is None:
                size = (w, h)
            elif size != (w, h):
                raise CalibrationError(
                    f"{name} is {w}x{h} but the first frame was {size[0]}x{size[1]}: the "
                    "camera changed resolution; all views must have the same size"
                )
            gray = to_gray(img)
            view = det.detect(gray, name)
            f = guide.view_features(view, size) if view is not None else None
            edge = guide.edge_width_px(gray, view) if view is not None else 0.0
            verdict = guide.judge(view, f, previous, feats, edge)
            previous = view
            if verdict == "no board":
                misses.append(name)
                if len(samples) < 4:
                    samples.append((name, gray))
            elif verdict == "accepted":
                assert view is not None and f is not None
                views.append(view)
                feats.append(f)
                if first is None:
                    first = img.copy()
            else:
                skipped[verdict] += 1
            if guided:
                if verdict == "accepted":
                    status = ""
                    say(f"view {len(views)} kept ({name}): {guide.bar_line(feats)}")
                    new_hint = guide.next_hint(feats, min_views)
                    if new_hint and new_hint != hint:
                        say(f"next: {new_hint}")
                    hint = new_hint
                else:
                    text = _STATUS.get(verdict) or f"already have a view like this: {hint}"
                    if text != status:
                        say(f"  ({text})")
                        status = text
                if window.on:
                    key = window.show(
                        annotate(img, view, board, feats, [status or verdict, f"next: {hint}"])
                    )
                    if key in ("q", "\x1b"):
                        stopped = "quit"
                        break
                if guide.sufficient(feats, min_views):
                    say(f"coverage is sufficient: calibrating with {len(views)} views")
                    stopped = "sufficient"
                    break
            if max_views is not None and len(views) >= max_views:
                if guided:
                    say(f"{len(views)} views (--max-views): calibrating")
                stopped = "max-views"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        if guided:
            say(f"interrupted: calibrating with the {len(views)} views kept")
    finally:
        window.close()
    if size is None:
        raise CalibrationError(f"{source.description}: no frames came from the source")
    if not views:
        if misses and len(misses) == n:
            raise CalibrationError(no_board_message(board, source.description, n, samples))
        raise CalibrationError(
            f"no usable view of the board in the {n} frames of {source.description} "
            f"(board moving in {skipped['moving']}, blurred in {skipped['blurred']}): "
            "hold the board still for a moment in each pose"
        )
    assert first is not None
    return Collected(
        detections=Detections(views, size, misses, first),
        features=feats,
        frames=n,
        skipped={"no board": len(misses), **skipped},
        stopped=stopped,
        dropped=source.dropped,
    )
