"""Organ completeness (脏器完整): each organ found, with a plausible size, and not truncated.

"Truncated" is measured as the length (mm) of the organ's outline lying on the field edge;
an organ that continues beyond a collimator shutter or the image border crosses that edge.
"""

from __future__ import annotations

import numpy as np

from qcnode.records import Finding, Geometry, Status
from qcnode.rules.completeness import SIDES
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Point, Subject, col_extent
from qcnode.rules.messages import make


def _found_and_whole(
    s: Subject,
    rule: str,
    names: tuple[str, ...],
    min_area: float,
    truncation_mm: float,
    *,
    check_truncation: bool = True,
) -> Finding:
    """Fail if a named structure is missing/too small or lies on the field edge."""
    geometry: list[Geometry] = []
    worst_cut, worst_name = 0.0, names[0]
    for name in names:
        m = s.mask(name)
        area = s.area_mm2(m)
        if area < min_area:
            return make(
                s,
                rule,
                Status.FAIL,
                area,
                min_area,
                "missing",
                structure=name.split("_")[0],
                side=name.split("_")[1] if "_" in name else "",
            )
        g = s.contour(m, name)
        if g is not None:
            geometry.append(g)
        if check_truncation:
            cut = s.edge_contact_mm(m)
            if cut > worst_cut:
                worst_cut, worst_name = cut, name
    if not check_truncation:
        return make(s, rule, Status.PASS, None, None, "found", tuple(geometry), structure=names[0])
    status = Status.FAIL if worst_cut > truncation_mm else Status.PASS
    key = "truncated" if status is Status.FAIL else "pass"
    return make(
        s,
        rule,
        status,
        worst_cut,
        truncation_mm,
        key,
        tuple(geometry),
        structure=worst_name.split("_")[0],
        side=worst_name.split("_")[1] if "_" in worst_name else "",
    )


def lungs(s: Subject, cfg: RulesConfig) -> Finding:
    """Frontal: both lungs; lateral: the superimposed lungs (their union)."""
    o = cfg.organs
    if s.view.value == "lateral":
        return _lateral_union(
            s,
            "organs.lungs",
            ("lung_right", "lung_left"),
            o.lung_min_area_mm2,
            o.truncation_fail_mm,
        )
    return _found_and_whole(
        s, "organs.lungs", ("lung_right", "lung_left"), o.lung_min_area_mm2, o.truncation_fail_mm
    )


def _lateral_union(
    s: Subject, rule: str, names: tuple[str, ...], min_area: float, truncation_mm: float
) -> Finding:
    m = np.zeros(s.shape, dtype=bool)
    for name in names:
        m |= s.mask(name)
    area = s.area_mm2(m)
    if area < min_area:
        return make(s, rule, Status.FAIL, area, min_area, "missing", structure="lung", side="")
    cut = s.edge_contact_mm(m)
    g = s.contour(m, "lungs")
    status = Status.FAIL if cut > truncation_mm else Status.PASS
    return make(
        s,
        rule,
        status,
        cut,
        truncation_mm,
        "truncated" if status is Status.FAIL else "pass",
        () if g is None else (g,),
        structure="lung",
        side="",
    )


def heart(s: Subject, cfg: RulesConfig) -> Finding:
    o = cfg.organs
    return _found_and_whole(
        s, "organs.heart", ("heart",), o.heart_min_area_mm2, o.truncation_fail_mm
    )


def sternum(s: Subject, cfg: RulesConfig) -> Finding:
    o = cfg.organs
    return _found_and_whole(
        s, "organs.sternum", ("sternum",), o.sternum_min_area_mm2, o.truncation_fail_mm
    )


def spine(s: Subject, cfg: RulesConfig) -> Finding:
    """The spine runs past every field: found, and not truncated beside the lungs."""
    from qcnode.rules.geometry import row_extent

    o, rule = cfg.organs, "organs.spine"
    m = s.mask("spine")
    ext = row_extent(s.lungs)
    if ext is not None:
        rows = np.zeros(s.shape[0], dtype=bool)
        rows[ext[0] : ext[1] + 1] = True
        m = m & rows[:, None]
    area = s.area_mm2(m)
    if area < o.spine_min_area_mm2:
        return make(s, rule, Status.FAIL, area, o.spine_min_area_mm2, "missing")
    # the lungs' own top/bottom rows are not an edge of the spine: look at its sides only
    inner = m.copy()
    if ext is not None:
        inner[ext[0]] = False
        inner[ext[1]] = False
    cut = s.edge_contact_mm(inner)
    g = s.contour(m, "spine")
    status = Status.FAIL if cut > o.truncation_fail_mm else Status.PASS
    return make(
        s,
        rule,
        status,
        cut,
        o.truncation_fail_mm,
        "truncated" if status is Status.FAIL else "found",
        () if g is None else (g,),
        structure="spine",
    )


def clavicles(s: Subject, cfg: RulesConfig) -> Finding:
    """Both clavicles found (positioning.rotation needs their medial ends)."""
    rule, t = "organs.clavicles", cfg.organs.clavicle_min_area_mm2
    areas = {side: s.area_mm2(s.mask(f"clavicle_{side}")) for side in SIDES}
    worst = min(areas, key=lambda k: areas[k])
    geometry = tuple(
        g for side in SIDES if (g := s.contour(s.mask(f"clavicle_{side}"), f"clavicle {side}"))
    )
    if areas[worst] < t:
        return make(
            s,
            rule,
            Status.FAIL,
            areas[worst],
            t,
            "missing",
            geometry,
            structure="clavicle",
            side=worst,
        )
    return make(s, rule, Status.PASS, areas[worst], t, "pass", geometry)


def dome(s: Subject, side: str) -> Point | None:
    """The hemidiaphragm dome under a lung: the highest point of its lower border.

    Searched over the lung's middle half (columns), where the dome lies; the costophrenic
    recess and the cardiophrenic angle are excluded.
    """
    lung = s.mask(f"lung_{side}")
    ext = col_extent(lung)
    if ext is None:
        return None
    c0, c1 = ext
    w = c1 - c0 + 1
    lo, hi = c0 + w // 4, c1 - w // 4
    if hi < lo:
        lo, hi = c0, c1
    sub = lung[:, lo : hi + 1]
    has = sub.any(axis=0)
    if not has.any():
        return None
    rows = np.arange(sub.shape[0])[:, None]
    bottom = np.where(sub, rows, -1).max(axis=0).astype(float)
    bottom[~has] = np.inf
    best = bottom.min()
    cols = np.flatnonzero(bottom <= best)
    return (float(best), float(lo + cols.mean()))


def diaphragm(s: Subject, cfg: RulesConfig) -> Finding:
    """Both hemidiaphragm domes inside the field (the lung's lower border shown)."""
    rule, t = "organs.diaphragm", cfg.organs.diaphragm_margin_mm
    points = {side: dome(s, side) for side in SIDES}
    missing = [side for side, p in points.items() if p is None]
    if missing:
        return make(s, rule, Status.NOT_EVALUABLE, None, t, "missing", side=missing[0])
    margins = {side: s.margin_mm(p) for side, p in points.items() if p is not None}
    # a dome on the field edge means the lung was cut there: the dome is not shown
    for side, p in points.items():
        assert p is not None
        below = (int(p[0]) + 1, round(p[1]))
        if below[0] >= s.shape[0] or not s.field[below]:
            margins[side] = min(margins[side], 0.0)
    worst = min(margins, key=lambda k: margins[k])
    geometry = tuple(s.point(p, f"dome {side}") for side, p in points.items() if p is not None)
    status = Status.PASS if margins[worst] >= t else Status.FAIL
    return make(s, rule, status, margins[worst], t, str(status), geometry, side=worst)
