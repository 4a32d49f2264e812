"""The rules' fast paths equal the whole-image scipy operations they replace, bit for bit
(docs/RULES.md "Session 10 (helper): rules speed"): findings must not move with them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from qcnode.rules.exposure import gradient_maxima
from qcnode.rules.geometry import _range3
from qcnode.rules.masks import dilate, erode, extreme


def _masks() -> list[npt.NDArray[np.bool_]]:
    """Empty, full, a speckled blob anywhere (touching the borders too), a single pixel."""
    rng = np.random.default_rng(7)
    out = [np.zeros((12, 9), bool), np.ones((12, 9), bool)]
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(8, 40, 2))
        m = np.zeros((h, w), bool)
        r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        m[r : r + int(rng.integers(1, h)), c : c + int(rng.integers(1, w))] = True
        out.append(m & (rng.random((h, w)) < 0.85))
    dot = np.zeros((20, 20), bool)
    dot[0, 19] = True
    return [*out, dot]


@pytest.mark.parametrize("iterations", [1, 2, 6])
def test_dilate_and_erode_equal_ndimage(iterations: int) -> None:
    square = np.ones((3, 3), bool)
    for m in _masks():
        want = ndimage.binary_dilation(m, iterations=iterations)
        assert np.array_equal(dilate(m, iterations), want)
        want_sq = ndimage.binary_dilation(m, square, iterations=iterations)
        assert np.array_equal(dilate(m, iterations, square), want_sq)
        want_er = ndimage.binary_erosion(m, iterations=iterations)
        assert np.array_equal(erode(m, iterations), want_er)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_range3_equals_max_minus_min_filter(dtype: type) -> None:
    rng = np.random.default_rng(3)
    for shape in [(40, 31), (2, 5), (9, 1)]:
        px: npt.NDArray[np.floating] = rng.random(shape).astype(dtype)
        px[::4] = 1.0  # ties
        for axes, size in (((1,), (1, 3)), ((0,), (3, 1)), ((0, 1), (3, 3))):
            want = ndimage.maximum_filter(px, size) - ndimage.minimum_filter(px, size)
            got = _range3(px, axes)
            assert got.dtype == want.dtype
            assert np.array_equal(got, want), (shape, axes)


def test_gradient_maxima_on_a_ramp_edge() -> None:
    """A vertical blurred edge: the maxima are the column of the steepest slope, and they
    equal the np.roll formulation (wrap-around at the borders included)."""
    img = ndimage.gaussian_filter(np.repeat([[0.0] * 10 + [1.0] * 10], 16, axis=0), 1.5)
    gy, gx = ndimage.sobel(img, axis=0), ndimage.sobel(img, axis=1)
    mag = np.hypot(gx, gy)
    peak = gradient_maxima(mag, gy, gx)
    strong = np.flatnonzero(peak[8] & (mag[8] > 0.1))  # flat zero-gradient pixels tie
    assert strong.size and set(strong.tolist()) <= {9, 10}  # the step: between columns 9, 10
    ang = np.degrees(np.arctan2(gy, gx)) % 180.0
    want = np.zeros(mag.shape, bool)
    for lo, hi, dy, dx in (
        (0.0, 22.5, 0, 1),
        (157.5, 180.0, 0, 1),
        (22.5, 67.5, 1, 1),
        (67.5, 112.5, 1, 0),
        (112.5, 157.5, 1, -1),
    ):
        fwd = np.roll(mag, (dy, dx), axis=(0, 1))
        back = np.roll(mag, (-dy, -dx), axis=(0, 1))
        want |= (ang >= lo) & (ang < hi) & (mag >= fwd) & (mag >= back)
    assert np.array_equal(peak, want)


def test_extreme_on_a_box_offset_mask() -> None:
    m = np.zeros((30, 30), bool)
    m[10:20, 5:9] = True
    m[4, 7] = True
    assert extreme(m, -1.0, 0.0) == (4.0, 7.0)
    assert extreme(m, 1.0, 0.0) == (19.0, 6.5)
