"""Mask helpers on the working grid: boxes, morphology, connected parts, landmarks.

Pure functions of a boolean mask (no scale, no subject), shared by ``geometry.Subject`` and
every rule family. Most run on the mask's bounding box rather than the whole image: the
same pixels as the ``scipy.ndimage`` / ``numpy`` call they stand for, at a fraction of the
cost (the rules stage runs on every film).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qcnode.records import BoolMask

Point = tuple[float, float]  # (row, col) on the working grid


def bbox_slices(mask: BoolMask, pad: tuple[int, int]) -> tuple[slice, slice]:
    """The mask's bounding box grown by ``pad`` (rows, columns), clipped to the image; the
    whole image for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(0, mask.shape[0]), slice(0, mask.shape[1])
    return (
        slice(max(0, int(rows[0]) - pad[0]), min(mask.shape[0], int(rows[-1]) + 1 + pad[0])),
        slice(max(0, int(cols[0]) - pad[1]), min(mask.shape[1], int(cols[-1]) + 1 + pad[1])),
    )


def dilate(
    mask: BoolMask, iterations: int, structure: npt.NDArray[np.bool_] | None = None
) -> BoolMask:
    """``ndimage.binary_dilation(mask, structure, iterations)`` (a 3×3 structure; None: the
    4-connected cross) run on the mask's box grown by its reach: the same pixels, at a
    fraction of the cost."""
    box = bbox_slices(mask, (iterations + 1, iterations + 1))
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_dilation(mask[box], structure, iterations=iterations)
    return out


def erode(mask: BoolMask, iterations: int) -> BoolMask:
    """``ndimage.binary_erosion(mask, iterations=...)`` run on the mask's box (grown by a
    pixel): outside it there is nothing to erode."""
    box = bbox_slices(mask, (1, 1))
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_erosion(mask[box], iterations=iterations)
    return out


def _parts(mask: BoolMask) -> tuple[tuple[slice, slice], npt.NDArray[np.int32], int]:
    """8-connected parts labelled on the mask's bounding box (cheaper than the image)."""
    box = bbox_slices(mask, (0, 0))
    labels, n = ndimage.label(mask[box], structure=np.ones((3, 3), dtype=bool))
    return box, labels, int(n)


def _part_sizes(
    mask: BoolMask,
) -> tuple[tuple[slice, slice], npt.NDArray[np.int32], npt.NDArray[np.intp]] | None:
    """The box, labels and pixel count per label (background 0) of a mask in two or more
    parts; None for an empty or one-part mask, which the callers return as it is."""
    if not mask.any():
        return None
    box, labels, n = _parts(mask)
    if n <= 1:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return box, labels, sizes


def despeckle(mask: BoolMask, fraction: float = 0.05) -> BoolMask:
    """Drop parts smaller than ``fraction`` of the largest part (model speckle), keeping
    genuine pieces such as a lung split by a shutter."""
    parts = _part_sizes(mask)
    if parts is None:
        return mask
    box, labels, sizes = parts
    keep = sizes >= fraction * sizes.max()
    out = np.zeros_like(mask)
    out[box] = keep[labels]
    return out


def largest_component(mask: BoolMask) -> BoolMask:
    """The largest 8-connected part: model speckle elsewhere does not move landmarks."""
    parts = _part_sizes(mask)
    if parts is None:
        return mask
    box, labels, sizes = parts
    out = np.zeros_like(mask)
    out[box] = labels == int(np.argmax(sizes))
    return out


def _pixels(mask: BoolMask) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``np.nonzero(mask)`` (the same arrays) searched on the mask's box only."""
    box = bbox_slices(mask, (0, 0))
    rr, cc = np.nonzero(mask[box])
    return rr + box[0].start, cc + box[1].start


def centroid(mask: BoolMask) -> Point | None:
    if not mask.any():
        return None
    rr, cc = _pixels(mask)
    return (float(rr.mean()), float(cc.mean()))


def extreme(mask: BoolMask, dr: float, dc: float, sy: float = 1.0, sx: float = 1.0) -> Point | None:
    """The mask pixel farthest along direction (dr, dc) in mm; ties → their mean position.

    ``extreme(m, -1, 0)`` is the topmost point (an apex), ``extreme(m, 1, 1)`` the lowest
    pixel towards +columns at 45° (a costophrenic angle on the image-right side).
    """
    if not mask.any():
        return None
    rr, cc = _pixels(mask)
    score = rr * (dr * sy) + cc * (dc * sx)
    best = score >= score.max() - 1e-9
    return (float(rr[best].mean()), float(cc[best].mean()))


def runs(profile: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the True runs of a 1-D boolean profile."""
    p = np.concatenate(([False], profile.astype(bool), [False]))
    d = np.diff(p.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    stops = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def row_extent(mask: BoolMask) -> tuple[int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    return None if rows.size == 0 else (int(rows[0]), int(rows[-1]))


def col_extent(mask: BoolMask) -> tuple[int, int] | None:
    cols = np.flatnonzero(mask.any(axis=0))
    return None if cols.size == 0 else (int(cols[0]), int(cols[-1]))
