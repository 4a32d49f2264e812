"""Overall completeness (总体完整): is the whole thorax inside the exposed field?

Margins are signed distances in mm from a lung landmark to the edge of the exposed field
(the ``field`` mask: collimator shutters count as edges, and so does the image border).
Frontal landmarks per lung: the apex (topmost pixel), the lateral costophrenic angle (the
lowest pixel of the lung's lateral third, on the *visible* lung when the masks carry it: see
``costophrenic_lung``) and the lateral wall (the outermost pixel). "Out" for a lung is away
from the other lung, so mirrored images are measured the same way.
"""

from __future__ import annotations

import math

import numpy as np

from qcnode.records import BoolMask, Finding, Geometry, Status
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import Point, centroid, col_extent, extreme, largest_component, row_extent
from qcnode.rules.messages import make

SIDES = ("right", "left")


def lateral_sign(s: Subject, side: str) -> float:
    """+1 if the patient's ``side`` lung lies towards +columns (image right), else −1."""

    def key() -> dict[str, float]:
        cr = centroid(s.mask("lung_right"))
        cl = centroid(s.mask("lung_left"))
        if cr is None or cl is None:
            # one lung: assume the standard display (patient's right on the image left)
            return {"right": -1.0, "left": 1.0}
        r = 1.0 if cr[1] > cl[1] else -1.0
        return {"right": r, "left": -r}

    signs = s.cached("lateral_sign", key)
    assert isinstance(signs, dict)
    return float(signs[side])


def costophrenic_lung(s: Subject, side: str, lungs: str = "visible") -> BoolMask:
    """The lung whose lateral-inferior corner is the radiographer's lateral costophrenic
    angle: the visible lung (``lung_<side>_visible``: cut at the diaphragm silhouette) when
    ``lungs`` is "visible" and the masks carry a non-empty one, else the whole lung. The
    whole 3D projection's lateral third reaches down into the posterior recess behind the
    liver, below the visible dome: an angle no film shows (docs/RULES.md, session 9)."""
    if lungs == "visible":
        visible = s.clean(f"lung_{side}_visible")
        if visible.any():
            return visible
    return s.clean(f"lung_{side}")


def _landmark_margins(
    s: Subject, rule: str, threshold: float, landmark: str, lungs: str = "whole"
) -> Finding:
    points: dict[str, Point] = {}
    for side in SIDES:
        lung = s.clean(f"lung_{side}")
        if not lung.any():
            continue
        out = lateral_sign(s, side)
        if landmark == "apex":
            p = extreme(lung, -1.0, 0.0, s.sy, s.sx)
        elif landmark == "costophrenic":
            p = costophrenic_point(costophrenic_lung(s, side, lungs), out)
        else:
            p = extreme(lung, 0.0, out, s.sy, s.sx)
        assert p is not None
        points[side] = p
    if len(points) < 2:
        missing = next(side for side in SIDES if side not in points)
        return make(s, rule, Status.NOT_EVALUABLE, None, threshold, "missing", side=missing)
    margins = {side: s.margin_mm(p) for side, p in points.items()}
    worst = min(margins, key=lambda k: margins[k])
    value = margins[worst]
    geometry = tuple(
        s.point(p, f"{side} {value_label(margins[side])}") for side, p in points.items()
    )
    status = Status.PASS if value >= threshold else Status.FAIL
    return make(s, rule, status, value, threshold, str(status), geometry, side=worst)


def costophrenic_point(lung: BoolMask, out: float) -> Point | None:
    """The lateral costophrenic angle: the lowest lung pixel of the lung's lateral third,
    at the outermost column of that row."""
    ext = col_extent(lung)
    if ext is None:
        return None
    c0, c1 = ext
    third = (c1 - c0) / 3.0
    cols = np.arange(lung.shape[1])
    band = lung & ((cols <= c0 + third) if out < 0 else (cols >= c1 - third))[None, :]
    rows = np.flatnonzero(band.any(axis=1))
    if rows.size == 0:
        return None
    r = int(rows[-1])
    cs = np.flatnonzero(band[r])
    return (float(r), float(cs[0] if out < 0 else cs[-1]))


def lungs_near_end_shares(
    s: Subject, ext: tuple[int, int], tolerance_mm: float, band_mm: float
) -> dict[str, float]:
    """Per end of the lungs ("top", "bottom"): where the field's edge beyond that end row lies
    within ``tolerance_mm`` of it (in the columns of the lungs' last ``band_mm``), the widest
    lung row of that band as a share of their widest row (0 otherwise).

    The shipped model's lungs stop a few mm short of a field edge that cuts them, with a
    rounded end, so their cut row neither lies on the edge nor keeps its width
    (``organs.lungs_cut_share`` reads 0); a lung ending near the edge with a wide last band was
    cut through the thorax, and the spine beside it too (an intact lung narrows to its tip and
    its posterior recess). The lateral ``costophrenic`` reads the same measure: a cut base
    would otherwise look like a whole lung ending there."""
    widths = s.lungs.sum(axis=1)
    top = float(widths.max()) or 1.0
    k = max(0, round(band_mm / s.sy))
    out: dict[str, float] = {}
    for end, r, step in (("top", ext[0], -1), ("bottom", ext[1], 1)):
        lo, hi = (r, min(ext[1], r + k)) if step < 0 else (max(ext[0], r - k), r)
        band = s.lungs[lo : hi + 1]
        cols = np.flatnonzero(band.any(axis=0))
        beyond = s.field[r::step][:, cols]
        # rows of field beyond the end row, per column, before the first unexposed pixel
        open_rows = np.where(beyond.all(axis=0), beyond.shape[0], np.argmin(beyond, axis=0))
        gap = (float(open_rows.min()) - 1.0) * s.sy if cols.size else math.inf
        out[end] = float(widths[lo : hi + 1].max()) / top if gap <= tolerance_mm + 1e-6 else 0.0
    return out


def value_label(mm: float) -> str:
    return f"{mm:.0f} mm"


def apices(s: Subject, cfg: RulesConfig) -> Finding:
    """Both lung apices inside the field with ``apices_margin_mm`` to spare."""
    if s.view.value == "lateral":
        return _lateral_landmark(
            s, "completeness.apices", cfg.completeness.apices_margin_mm, "apex"
        )
    return _landmark_margins(s, "completeness.apices", cfg.completeness.apices_margin_mm, "apex")


def costophrenic(s: Subject, cfg: RulesConfig) -> Finding:
    """Both lateral costophrenic angles (lateral view: the posterior one) inside the field.

    Frontal: on the visible lungs (with ``costophrenic_visible_margin_mm``) when configured
    and both are present, else on the whole lungs (``costophrenic_margin_mm``)."""
    c = cfg.completeness
    t = c.costophrenic_margin_mm
    if s.view.value == "lateral":
        found = _lateral_landmark(s, "completeness.costophrenic", t, "costophrenic")
        return _lateral_base_cut(s, cfg, found)
    visible = c.costophrenic_lungs == "visible" and all(
        s.clean(f"lung_{side}_visible").any() for side in SIDES
    )
    if visible:
        t = c.costophrenic_visible_margin_mm
    lungs = "visible" if visible else "whole"
    return _landmark_margins(s, "completeness.costophrenic", t, "costophrenic", lungs)


def lateral_walls(s: Subject, cfg: RulesConfig) -> Finding:
    """Both lateral lung borders inside the field."""
    return _landmark_margins(
        s, "completeness.lateral_walls", cfg.completeness.lateral_walls_margin_mm, "wall"
    )


def collimation(s: Subject, cfg: RulesConfig) -> Finding:
    """Field beyond the lungs on each side (dose): the largest of top/bottom/left/right."""
    rule, t = "completeness.collimation", cfg.completeness.collimation_warn_mm
    lr, lc = row_extent(s.lungs), col_extent(s.lungs)
    fr, fc = row_extent(s.field), col_extent(s.field)
    if lr is None or lc is None or fr is None or fc is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_lungs")
    excess = {
        "top": (lr[0] - fr[0]) * s.sy,
        "bottom": (fr[1] - lr[1]) * s.sy,
        "image_left": (lc[0] - fc[0]) * s.sx,
        "image_right": (fc[1] - lc[1]) * s.sx,
    }
    where = max(excess, key=lambda k: excess[k])
    value = excess[where]
    box = [
        (float(lr[0]), float(lc[0])),
        (float(lr[0]), float(lc[1])),
        (float(lr[1]), float(lc[1])),
        (float(lr[1]), float(lc[0])),
    ]
    geometry = (Geometry("polygon", tuple(s.src(p) for p in box), "thorax"),)
    status = Status.WARN if value > t else Status.PASS
    return make(s, rule, status, value, t, str(status), geometry, where=where)


def centering(s: Subject, cfg: RulesConfig) -> Finding:
    """Thorax midline (centre of both lungs' span) vs the field centre, % of field width."""
    rule = "completeness.centering"
    t = cfg.completeness.centering_warn_fraction * 100.0
    lc, fc = col_extent(s.lungs), col_extent(s.field)
    lr = row_extent(s.lungs)
    if lc is None or fc is None or lr is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "no_lungs")
    mid = (lc[0] + lc[1]) / 2.0
    centre = (fc[0] + fc[1]) / 2.0
    width = fc[1] - fc[0] + 1
    value = abs(mid - centre) / width * 100.0
    y0, y1 = float(lr[0]), float(lr[1])
    geometry = (
        s.line([(y0, mid), (y1, mid)], "thorax midline"),
        s.line([(y0, centre), (y1, centre)], "field centre"),
    )
    status = Status.WARN if value > t else Status.PASS
    return make(s, rule, status, value, t, str(status), geometry)


# ---- lateral view --------------------------------------------------------------------------


def anterior_sign(s: Subject) -> float:
    """+1 if anterior (sternum, heart) lies towards +columns on a lateral, else −1."""

    def key() -> float:
        back = centroid(s.mask("spine"))
        front = centroid(s.mask("sternum")) or centroid(s.mask("heart"))
        if back is None or front is None:
            return -1.0  # conventional display: patient facing the image left
        return 1.0 if front[1] > back[1] else -1.0

    v = s.cached("anterior_sign", key)
    assert isinstance(v, float)
    return v


def _lateral_landmark(s: Subject, rule: str, threshold: float, landmark: str) -> Finding:
    lungs = largest_component(s.lungs)
    if not lungs.any():
        return make(s, rule, Status.NOT_EVALUABLE, None, threshold, "no_lungs")
    if landmark == "apex":
        p = extreme(lungs, -1.0, 0.0, s.sy, s.sx)
    else:  # posterior costophrenic angle: the lowest lung row, its posterior-most pixel
        rows = np.flatnonzero(lungs.any(axis=1))
        r = int(rows[-1])
        cs = np.flatnonzero(lungs[r])
        p = (float(r), float(cs[-1] if anterior_sign(s) < 0 else cs[0]))
    assert p is not None
    value = s.margin_mm(p)
    status = Status.PASS if value >= threshold else Status.FAIL
    return make(s, rule, status, value, threshold, f"lateral_{status}", (s.point(p, landmark),))


def _lateral_base_cut(s: Subject, cfg: RulesConfig, found: Finding) -> Finding:
    """A lateral whose lungs end within ``lateral_costophrenic_end_tolerance_mm`` above the
    field's bottom edge with their last ``lateral_costophrenic_end_band_mm`` still at least
    ``lateral_costophrenic_end_fraction`` of their widest row: the base is cut, whatever the
    margin. The model's lungs stop short of a bottom edge that cuts them (up to ~14 mm on
    rules-cal5-l), so the cut posterior recess reads as a whole lung ending there; an intact
    recess narrows to a tip (docs/RULES.md, session 12)."""
    c = cfg.completeness
    ext = row_extent(s.lungs)
    if found.status is not Status.PASS or c.lateral_costophrenic_end_tolerance_mm < 0 or not ext:
        return found
    share = lungs_near_end_shares(
        s, ext, c.lateral_costophrenic_end_tolerance_mm, c.lateral_costophrenic_end_band_mm
    )["bottom"]
    if share < c.lateral_costophrenic_end_fraction:
        return found
    return make(
        s,
        found.rule,
        Status.FAIL,
        found.value,
        found.threshold,
        "lateral_base_cut",
        found.geometry,
        share=share,
    )


def posterior_wall(s: Subject) -> BoolMask:
    """Posterior ribs (both sides) within the lungs' rows: the posterior chest wall."""
    back = s.mask("ribs_posterior_right") | s.mask("ribs_posterior_left")
    ext = row_extent(s.lungs)
    if ext is None:
        return back
    rows = np.zeros(s.shape[0], dtype=bool)
    rows[ext[0] : ext[1] + 1] = True
    return back & rows[:, None]


def _sternum_outside(s: Subject, cfg: RulesConfig, front_sign: float) -> Finding:
    """No sternum on a lateral. When the lungs or heart run into the anterior field edge, the
    sternum in front of them is off the film: the chest is cut anteriorly (on the calibration
    laterals every such film was a deep anterior cut, −45 to −104 mm). Otherwise the sternum
    may just be unsegmented: not evaluable."""
    rule, t = "completeness.anteroposterior", cfg.completeness.anteroposterior_margin_mm
    tolerance = cfg.completeness.sternum_outside_edge_mm
    chest = s.lungs | s.mask("heart")
    p_front = extreme(chest, 0.0, front_sign, s.sy, s.sx)
    if tolerance < 0 or p_front is None:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "missing_ap")
    margin = s.margin_mm(p_front)
    if margin > tolerance:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "missing_ap")
    geometry = (s.point(p_front, "anterior chest"),)
    return make(s, rule, Status.FAIL, margin, t, "sternum_outside", geometry, where="anterior")


def anteroposterior(s: Subject, cfg: RulesConfig) -> Finding:
    """Sternum (front) and posterior chest wall (back ribs, else lungs) inside the field."""
    rule, t = "completeness.anteroposterior", cfg.completeness.anteroposterior_margin_mm
    front_sign = anterior_sign(s)
    sternum = s.mask("sternum")
    back = posterior_wall(s)
    if not back.any():
        back = s.lungs
    if not sternum.any() and back.any():
        return _sternum_outside(s, cfg, front_sign)
    if not sternum.any() or not back.any():
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "missing_ap")
    p_front = extreme(sternum, 0.0, front_sign, s.sy, s.sx)
    p_back = extreme(back, 0.0, -front_sign, s.sy, s.sx)
    assert p_front is not None and p_back is not None
    m_front, m_back = s.margin_mm(p_front), s.margin_mm(p_back)
    where = "anterior" if m_front <= m_back else "posterior"
    value = min(m_front, m_back)
    geometry = (s.point(p_front, "sternum"), s.point(p_back, "posterior wall"))
    status = Status.PASS if value >= t else Status.FAIL
    return make(s, rule, status, value, t, str(status), geometry, where=where)
