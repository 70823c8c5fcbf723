"""A synthetic camera that streams a moving test pattern, and a node that checks it arrived
intact.

The pattern is a deterministic function of the frame number (colour bars scrolling
horizontally, a grey ramp, the frame number drawn with OpenCV), so the checker recomputes
each frame's CRC-32 from the number alone and counts any frame that differs: an end-to-end
test of the transport that runs until the simulated rig replaces it as the default pipeline.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from edgefuse.envelope import Message
from edgefuse.node import Node

_BARS_BGR = np.array(
    [
        [255, 255, 255],
        [0, 255, 255],
        [255, 255, 0],
        [0, 255, 0],
        [255, 0, 255],
        [0, 0, 255],
        [255, 0, 0],
        [0, 0, 0],
    ],
    dtype=np.uint8,
)


def render_pattern(seq: int, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """Draw frame ``seq`` of the test pattern (bgr8, ``height`` x ``width``) into ``out``."""
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    cols = (np.arange(width) * len(_BARS_BGR) // width + seq // 4) % len(_BARS_BGR)
    bars_h = height * 2 // 3
    out[:bars_h] = _BARS_BGR[cols][None, :, :]
    ramp = ((np.arange(width) + 4 * seq) % 256).astype(np.uint8)
    out[bars_h:] = ramp[None, :, None]
    cv2.putText(
        out,
        f"edgefuse {seq:08d}",
        (16, bars_h - 16),
        cv2.FONT_HERSHEY_SIMPLEX,
        max(0.5, width / 640),
        (40, 40, 40),
        2,
        cv2.LINE_AA,
    )
    return out


def pattern_crc32(frame: np.ndarray) -> int:
    """CRC-32 of a frame's bytes (the checker compares it with the published one)."""
    return zlib.crc32(np.ascontiguousarray(frame).data)


@dataclass(frozen=True, kw_only=True)
class TestPatternParams:
    """Parameters of :class:`TestPatternNode`."""

    __test__ = False  # not a pytest class, despite the name

    width: int = 640
    height: int = 480
    rate_hz: float = 30.0
    #: Stop after this many frames (0: run until stopped).
    frames: int = 0

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 8192 and 16 <= self.height <= 8192):
            raise ValueError(
                f"width and height must be in 16..8192, got {self.width}x{self.height}"
            )
        if not 0 < self.rate_hz <= 10_000:
            raise ValueError(f"rate_hz must be in (0, 10000], got {self.rate_hz}")
        if self.frames < 0:
            raise ValueError(f"frames must be >= 0, got {self.frames}")


class TestPatternNode(Node):
    """Publishes ``image`` (bgr8) at ``rate_hz``, rendered in place into shared memory.

    ``t_sensor_ns`` is a sample counter divided by the rate, as a free-running sensor
    clock would give; ``meta.crc32`` lets a receiver verify the frame.
    """

    Params = TestPatternParams
    outputs = {"image": "bgr8"}
    __test__ = False  # not a pytest class, despite the name

    def setup(self) -> None:
        self.seq = 0
        self.period_ns = round(1e9 / self.params.rate_hz)
        self.every(1.0 / self.params.rate_hz, self.tick)

    def tick(self) -> None:
        p = self.params
        frame = self.loan("image", (p.height, p.width, 3), np.uint8)
        render_pattern(self.seq, p.width, p.height, out=frame)
        self.publish(
            "image",
            [frame],
            t_sensor_ns=self.seq * self.period_ns,
            t_host_ns=time.monotonic_ns(),
            frame_id="camera_optical",
            meta={"crc32": pattern_crc32(frame), "pattern_seq": self.seq},
        )
        self.seq += 1
        if p.frames and self.seq >= p.frames:
            self.stop()


@dataclass(frozen=True, kw_only=True)
class PatternCheckParams:
    """Parameters of :class:`PatternCheckNode`."""

    #: Log a one-line summary this often (seconds; 0 = never).
    log_every_s: float = 5.0


class PatternCheckNode(Node):
    """Receives test-pattern frames and verifies every one against its CRC-32 and its number.

    A frame that fails is counted as a ``corrupt_frame`` error (shown in the status table).
    """

    Params = PatternCheckParams
    inputs = ("image",)

    def setup(self) -> None:
        self.ok = 0
        self.corrupt = 0
        if self.params.log_every_s > 0:
            self.every(self.params.log_every_s, self._log)

    def on_message(self, port: str, msg: Message) -> None:
        frame = msg.arrays[0]
        crc = pattern_crc32(frame)
        expected = render_pattern(
            int(msg.header.meta.get("pattern_seq", -1)), frame.shape[1], frame.shape[0]
        )
        if crc != msg.header.meta.get("crc32") or not np.array_equal(frame, expected):
            self.corrupt += 1
            raise ValueError(f"frame {msg.header.seq} differs from the pattern it claims to be")
        self.ok += 1

    def _log(self) -> None:
        self.log.info("%d frames intact, %d corrupt", self.ok, self.corrupt)
