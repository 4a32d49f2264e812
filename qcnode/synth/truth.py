"""Ground truth for every rule of DESIGN §4, from exact masks and known parameters.

Deliberately independent of the rules' measurements (only the rule-ID catalogue is shared):
the evaluation compares the two.
Thresholds come from etc/rules.toml; rules whose threshold is "calibrated" get their truth
status from a known generation parameter or an exact (noise-free, exact-mask) measurement,
with the criteria below, so that the rules engineer can calibrate the measured rule on them.
"""

from __future__ import annotations

import functools
import json
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qcnode.rules import catalogue

Mask = npt.NDArray[np.bool_]

# Truth criteria for the "calibrated" rules (definitions of the synthetic ground truth).
LUNG_VISIBLE_MIN = 0.95  # organs.*: visible fraction of the projected organ
CLAVICLE_VISIBLE_MIN = 0.5
CONTRAST_FAIL_SCALE = 0.55  # exposure.contrast fails when the display range was flattened below
NOISE_FAIL = 0.03  # exposure.noise: std of the noise in lung fields, display units [0, 1]
SPINE_CNR_FAIL = 1.5  # exposure.spine_through_heart: spine vs paraspinal heart, clean Δ / σ
SPINE_DELTA_FAIL = 0.02  # … or the clean display difference itself
BLUR_FAIL_MM = 3.0  # exposure.sharpness: FWHM of motion + extra blur
TILT_FAIL_DEG = 8.0  # positioning.tilt: apparent lordotic/kyphotic tilt (see apparent_tilt)
STANDARD_SID_MM = 1800.0  # positioning.tilt: the PA distance a "neutral" projection refers to
ARMS_OVERLAP_FAIL_MM2 = 50.0  # positioning.arms (lateral)

# The rule IDs are the contract of DESIGN §4 and live in one place; only the names are
# shared, every truth value below is computed here, independently of the rules' measurements.
FRONTAL_RULES = catalogue.FRONTAL_RULES
# The truth does not label the lateral orientation and spacing checks.
LATERAL_RULES = tuple(
    r for r in catalogue.LATERAL_RULES if r not in ("positioning.orientation", "metadata.spacing")
)


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
# hidden recess. Since "visible-v1" it is taken on the visible lung (generate.visible_lungs).
COSTOPHRENIC_REVISION = "visible-v1"  # params.truth_rederived.costophrenic of rewritten JSONs


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


# ---- radiographic pose geometry (positioning.rotation and positioning.tilt) ----------------
#
# A radiographer judges rotation by the medial clavicle ends against the spinous processes
# (EUR 16260) and tilt by the clavicles against the apices, i.e. by the anatomy as it lies,
# not by a pose parameter. The one CT's own pose is neither symmetric (its clavicle heads are
# ≈ 3.3° rotated against its spinous processes) nor free of elastic asymmetry once deformed.
# So the truth takes 3D landmarks from the CT's label volumes, moves them through the
# sample's known 3D edit (habitus scale, elastic warp, rotation, tilt — the renderer's own
# transform, inverted) and measures the angles there. Nothing here reads a mask or a pixel.


@dataclass(frozen=True)
class Landmarks:
    """CT patient-frame points (x left, y anterior, z superior; mm) of the reference pose."""

    clavicle_right: tuple[float, float, float]  # centre of the clavicle's medial 10 mm
    clavicle_left: tuple[float, float, float]
    spinous: tuple[float, float, float]  # spinous-process tips at the clavicle heads' level
    apex: tuple[float, float, float]  # top of the lungs (mean of both apices)


def _frame_points(bits: npt.NDArray[Any], bit: int, spacing: Any, origin: Any) -> Any:
    zz, yy, xx = np.nonzero((bits.astype(np.int64) >> bit) & 1)
    return np.stack(
        [
            (xx - origin[2]) * spacing[2],
            (yy - origin[1]) * spacing[1],
            (zz - origin[0]) * spacing[0],
        ],
        axis=1,
    )


@functools.cache
def ct_landmarks() -> Landmarks:
    """The reference landmarks of the CT (qcnode.synth.ct; cached per process).

    Clavicle medial end: centre of the clavicle's voxels within 10 mm of its most medial
    voxel. Spinous processes: in each CT slice within ±20 mm of the clavicle heads' level,
    the spine's voxels within 8 mm of its posterior-most one; their mean. Apex: the mean of
    each lung's topmost voxels.
    """
    from qcnode.synth import ct as ctmod

    ct = ctmod.load()
    bone = ct.bone_bits.numpy()
    soft = ct.soft_bits.numpy()
    sp, og = ct.spacing_mm, ct.origin_index
    ends = {}
    for side, sign in (("right", 1.0), ("left", -1.0)):  # medial: +x for the right clavicle
        pts = _frame_points(bone, ctmod.BONE_BITS[f"clavicle_{side}"], sp, og)
        medial = sign * pts[:, 0]
        ends[side] = pts[medial >= medial.max() - 10.0].mean(axis=0)
    level = (ends["right"][2] + ends["left"][2]) / 2.0
    spine = _frame_points(bone, ctmod.BONE_BITS["spine"], sp, og)
    tips = []
    for z in np.unique(spine[:, 2]):
        if abs(z - level) <= 20.0:
            sl = spine[spine[:, 2] == z]
            tips.append(sl[sl[:, 1] <= sl[:, 1].min() + 8.0].mean(axis=0))
    apices = []
    for side in ("right", "left"):
        pts = _frame_points(soft, ctmod.SOFT_BITS[f"lung_{side}"], sp, og)
        apices.append(pts[pts[:, 2] >= pts[:, 2].max() - 1e-6].mean(axis=0))

    def t(v: Any) -> tuple[float, float, float]:
        return (float(v[0]), float(v[1]), float(v[2]))

    return Landmarks(
        clavicle_right=t(ends["right"]),
        clavicle_left=t(ends["left"]),
        spinous=t(np.mean(tips, axis=0)),
        apex=t(np.mean(apices, axis=0)),
    )


def pose_of(params: dict[str, Any]) -> Any:
    """The render.Pose recorded in a sample's params; keys a caller left out (a hand-built
    test pose) take render.Pose's defaults, i.e. the CT's reference pose."""
    from qcnode.synth import render

    d = render.Pose()
    cx, cz = params.get("beam_center_mm", d.center_mm)
    return render.Pose(
        view_position=str(params.get("view_position", d.view_position)),
        sid_mm=float(params.get("sid_mm", d.sid_mm)),
        rotation_deg=float(params.get("rotation_deg", d.rotation_deg)),
        tilt_deg=float(params.get("tilt_deg", d.tilt_deg)),
        scale=tuple(float(v) for v in params.get("scale_zyx", d.scale)),  # type: ignore[arg-type]
        elastic_mm=float(params.get("elastic_mm", d.elastic_mm)),
        elastic_seed=int(params.get("elastic_seed", d.elastic_seed)),
        center_mm=(float(cx), float(cz)),
    )


def positioned(points: npt.NDArray[np.float64], params: dict[str, Any]) -> Any:
    """CT-frame points (N, 3) → the positioned patient frame of a sample's pose.

    The renderer maps positioned → CT (``render._to_ct``: un-rotate, un-scale, then the
    elastic terms one after another); here that map is inverted: each elastic term in reverse
    order by fixed-point iteration (amplitudes of a few mm over wavelengths of 18–40 cm: a
    strong contraction), then scale and rotation.
    Bones do not take the diaphragm edit.
    """
    import torch

    from qcnode.synth import render

    pose = pose_of(params)
    sz, sy, sx = pose.scale
    q = torch.as_tensor(np.asarray(points, dtype=np.float64))
    # _to_ct subtracts the terms one after the other: undo them in reverse order, each by
    # fixed-point iteration of u = v + sin(u·k + φ)·a
    for k, phase, amp in reversed(render._elastic_terms(pose)):
        kd, ad = k.double(), amp.double()
        u = q.clone()
        for _ in range(50):
            nxt = q + torch.sin(u @ kd + phase).unsqueeze(-1) * ad
            done = float((nxt - u).abs().max()) < 1e-7
            u = nxt
            if done:
                break
        q = u
    q = q * torch.tensor([sx, sy, sz], dtype=torch.float64)
    rot = render._rot(pose).double()
    return (q @ rot.T).numpy()


def apparent_rotation(params: dict[str, Any], lm: Landmarks | None = None) -> float:
    """Degrees the patient must turn about the long axis for the medial clavicle ends to lie
    symmetric about the spinous processes (signed; positive: left side anterior).

    With X (left) and Y (anterior) sums S_X = X_R + X_L − 2·X_S, S_Y likewise, a further turn
    by −θ with tan θ = S_X / S_Y makes the projected ends equidistant from the spinous line.
    """
    lm = lm or ct_landmarks()
    pts = positioned(np.array([lm.clavicle_right, lm.clavicle_left, lm.spinous]), params)
    sx_ = pts[0, 0] + pts[1, 0] - 2.0 * pts[2, 0]
    sy_ = pts[0, 1] + pts[1, 1] - 2.0 * pts[2, 1]
    return -math.degrees(math.atan2(sx_, sy_))


def apparent_tilt(params: dict[str, Any], lm: Landmarks | None = None) -> float:
    """Degrees of lordotic (+) / kyphotic (−) projection of the upper thorax.

    Two parts, both what makes the clavicles project high or low against the apices:
    - the patient: the turn of the apex → medial-clavicle vector in the sagittal plane
      against the reference pose (tilt, with habitus scale and elastic warp);
    - the beam: at the apices' height h above the central ray a cone beam runs at atan(h/SID)
      to the axial plane; cephalad through the patient from the front on an AP film
      (lordotic), from the back on a PA (kyphotic). Referred to a standard PA at 180 cm, so
      that a straight patient on a standard PA reads 0; an AP at 110 cm adds ≈ 10°.
    """
    lm = lm or ct_landmarks()
    mid = (np.array(lm.clavicle_right) + np.array(lm.clavicle_left)) / 2.0
    ref = np.array([lm.apex, mid])
    pts = positioned(ref, params)

    def angle(a: Any, b: Any) -> float:  # sagittal direction of apex → clavicle heads
        return math.atan2(float(b[2] - a[2]), float(b[1] - a[1]))

    patient = math.degrees(angle(pts[0], pts[1]) - angle(ref[0], ref[1]))
    pose = pose_of(params)
    h = float((pts[0, 2] + pts[1, 2]) / 2.0) - pose.center_mm[1]
    sid = pose.sid_mm
    s = 1.0 if pose.view_position == "AP" else -1.0
    beam = math.degrees(s * math.atan(h / sid) + math.atan(h / STANDARD_SID_MM))
    return patient + beam


def _frontal(t: TruthInput, thr: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    c, p = thr["completeness"], t.pitch_mm
    fm, rect = t.full_masks, t.field_rect
    lungs = {s: fm[f"lung_{s}"] for s in ("right", "left")}
    bbs = {s: _bbox(m) for s, m in lungs.items()}
    if any(b is None for b in bbs.values()):
        raise ValueError("frontal projection without both lungs")
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
    rot = abs(apparent_rotation(params))
    return _r("fail" if rot > thr["positioning"]["rotation_fail_deg"] else "pass", rot, "deg")


def tilt_truth(params: dict[str, Any]) -> dict[str, Any]:
    tilt = abs(apparent_tilt(params))
    return _r("fail" if tilt > TILT_FAIL_DEG else "pass", tilt, "deg")


def _lateral(t: TruthInput, thr: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    c, p = thr["completeness"], t.pitch_mm
    fm, rect = t.full_masks, t.field_rect
    lung = fm["lung_right"] | fm["lung_left"]
    b = _bbox(lung)
    if b is None:
        raise ValueError("lateral projection without lungs")
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


# ---- re-deriving stored truth (no re-rendering) ---------------------------------------------

_ORDER = {"pass": 0, "not_evaluable": 0, "warn": 1, "fail": 2}
TRUTH_REVISION = "positioning-3d-v1"  # recorded in params.truth_rederived of changed samples


def retruth(set_dir: Path) -> dict[str, int]:
    """Recompute the frontal ``positioning.rotation`` and ``positioning.tilt`` truth of a
    stored set from each sample's recorded pose parameters and the CT's landmarks (today's
    definitions above), rewrite changed JSONs atomically and recompute ``verdict_expected``.

    Needs the CT (scripts/fetch_ct), not the renderer: seconds for a few thousand samples.
    """
    thr = load_thresholds()
    ct_landmarks()  # load the CT once, up front (fails early without it)
    changed: dict[str, int] = {"samples": 0, "rewritten": 0}
    for _, path, doc in _frontal_docs(set_dir):
        changed["samples"] += 1
        p = doc["params"]
        new = {
            "positioning.rotation": rotation_truth(p, thr),
            "positioning.tilt": tilt_truth(p),
        }
        dirty = False
        for rule, value in new.items():
            old = doc["rules"].get(rule)
            if old == value:
                continue
            if old is None or old["status"] != value["status"]:
                key = f"{rule}:{'?' if old is None else old['status']}->{value['status']}"
                changed[key] = changed.get(key, 0) + 1
            doc["rules"][rule] = value
            dirty = True
        if dirty:
            _save_rederived(path, doc, "positioning", TRUTH_REVISION)
            changed["rewritten"] += 1
    return changed


def _frontal_docs(set_dir: Path) -> Iterator[tuple[dict[str, Any], Path, dict[str, Any]]]:
    """(manifest record, truth JSON path, its document) for each frontal sample with rules."""
    for line in (set_dir / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        path = set_dir / rec["truth"]
        doc = json.loads(path.read_text())
        if doc.get("view") == "frontal" and doc.get("rules"):
            yield rec, path, doc


def _save_rederived(path: Path, doc: dict[str, Any], what: str, revision: str) -> None:
    """Write a sample's re-derived truth back (atomically), with its expected verdict
    recomputed and ``params.truth_rederived[what] = revision``."""
    worst = max(_ORDER[x["status"]] for x in doc["rules"].values())
    doc["verdict_expected"] = ["pass", "warn", "fail"][worst]
    doc["params"].setdefault("truth_rederived", {})[what] = revision
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def stored_costophrenic(doc: dict[str, Any], masks: dict[str, Mask]) -> dict[str, Any] | None:
    """The frontal ``completeness.costophrenic`` truth of a stored sample from its stored
    masks: ``lung_*_visible`` and ``field``, turned back to the window orientation (the
    patient's right lung on the image left). None when the visible lungs were not stored.

    Stored masks are clipped to the field: an angle outside it lands on the field edge and
    reads 0 mm (a fail as before, not its negative distance)."""
    names = ("lung_right_visible", "lung_left_visible", "field")
    if any(n not in masks for n in names):
        return None
    p = doc["params"]

    def upright(m: Mask) -> Mask:
        m = m[::-1, ::-1] if p.get("rotated180") else m
        return m[:, ::-1] if p.get("flipped") else m

    field = upright(masks["field"])
    fb = _bbox(field)
    if fb is None:
        return None
    rect = (fb[0], fb[1] + 1, fb[2], fb[3] + 1)
    pitch = float(doc["spacing_mm"][0])
    thr = load_thresholds()["completeness"]["costophrenic_margin_mm"]
    cp = min(
        costophrenic_margin_mm(upright(masks[f"lung_{s}_visible"]), s, rect, pitch)
        for s in ("right", "left")
    )
    return _r(_margin_status(cp, thr), cp, "mm")


def retruth_costophrenic(set_dir: Path, backup: Path) -> dict[str, int]:
    """Rewrite the frontal ``completeness.costophrenic`` truth of a stored set with today's
    definition (the visible lung's lateral angle, ``stored_costophrenic``), mark each
    rewritten sample ``params.truth_rederived.costophrenic = COSTOPHRENIC_REVISION`` and
    recompute ``verdict_expected``. Every JSON is first copied to ``backup`` (an existing copy
    is kept: a rerun does not overwrite the originals)."""
    backup.mkdir(parents=True, exist_ok=True)
    changed: dict[str, int] = {"samples": 0, "rewritten": 0, "no_visible_masks": 0}
    rule = "completeness.costophrenic"
    for rec, path, doc in _frontal_docs(set_dir):
        changed["samples"] += 1
        with np.load(set_dir / rec["masks"]) as z:
            masks = {k: np.asarray(z[k], dtype=bool) for k in z.files}
        new = stored_costophrenic(doc, masks)
        if new is None:
            changed["no_visible_masks"] += 1
            continue
        copy = backup / path.name
        if not copy.exists():
            copy.write_text(path.read_text())
        old = doc["rules"].get(rule)
        if old is None or old["status"] != new["status"]:
            key = f"{rule}:{'?' if old is None else old['status']}->{new['status']}"
            changed[key] = changed.get(key, 0) + 1
        doc["rules"][rule] = new
        _save_rederived(path, doc, "costophrenic", COSTOPHRENIC_REVISION)
        changed["rewritten"] += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m qcnode.synth.truth --retruth DIR... [--rule costophrenic --backup DIR]``:
    re-derive stored positioning truth, or (``--rule costophrenic``) the frontal lateral
    costophrenic angle from the stored visible-lung masks."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--retruth", type=Path, nargs="+", required=True, metavar="SET_DIR")
    ap.add_argument("--rule", choices=("positioning", "costophrenic"), default="positioning")
    ap.add_argument(
        "--backup",
        type=Path,
        default=Path(".cache/rules/truth-backup-costophrenic"),
        help="costophrenic: the old JSONs go to BACKUP/<set name>/ first",
    )
    args = ap.parse_args(argv)
    for d in args.retruth:
        if args.rule == "costophrenic":
            res = retruth_costophrenic(d, args.backup / d.resolve().name)
        else:
            res = retruth(d)
        print(json.dumps({"set": str(d), **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
