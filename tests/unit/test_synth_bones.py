"""qcnode synth: the movable bones (scapulae, humeri) keep pixels and masks together.

Frontal scapula shifts and lateral arm moves edit the projection in 2D; each must carry
exactly the bone of the mask it moves, and the humeral shafts added to arms-down laterals
must be bone where their mask says (docs/SYNTH.md, "Known label issues").
Needs the CT (scripts/fetch_ct), like tests/unit/test_synth.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from qcnode.synth import ct as ctmod
from qcnode.synth import edits, labelcheck, render, sampler
from qcnode.synth.render import Detector, Pose

DET = Detector(width_mm=500.0, height_mm=480.0, pitch_mm=2.0, depth_step_mm=4.0)
SCAP = ctmod.BONE_CHANNELS.index("scapulae")
HUM = ctmod.BONE_CHANNELS.index("humeri")
STATIC = ctmod.BONE_CHANNELS.index("static")


@pytest.fixture(scope="module")
def frontal(ct: ctmod.PreparedCT) -> render.Projection:
    return render.render(ct, Pose(view_position="PA"), DET)


@pytest.fixture(scope="module")
def lateral(ct: ctmod.PreparedCT) -> render.Projection:
    return render.render(ct, Pose(view_position="LL"), DET)


def test_scapulae_and_humeri_are_separate_channels(frontal: render.Projection) -> None:
    b, m = frontal.bone_cm, frontal.masks
    # Each channel's bone lies in its own masks; the projections overlap at the shoulder.
    scap = m["scapula_right"] | m["scapula_left"]
    hum = m["humerus_right"] | m["humerus_left"]
    assert b[SCAP][~scap].sum() < 0.02 * b[SCAP].sum()
    assert b[HUM][~hum].sum() < 0.02 * b[HUM].sum()
    assert (hum & scap).sum() > 0.2 * hum.sum()  # why one shared channel was wrong


def test_scapula_shift_moves_only_scapula_bone(frontal: render.Projection) -> None:
    v = edits.Variant(window=(0, 0, *DET.shape), scapula_shift_mm=(-60.0, -60.0))
    _, bone, masks = edits.move_bones(frontal, v, frontal=True)
    before = frontal.bone_cm
    np.testing.assert_array_equal(bone[HUM], before[HUM])  # the humeral heads stay whole
    np.testing.assert_array_equal(bone[STATIC], before[STATIC])
    moved = masks["scapula_right"] | masks["scapula_left"]
    assert bone[SCAP][~moved].sum() < 0.02 * bone[SCAP].sum()  # no ghost left behind
    assert abs(bone[SCAP].sum() - before[SCAP].sum()) < 0.05 * before[SCAP].sum()
    # The right scapula moved to the image's left (lateral), by 30 px.
    c0 = np.nonzero(frontal.masks["scapula_right"].any(axis=0))[0].mean()
    c1 = np.nonzero(masks["scapula_right"].any(axis=0))[0].mean()
    assert c1 - c0 == pytest.approx(-30, abs=1.5)


def test_humeral_shaft_bone_matches_its_mask() -> None:
    head = np.zeros((200, 160), bool)
    head[40:60, 90:110] = True
    bone, soft, mask = edits.humeral_shaft(head, 200.0, 20.0, 2.0)
    assert ((bone > 0) == mask).mean() > 0.99  # bone exactly under the mask (edge pixels)
    assert (soft[mask] > 0).all()
    rows, cols = np.nonzero(mask)
    lower = rows > rows.mean()
    # Positive angle: the distal end lies anterior (the image's left) of the head.
    assert cols[lower].mean() < cols[~lower].mean() - 5
    # A cortical tube: the rim is denser than the centre line.
    r = 100
    line = bone[r][mask[r]]
    assert line.max() > 1.3 * line[len(line) // 2]


def test_arms_down_lateral_shows_humeri_over_the_lungs(lateral: render.Projection) -> None:
    v = edits.Variant(
        window=(0, 0, *DET.shape),
        arms_shift_mm=(50.0, 20.0),
        arm_shaft_mm=260.0,
        arm_angle_deg=(15.0, 18.0),
        marker=False,
        text=False,
    )
    comp = edits.compose(lateral, v, frontal=False)
    _, bone, masks = edits.move_bones(lateral, v, frontal=False)
    np.testing.assert_array_equal(bone[SCAP], lateral.bone_cm[SCAP])  # glenoid stays
    lungs = comp.full_masks["lung_right"] | comp.full_masks["lung_left"]
    for side in ("right", "left"):
        hum = masks[f"humerus_{side}"]
        assert (bone[HUM][hum] > 0.05).mean() > 0.9, side
        assert (hum & lungs).sum() * DET.pitch_mm**2 > 2000.0, side
    # Visible: the shaft over the lungs is brighter than the lung beside it.
    wm = comp.window_masks
    shaft = (wm["humerus_right"] | wm["humerus_left"]) & (wm["lung_right"] | wm["lung_left"])
    ring = ndimage.binary_dilation(shaft, iterations=6)
    ring &= ~ndimage.binary_dilation(shaft, iterations=2) & (wm["lung_right"] | wm["lung_left"])
    assert np.median(comp.display_clean[shaft]) > np.median(comp.display_clean[ring]) + 0.02


def test_sampler_gives_arms_down_laterals_a_shaft() -> None:
    g = np.random.default_rng(5)
    vs = [
        sampler.draw_variant(g, replace(DET, pitch_mm=1.4), (60, 200, 40, 300), "lateral", 0)
        for _ in range(60)
    ]
    down = [v for v in vs if v.arms_shift_mm[0] > 0]
    raised = [v for v in vs if v.arms_shift_mm[0] <= 0]
    assert down and raised
    assert all(220.0 <= v.arm_shaft_mm <= 300.0 for v in down)
    assert all(v.arm_shaft_mm == 0.0 for v in raised)


def test_labelcheck_splits_errors_by_region_and_measures_contrast() -> None:
    truth = np.zeros((60, 60), bool)
    truth[10:30, 10:30] = True
    lungs = np.zeros_like(truth)
    lungs[:, 20:] = True
    pred = np.zeros_like(truth)
    pred[10:30, 14:34] = True  # shifted 4 px towards the lungs
    r = labelcheck.compare(truth, pred, lungs, 2.0)
    assert r["dice"] == pytest.approx(2 * 16 * 20 / 800)
    assert r["fn_outside_mm2"] == pytest.approx(4 * 20 * 4.0)  # 4 columns left of 14
    assert r["fp_in_lungs_mm2"] == pytest.approx(4 * 20 * 4.0)
    assert r["fn_in_lungs_mm2"] == 0.0
    assert r["truth_to_pred_mm"] is not None and 2.0 < r["truth_to_pred_mm"] < 8.0
    image = np.where(truth, 0.7, 0.5)
    assert labelcheck.ring_contrast(image, truth, np.ones_like(truth)) == pytest.approx(0.2)
    flat = np.full((60, 60), 0.5)
    assert labelcheck.ring_contrast(flat, truth, np.ones_like(truth)) == pytest.approx(0.0)
    rows = [{"id": "a", "structure": "s", **r}, {"id": "b", "structure": "s", **r}]
    assert labelcheck.summarise(rows)["s"]["n"] == 2.0


def test_lateral_scapula_shifts_stop_at_the_body_outline(frontal: render.Projection) -> None:
    body = frontal.masks["body"]
    v = edits.Variant(window=(0, 0, *DET.shape), scapula_shift_mm=(-150.0, 10.0))
    kept = edits.keep_scapulae_in_body(frontal, v)
    right, left = kept.scapula_shift_mm
    assert -150.0 < right <= 0.0 and left == 10.0  # medial shifts are never touched
    _, _, masks = edits.move_bones(frontal, kept, frontal=True)
    m = masks["scapula_right"]
    assert (m & ~body).sum() <= edits.MAX_SCAPULA_OUTSIDE_BODY * m.sum()
    # ...and the shortening is minimal: one pixel further out breaks the rule.
    further = replace(kept, scapula_shift_mm=(right - DET.pitch_mm, left))
    _, _, masks2 = edits.move_bones(frontal, further, frontal=True)
    m2 = masks2["scapula_right"]
    assert (m2 & ~body).sum() > edits.MAX_SCAPULA_OUTSIDE_BODY * m2.sum()
    small = replace(v, scapula_shift_mm=(-10.0, -10.0))
    assert edits.keep_scapulae_in_body(frontal, small) is small


CLAV = ctmod.BONE_CHANNELS.index("clavicles")


def _slope(mask: np.ndarray, lateral: int) -> float:
    """Rows the lateral end lies below the medial end, per column (positive = lateral end
    lower on the image)."""
    rows, cols = np.nonzero(mask)
    fit = np.polyfit(cols.astype(float), rows.astype(float), 1)[0]
    return float(fit * lateral)


def test_lowered_clavicles_keep_bone_and_mask_together(frontal: render.Projection) -> None:
    b, m = frontal.bone_cm, frontal.masks
    clav = m["clavicle_right"] | m["clavicle_left"]
    assert b[CLAV][~clav].sum() < 0.02 * b[CLAV].sum()  # the channel holds the clavicles only
    v = edits.Variant(window=(0, 0, *DET.shape), clavicle_drop_deg=(25.0, 25.0))
    _, bone, masks = edits.move_bones(frontal, v, frontal=True)
    for k in (STATIC, SCAP, HUM):  # ribs 1-2 under the clavicles stay where they are
        np.testing.assert_array_equal(bone[k], b[k])
    moved = masks["clavicle_right"] | masks["clavicle_left"]
    assert bone[CLAV][~moved].sum() < 0.03 * bone[CLAV].sum()  # no ghost left behind
    assert abs(bone[CLAV].sum() - b[CLAV].sum()) < 0.05 * b[CLAV].sum()
    for side, lateral in (("right", -1), ("left", 1)):
        before, after = m[f"clavicle_{side}"], masks[f"clavicle_{side}"]
        assert abs(int(after.sum()) - int(before.sum())) < 0.1 * before.sum()
        # The CT's raised arms hold the lateral end up; 25° lowers it, pivoting medially.
        assert _slope(before, lateral) < -0.3
        drop = np.degrees(np.arctan(_slope(after, lateral))) - np.degrees(
            np.arctan(_slope(before, lateral))
        )
        assert drop == pytest.approx(25.0, abs=4.0)
        pick = np.max if lateral < 0 else np.min  # the medial end stays
        assert abs(int(pick(np.nonzero(after)[1])) - int(pick(np.nonzero(before)[1]))) <= 2


def test_clavicle_draw_keeps_older_sets_reproducible() -> None:
    args = (DET, (40, 200, 60, 190), "frontal", 7)
    plain = sampler.draw_variant(np.random.default_rng(3), *args, realism=True)
    off = sampler.draw_variant(np.random.default_rng(3), *args, realism=True, clavicles_down=0.0)
    on = sampler.draw_variant(np.random.default_rng(3), *args, realism=True, clavicles_down=1.0)
    assert off == plain and on.clavicle_drop_deg != (0.0, 0.0)
    assert replace(on, clavicle_drop_deg=(0.0, 0.0)) == plain
    lateral = sampler.draw_variant(
        np.random.default_rng(3), DET, (40, 200, 60, 190), "lateral", 7, clavicles_down=1.0
    )
    assert lateral.clavicle_drop_deg == (0.0, 0.0)
