"""PNG rendering for the image page: the stored radiograph and one tinted layer per structure.

The browser stacks the layers in an SVG whose viewBox is the source image's pixel grid, so
masks and the findings' geometry (both in source pixels, see qcnode.records) line up at any
zoom; toggling a structure only hides a layer, nothing is re-rendered.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from qcnode.imaging import decode

MAX_SIDE = 1600  # display resolution cap; the SVG scales layers back to source pixels

# One colour per structure channel (RGB); left/right pairs share a hue family.
STRUCTURE_COLOURS: Mapping[str, tuple[int, int, int]] = {
    "lung_right": (0, 114, 178),
    "lung_left": (86, 180, 233),
    "heart": (213, 94, 0),
    "clavicle_right": (0, 158, 115),
    "clavicle_left": (102, 204, 153),
    "scapula_right": (204, 121, 167),
    "scapula_left": (230, 170, 205),
    "spine": (230, 159, 0),
    "trachea": (240, 228, 66),
    "humerus_right": (153, 102, 51),
    "humerus_left": (204, 153, 102),
    "sternum": (255, 99, 71),
    "ribs_posterior_right": (148, 103, 189),
    "ribs_posterior_left": (197, 176, 213),
    "body": (160, 160, 160),
    "field": (255, 255, 255),
}


def _scale(rows: int, columns: int) -> tuple[int, int]:
    f = min(1.0, MAX_SIDE / max(rows, columns))
    return max(1, round(columns * f)), max(1, round(rows * f))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def render_image(path: Path) -> bytes:
    """The stored DICOM as an 8-bit greyscale PNG (VOI applied, MONOCHROME1 inverted)."""
    decoded = decode(path)
    pixels = np.clip(decoded.pixels, 0.0, 1.0)
    img = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8), mode="L")
    return _png(img.resize(_scale(*pixels.shape), Image.Resampling.LANCZOS))


def render_mask(mask: npt.NDArray[np.bool_], structure: str, *, alpha: int = 110) -> bytes:
    """One structure as a transparent PNG: tinted inside, a solid outline at the border."""
    rows, columns = mask.shape
    size = _scale(rows, columns)
    small = (
        np.asarray(
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(
                size, Image.Resampling.NEAREST
            )
        )
        > 127
    )
    inner = np.zeros_like(small)
    inner[1:-1, 1:-1] = (
        small[1:-1, 1:-1] & small[:-2, 1:-1] & small[2:, 1:-1] & small[1:-1, :-2] & small[1:-1, 2:]
    )
    edge = small & ~inner
    rgba = np.zeros((*small.shape, 4), dtype=np.uint8)
    rgba[..., :3] = STRUCTURE_COLOURS.get(structure, (255, 255, 0))
    rgba[..., 3] = np.where(edge, 255, np.where(small, alpha, 0)).astype(np.uint8)
    return _png(Image.fromarray(rgba, mode="RGBA"))


def load_masks(path: Path) -> dict[str, npt.NDArray[np.bool_]]:
    """Read masks stored as an .npz of boolean (or bit-packed) arrays keyed by structure."""
    out: dict[str, npt.NDArray[np.bool_]] = {}
    with np.load(path, allow_pickle=False) as npz:
        shape = tuple(int(v) for v in npz["shape"]) if "shape" in npz.files else None
        for name in npz.files:
            if name not in STRUCTURE_COLOURS:
                continue
            arr = npz[name]
            if arr.dtype == np.uint8 and shape is not None and arr.ndim == 1:
                arr = np.unpackbits(arr, count=shape[0] * shape[1]).reshape(shape)
            out[name] = arr.astype(bool)
    return out
