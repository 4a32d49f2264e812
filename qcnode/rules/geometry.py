"""Measurement helpers shared by the rule families: the working grid, margins, landmarks.

Rules run on a *working grid* of about ``WORK_MM`` per pixel: source pixels are averaged in
stride×stride blocks (so that noise and contrast mean the same on a 0.1 mm and a 1 mm
detector) and masks are sampled at the block centres. A 3000 px detector image becomes
~430 px: the whole rule set takes tens of milliseconds and every distance stays within half a
millimetre. Landmarks are mapped back to source pixels for the finding geometry. The pure
mask helpers (boxes, morphology, parts, extremes) live in ``qcnode.rules.masks``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import measure

from qcnode.records import BoolMask, DecodedImage, FloatImage, Geometry, Prediction, View
from qcnode.rules.masks import Point, bbox_slices, centroid, despeckle, dilate, largest_component

WORK_MM = 1.0  # target working pixel size (mm)
SIDES4 = ("top", "bottom", "left", "right")
MIN_GRID_PX = 8  # never average a film down to fewer working pixels than this per side


def _valid_spacing(spacing: tuple[float, float] | None) -> bool:
    return (
        spacing is not None
        and all(math.isfinite(v) and v > 0 for v in spacing)
        and len(spacing) == 2
    )


def anatomy_spacing(
    masks: Mapping[str, BoolMask], view: View, lung_span_mm: float, lung_depth_mm: float
) -> float | None:
    """mm per pixel from the lungs' horizontal extent and a population mean.

    Frontal: both lungs span about ``lung_span_mm`` from one lateral border to the other;
    lateral: the superimposed lungs are about ``lung_depth_mm`` deep. Used when the header
    has no spacing, and to catch a header spacing that is off by a large factor.
    """
    right, left = masks.get("lung_right"), masks.get("lung_left")
    if right is None or left is None:
        return None
    cols = np.flatnonzero((right | left).any(axis=0))
    if cols.size < 10:
        return None
    reference = lung_depth_mm if view is View.LATERAL else lung_span_mm
    return reference / float(cols[-1] - cols[0] + 1)


@dataclass(frozen=True, eq=False)
class Subject:
    """One image as the rules see it: masks and pixels on the working grid, mm per pixel."""

    image: DecodedImage
    view: View
    masks: Mapping[str, BoolMask]
    pixels: FloatImage
    stride: int
    sy: float  # mm per working pixel, rows
    sx: float  # mm per working pixel, columns
    # "header", "model" (the predictor's estimate), "anatomy", or "anatomy_override" (the
    # header spacing disagreed with the anatomy by more than the tolerance)
    spacing_source: str
    anatomy_mm: float | None = None  # the anatomy-based spacing estimate (source pixels)
    # how the film was found: "upright", "mirrored", "upside_down" (rotated 180°) or
    # "flipped" (top–bottom); masks and pixels here are turned back to upright
    orientation: str = "upright"
    # the axes along which ``build`` turned the working grid back upright (``src`` turns
    # points back); () when the film hung upright or came already turned back
    turned: tuple[int, ...] = ()
    language: str = "en"
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        image: DecodedImage,
        prediction: Prediction,
        *,
        language: str = "en",
        lung_span_mm: float = 260.0,
        lung_depth_mm: float = 180.0,
        tolerance: float = 1.6,
        heart_offset_mm: float = 5.0,
        heart_spine_mm: float = 0.0,
        work_mm: float = WORK_MM,
        shutter: ShutterSpec | None = None,
        orientation: str | None = None,
    ) -> Subject:
        """Choose the scale: the header's, unless anatomy says it is off by > ``tolerance``×;
        without a header spacing the model's estimate, else the anatomy-based one.

        ``orientation``: the image and masks are the film already turned back upright by
        the pipeline (its second look), which found it hanging so: that orientation is
        reported, not detected again (these masks would say "upright"), nothing is turned
        here, and ``src`` gives points on the turned-back image (the pipeline maps them to
        the source).
        """
        if orientation is not None and orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, not {orientation!r}")
        shape = image.pixels.shape
        # the model's extra channels (the visible lungs) ride along; rules that use them
        # fall back to the STRUCTURES masks when they are absent
        given = {**prediction.masks, **prediction.extra_masks}
        masks = {k: np.asarray(v, dtype=bool) for k, v in given.items()}
        for name, mask in masks.items():
            if mask.shape != shape:
                raise ValueError(f"mask {name} has shape {mask.shape}, image {shape}")
        est = anatomy_spacing(masks, prediction.view, lung_span_mm, lung_depth_mm)
        spacing: tuple[float, float]
        if image.spacing_mm is not None and _valid_spacing(image.spacing_mm):
            spacing, source = image.spacing_mm, "header"
            ratio = min(spacing) / est if est else 1.0
            if not 1.0 / tolerance <= ratio <= tolerance:
                spacing, source = (est, est), "anatomy_override"  # type: ignore[assignment]
        elif _valid_spacing(prediction.spacing_mm) and prediction.spacing_estimated:
            spacing, source = prediction.spacing_mm, "model"
        elif est is not None:
            spacing, source = (est, est), "anatomy"
        elif _valid_spacing(prediction.spacing_mm):
            spacing, source = prediction.spacing_mm, "model"
        else:
            last = 350.0 / max(shape)  # last resort: a 35 cm detector
            spacing, source = (last, last), "anatomy"
        # a tiny image with a fine spacing still keeps a grid of >= MIN_GRID_PX per side
        stride = max(1, min(int(work_mm / min(spacing)), min(shape) // MIN_GRID_PX))
        o = stride // 2
        small = {k: np.ascontiguousarray(v[o::stride, o::stride]) for k, v in masks.items()}
        pixels = block_mean(image.pixels, stride)
        small = {
            k: (v if k.startswith("ribs") else despeckle(v))[: pixels.shape[0], : pixels.shape[1]]
            for k, v in small.items()
        }
        if orientation is None:
            orient = detect_orientation(
                small, prediction.view, spacing[1] * stride, heart_offset_mm, heart_spine_mm
            )
            axes = turn_axes(orient)
        else:
            orient, axes = orientation, ()
        if axes:  # measure on the film as it should hang: upright, heart on the image right
            small = {k: np.ascontiguousarray(np.flip(v, axes)) for k, v in small.items()}
            pixels = np.ascontiguousarray(np.flip(pixels, axes))
        if shutter is not None:
            small["field"] = exposed_field(pixels, shutter, small.get("field"))
        return cls(
            image=image,
            view=prediction.view,
            masks=small,
            pixels=pixels,
            stride=stride,
            sy=spacing[0] * stride,
            sx=spacing[1] * stride,
            spacing_source=source,
            anatomy_mm=est,
            orientation=orient,
            turned=axes,
            language=language,
        )

    # ---- masks -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def mask(self, name: str) -> BoolMask:
        m = self.masks.get(name)
        return np.zeros(self.shape, dtype=bool) if m is None else m

    @cached_property
    def field(self) -> BoolMask:
        """The exposed field; an absent or empty field mask means the whole image."""
        f = self.masks.get("field")
        if f is None or not f.any():
            return np.ones(self.shape, dtype=bool)
        return f

    def clean(self, name: str) -> BoolMask:
        """A structure's largest connected part (model speckle does not move landmarks)."""
        v = self.cached(f"clean:{name}", lambda: largest_component(self.mask(name)))
        return v  # type: ignore[return-value]

    @cached_property
    def lungs(self) -> BoolMask:
        return self.mask("lung_right") | self.mask("lung_left")

    def area_mm2(self, mask: BoolMask) -> float:
        return float(np.count_nonzero(mask)) * self.sy * self.sx

    # ---- field edge and margins ---------------------------------------------------------
    @cached_property
    def _inner_edge(self) -> cKDTree:
        """KD-tree (mm coordinates) of the field's edge pixels (``field_ring``: the image
        frame counts as an edge)."""
        inner = np.argwhere(self.field_ring).astype(np.float64)
        return cKDTree(inner * np.array([self.sy, self.sx]))

    def margin_mm(self, point: Point) -> float:
        """Signed distance from a point to the field edge: + inside, − outside the field.

        Inside: distance to the nearest exposed pixel on the field's edge (its last exposed
        row or column: a landmark on the edge pixel has 0 mm of field beyond it, as the
        synthetic truth counts); outside: minus the distance to the nearest exposed pixel.
        Until 2026-11-26 an inside margin ran to the first *unexposed* pixel, one pixel more
        than the truth's: on train-v1 that cost 1–2 % per margin rule at 1.4 mm pixels.
        """
        r, c = point
        ri, ci = round(r), round(c)
        inside = 0 <= ri < self.shape[0] and 0 <= ci < self.shape[1] and bool(self.field[ri, ci])
        q = np.array([r * self.sy, c * self.sx])
        d = float(self._inner_edge.query(q)[0])
        return d if inside else -d

    @cached_property
    def field_ring(self) -> BoolMask:
        """Field pixels on its edge (the image frame included)."""
        f = self.field
        interior = f.copy()  # field pixels whose 4 neighbours are all field, inside the frame
        interior[1:] &= f[:-1]
        interior[:-1] &= f[1:]
        interior[:, 1:] &= f[:, :-1]
        interior[:, :-1] &= f[:, 1:]
        interior[[0, -1], :] = False
        interior[:, [0, -1]] = False
        return f & ~interior

    def edge_contact_mm(self, mask: BoolMask, tolerance_mm: float = 0.0) -> float:
        """Length (mm) of a structure's outline lying on the field edge: truncation.

        A structure that continues beyond the edge crosses the edge ring; one lying wholly
        outside the field counts with the side of a square of its area. With
        ``tolerance_mm`` > 0 the edge ring's pixels within that distance of the structure
        count too (a model's outline of an organ cut by the edge stops a few mm short of it).
        """
        n = np.count_nonzero(self.near(mask, tolerance_mm) & self.field_ring)
        if n:
            return float(n) * min(self.sy, self.sx)
        outside = mask & ~self.field
        return math.sqrt(self.area_mm2(outside)) if outside.any() else 0.0

    def near(self, mask: BoolMask, tolerance_mm: float) -> BoolMask:
        """Pixels within ``tolerance_mm`` (Euclidean, in mm) of the mask; the mask itself
        when the tolerance is 0."""
        if tolerance_mm <= 0.0 or not mask.any():
            return mask
        # Only the mask's box grown by the tolerance can be near it: the transform there
        # is exact (every mask pixel is inside) and ~10x cheaper than on the whole image.
        pad = (math.ceil(tolerance_mm / self.sy) + 1, math.ceil(tolerance_mm / self.sx) + 1)
        box = bbox_slices(mask, pad)
        d = ndimage.distance_transform_edt(~mask[box], sampling=(self.sy, self.sx))
        out = np.zeros_like(mask)
        out[box] = d <= tolerance_mm + 1e-6
        return out

    # ---- coordinates -------------------------------------------------------------------
    def mm(self, a: Point, b: Point) -> float:
        return math.hypot((a[0] - b[0]) * self.sy, (a[1] - b[1]) * self.sx)

    def src(self, p: Point) -> tuple[float, float]:
        """Working (row, col) → image (x, y) pixel coordinates (undoing the grid's turn)."""
        r, c = float(p[0]), float(p[1])
        if 0 in self.turned:
            r = self.shape[0] - 1 - r
        if 1 in self.turned:
            c = self.shape[1] - 1 - c
        half = (self.stride - 1) / 2.0
        return (c * self.stride + half, r * self.stride + half)

    def point(self, p: Point, label: str = "") -> Geometry:
        return Geometry(kind="point", points=(self.src(p),), label=label)

    def line(self, pts: list[Point], label: str = "") -> Geometry:
        return Geometry(kind="polyline", points=tuple(self.src(p) for p in pts), label=label)

    def contour(self, mask: BoolMask, label: str = "", max_points: int = 120) -> Geometry | None:
        """The outline of a mask's largest part as a closed polygon in source pixels."""
        if not mask.any():
            return None
        box = bbox_slices(mask, (0, 0))
        contours = measure.find_contours(np.pad(mask[box], 1).astype(np.float32), 0.5)
        if not contours:
            return None
        c = max(contours, key=len) - 1.0 + np.array([box[0].start, box[1].start])
        step = max(1, len(c) // max_points)
        return Geometry(kind="polygon", points=self._src_array(c[::step]), label=label)

    def _src_array(self, pts: npt.NDArray[np.float64]) -> tuple[tuple[float, float], ...]:
        """``src`` of an (n, 2) array of (row, col) points at once (the same float steps)."""
        r, c = pts[:, 0], pts[:, 1]
        if 0 in self.turned:
            r = self.shape[0] - 1 - r
        if 1 in self.turned:
            c = self.shape[1] - 1 - c
        half = (self.stride - 1) / 2.0
        xy = np.stack([c * self.stride + half, r * self.stride + half], axis=1)
        return tuple((x, y) for x, y in xy.tolist())

    # ---- helpers cached per subject ------------------------------------------------------
    def cached(self, key: str, compute: object) -> object:
        if key not in self._cache:
            self._cache[key] = compute() if callable(compute) else compute
        return self._cache[key]


# ---- the exposed field from the pixels ------------------------------------------------------


@dataclass(frozen=True)
class ShutterSpec:
    """What a collimator shutter looks like on the displayed film (MONOCHROME2 sense).

    A shutter is unexposed: a flat, bright band along an image side whose inner edge is a
    straight line. ``flat_range``: the largest grey-level range of 3 neighbouring working
    pixels along the band (quantisation and block averaging only); ``min_level``: its grey
    level at least; ``min_fraction``: the share of the side's length that must follow one
    straight edge (burned-in markers and saturated anatomy touching the band break it
    elsewhere); ``level_range``: how far the band may drift from its grey level at the border;
    ``line_tolerance_px``: how far a position may lie off the fitted edge line.
    """

    flat_range: float = 0.008
    min_level: float = 0.75
    min_fraction: float = 0.6
    level_range: float = 0.02
    line_tolerance_px: float = 2.0


def _range3(pixels: FloatImage, axes: tuple[int, ...]) -> FloatImage:
    """Max minus min over each pixel's 3-neighbourhood along ``axes`` (a border pixel is its
    own outer neighbour): ``maximum_filter - minimum_filter`` of size 3 along those axes with
    the default "reflect" border, equal to it bit for bit and ~5x cheaper."""
    hi, lo = pixels.copy(), pixels.copy()
    for axis in axes:
        for out, ufunc in ((hi, np.maximum), (lo, np.minimum)):
            v = np.moveaxis(out, axis, 0)
            prev = v.copy()
            ufunc(v[1:], prev[:-1], out=v[1:])
            ufunc(v[:-1], prev[1:], out=v[:-1])
    return hi - lo


def _band_depths(pixels: FloatImage, spec: ShutterSpec) -> dict[str, npt.NDArray[np.int64]]:
    """Per side, for each line across it, how many pixels from the border are band-like:
    bright and flat *along* the side (range of 3 neighbours along it ≤ ``flat_range``), so
    the band's last row next to the exposed field still counts and a 1-pixel band is seen."""
    bright = pixels >= spec.min_level
    along_rows = _range3(pixels, (1,)) <= spec.flat_range
    along_cols = _range3(pixels, (0,)) <= spec.flat_range
    horiz, vert = bright & along_rows, bright & along_cols
    views = {
        "top": (horiz, pixels),
        "bottom": (horiz[::-1], pixels[::-1]),
        "left": (vert.T, pixels.T),
        "right": (vert.T[::-1], pixels.T[::-1]),
    }
    out: dict[str, npt.NDArray[np.int64]] = {}
    for side, (band, px) in views.items():
        # one grey level from the border inwards: saturated anatomy next to it is not band
        m = band & (np.abs(px - px[:1]) <= spec.level_range)
        inside = ~m
        out[side] = np.where(inside.any(axis=0), inside.argmax(axis=0), m.shape[0]).astype(np.int64)
    return out


def _straight_edge(
    depth: npt.NDArray[np.int64], length: int, spec: ShutterSpec
) -> npt.NDArray[np.float64] | None:
    """The band's inner edge as a fitted straight line (depth per position), or None when
    fewer than ``min_fraction`` of the positions follow one line at depth ≥ 1. Lines that
    are band over their whole ``length`` lie in a shutter across the other way: left out."""
    x = np.arange(depth.size, dtype=np.float64)
    d = depth.astype(np.float64)
    use = depth < length
    if use.sum() < 2:
        return None
    inl = use & (np.abs(d - np.median(d[use])) <= spec.line_tolerance_px)
    if inl.sum() < max(2, spec.min_fraction / 2 * use.sum()) or np.median(d[inl]) < 0.5:
        return None
    for _ in range(2):
        a, b = np.polyfit(x[inl], d[inl], 1)
        inl = use & (np.abs(d - (a * x + b)) <= spec.line_tolerance_px)
        if inl.sum() < 2:
            return None
    if inl.sum() < spec.min_fraction * use.sum():
        return None
    line = a * x + b
    return None if float(np.median(line)) < 0.5 else line


def exposed_field(
    pixels: FloatImage, spec: ShutterSpec, model_field: BoolMask | None = None
) -> BoolMask:
    """The exposed field: the image minus straight flat bright bands along its sides.

    Shutters are located from the pixels, not taken from the model's ``field`` mask: on
    train-v1 the model's field edge was within 1 px of the true one on 78 % of the sides
    (it marks 12 mm bands along 10 % of the sides that have no shutter); this field equals
    the true one on 500 of 500 train-v1 films. A side without a flat band is exposed up to
    the image border. A flat bright
    region along the border that is not a straight band (a shaped shutter) is unexposed when
    the model's ``field`` mask also leaves most of it out.
    """
    h, w = pixels.shape
    field = np.ones((h, w), dtype=bool)
    rows = np.arange(h, dtype=np.float64)[:, None]
    cols = np.arange(w, dtype=np.float64)[None, :]
    for side, depth in _band_depths(pixels, spec).items():
        edge = _straight_edge(depth, h if side in ("top", "bottom") else w, spec)
        if edge is None:
            continue
        if side == "top":
            field &= rows >= edge[None, :] - 0.5
        elif side == "bottom":
            field &= (h - 1 - rows) >= edge[None, :] - 0.5
        elif side == "left":
            field &= cols >= edge[:, None] - 0.5
        else:
            field &= (w - 1 - cols) >= edge[:, None] - 0.5
    if model_field is not None and model_field.shape == field.shape and not model_field.all():
        flat = _range3(pixels, (0, 1)) <= spec.flat_range
        labels, _ = ndimage.label(flat & (pixels >= spec.min_level))
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        for lab in border[border > 0]:
            region = dilate(labels == lab, 1, np.ones((3, 3), bool)) & field  # + rim
            if region.any() and (~model_field[region]).mean() >= 0.5:
                field &= ~region
    if not field.any():
        return np.ones((h, w), dtype=bool)
    return field


# ---- the grid's pixels and how the film hangs (pure) -----------------------------------------


def block_mean(pixels: FloatImage, k: int) -> FloatImage:
    """Mean of k×k blocks (the trailing partial blocks are dropped)."""
    if k == 1:
        return pixels
    h, w = (pixels.shape[0] // k) * k, (pixels.shape[1] // k) * k
    blocks = pixels[:h, :w].reshape(h // k, k, w // k, k)
    return blocks.mean(axis=(1, 3), dtype=np.float32).astype(np.float32)


ORIENTATIONS = ("upright", "mirrored", "upside_down", "flipped")


def turn_axes(orientation: str) -> tuple[int, ...]:
    """The array axes (0 rows, 1 columns) to flip to turn a film found hanging
    ``orientation`` back upright; flipping them again turns it back to the source."""
    rows = orientation in ("upside_down", "flipped")
    cols = orientation in ("upside_down", "mirrored")
    return tuple(a for a, f in ((0, rows), (1, cols)) if f)


def upright_votes(
    masks: Mapping[str, BoolMask], lungs: BoolMask, cl: Point, ch: Point | None
) -> int:
    """Positive when the anatomy says "upright", negative when upside down."""
    votes = 0
    clav = masks.get("clavicle_right")
    other = masks.get("clavicle_left")
    cc = centroid(clav | other) if clav is not None and other is not None else None
    if cc is not None:
        votes += 2 if cc[0] < cl[0] else -2
    trachea = masks.get("trachea")
    ct = centroid(trachea) if trachea is not None else None
    if ct is not None:
        votes += 1 if ct[0] < cl[0] else -1
    if ch is not None:
        votes += 1 if ch[0] > cl[0] else -1
    rows = np.flatnonzero(lungs.any(axis=1))
    if rows.size >= 10:
        k = max(1, rows.size // 5)
        top = lungs[rows[:k]].sum()
        bottom = lungs[rows[-k:]].sum()
        votes += 1 if bottom > top else -1
    return votes


def detect_orientation(
    masks: Mapping[str, BoolMask],
    view: View,
    sx: float,
    heart_offset_mm: float,
    heart_spine_mm: float = 0.0,
) -> str:
    """How a film hangs, from the anatomy: "upright", "mirrored", "upside_down", "flipped".

    Upright: a vote of the clavicles (above the lungs' centre, counted twice), the trachea
    (above), the heart (below) and the lungs' shape (narrow apices, wide bases).
    Mirrored (frontal only): the heart's centre lies more than ``heart_offset_mm`` to the
    image left of the midline between the two lungs, and more than ``heart_spine_mm`` to
    the image left of the spine's centre line; a chest film hangs with the patient's left —
    the heart — on the viewer's right. The spine check is there because on real films the
    model sometimes swaps the lung labels, which moves the lungs' midline but not the spine.
    """
    right, left = masks.get("lung_right"), masks.get("lung_left")
    if right is None or left is None:
        return "upright"
    lungs = right | left
    cl = centroid(lungs)
    if cl is None:
        return "upright"
    heart = masks.get("heart")
    ch = centroid(heart) if heart is not None else None
    up = upright_votes(masks, lungs, cl, ch) >= 0
    mirrored = False
    if view is View.FRONTAL and ch is not None:
        cr, cc = centroid(right), centroid(left)
        if cr is not None and cc is not None:
            mirrored = (ch[1] - (cr[1] + cc[1]) / 2.0) * sx < -heart_offset_mm
        spine = masks.get("spine")
        cs = centroid(spine) if mirrored and spine is not None else None
        if cs is not None:
            mirrored = (ch[1] - cs[1]) * sx < -heart_spine_mm
    if up:
        return "mirrored" if mirrored else "upright"
    return "upside_down" if mirrored else "flipped"
