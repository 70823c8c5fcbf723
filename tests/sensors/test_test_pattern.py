"""The test pattern is deterministic, so a receiver can verify every frame."""

from __future__ import annotations

import numpy as np
import pytest

from edgefuse.sensors.test_pattern import TestPatternParams, pattern_crc32, render_pattern


def test_pattern_is_deterministic_and_changes_every_frame() -> None:
    a = render_pattern(7, 320, 240)
    b = render_pattern(7, 320, 240, out=np.zeros((240, 320, 3), np.uint8))
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and pattern_crc32(a) == pattern_crc32(b)
    assert pattern_crc32(render_pattern(8, 320, 240)) != pattern_crc32(a)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 8  # bars, ramp and text, not a flat fill


def test_single_bit_flip_changes_crc() -> None:
    a = render_pattern(3, 64, 48)
    crc = pattern_crc32(a)
    a[10, 10, 1] ^= 1
    assert pattern_crc32(a) != crc


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="rate_hz"):
        TestPatternParams(rate_hz=0)
    with pytest.raises(ValueError, match="width and height"):
        TestPatternParams(width=4)
