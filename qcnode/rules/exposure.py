"""Imaging detail (成像细节): dose (DI), clipping, contrast, noise, spine visibility, sharpness.

Pixel values are the decoded [0, 1] MONOCHROME2 image (attenuating = bright). The image
measures are computed inside anatomical regions from the masks, so that collimator shutters,
burned-in text and air outside the body do not count:
- lung: both lungs minus heart, spine, clavicles and scapulae (aerated lung only);
- mediastinum: the heart;
- noise: 1.4826·MAD of the image minus its Gaussian-smoothed self, inside the lung;
- spine visibility: the step between the vertebral band and the paraspinal band behind
  the heart, relative to the noise;
- sharpness: the edge width (step / steepest slope) of the lung/diaphragm border under
  both domes.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qcnode.records import BoolMask, Finding, Status
from qcnode.rules.completeness import SIDES
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject, row_extent, runs
from qcnode.rules.messages import make
from qcnode.rules.organs import dome


def deviation_index(s: Subject, cfg: RulesConfig) -> Finding:
    """IEC 62494-1: DI = 10·log10(EI / EI_T); the header DeviationIndex when present."""
    rule, e = "exposure.deviation_index", cfg.exposure
    meta = s.image.meta
    di = meta.deviation_index
    ei, target = meta.exposure_index, meta.target_exposure_index
    if di is None and ei is not None and target is not None and ei > 0 and target > 0:
        di = 10.0 * math.log10(ei / target)
    if di is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, e.deviation_index_fail, "no_header")
    a = abs(di)
    if a > e.deviation_index_fail:
        status, t = Status.FAIL, e.deviation_index_fail
    elif a > e.deviation_index_warn:
        status, t = Status.WARN, e.deviation_index_warn
    else:
        status, t = Status.PASS, e.deviation_index_warn
    key = f"{status}_{'high' if di > 0 else 'low'}" if status is not Status.PASS else "pass"
    return make(s, rule, status, di, t, key)


def lung_region(s: Subject) -> BoolMask:
    """Aerated lung: lungs minus overlapping dense structures, eroded 2 mm, inside the field."""

    def compute() -> BoolMask:
        m = s.lungs & s.field
        for name in (
            "heart",
            "spine",
            "clavicle_right",
            "clavicle_left",
            "scapula_right",
            "scapula_left",
            "humerus_right",
            "humerus_left",
        ):
            m = m & ~s.mask(name)
        k = max(1, round(2.0 / min(s.sy, s.sx)))
        eroded = ndimage.binary_erosion(m, iterations=k)
        return np.asarray(eroded if eroded.sum() > 50 else m)

    v = s.cached("lung_region", compute)
    return v  # type: ignore[return-value]


def noise_sigma(s: Subject) -> float | None:
    def compute() -> float | None:
        region = lung_region(s)
        if region.sum() < 50:
            return None
        px = s.pixels.astype(np.float32)
        smooth = ndimage.gaussian_filter(px, 1.5)
        resid = (px - smooth)[region]
        mad = float(np.median(np.abs(resid - np.median(resid))))
        return 1.4826 * mad

    v = s.cached("noise_sigma", compute)
    return v  # type: ignore[return-value]


def lung_mediastinum_contrast(s: Subject) -> float | None:
    region = lung_region(s)
    heart = s.mask("heart") & s.field
    if region.sum() < 50 or heart.sum() < 50:
        return None
    return float(np.median(s.pixels[heart]) - np.median(s.pixels[region]))


def saturation(s: Subject, cfg: RulesConfig) -> Finding:
    """Share of lung pixels clipped at black or white (burn-out or a clipped window)."""
    rule, e = "exposure.saturation", cfg.exposure
    region = s.lungs & s.field
    if region.sum() < 50:
        return make(s, rule, Status.NOT_EVALUABLE, None, e.saturation_fail_percent, "no_lungs")
    px = s.pixels[region]
    lvl = e.saturation_level
    clipped = np.count_nonzero((px <= lvl) | (px >= 1.0 - lvl))
    value = 100.0 * clipped / px.size
    status = Status.FAIL if value > e.saturation_fail_percent else Status.PASS
    return make(s, rule, status, value, e.saturation_fail_percent, str(status))


def contrast(s: Subject, cfg: RulesConfig) -> Finding:
    """Lung vs mediastinum (heart) grey-level difference, in [0, 1] display units."""
    rule, t = "exposure.contrast", cfg.exposure.contrast_fail
    c = lung_mediastinum_contrast(s)
    if c is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_lungs")
    status = Status.FAIL if c < t else Status.PASS
    return make(s, rule, status, c, t, str(status))


def noise(s: Subject, cfg: RulesConfig) -> Finding:
    """Contrast-to-noise ratio: lung/mediastinum contrast over the lung's pixel noise."""
    rule, t = "exposure.noise", cfg.exposure.noise_cnr_fail
    c, sigma = lung_mediastinum_contrast(s), noise_sigma(s)
    if c is None or sigma is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_lungs")
    cnr = abs(c) / max(sigma, 1e-4)
    status = Status.FAIL if cnr < t else Status.PASS
    return make(s, rule, status, cnr, t, str(status))


def spine_visibility(s: Subject) -> float | None:
    """|vertebral − paraspinal| grey step behind the heart, in units of the pixel noise."""
    heart = s.mask("heart")
    spine = s.mask("spine")
    ext = row_extent(heart & spine)
    sigma = noise_sigma(s)
    if ext is None or sigma is None:
        return None
    band = max(2, round(4.0 / s.sx))
    steps: list[float] = []
    for r in range(ext[0], ext[1] + 1):
        rr = runs(spine[r])
        if not rr:
            continue
        a, b = max(rr, key=lambda t: t[1] - t[0])
        if b - a < 2 * band or a - band < 0 or b + band > s.shape[1]:
            continue
        if not (heart[r, a] or heart[r, b - 1]):
            continue
        row = s.pixels[r]
        inside = (row[a : a + band].mean() + row[b - band : b].mean()) / 2.0
        outside = (row[a - band : a].mean() + row[b : b + band].mean()) / 2.0
        steps.append(float(inside - outside))
    if len(steps) < 3:
        return None
    return float(abs(np.mean(steps)) / max(sigma, 1e-4))


def spine_through_heart(s: Subject, cfg: RulesConfig) -> Finding:
    rule, t = "exposure.spine_through_heart", cfg.exposure.spine_through_heart_fail
    v = spine_visibility(s)
    if v is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_spine")
    status = Status.FAIL if v < t else Status.PASS
    return make(s, rule, status, v, t, str(status))


def _edge_width(profile: npt.NDArray[np.float64], step_mm: float) -> float | None:
    """Edge width (mm) of a dark-lung → bright-diaphragm profile: step height over the
    steepest slope (sub-pixel; for a Gaussian-blurred step it is σ·√(2π) ≈ 1.06·FWHM)."""
    p = ndimage.gaussian_filter1d(profile, 0.7)
    n = len(p)
    q = max(2, n // 5)
    step = float(np.mean(p[-q:]) - np.mean(p[:q]))
    if step <= 1e-3:
        return None
    slope = float(np.max(np.diff(p)))
    if slope <= 0:
        return None
    return step / slope * step_mm


def sharpness(s: Subject, cfg: RulesConfig) -> Finding:
    """Edge width (mm) at the lung/diaphragm border under each dome; blur widens it."""
    rule, t = "exposure.sharpness", cfg.exposure.sharpness_edge_fail_mm
    widths: list[float] = []
    geometry = []
    half = round(15.0 / s.sy)
    cols_half = max(1, round(10.0 / s.sx))
    for side in SIDES:
        p = dome(s, side)
        if p is None:
            continue
        r, c = int(p[0]), round(p[1])
        r0, r1 = r - half, r + half + 1
        c0, c1 = max(0, c - cols_half), min(s.shape[1], c + cols_half + 1)
        if r0 < 0 or r1 > s.shape[0] or not s.field[r0:r1, c0:c1].all():
            continue
        profile = s.pixels[r0:r1, c0:c1].astype(np.float64).mean(axis=1)
        w = _edge_width(profile, s.sy)
        if w is not None:
            widths.append(w)
            geometry.append(
                s.line([(float(r0), float(c)), (float(r1 - 1), float(c))], f"edge {side}")
            )
    if not widths:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_edge")
    value = float(np.mean(widths))
    status = Status.FAIL if value > t else Status.PASS
    return make(s, rule, status, value, t, str(status), tuple(geometry))
