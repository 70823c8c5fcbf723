"""Synthetic board views: a board image rendered by OpenCV, seen by a known pinhole camera."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgefuse.calib.boards import Board

K_TRUE = np.array([[600.0, 0.0, 322.0], [0.0, 600.0, 238.0], [0.0, 0.0, 1.0]])
SIZE = (640, 480)


def board_image(board: Board, px_per_square: int = 24) -> tuple[np.ndarray, float]:
    """The board's picture (grey) with a white margin, and metres per pixel of it."""
    if board.kind == "charuco":
        w, h = board.cols * px_per_square, board.rows * px_per_square
        img = board.charuco().generateImage((w, h), marginSize=0)
    else:
        sq = px_per_square
        img = np.full(((board.rows + 1) * sq, (board.cols + 1) * sq), 255, np.uint8)
        for r in range(board.rows + 1):
            for c in range(board.cols + 1):
                if (r + c) % 2 == 0:
                    img[r * sq : (r + 1) * sq, c * sq : (c + 1) * sq] = 0
    m = px_per_square
    img = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT, value=255)
    return img, board.square_m / px_per_square


def render(board: Board, rvec: np.ndarray, tvec: np.ndarray, K: np.ndarray = K_TRUE) -> np.ndarray:
    """The board seen from pose (rvec, tvec) of its image's top-left corner, 640x480 grey."""
    # Texture about as fine as the nearest view's pixels: no aliasing from downsampling.
    img, m_per_px = board_image(board, px_per_square=max(12, round(board.square_m * 1000)))
    R = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    # board-image pixel (u, v) -> board plane (u, v) * m_per_px -> camera -> pixels
    H = K @ np.column_stack([R[:, 0] * m_per_px, R[:, 1] * m_per_px, np.asarray(tvec, float)])
    out = cv2.warpPerspective(img, H, SIZE, flags=cv2.INTER_LINEAR, borderValue=(128,))
    return cv2.GaussianBlur(out, (3, 3), 0.6)


def poses(n: int, seed: int = 0, tilt_deg: float = 30.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` board poses about 0.5-0.8 m away, tilted up to ``tilt_deg`` both ways."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ax, ay = np.radians(rng.uniform(-tilt_deg, tilt_deg, 2))
        rvec = np.array([ax, ay, rng.uniform(-0.2, 0.2)])
        z = rng.uniform(0.5, 0.8)
        out.append((rvec, np.array([rng.uniform(-0.2, 0.0), rng.uniform(-0.15, 0.0), z])))
    return out


def write_views(board: Board, folder: Path, views: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Render ``views`` to ``folder/view_NN.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (r, t) in enumerate(views):
        cv2.imwrite(str(folder / f"view_{i:02d}.png"), render(board, r, t))
    return folder
