"""Position detail on the lateral view: superimposition (rotation), arms, inspiration.

On a true lateral the posterior ribs of both sides (and both posterior lung borders)
superimpose; rotating the patient separates them horizontally. The measure is the median,
over the middle half of the lung height, of the horizontal distance between the posterior
outlines of the right and left posterior ribs (falling back to the two lung masks).
"""

from __future__ import annotations

import numpy as np

from qcnode.records import BoolMask, Finding, Status
from qcnode.rules.completeness import anterior_sign
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import Point, row_extent
from qcnode.rules.messages import make
from qcnode.rules.organs import LENGTH_UNIT
from qcnode.rules.positioning import dome_depth, inspiration_status


def _posterior_outline(mask: BoolMask, back: float) -> np.ndarray:
    """Per row, the column of the mask's posterior-most pixel (NaN where empty)."""
    has = mask.any(axis=1)
    cols = np.arange(mask.shape[1])
    if back > 0:
        edge = np.where(mask, cols[None, :], -1).max(axis=1).astype(float)
    else:
        edge = np.where(mask, cols[None, :], mask.shape[1]).min(axis=1).astype(float)
    edge[~has] = np.nan
    return edge


def superimposition(s: Subject) -> tuple[float, list[tuple[Point, Point]]] | None:
    """(median separation mm, sample segment pairs) of the two sides' posterior outlines."""
    ext = row_extent(s.lungs)
    if ext is None:
        return None
    back = -anterior_sign(s)
    right, left = s.mask("ribs_posterior_right"), s.mask("ribs_posterior_left")
    if not (right.any() and left.any()):
        right, left = s.mask("lung_right"), s.mask("lung_left")
    if not (right.any() and left.any()):
        return None
    h = ext[1] - ext[0]
    r0, r1 = ext[0] + h // 4, ext[1] - h // 4
    er = _posterior_outline(right[r0 : r1 + 1], back)
    el = _posterior_outline(left[r0 : r1 + 1], back)
    ok = ~np.isnan(er) & ~np.isnan(el)
    if ok.sum() < 3:
        return None
    sep = np.abs(er[ok] - el[ok]) * s.sx
    rows = np.flatnonzero(ok)
    i = int(rows[len(rows) // 2])
    pair = ((float(r0 + i), float(er[i])), (float(r0 + i), float(el[i])))
    return float(np.median(sep)), [pair]


def rotation(s: Subject, cfg: RulesConfig) -> Finding:
    rule, t = "positioning.rotation", cfg.positioning.lateral_rotation_fail_mm
    m = superimposition(s)
    if m is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "lateral_missing")
    value, pairs = m
    geometry = tuple(s.line([a, b], "posterior ribs apart") for a, b in pairs)
    status = Status.FAIL if value > t else Status.PASS
    # mm apart, not the catalogue's frontal degrees
    return make(s, rule, status, value, t, f"lateral_{status}", geometry, unit=LENGTH_UNIT)


def arms(s: Subject, cfg: RulesConfig) -> Finding:
    """Area (mm²) of the humeri projected over the lung fields."""
    rule, t = "positioning.arms", cfg.positioning.arms_overlap_fail_mm2
    if not s.lungs.any():
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_lungs")
    overlap = (s.mask("humerus_right") | s.mask("humerus_left")) & s.lungs
    value = s.area_mm2(overlap)
    g = s.contour(overlap, "arm over lung")
    status = Status.FAIL if value > t else Status.PASS
    return make(s, rule, status, value, t, str(status), () if g is None else (g,))


def inspiration(s: Subject, cfg: RulesConfig) -> Finding:
    """Diaphragm level on the lateral: the depth of the heart's lower border (on the
    diaphragm) below the lungs' apex, in posterior ribs with its own calibration."""
    rule, p = "positioning.inspiration", cfg.positioning
    m = dome_depth(s, s.lungs)
    if m is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, float(p.inspiration_pass_ribs), "missing")
    depth, apex, dome = m
    n = max(0, round(p.lateral_inspiration_ribs_at_apex + depth / p.lateral_inspiration_mm_per_rib))
    status, t = inspiration_status(n, p)
    geometry = (
        s.line([apex, (dome[0], apex[1])], f"apex to diaphragm {depth:.0f} mm"),
        s.point(dome, "diaphragm (heart border)"),
    )
    return make(s, rule, status, float(n), float(t), f"lateral_{status}", geometry)
