"""Imaging detail (成像细节): dose (DI), clipping, contrast, noise, spine visibility, sharpness.

Pixel values are the decoded [0, 1] MONOCHROME2 image (attenuating = bright). The image
measures are computed inside anatomical regions from the masks, so that collimator shutters,
burned-in text and air outside the body do not count:
- tonal range: 1st–99th percentile of the exposed field;
- lung: both lungs minus heart, spine, clavicles and scapulae (aerated lung only);
- mediastinum: the heart;
- noise: the pixel noise std in the aerated lung between the ribs (std of a 1-D high-pass
  along rows and along columns, the smaller: grid lines cancel along their direction);
- spine visibility: vertebrae vs the paraspinal heart shadow, over the heart's noise;
- sharpness: the apparent edge FWHM from the fine- over coarse-scale gradient ratio at the
  strongest anatomical edges that run up and down the film (default), or the edge width
  (step / steepest slope) of both heart borders against lung (`sharpness_method`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qcnode.records import BoolMask, Finding, Status, View
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import Point, bbox_slices, dilate, erode, row_extent
from qcnode.rules.messages import make


def deviation_index(s: Subject, cfg: RulesConfig) -> Finding:
    """IEC 62494-1: DI = 10·log10(EI / EI_T); the header DeviationIndex when present."""
    rule, e = "exposure.deviation_index", cfg.exposure
    meta = s.image.meta
    di = meta.deviation_index
    ei, target = meta.exposure_index, meta.target_exposure_index
    if di is None and ei is not None and target is not None and ei > 0 and target > 0:
        di = 10.0 * math.log10(ei / target)
    if di is None or not math.isfinite(di):  # absent, or absurd EI values (1e308 / 1e-4)
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
        eroded = erode(m, k)
        return np.asarray(eroded if eroded.sum() > 50 else m)

    v = s.cached("lung_region", compute)
    return v  # type: ignore[return-value]


_HP_SIGMA = 1.5  # px, the Gaussian of the high-pass used for noise
# white noise keeps this share of its std in (image − Gaussian(σ) image): √(1 − 3/(4πσ²))
_HP_KEEP = math.sqrt(1.0 - 3.0 / (4.0 * math.pi * _HP_SIGMA**2))


def region_noise(s: Subject, region: BoolMask) -> float | None:
    """Pixel noise std in a region: robust (MAD) std of the high-pass image, corrected."""
    if region.sum() < 50:
        return None
    hp = s.cached("highpass", lambda: s.pixels - ndimage.gaussian_filter(s.pixels, _HP_SIGMA))
    resid = hp[region]  # type: ignore[index]
    mad = float(np.median(np.abs(resid - np.median(resid))))
    return 1.4826 * mad / _HP_KEEP


def _keep_1d(sigma: float) -> float:
    """Share of a white noise's std that (x − 1-D Gaussian(σ) x) keeps."""
    impulse = np.zeros(64)
    impulse[32] = 1.0
    k = impulse - ndimage.gaussian_filter1d(impulse, sigma)
    return float(np.sqrt(np.sum(k**2)))


_HP1_SIGMA = 1.0  # px, the 1-D high-pass of the lung noise
_HP1_KEEP = _keep_1d(_HP1_SIGMA)


def directional_noise(s: Subject, region: BoolMask) -> float | None:
    """Pixel noise std in a region from 1-D high-passes along the rows and along the columns,
    the smaller of the two (corrected to white-noise std).

    One direction at a time, because an anti-scatter grid's line pattern is constant along
    its lines and so vanishes from the high-pass along them; the plain std, because the
    processed noise is not Gaussian and the truth is its std.
    """
    if region.sum() < 50:
        return None
    out = []
    for axis in (0, 1):
        hp = s.cached(
            f"highpass1d:{axis}",
            lambda a=axis: s.pixels - ndimage.gaussian_filter1d(s.pixels, _HP1_SIGMA, axis=a),
        )
        out.append(float(np.std(hp[region])) / _HP1_KEEP)  # type: ignore[index]
    return min(out)


def noise_sigma(s: Subject) -> float | None:
    """Noise in the aerated lung between the ribs (rib edges are structure, not noise)."""

    def compute() -> float | None:
        region = lung_region(s)
        ribs = s.mask("ribs_posterior_right") | s.mask("ribs_posterior_left")
        between = region & ~dilate(ribs, 2)
        return directional_noise(s, between if between.sum() >= 200 else region)

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


def tonal_range(s: Subject) -> float | None:
    """Grey levels used by the exposed field: 99th minus 1st percentile (0–1)."""
    px = s.pixels[s.field]
    if px.size < 50:
        return None
    lo, hi = np.percentile(px, [1.0, 99.0])
    return float(hi - lo)


def contrast(s: Subject, cfg: RulesConfig) -> Finding:
    """Tonal range used by the exposed field (a flat, grey film fails); the lung–mediastinum
    contrast is reported with it."""
    rule, t = "exposure.contrast", cfg.exposure.contrast_fail
    r = tonal_range(s)
    c = lung_mediastinum_contrast(s)
    if r is None or c is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_lungs")
    status = Status.FAIL if r < t else Status.PASS
    return make(s, rule, status, r, t, str(status), lung=c)


def noise(s: Subject, cfg: RulesConfig) -> Finding:
    """Quantum mottle: the pixel noise std in the aerated lung (display units, 0–1)."""
    e = cfg.exposure
    rule, t = "exposure.noise", e.noise_fail_lateral if s.view.value == "lateral" else e.noise_fail
    sigma = noise_sigma(s)
    if sigma is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_lungs")
    c = lung_mediastinum_contrast(s)
    status = Status.FAIL if sigma > t else Status.PASS
    cnr = abs(c) / max(sigma, 1e-4) if c is not None else float("nan")
    return make(s, rule, status, sigma, t, str(status), cnr=cnr)


def spine_visibility(s: Subject) -> tuple[float, float] | None:
    """(Δ, Δ/σ): vertebrae vs the paraspinal heart shadow within 12 mm, over the heart's noise.

    Δ is the median grey of spine∩heart minus that of the heart beside the spine.
    """
    heart, spine = s.mask("heart") & s.field, s.mask("spine")
    behind = heart & spine
    if behind.sum() < 30:
        return None
    k = max(2, round(12.0 / min(s.sy, s.sx)))
    para = heart & dilate(spine, k) & ~spine
    if para.sum() < 30:
        return None
    delta = float(np.median(s.pixels[behind]) - np.median(s.pixels[para]))
    sigma = region_noise(s, erode(heart & ~spine, 2))
    if sigma is None:
        return None
    return delta, delta / max(sigma, 1e-4)


def spine_through_heart(s: Subject, cfg: RulesConfig) -> Finding:
    """Vertebral column visible through the heart: its contrast-to-noise behind the heart."""
    rule, e = "exposure.spine_through_heart", cfg.exposure
    v = spine_visibility(s)
    if v is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, e.spine_through_heart_fail, "no_spine")
    delta, cnr = v
    ok = cnr >= e.spine_through_heart_fail and delta >= e.spine_through_heart_delta
    status = Status.PASS if ok else Status.FAIL
    return make(s, rule, status, cnr, e.spine_through_heart_fail, str(status))


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
    """Sharpness: `edge_sharpness` (``sharpness_method = "gradient_ratio"``) or the edge
    width (mm) of the heart borders against the lungs (``"edge_width"``).

    Edge width: profiles across the left and right heart borders (rows of the heart's middle half,
    ±15 mm around the border, aligned on the mask border and averaged) give an edge width
    as step / steepest slope.
    """
    if cfg.exposure.sharpness_method == "gradient_ratio":
        return _sharpness_gradient(s, cfg)
    rule, t = "exposure.sharpness", cfg.exposure.sharpness_edge_fail_mm
    heart = s.clean("heart")
    ext = row_extent(heart)
    if ext is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_edge")
    h = ext[1] - ext[0]
    half = max(3, round(15.0 / s.sx))
    widths: list[float] = []
    geometry = []
    for sign in (-1, 1):  # border on the image left, then on the image right
        profiles = []
        anchor: Point | None = None
        for r in range(ext[0] + h // 4, ext[1] - h // 4 + 1):
            cols = np.flatnonzero(heart[r])
            if cols.size == 0:
                continue
            c = int(cols[0] if sign < 0 else cols[-1])
            c0, c1 = c - half, c + half + 1
            if c0 < 0 or c1 > s.shape[1] or not s.field[r, c0:c1].all():
                continue
            if not s.lungs[r, c0 if sign < 0 else c1 - 1]:
                continue  # the border must face lung, not spine or soft tissue
            prof = s.pixels[r, c0:c1].astype(np.float64)
            profiles.append(prof[::-1] if sign > 0 else prof)  # lung → heart, rising
            anchor = anchor or (float(r), float(c))
        if len(profiles) < 5 or anchor is None:
            continue
        w = _edge_width(np.mean(profiles, axis=0), s.sx)
        if w is not None:
            widths.append(w)
            geometry.append(
                s.line([(anchor[0], anchor[1] - half), (anchor[0], anchor[1] + half)], "edge")
            )
    if not widths:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_edge")
    value = float(np.mean(widths))
    status = Status.FAIL if value > t else Status.PASS
    return make(s, rule, status, value, t, str(status), tuple(geometry))


# exposure.sharpness, "gradient_ratio": the two smoothing scales (mm) and the share of the
# edge pixels kept (the strongest 20 % of the candidates, by coarse gradient) and the
# percentile of their fine/coarse ratios that is read. A blurred step
# of σ px has gradient peaks ∝ 1/√(σ² + s²) after a Gaussian of s px, so the peak ratio
# R = |∇G_fine| / |∇G_coarse| gives σ² = (c² − R²f²) / (R² − 1). Chosen on
# data/synth/sharp-cal6 (docs/RULES.md "Session 6 (helper)").
SHARP_FINE_MM = 1.0
SHARP_COARSE_MM = 2.8
SHARP_EDGE_QUANTILE = 0.8
SHARP_RATIO_PERCENTILE = 75.0  # of the per-pixel ratios: the sharpest edges carry the blur best
SHARP_MAX_FWHM_MM = 30.0  # reported cap: a ratio at or below 1 means "no fine detail at all"


def _grad(img: npt.NDArray[np.float64], sigma: float) -> tuple[npt.NDArray[np.float64], ...]:
    g = ndimage.gaussian_filter(img, sigma)
    return ndimage.sobel(g, axis=0) / 8.0, ndimage.sobel(g, axis=1) / 8.0


def _grad_white_share(sigma: float) -> float:
    """|∇(Gaussian(σ) noise)|² per unit white-noise variance (both Sobel components)."""
    r = max(4, math.ceil(4 * sigma) + 2)
    d = np.zeros((2 * r + 1, 2 * r + 1))
    d[r, r] = 1.0
    gy, gx = _grad(d, sigma)
    return float(np.sum(gy**2) + np.sum(gx**2))


def gradient_maxima(
    mag: npt.NDArray[np.floating[Any]],
    gy: npt.NDArray[np.floating[Any]],
    gx: npt.NDArray[np.floating[Any]],
) -> BoolMask:
    """Non-maximum suppression: pixels whose gradient magnitude is a maximum along their
    gradient direction (quantised to 4 directions), i.e. the centre lines of edges."""
    ang = np.degrees(np.arctan2(gy, gx)) % 180.0
    peak = np.zeros(mag.shape, dtype=bool)
    h, w = mag.shape
    wrapped = np.pad(mag, 1, mode="wrap")  # the neighbours np.roll gives, without copies
    for lo, hi, dy, dx in (
        (0.0, 22.5, 0, 1),
        (157.5, 180.0, 0, 1),
        (22.5, 67.5, 1, 1),
        (67.5, 112.5, 1, 0),
        (112.5, 157.5, 1, -1),
    ):
        fwd = wrapped[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]  # mag[r - dy, c - dx]
        back = wrapped[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]  # mag[r + dy, c + dx]
        peak |= (ang >= lo) & (ang < hi) & (mag >= fwd) & (mag >= back)
    return peak


def edge_sharpness(s: Subject) -> tuple[float, list[Point]] | None:
    """Apparent edge FWHM (mm) at the strongest anatomical edges of the lungs and heart.

    Why this measure: the heart border is a projected curved surface, a ramp whose width is
    anatomy, not blur; blur shows as the loss of the finest scale at *every* strong edge
    (vessels, rib and lung borders, the heart). Edge pixels are the coarse-gradient maxima
    (non-maximum suppression along the gradient) inside the lungs and heart (4 mm around
    them), 8 mm inside the field (shutter edges are not anatomy), the strongest 20 %, in
    every direction (a motion blurs only the edges across it). The fine gradient is
    corrected for white noise (the lung noise of `region_noise`); the 75th percentile of
    the per-pixel ratios becomes the FWHM. Returns the value and a few edge points.
    """
    px = min(s.sx, s.sy)
    f, c = SHARP_FINE_MM / px, SHARP_COARSE_MM / px
    body = s.lungs | s.mask("heart")
    if body.sum() < 100:
        return None
    region = dilate(body, max(1, round(4.0 / px)))
    region &= erode(s.field, max(1, round(8.0 / px)))
    # Gradients only on the region's box grown by the coarse Gaussian's reach (its radius,
    # +1 for the Sobel, +1 for the maxima's neighbours, +1 spare): there every value equals
    # the whole image's, bit for bit, at about half the cost. The region lies >= 1 px inside
    # the image (eroded field), so the maxima's wrap-around never reaches it.
    box = bbox_slices(region, (int(4.0 * c + 0.5) + 3,) * 2)
    origin = np.array([box[0].start, box[1].start])
    region = region[box]
    img = s.pixels[box].astype(np.float64)
    gyf, gxf = _grad(img, f)
    gyc, gxc = _grad(img, c)
    mag_c = np.hypot(gxc, gyc)
    peak = gradient_maxima(mag_c, gyc, gxc)
    cand = region & peak & (mag_c > 0)
    if cand.sum() < 50:
        return None
    edge = cand & (mag_c >= np.quantile(mag_c[cand], SHARP_EDGE_QUANTILE))
    if edge.sum() < 8:
        return None
    noise = region_noise(s, lung_region(s)) or 0.0
    mag_f2 = gxf[edge] ** 2 + gyf[edge] ** 2
    fine = np.sqrt(np.maximum(mag_f2 - noise**2 * _grad_white_share(f), 1e-12))
    ratio = float(np.percentile(fine / mag_c[edge], SHARP_RATIO_PERCENTILE))
    if ratio <= 1.0:
        fwhm = SHARP_MAX_FWHM_MM
    else:
        sigma_px = math.sqrt(max((c * c - ratio * ratio * f * f) / (ratio * ratio - 1.0), 0.0))
        fwhm = min(2.3548 * sigma_px * px, SHARP_MAX_FWHM_MM)
    rows, cols = np.nonzero(edge)
    pick = np.linspace(0, rows.size - 1, num=min(5, rows.size)).astype(int)
    return fwhm, [(float(rows[i] + origin[0]), float(cols[i] + origin[1])) for i in pick]


def _sharpness_gradient(s: Subject, cfg: RulesConfig) -> Finding:
    """exposure.sharpness by `edge_sharpness`: fail above ``sharpness_fwhm_fail_mm``."""
    e = cfg.exposure
    lateral = s.view is View.LATERAL
    rule, t = (
        "exposure.sharpness",
        (e.sharpness_fwhm_fail_mm_lateral if lateral else e.sharpness_fwhm_fail_mm),
    )
    v = edge_sharpness(s)
    if v is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_edges")
    fwhm, points = v
    status = Status.FAIL if fwhm > t else Status.PASS
    geometry = tuple(s.point(p, "edge") for p in points)
    return make(s, rule, status, fwhm, t, f"{status}_fwhm", geometry)
