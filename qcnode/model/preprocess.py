"""Preprocessing shared by training and inference: one function so the two cannot drift.

A DecodedImage (VOI/modality LUT applied, MONOCHROME2 sense, [0, 1]) is resampled to a fixed
physical scale (``SPACING_MM`` per input pixel, aspect kept, anti-aliased), centred on a
``INPUT_SIZE`` square canvas, and its intensities standardised on the image region only (1st
and 99th percentile -> 0 and 1), so that detector size, pixel pitch and vendor tone curve
matter as little as possible. A field larger than the canvas is shrunk to fit (the scale
then grows and is recorded in the Frame).

When the header has no usable spacing the scale is first guessed from the image size (a
chest detector is about 43 cm on its long side) and then refined from anatomy: see
``spacing_from_lung_width``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

INPUT_SIZE = 256
SPACING_MM = 1.75  # 256 px x 1.75 mm = 448 mm: a 43 x 43 cm detector fits
ASSUMED_DETECTOR_MM = 430.0  # long side of a chest detector, the first guess without spacing
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0


@dataclass(frozen=True)
class Frame:
    """Where a source image sits on the input canvas.

    Input pixel (y, x) covers source rows ``(y - top) * rows / height`` onward; ``spacing_mm``
    is the (row, column) source spacing used and ``input_spacing_mm`` the canvas's.
    """

    rows: int
    columns: int
    top: int
    left: int
    height: int
    width: int
    spacing_mm: tuple[float, float]
    input_spacing_mm: float

    @property
    def valid(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def guessed_spacing(rows: int, columns: int) -> tuple[float, float]:
    """First guess without a header spacing: the long side spans a 43 cm detector."""
    s = ASSUMED_DETECTOR_MM / max(rows, columns, 1)
    return (s, s)


def plan_frame(
    rows: int, columns: int, spacing_mm: tuple[float, float], *, size: int = INPUT_SIZE
) -> Frame:
    """Canvas geometry for an image of ``rows`` x ``columns`` at ``spacing_mm``."""
    sr, sc = spacing_mm
    scale = max(SPACING_MM, rows * sr / size, columns * sc / size)
    height = min(size, max(1, round(rows * sr / scale)))
    width = min(size, max(1, round(columns * sc / scale)))
    return Frame(
        rows=rows,
        columns=columns,
        top=(size - height) // 2,
        left=(size - width) // 2,
        height=height,
        width=width,
        spacing_mm=(float(sr), float(sc)),
        input_spacing_mm=float(scale),
    )


def resample(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Anti-aliased resize of a (C, H, W) float tensor; integer box-averaging first for speed."""
    h, w = pixels.shape[-2:]
    k = max(1, min(h // max(height, 1), w // max(width, 1)) // 2)
    x = pixels[None]
    if k > 1:  # cheap exact box filter for most of the reduction, bilinear+antialias for the rest
        x = F.avg_pool2d(x, k, stride=k, ceil_mode=True)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x[0]


def to_canvas(
    pixels: np.ndarray, spacing_mm: tuple[float, float], *, size: int = INPUT_SIZE
) -> tuple[torch.Tensor, Frame]:
    """Raw [0, 1] canvas (1, size, size) with the image placed at fixed physical scale."""
    rows, columns = pixels.shape
    frame = plan_frame(rows, columns, spacing_mm, size=size)
    src = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
    canvas = torch.zeros((1, size, size), dtype=torch.float32)
    canvas[(slice(None), *frame.valid)] = resample(src, frame.height, frame.width)
    return canvas, frame


def percentiles(values: torch.Tensor, fractions: tuple[float, ...]) -> list[float]:
    """``torch.quantile(values, fractions)`` (linear interpolation) from order statistics:
    the two neighbours of each position from one partial sort (``topk`` from the nearer end)
    instead of a full sort, several times cheaper, and it runs once per image in training and
    inference."""
    n = values.numel()
    out = []
    for q in fractions:
        pos = q * (n - 1)
        k = math.floor(pos)
        if k < n // 2:  # order statistics k and k + 1: the last of the k + 2 smallest
            near = torch.topk(values, min(k + 2, n), largest=False).values[k:]
        else:  # the last of the n - k largest (topk sorts them descending)
            near = torch.topk(values, n - k).values.flip(0)[:2]
        a = float(near[0])
        b = float(near[1]) if k + 1 < n and pos > k else a
        out.append(a + (b - a) * (pos - k))
    return out


def standardise(canvas: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image: the 1st/99th percentiles of the valid region map to 0/1; outside is 0.

    ``canvas`` (B, 1, H, W) raw intensities, ``valid`` (B, 1, H, W) bool. Used verbatim by
    training (after augmentation) and inference.
    """
    out = torch.zeros_like(canvas)
    for i in range(canvas.shape[0]):
        values = canvas[i][valid[i]]
        if values.numel() < 16:
            continue
        if values.numel() > 65536:  # a stride sample suffices (and keeps results as before)
            values = values[:: values.numel() // 65536 + 1]
        lo, hi = percentiles(values, (LOW_PERCENTILE / 100.0, HIGH_PERCENTILE / 100.0))
        scaled = ((canvas[i] - lo) / max(hi - lo, 1e-3)).clamp(-0.5, 1.5)
        out[i] = torch.where(valid[i], scaled, torch.zeros_like(scaled))
    return out


def valid_mask(frame: Frame, *, size: int = INPUT_SIZE) -> torch.Tensor:
    mask = torch.zeros((1, size, size), dtype=torch.bool)
    mask[(slice(None), *frame.valid)] = True
    return mask


def prepare(
    pixels: np.ndarray, spacing_mm: tuple[float, float], *, size: int = INPUT_SIZE
) -> tuple[torch.Tensor, Frame]:
    """Network input (1, size, size) for one image, and its Frame."""
    canvas, frame = to_canvas(pixels, spacing_mm, size=size)
    return standardise(canvas[None], valid_mask(frame, size=size)[None])[0], frame


def masks_to_canvas(masks: np.ndarray, frame: Frame, *, size: int = INPUT_SIZE) -> torch.Tensor:
    """Training targets: (C, rows, cols) bool masks -> (C, size, size) float area fractions."""
    src = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
    out = torch.zeros((src.shape[0], size, size), dtype=torch.float32)
    out[(slice(None), *frame.valid)] = resample(src, frame.height, frame.width)
    return out


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source indices and weights per output index (torch, align_corners=False)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


_STRIP_VALUES = 1 << 17  # floats per strip of logits_to_source: 512 KiB


def logits_to_source(logits: torch.Tensor, frame: Frame) -> np.ndarray:
    """(C, size, size) mask logits -> (C, rows, cols) bool masks in source pixels.

    Logits (not probabilities or binary masks) are interpolated bilinearly so that contours
    stay smooth when the source is ten times finer than the canvas. Only the rows/columns
    that can turn positive are computed (a bilinear value is positive only next to a positive
    canvas pixel), which makes a 3000 x 3000 source affordable.
    """
    crop = logits[(slice(None), *frame.valid)].numpy()
    out = np.zeros((crop.shape[0], frame.rows, frame.columns), dtype=bool)
    y0, y1, wy = _axis(crop.shape[1], frame.rows)
    x0, x1, wx = _axis(crop.shape[2], frame.columns)
    vy, vx = (1 - wy)[:, None], 1 - wx
    wy = wy[:, None]  # row weights as a column, to broadcast over the columns
    pos: np.ndarray = np.greater(crop, 0)  # all channels at once, not one call each
    pos_rows: np.ndarray = np.logical_or.reduce(pos, axis=2)
    pos_cols: np.ndarray = np.logical_or.reduce(pos, axis=1)
    for c in np.flatnonzero(pos_rows.any(axis=1)):
        rows, cols = np.flatnonzero(pos_rows[c]), np.flatnonzero(pos_cols[c])
        # output indices whose two source neighbours reach into the positive bounding box
        r = np.flatnonzero((y1 >= rows[0]) & (y0 <= rows[-1]))
        k = np.flatnonzero((x1 >= cols[0]) & (x0 <= cols[-1]))
        # rows, then columns: the same float32 products and sums as ever (bit-identical
        # masks), on the canvas columns that k reads only, in strips of output rows whose
        # temporaries stay in the cache (a large source's whole block would not)
        lo = x0[k[0]]
        src = crop[c, :, lo : x1[k[-1]] + 1]
        left_cols, right_cols = x0[k] - lo, x1[k] - lo
        step = max(1, _STRIP_VALUES // k.size)
        for start in range(0, r.size, step):
            rs = r[start : start + step]
            a = src[y0[rs]] * vy[rs] + src[y1[rs]] * wy[rs]
            block = a[:, left_cols]
            block *= vx[k]
            right = a[:, right_cols]
            right *= wx[k]
            block += right
            np.greater(block, 0, out=out[c, rs[0] : rs[-1] + 1, k[0] : k[-1] + 1])
    return out


def spacing_from_lung_width(
    lung_width_px: float, frame: Frame, reference_width_mm: float
) -> tuple[float, float] | None:
    """Anatomy-based spacing: scale the guess so the lungs span the reference width.

    ``lung_width_px`` is the lungs' extent along the image columns on the canvas. Returns the
    corrected (row, column) source spacing, or None when the lungs are too small to trust.
    """
    if lung_width_px < 20:
        return None
    measured_mm = lung_width_px * frame.input_spacing_mm
    factor = reference_width_mm / measured_mm
    sr, sc = frame.spacing_mm
    return (sr * factor, sc * factor)
