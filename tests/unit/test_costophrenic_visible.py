"""Frontal completeness.costophrenic on the visible lung (session 9): the rule and the truth
on hand-built masks whose landmarks are known."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qcnode.errors import ConfigError
from qcnode.records import BoolMask, Finding, Status, View
from qcnode.rules import RulesConfig, evaluate, load_config
from qcnode.synth import retruth, truth
from qcnode.testing import FakePredictor, frontal_phantom, phantom_image

CFG = RulesConfig()
RULE = "completeness.costophrenic"


def run(masks: dict[str, BoolMask], cfg: RulesConfig = CFG) -> Finding:
    image = phantom_image(masks, view_position="PA")
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, masks)).predict([image])[0]
    return next(f for f in evaluate(image, pred, config=cfg) if f.rule == RULE)


def with_recess() -> dict[str, BoolMask]:
    """The phantom (field rows 20–340 × cols 20–380) with each whole lung reaching down to
    row 338 in a "posterior recess" (cols 70–120 right, 280–330 left, inside the lateral
    thirds), and visible lungs rows 60–280: the lateral angles at (280, 60) and (280, 340),
    60 px above the field's last row and 40 px inside its sides."""
    m = frontal_phantom()
    for side, (c0, c1) in (("right", (70, 120)), ("left", (280, 330))):
        visible = m[f"lung_{side}"].copy()
        visible[281:] = False
        m[f"lung_{side}_visible"] = visible
        m[f"lung_{side}"][281:339, c0 : c1 + 1] = True
    return m


def whole(cfg: RulesConfig = CFG) -> RulesConfig:
    return replace(cfg, completeness=replace(cfg.completeness, costophrenic_lungs="whole"))


def test_visible_angle_inside_passes_while_the_whole_lung_reaches_the_bottom_edge() -> None:
    m = with_recess()
    f = run(m)
    assert f.status is Status.PASS
    assert f.value == pytest.approx(40.0)  # the lateral side is nearer than the bottom (60)
    old = run(m, whole())
    assert old.status is Status.FAIL
    assert old.value == pytest.approx(2.0)  # the recess's row 338, the field's last row 340


def test_the_finding_points_at_the_visible_angle() -> None:
    f = run(with_recess())
    pts = {g.label.split()[0]: g.points[0] for g in f.geometry if g.kind == "point"}
    assert set(pts) == {"right", "left"}
    for side, x in (("right", 60.0), ("left", 340.0)):
        px, py = pts[side]
        assert px == pytest.approx(x, abs=2.0)
        assert py == pytest.approx(280.0, abs=2.0)  # not the recess's 338


def test_visible_angle_cut_fails() -> None:
    m = with_recess()
    m["field"][271:] = False  # the field ends at row 270, above the visible angles
    f = run(m)
    assert f.status is Status.FAIL
    assert f.value == pytest.approx(-10.0)  # 10 px below the last exposed row


def test_the_visible_angle_has_its_own_margin() -> None:
    m = with_recess()
    m["field"][287:] = False  # the field ends at row 286: the visible angles 6 px above it
    f = run(m)
    assert f.value == pytest.approx(6.0)
    assert f.threshold == CFG.completeness.costophrenic_visible_margin_mm
    for t, status in ((5.0, Status.PASS), (7.7, Status.FAIL)):
        cfg = replace(CFG, completeness=replace(CFG.completeness, costophrenic_visible_margin_mm=t))
        assert run(m, cfg).status is status


def test_without_visible_masks_the_whole_lungs_are_used() -> None:
    m = with_recess()
    del m["lung_right_visible"], m["lung_left_visible"]
    f = run(m)
    assert f.status is Status.FAIL
    assert f.value == pytest.approx(2.0)


def test_an_empty_visible_lung_falls_back_to_its_whole_lung() -> None:
    m = with_recess()
    m["lung_left_visible"] = np.zeros_like(m["lung_left"])
    f = run(m)
    assert f.status is Status.FAIL  # both sides on the whole lungs, at the whole-lung margin
    assert f.value == pytest.approx(2.0)
    assert f.threshold == CFG.completeness.costophrenic_margin_mm


def test_unknown_costophrenic_lungs_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "rules.toml"
    p.write_text('[completeness]\ncostophrenic_lungs = "projected"\n')
    with pytest.raises(ConfigError):
        load_config(p)


# ---- the truth -------------------------------------------------------------------------


def test_truth_landmark_on_the_visible_lung() -> None:
    m = with_recess()
    rect = (20, 341, 20, 381)  # rows [20, 341), cols [20, 381): the phantom's field
    vis = truth.visible_lung_masks(m)
    assert truth.costophrenic_point(vis["right"], "right") == (280, 60)
    assert truth.costophrenic_point(vis["left"], "left") == (280, 340)
    assert truth.costophrenic_margin_mm(vis["right"], "right", rect, 1.4) == pytest.approx(56.0)
    whole_r = truth.costophrenic_point(m["lung_right"], "right")
    assert whole_r == (338, 70)  # the old landmark: the recess
    assert truth.costophrenic_margin_mm(np.zeros_like(m["lung_right"]), "right", rect, 1.0) == (
        -np.inf
    )


def test_truth_cuts_the_lungs_at_the_abdomen_without_visible_masks() -> None:
    m = frontal_phantom()
    for side in ("right", "left"):
        m[f"lung_{side}"][281:339, 60:171] = True  # whole lungs to row 338
    m["abdomen_right"] = np.zeros_like(m["field"])
    m["abdomen_right"][250:, 40:200] = True  # the right dome at row 250
    m["abdomen_left"] = np.zeros_like(m["field"])
    m["abdomen_left"][300:, 200:360] = True
    vis = truth.visible_lung_masks(m)
    assert truth.costophrenic_point(vis["right"], "right") == (249, 60)
    assert truth.costophrenic_point(vis["left"], "left") == (299, 340)


def _stored_sample(root: Path, flipped: bool, rotated: bool) -> dict[str, object]:
    """A one-sample set: masks stored as the generator does (clipped to the field, then
    mirrored / turned), truth JSON with the old whole-lung status."""
    m = with_recess()
    names = ("lung_right", "lung_left", "lung_right_visible", "lung_left_visible", "field")
    stored = {k: m[k] & m["field"] if k != "field" else m[k] for k in names}
    if flipped:
        stored = {k: v[:, ::-1] for k, v in stored.items()}
    if rotated:
        stored = {k: v[::-1, ::-1] for k, v in stored.items()}
    np.savez(root / "s_masks.npz", **stored)  # type: ignore[arg-type]
    doc: dict[str, object] = {
        "id": "s",
        "view": "frontal",
        "spacing_mm": [1.0, 1.0],
        "verdict_expected": "fail",
        "params": {"flipped": flipped, "rotated180": rotated},
        "rules": {
            RULE: {"status": "fail", "value": 2.0, "unit": "mm"},
            "completeness.apices": {"status": "pass", "value": 40.0, "unit": "mm"},
        },
    }
    (root / "s.json").write_text(json.dumps(doc))
    line = {"id": "s", "view": "frontal", "masks": "s_masks.npz", "truth": "s.json"}
    (root / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    return doc


@pytest.mark.parametrize(("flipped", "rotated"), [(False, False), (True, False), (True, True)])
def test_retruth_rewrites_from_the_stored_visible_masks(
    tmp_path: Path, flipped: bool, rotated: bool
) -> None:
    set_dir, backup = tmp_path / "set", tmp_path / "backup"
    set_dir.mkdir()
    old = _stored_sample(set_dir, flipped, rotated)
    res = retruth.retruth_costophrenic(set_dir, backup)
    assert res["rewritten"] == 1
    assert res[f"{RULE}:fail->pass"] == 1
    doc = json.loads((set_dir / "s.json").read_text())
    assert doc["rules"][RULE] == {"status": "pass", "value": 40.0, "unit": "mm"}
    assert doc["verdict_expected"] == "pass"
    assert doc["params"]["truth_rederived"]["costophrenic"] == truth.COSTOPHRENIC_REVISION
    assert json.loads((backup / "s.json").read_text()) == old
    retruth.retruth_costophrenic(set_dir, backup)  # a rerun keeps the original backup
    assert json.loads((backup / "s.json").read_text()) == old


def test_retruth_skips_samples_without_visible_masks(tmp_path: Path) -> None:
    _stored_sample(tmp_path, False, False)
    with np.load(tmp_path / "s_masks.npz") as z:
        kept = {k: z[k] for k in z.files if not k.endswith("_visible")}
    np.savez(tmp_path / "s_masks.npz", **kept)
    res = retruth.retruth_costophrenic(tmp_path, tmp_path / "backup")
    assert res["no_visible_masks"] == 1 and res["rewritten"] == 0
    assert json.loads((tmp_path / "s.json").read_text())["rules"][RULE]["status"] == "fail"
