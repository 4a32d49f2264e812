"""Geometry shared by SR, GSPS and the overlay: finding shapes and mask contours.

Records use pixel-centre coordinates (top-left pixel centre = (0, 0)); DICOM SCOORD and GSPS
PIXEL annotations use the top-left *corner* of the top-left pixel as (0, 0), so every
coordinate going into an object is shifted by half a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from PIL import Image
from skimage import measure

from qcnode.records import BoolMask, Geometry

Points = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Shape:
    """A drawable shape in DICOM image coordinates (column, row; pixel corner origin)."""

    graphic_type: str  # POINT, MULTIPOINT or POLYLINE (closed when first == last)
    points: Points  # (n, 2)
    label: str = ""


def to_shapes(geometry: Geometry, *, rows: int, columns: int) -> list[Shape]:
    """Convert one record geometry to DICOM shapes, clipped to the image.

    Degenerate shapes turn into the simpler kind (a one-point polyline is a point);
    a polygon becomes a closed POLYLINE. Empty geometry gives nothing.
    """
    pts = np.asarray(geometry.points, dtype=np.float64).reshape(-1, 2) + 0.5
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return []
    pts[:, 0] = np.clip(pts[:, 0], 0.0, float(columns))
    pts[:, 1] = np.clip(pts[:, 1], 0.0, float(rows))
    pts32 = pts.astype(np.float32)
    if geometry.kind == "point" or len(pts32) == 1:
        if len(pts32) == 1:
            return [Shape("POINT", pts32, geometry.label)]
        return [Shape("MULTIPOINT", pts32, geometry.label)]
    if geometry.kind == "polygon" and len(pts32) >= 3:
        if not np.array_equal(pts32[0], pts32[-1]):
            pts32 = np.vstack([pts32, pts32[:1]])
        return [Shape("POLYLINE", pts32, geometry.label)]
    return [Shape("POLYLINE", pts32, geometry.label)]


# Outlines are traced on a grid of at most this many pixels on its long side. The masks
# come from the model's 256-pixel canvas (bilinear logits, so smooth within each model
# pixel): 512 still has two grid pixels per model pixel, and tracing a 1024-px overlay's
# or a 2k radiograph's outlines there costs half (tracing was the overlay's largest cost).
TRACE_GRID = 512


def trace_grid(size: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """(width, height) of the grid to trace the outlines of a ``size`` picture on, and
    picture pixels per grid pixel (1.0 when the picture is small enough)."""
    factor = max(1.0, max(size) / TRACE_GRID)
    grid = (max(1, round(size[0] / factor)), max(1, round(size[1] / factor)))
    return grid, size[1] / grid[1]


def mask_contours(
    mask: BoolMask | npt.NDArray[np.float32],
    *,
    scale: float = 1.0,
    min_points: int = 8,
    tolerance: float = 0.75,
    offset: tuple[int, int] = (0, 0),
) -> list[Points]:
    """Closed outlines of a mask, in pixel-corner coordinates of a ``scale``-d image.

    ``mask`` is boolean, or a float coverage map in [0, 1] (a mask resampled to another size);
    ``offset`` is its top-left (x, y) in the grid when it is a window (``coverage_window``).

    Traced with scikit-image at the 0.5 level (outlines run halfway between inside and
    outside pixel centres) and simplified (Douglas-Peucker, ``tolerance`` pixels of the
    scaled image) to keep GSPS and drawing small. Specks under ``min_points`` are dropped.
    Only the mask's bounding box (plus a pixel) is traced, and GEOS (shapely) simplifies:
    scikit-image's Python Douglas-Peucker took 5 ms for one lung outline, shapely 0.05 ms.
    """
    if mask.ndim != 2 or mask.size == 0:
        return []
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    r0, c0 = int(rows[0]), int(cols[0])
    window = mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1]
    # a zero border: closed lines even at the image border (np.pad took 4 ms for 1 M pixels;
    # float64 is what find_contours works in)
    padded = np.zeros((window.shape[0] + 2, window.shape[1] + 2), dtype=np.float64)
    padded[1:-1, 1:-1] = window
    out: list[Points] = []
    for line in measure.find_contours(padded, 0.5):
        if len(line) < min_points:
            continue
        # (row, col) of padded window pixel centres -> (x, y) pixel corners of the image
        x0, y0 = offset[0] + c0, offset[1] + r0
        xy = (line[:, ::-1] + (x0 - 1.0 + 0.5, y0 - 1.0 + 0.5)) * scale
        simple = shapely.simplify(shapely.linestrings(xy), tolerance, preserve_topology=False)
        xy = shapely.get_coordinates(simple)
        if len(xy) >= 4:
            out.append(xy.astype(np.float32))
    return out


def coverage_window(
    mask: BoolMask, size: tuple[int, int]
) -> tuple[npt.NDArray[np.float32], tuple[int, int]]:
    """The part of ``coverage(mask, size)`` around the mask and its top-left (x, y).

    Everything outside the window is 0: callers that draw or trace work on the window
    alone instead of scanning a whole grid per structure. Empty mask: a 0x0 window.
    """
    width, height = size
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return np.zeros((0, 0), dtype=np.float32), (0, 0)
    rows, cols = mask.shape
    sy, sx = rows / height, cols / width  # source pixels per grid pixel
    # grid pixels whose filter footprint can reach the box (one more for bilinear support)
    y0, y1 = max(0, int(ys[0] / sy) - 2), min(height, int((ys[-1] + 1) / sy) + 3)
    x0, x1 = max(0, int(xs[0] / sx) - 2), min(width, int((xs[-1] + 1) / sx) + 3)
    # the source rows/columns those pixels read, with a margin for the filter's support
    r0, r1 = max(0, int(y0 * sy) - 2), min(rows, int(np.ceil(y1 * sy)) + 2)
    c0, c1 = max(0, int(x0 * sx) - 2), min(cols, int(np.ceil(x1 * sx)) + 2)
    # 0/255 in one pass (astype then * 255 made two full-size temporaries)
    img = Image.fromarray(np.multiply(mask[r0:r1, c0:c1], np.uint8(255), dtype=np.uint8))
    shrink = height <= rows
    box = (x0 * sx - c0, y0 * sy - r0, x1 * sx - c0, y1 * sy - r0)
    img = img.resize(
        (x1 - x0, y1 - y0),
        Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR,
        box=box,
    )
    return np.asarray(img, dtype=np.float32) / 255.0, (x0, y0)


def coverage(mask: BoolMask, size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Fraction of each pixel of a (width, height) grid that ``mask`` covers, in [0, 1].

    Tracing outlines at 0.5 on a smaller coverage map is much faster than on the mask
    and gives smooth (sub-pixel) lines. Only the grid pixels near the mask's bounding box
    are resampled (``coverage_window``): most structures cover a small part of a radiograph
    and this runs for every structure of every image (8x cheaper on a 2k radiograph). The
    values equal a resample of the whole mask up to where PIL rounds the filter windows
    (at most two source pixels' weight).
    """
    width, height = size
    out = np.zeros((height, width), dtype=np.float32)
    window, (x0, y0) = coverage_window(mask, size)
    out[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out
