"""Ground truth for every rule of DESIGN §4, from exact masks and known parameters.

Deliberately independent of the rules' measurements (only the rule-ID catalogue is shared):
the evaluation compares the two.
Thresholds come from etc/rules.toml; rules whose threshold is "calibrated" get their truth
status from a known generation parameter or an exact (noise-free, exact-mask) measurement,
with the criteria below, so that the rules engineer can calibrate the measured rule on them.
The 3D pose geometry behind positioning.rotation / .tilt is in qcnode.synth.pose; re-deriving
a stored set's truth in qcnode.synth.retruth.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qcnode.errors import QcnodeError
from qcnode.rules import catalogue
from qcnode.synth import pose

Mask = npt.NDArray[np.bool_]

# Truth criteria for the "calibrated" rules (definitions of the synthetic ground truth).
LUNG_VISIBLE_MIN = 0.95  # organs.*: visible fraction of the projected organ
CLAVICLE_VISIBLE_MIN = 0.5
CONTRAST_FAIL_SCALE = 0.55  # exposure.contrast fails when the display range was flattened below
NOISE_FAIL = 0.03  # exposure.noise: std of the noise in lung fields, display units [0, 1]
SPINE_CNR_FAIL = 1.5  # exposure.spine_through_heart: spine vs paraspinal heart, clean Δ / σ
SPINE_DELTA_FAIL = 0.02  # … or the clean display difference itself
BLUR_FAIL_MM = 3.0  # exposure.sharpness: FWHM of motion + extra blur
TILT_FAIL_DEG = 8.0  # positioning.tilt: apparent lordotic/kyphotic tilt (pose.apparent_tilt)
ARMS_OVERLAP_FAIL_MM2 = 50.0  # positioning.arms (lateral)

# The rule IDs are the contract of DESIGN §4 and live in one place; only the names are
# shared, every truth value below is computed here, independently of the rules' measurements.
FRONTAL_RULES = catalogue.FRONTAL_RULES
# The truth does not label the lateral orientation and spacing checks.
LATERAL_RULES = tuple(
    r for r in catalogue.LATERAL_RULES if r not in ("positioning.orientation", "metadata.spacing")
)


class TruthError(QcnodeError, ValueError):
    """A sample that cannot yield its ground truth: a frontal projection without both lungs,
    a lateral one without any (the CT's labels lack a lung). A QcnodeError, so that
    ``qcnode synth`` reports it in one line; still a ValueError for callers that catch that."""


def load_thresholds(path: Path | None = None) -> dict[str, Any]:
    path = path or Path(__file__).resolve().parents[2] / "etc" / "rules.toml"
    with path.open("rb") as fh:
        return tomllib.load(fh)


@dataclass(frozen=True)
class TruthInput:
    """What the truth needs about one composed sample (projection frame unless noted)."""

    view: str  # frontal | lateral
    full_masks: dict[str, Mask]  # un-cropped, after 2D bone moves
    field_rect: tuple[int, int, int, int]  # exposed rows [r0, r1), cols [c0, c1)
    window: tuple[int, int, int, int]
    window_masks: dict[str, Mask]  # window frame, clipped to the field
    display: npt.NDArray[np.float32]  # window frame, [0, 1]
    display_clean: npt.NDArray[np.float32]
    stored_window: npt.NDArray[np.uint16]  # window frame, MONOCHROME2 sense, quantised
    bits_stored: int
    pitch_mm: float
    params: dict[str, Any]
    rib_count: int
    header_view_position: str
    header_spacing_ok: bool


def view_mismatch_status(thr: dict[str, Any]) -> str:
    """The status of a header ViewPosition naming the other view (rules.toml policy)."""
    return str(thr.get("metadata", {}).get("view_mismatch_status", "fail"))


def _r(status: str, value: float | None, unit: str | None) -> dict[str, Any]:
    v = None if value is None or not math.isfinite(value) else round(float(value), 3)
    return {"status": status, "value": v, "unit": unit}


def _bbox(m: Mask) -> tuple[int, int, int, int] | None:
    rows = np.nonzero(m.any(axis=1))[0]
    cols = np.nonzero(m.any(axis=0))[0]
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _inside_margin(r: float, c: float, rect: tuple[int, int, int, int]) -> float:
    """Pixels from (r, c) to the nearest edge of the field rectangle, negative when outside."""
    r0, r1, c0, c1 = rect
    return min(r - r0, (r1 - 1) - r, c - c0, (c1 - 1) - c)


def _visible_fraction(m: Mask, rect: tuple[int, int, int, int]) -> float:
    total = int(m.sum())
    if total == 0:
        return 0.0
    r0, r1, c0, c1 = rect
    return float(m[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)].sum()) / total


def _margin_status(margin_mm: float, thr: float) -> str:
    return "pass" if margin_mm >= thr else "fail"


def _dome(abdomen: Mask, lung: Mask) -> tuple[int, int] | None:
    """Top of the abdomen under the lung's columns: the hemidiaphragm dome (row, col)."""
    bb = _bbox(lung)
    if bb is None:
        return None
    cols = np.zeros(abdomen.shape[1], bool)
    cols[bb[2] : bb[3] + 1] = True
    a = abdomen & cols[None, :]
    rows = np.nonzero(a.any(axis=1))[0]
    if rows.size == 0:
        return None
    r = int(rows[0])
    c = int(np.median(np.nonzero(a[r])[0]))
    return r, c


# ---- the lateral costophrenic angle (frontal) ------------------------------------------------
#
# The radiographer's lateral costophrenic angle is where the visible lung meets the lateral
# chest wall at the diaphragm (DESIGN §4 "both lateral costophrenic angles inside"; EUR 16260
# "the whole rib cage above the diaphragm"). The whole 3D lung projection also holds the
# posterior recesses, which on a frontal project behind the liver below the visible dome:
# until 2026-11-27 ("whole-v0") the landmark was taken on the whole projection, i.e. on that
# hidden recess. Since "visible-v1" it is taken on the visible lung (generate.visible_lungs);
# since "visible-v2" (2026-11-27, generator v1.16) on the lung field cut medially at the
# mediastinal column: the "lateral third" is of the field's own extent, which the v1 lungs
# stretched over the spine (7 of eval-v2's 2 000 frontals changed status).
COSTOPHRENIC_REVISION = "visible-v2"  # params.truth_rederived.costophrenic of rewritten JSONs


def visible_lung_masks(masks: dict[str, Mask]) -> dict[str, Mask]:
    """{side: the lung as a radiograph shows it}: the ``lung_*_visible`` masks when present,
    else the same cut (below the top of the abdomen's projection per column) made here."""
    if all(f"lung_{s}_visible" in masks for s in ("right", "left")):
        return {s: masks[f"lung_{s}_visible"] for s in ("right", "left")}
    abdomen = masks["abdomen_right"] | masks["abdomen_left"]
    rows = abdomen.shape[0]
    top = np.where(abdomen.any(axis=0), abdomen.argmax(axis=0), rows)
    above = np.arange(rows)[:, None] < top[None, :]
    return {s: masks[f"lung_{s}"] & above for s in ("right", "left")}


def costophrenic_point(lung: Mask, side: str) -> tuple[int, int] | None:
    """The lateral costophrenic angle of one frontal lung (projection frame, the patient's
    right lung on the image left): the lowest pixel of the lung's lateral third (of its own
    column extent), at the outermost column of that row. None for an empty mask."""
    b = _bbox(lung)
    if b is None:
        return None
    w3 = (b[3] - b[2]) / 3.0
    cols = np.arange(lung.shape[1])
    lat = lung & ((cols <= b[2] + w3) if side == "right" else (cols >= b[3] - w3))[None, :]
    rr = int(np.nonzero(lat.any(axis=1))[0][-1])
    cc = np.nonzero(lat[rr])[0]
    return rr, int(cc[0] if side == "right" else cc[-1])


def costophrenic_margin_mm(
    lung: Mask, side: str, rect: tuple[int, int, int, int], pitch_mm: float
) -> float:
    """Signed margin (mm) of a lung's lateral costophrenic angle inside the field rect;
    -inf for an empty lung (nothing of it on the film)."""
    pt = costophrenic_point(lung, side)
    return -math.inf if pt is None else _inside_margin(pt[0], pt[1], rect) * pitch_mm


def _exposure_rules(t: TruthInput, thr: dict[str, Any], out: dict[str, Any]) -> None:
    e = thr["exposure"]
    params = t.params
    di = float(params["deviation_index"])
    st = (
        "fail"
        if abs(di) > e["deviation_index_fail"]
        else ("warn" if abs(di) > e["deviation_index_warn"] else "pass")
    )
    out["exposure.deviation_index"] = _r(st, di, "1")
    wm = t.window_masks
    lung = wm["lung_right"] | wm["lung_left"]
    top = (1 << t.bits_stored) - 1
    if lung.sum() > 0:
        clipped = (t.stored_window == 0) | (t.stored_window == top)
        sat = 100.0 * float(clipped[lung].mean())
        out["exposure.saturation"] = _r(
            "fail" if sat > e["saturation_fail_percent"] else "pass", sat, "%"
        )
    else:
        out["exposure.saturation"] = _r("not_evaluable", None, "%")
    pure_lung = lung & ~(wm["heart"] | wm["spine"] | wm["scapula_right"] | wm["scapula_left"])
    pure_lung &= ~(wm["clavicle_right"] | wm["clavicle_left"] | wm["humerus_right"])
    pure_lung &= ~wm["humerus_left"]
    medi = (
        (wm["heart"] | wm["spine"]) & ~lung if t.view == "frontal" else wm["heart"] & ~(wm["spine"])
    )
    if t.view == "lateral":
        pure_lung = lung & ~wm["heart"] & ~wm["spine"]
    if pure_lung.sum() > 50 and medi.sum() > 50:
        contrast = float(np.median(t.display_clean[medi]) - np.median(t.display_clean[pure_lung]))
        noise = float(np.std((t.display - t.display_clean)[pure_lung]))
        cs = float(params["exposure"]["contrast_scale"])
        out["exposure.contrast"] = _r("fail" if cs < CONTRAST_FAIL_SCALE else "pass", contrast, "1")
        out["exposure.noise"] = _r("fail" if noise > NOISE_FAIL else "pass", noise, "1")
    else:
        out["exposure.contrast"] = _r("not_evaluable", None, "1")
        out["exposure.noise"] = _r("not_evaluable", None, "1")
    ex = params["exposure"]
    blur = math.hypot(float(ex["motion_blur_mm"]), 2.355 * float(ex["extra_blur_mm"]))
    out["exposure.sharpness"] = _r("fail" if blur > BLUR_FAIL_MM else "pass", blur, "mm")


def _spine_through_heart(t: TruthInput) -> dict[str, Any]:
    wm = t.window_masks
    heart, spine = wm["heart"], wm["spine"]
    behind = heart & spine
    if behind.sum() < 30:
        return _r("not_evaluable", None, "1")
    from scipy import ndimage

    near = ndimage.binary_dilation(spine, iterations=max(2, round(12.0 / t.pitch_mm)))
    para = heart & near & ~spine
    if para.sum() < 30:
        return _r("not_evaluable", None, "1")
    delta = float(np.median(t.display_clean[behind]) - np.median(t.display_clean[para]))
    sigma = float(np.std((t.display - t.display_clean)[heart])) + 1e-4
    cnr = delta / sigma
    ok = cnr >= SPINE_CNR_FAIL and delta >= SPINE_DELTA_FAIL
    return _r("pass" if ok else "fail", cnr, "1")


def _frontal(t: TruthInput, thr: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    c, p = thr["completeness"], t.pitch_mm
    fm, rect = t.full_masks, t.field_rect
    lungs = {s: fm[f"lung_{s}"] for s in ("right", "left")}
    bbs = {s: _bbox(m) for s, m in lungs.items()}
    if any(b is None for b in bbs.values()):
        raise TruthError("frontal projection without both lungs: no truth for this sample")
    apex, wall = [], []
    visible = visible_lung_masks(fm)
    cp = [costophrenic_margin_mm(visible[s], s, rect, p) for s in ("right", "left")]
    for side, m in lungs.items():
        b = bbs[side]
        assert b is not None
        top_r = b[0]
        top_c = float(np.mean(np.nonzero(m[top_r])[0]))
        apex.append(_inside_margin(top_r, top_c, rect) * p)
        # Lateral wall: the lung's most lateral pixel.
        lc = b[2] if side == "right" else b[3]
        lr = float(np.mean(np.nonzero(m[:, lc])[0]))
        wall.append(_inside_margin(lr, lc, rect) * p)
    out["completeness.apices"] = _r(
        _margin_status(min(apex), c["apices_margin_mm"]), min(apex), "mm"
    )
    out["completeness.costophrenic"] = _r(
        _margin_status(min(cp), c["costophrenic_margin_mm"]), min(cp), "mm"
    )
    out["completeness.lateral_walls"] = _r(
        _margin_status(min(wall), c["lateral_walls_margin_mm"]), min(wall), "mm"
    )
    both = _bbox(lungs["right"] | lungs["left"])
    assert both is not None
    r0, r1, c0, c1 = rect
    excess = max(both[0] - r0, (r1 - 1) - both[1], both[2] - c0, (c1 - 1) - both[3]) * p
    out["completeness.collimation"] = _r(
        "warn" if excess > c["collimation_warn_mm"] else "pass", excess, "mm"
    )
    mid = (both[2] + both[3]) / 2.0
    off = abs(mid - (c0 + c1 - 1) / 2.0) / max(c1 - c0, 1)
    out["completeness.centering"] = _r(
        "warn" if off > c["centering_warn_fraction"] else "pass", off, "1"
    )
    vis_l = min(_visible_fraction(m, rect) for m in lungs.values())
    out["organs.lungs"] = _r("pass" if vis_l >= LUNG_VISIBLE_MIN else "fail", vis_l, "1")
    vis_h = _visible_fraction(fm["heart"], rect)
    out["organs.heart"] = _r("pass" if vis_h >= LUNG_VISIBLE_MIN else "fail", vis_h, "1")
    vis_c = min(_visible_fraction(fm[f"clavicle_{s}"], rect) for s in ("right", "left"))
    out["organs.clavicles"] = _r("pass" if vis_c >= CLAVICLE_VISIBLE_MIN else "fail", vis_c, "1")
    domes = [
        _dome(fm["abdomen_right"], lungs["right"]),
        _dome(fm["abdomen_left"], lungs["left"]),
    ]
    if any(d is None for d in domes):
        out["organs.diaphragm"] = _r("not_evaluable", None, "mm")
    else:
        dm = min(_inside_margin(d[0], d[1], rect) for d in domes if d is not None) * p
        out["organs.diaphragm"] = _r("pass" if dm >= 0 else "fail", dm, "mm")
    _exposure_rules(t, thr, out)
    out["exposure.spine_through_heart"] = _spine_through_heart(t)
    pos = thr["positioning"]
    out["positioning.rotation"] = rotation_truth(t.params, thr)
    scap = 0.0
    for side in ("right", "left"):
        ov = fm[f"scapula_{side}"] & lungs[side]
        if ov.any():
            scap = max(scap, float(ov.sum(axis=1).max()) * p)
    out["positioning.scapulae"] = _r(
        "fail" if scap > pos["scapulae_fail_mm"] else "pass", scap, "mm"
    )
    n = t.rib_count
    st = (
        "pass"
        if n >= pos["inspiration_pass_ribs"]
        else ("warn" if n >= pos["inspiration_warn_ribs"] else "fail")
    )
    out["positioning.inspiration"] = _r(st, float(n), "{ribs}")
    out["positioning.tilt"] = tilt_truth(t.params)
    bad = bool(t.params["flipped"]) or bool(t.params["rotated180"])
    out["positioning.orientation"] = _r("fail" if bad else "pass", None, None)
    out["metadata.view"] = _r(
        "pass" if t.header_view_position in ("PA", "AP") else view_mismatch_status(thr),
        None,
        None,
    )
    out["metadata.spacing"] = _r("pass" if t.header_spacing_ok else "fail", None, None)
    return out


def rotation_truth(params: dict[str, Any], thr: dict[str, Any]) -> dict[str, Any]:
    rot = abs(pose.apparent_rotation(params))
    return _r("fail" if rot > thr["positioning"]["rotation_fail_deg"] else "pass", rot, "deg")


def tilt_truth(params: dict[str, Any]) -> dict[str, Any]:
    tilt = abs(pose.apparent_tilt(params))
    return _r("fail" if tilt > TILT_FAIL_DEG else "pass", tilt, "deg")


def _lateral(t: TruthInput, thr: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    c, p = thr["completeness"], t.pitch_mm
    fm, rect = t.full_masks, t.field_rect
    lung = fm["lung_right"] | fm["lung_left"]
    b = _bbox(lung)
    if b is None:
        raise TruthError("lateral projection without lungs: no truth for this sample")
    top_c = float(np.mean(np.nonzero(lung[b[0]])[0]))
    apex = _inside_margin(b[0], top_c, rect) * p
    out["completeness.apices"] = _r(_margin_status(apex, c["apices_margin_mm"]), apex, "mm")
    low_c = float(np.max(np.nonzero(lung[b[1]])[0]))  # posterior recess: posterior-most
    cp = _inside_margin(b[1], low_c, rect) * p
    out["completeness.costophrenic"] = _r(_margin_status(cp, c["costophrenic_margin_mm"]), cp, "mm")
    sb = _bbox(fm["sternum"])
    ribs = fm["ribs_posterior_right"] | fm["ribs_posterior_left"]
    rows_l = np.zeros(lung.shape[0], bool)
    rows_l[b[0] : b[1] + 1] = True
    rb = _bbox(ribs & rows_l[:, None])
    if sb is None or rb is None:
        out["completeness.anteroposterior"] = _r("not_evaluable", None, "mm")
    else:
        ant_r = float(np.mean(np.nonzero(fm["sternum"][:, sb[2]])[0]))
        post_r = float(np.mean(np.nonzero((ribs & rows_l[:, None])[:, rb[3]])[0]))
        ap = min(_inside_margin(ant_r, sb[2], rect), _inside_margin(post_r, rb[3], rect)) * p
        out["completeness.anteroposterior"] = _r(
            _margin_status(ap, c["anteroposterior_margin_mm"]), ap, "mm"
        )
    for organ, m in (
        ("lungs", lung),
        ("heart", fm["heart"]),
        ("spine", fm["spine"] & rows_l[:, None]),
        ("sternum", fm["sternum"]),
    ):
        vis = _visible_fraction(m, rect)
        out[f"organs.{organ}"] = _r("pass" if vis >= LUNG_VISIBLE_MIN else "fail", vis, "1")
    _exposure_rules(t, thr, out)
    pos = thr["positioning"]
    # Posterior rib contours of both sides: posterior-most rib pixel per row, mid thorax.
    h = b[1] - b[0]
    seps = []
    for r in range(b[0] + int(0.3 * h), b[0] + int(0.7 * h)):
        cr = np.nonzero(fm["ribs_posterior_right"][r])[0]
        cl = np.nonzero(fm["ribs_posterior_left"][r])[0]
        if cr.size and cl.size:
            seps.append(abs(float(cr[-1]) - float(cl[-1])))
    if seps:
        sep = float(np.median(seps)) * p
        out["positioning.rotation"] = _r(
            "fail" if sep > pos["lateral_rotation_fail_mm"] else "pass", sep, "mm"
        )
    else:
        out["positioning.rotation"] = _r("not_evaluable", None, "mm")
    arms = (fm["humerus_right"] | fm["humerus_left"]) & lung
    area = float(arms.sum()) * p * p
    out["positioning.arms"] = _r("fail" if area > ARMS_OVERLAP_FAIL_MM2 else "pass", area, "mm2")
    n = t.rib_count
    st = (
        "pass"
        if n >= pos["inspiration_pass_ribs"]
        else ("warn" if n >= pos["inspiration_warn_ribs"] else "fail")
    )
    out["positioning.inspiration"] = _r(st, float(n), "{ribs}")
    out["metadata.view"] = _r(
        "pass" if t.header_view_position in ("LL", "RL") else view_mismatch_status(thr),
        None,
        None,
    )
    return out


def rules_truth(t: TruthInput, thresholds: dict[str, Any]) -> dict[str, Any]:
    """{rule id: {status, value, unit}} for every rule of the sample's view."""
    if t.view == "frontal":
        out = _frontal(t, thresholds)
        assert set(out) == set(FRONTAL_RULES)
    elif t.view == "lateral":
        out = _lateral(t, thresholds)
        assert set(out) == set(LATERAL_RULES)
    else:
        return {}
    return out


if __name__ == "__main__":  # the documented re-derivation command, now in retruth.py
    from qcnode.synth.retruth import main

    raise SystemExit(main())
