"""Each rule on hand-built masks with known geometry: exact values, then one edit per rule."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qcnode.errors import ConfigError
from qcnode.records import BoolMask, Family, Finding, Status, View
from qcnode.rules import CATALOGUE, RulesConfig, evaluate, load_config
from qcnode.rules.catalogue import SPECS
from qcnode.rules.config import DEFAULT_RULES_FILE
from qcnode.rules.messages import TEMPLATES
from qcnode.testing import FakePredictor, frontal_phantom, lateral_phantom, phantom_image

CFG = RulesConfig()


def run(
    masks: dict[str, BoolMask],
    view: View = View.FRONTAL,
    language: str = "en",
    cfg: RulesConfig = CFG,
    **image_kw: object,
) -> dict[str, Finding]:
    kw = {"view_position": "PA" if view is View.FRONTAL else "LL", **image_kw}
    image = phantom_image(masks, **kw)  # type: ignore[arg-type]
    pred = FakePredictor(source=lambda _i: (view, masks)).predict([image])[0]
    findings = evaluate(image, pred, config=cfg, language=language)
    assert [f.rule for f in findings] == list(CATALOGUE[view])
    return {f.rule: f for f in findings}


def ribs(depth_mm: float, *, lateral: bool = False, heart_mm: float = 0.0) -> float:
    """The inspiration rule's rib estimate for a dome ``depth_mm`` below the apex (frontal,
    PA header: with the heart ``heart_mm`` tall)."""
    p = CFG.positioning
    if lateral:
        return float(
            round(p.lateral_inspiration_ribs_at_apex + depth_mm / p.lateral_inspiration_mm_per_rib)
        )
    return float(
        round(
            p.inspiration_habitus_ribs_at_apex
            + depth_mm / p.inspiration_habitus_mm_per_rib
            + p.inspiration_heart_ribs_per_mm * heart_mm
        )
    )


def box(m: BoolMask, r0: int, r1: int, c0: int, c1: int, value: bool = True) -> BoolMask:
    m = m.copy()
    m[r0 : r1 + 1, c0 : c1 + 1] = value
    return m


# ---- the unedited phantoms: every value is known exactly --------------------------------


def test_frontal_phantom_exact_values() -> None:
    f = run(frontal_phantom())
    expected = {
        "completeness.apices": 40.0,  # apex row 60, last exposed row 20
        "completeness.costophrenic": 40.0,
        "completeness.lateral_walls": 40.0,
        "completeness.collimation": 40.0,  # field 40 px beyond the lungs on every side
        "completeness.centering": 0.0,
        "organs.lungs": 0.0,
        "organs.heart": 0.0,
        "organs.clavicles": 11 * 106,  # mm²
        "organs.diaphragm": 0.0,  # no lung column ends on the field edge
        "positioning.rotation": 0.0,
        "positioning.scapulae": 5.0,
        "positioning.inspiration": ribs(240.0, heart_mm=101.0),  # apex row 60, heart 200-300
        "positioning.tilt": 15.0,  # apex row 60, clavicle medial ends at row 75
        "metadata.spacing": 1.0,
    }
    for rule, value in expected.items():
        assert f[rule].value == pytest.approx(value), rule
    assert all(x.status is Status.PASS for x in f.values()), [
        (x.rule, x.status) for x in f.values() if x.status is not Status.PASS
    ]


def test_lateral_phantom_exact_values() -> None:
    f = run(lateral_phantom(), View.LATERAL)
    assert f["completeness.apices"].value == 30.0  # apex row 50, last exposed row 20
    assert f["completeness.costophrenic"].value == 40.0  # posterior-inferior corner (300, 300)
    assert f["completeness.anteroposterior"].value == 60.0  # sternum col 80, edge col 20
    assert f["positioning.rotation"].value == 0.0
    sternum = f["organs.sternum"]  # nothing on the edge: the limit is still the sternum's own
    assert sternum.value == 0.0 and sternum.threshold is not None
    area = float(lateral_phantom()["sternum"].sum())  # 1 mm pixels
    assert sternum.threshold == pytest.approx(math.sqrt(1.3 * area), abs=0.01)
    assert f["positioning.arms"].value == 0.0
    assert f["positioning.inspiration"].value == ribs(250.0, lateral=True)  # heart 300, apex 50
    assert all(x.status is Status.PASS for x in f.values())


# ---- completeness --------------------------------------------------------------------------


def test_collimator_over_the_apices_fails_apices_only_in_completeness() -> None:
    m = frontal_phantom()
    m["field"] = box(m["field"], 0, 64, 0, 399, False)  # a shutter down to row 64
    f = run(m)
    assert f["completeness.apices"].status is Status.FAIL
    assert f["completeness.apices"].value == pytest.approx(-5.0)  # apex row 60, field row 65
    assert f["completeness.costophrenic"].status is Status.PASS
    assert f["completeness.lateral_walls"].status is Status.PASS
    assert f["organs.lungs"].status is Status.FAIL  # both lungs cross the shutter edge


def test_apex_on_the_edge_of_a_clipped_lung_fails() -> None:
    m = frontal_phantom()
    m["field"] = box(m["field"], 0, 61, 0, 399, False)
    m["lung_right"] &= m["field"]  # what a model sees: lung only inside the field
    m["lung_left"] &= m["field"]
    f = run(m)
    assert f["completeness.apices"].value == pytest.approx(0.0)  # apex on the edge row
    assert f["completeness.apices"].status is Status.FAIL


def test_costophrenic_angle_cut_at_the_bottom() -> None:
    m = frontal_phantom()
    m["field"] = box(m["field"], 302, 399, 0, 399, False)  # field ends at row 301
    f = run(m)
    assert f["completeness.costophrenic"].value == pytest.approx(1.0)
    assert f["completeness.costophrenic"].status is Status.FAIL
    assert f["completeness.apices"].status is Status.PASS


def test_lateral_wall_cut_on_the_image_right() -> None:
    m = frontal_phantom()
    m["field"] = box(m["field"], 0, 399, 343, 399, False)  # left lung ends at col 340
    f = run(m)
    lw = f["completeness.lateral_walls"]
    assert lw.status is Status.FAIL and lw.value == pytest.approx(2.0)
    assert "Left" in lw.message
    assert f["completeness.apices"].status is Status.PASS


def test_wide_field_warns_collimation_and_off_centre_warns_centering() -> None:
    m = frontal_phantom()
    m["field"] = box(m["field"], 20, 399, 0, 399)  # field to the image border below
    f = run(m)
    assert f["completeness.collimation"].status is Status.WARN
    assert f["completeness.collimation"].value == pytest.approx(99.0)
    m = frontal_phantom()
    m["field"] = box(np.zeros_like(m["field"]), 20, 340, 0, 399)
    f = run(m)  # lungs span cols 60..340 (midline 200), field 0..399 (centre 199.5)
    assert f["completeness.centering"].value == pytest.approx(0.5 / 400 * 100, abs=0.01)
    shifted = {k: np.roll(v, 50, axis=1) if k != "field" else v for k, v in m.items()}
    f = run(shifted)
    assert f["completeness.centering"].status is Status.WARN


# ---- organs ---------------------------------------------------------------------------------


def test_missing_lung_heart_clavicle() -> None:
    m = frontal_phantom()
    m["lung_left"] = np.zeros_like(m["lung_left"])
    f = run(m)
    assert f["organs.lungs"].status is Status.FAIL
    assert f["completeness.apices"].status is Status.NOT_EVALUABLE
    m = frontal_phantom()
    m["clavicle_left"] = np.zeros_like(m["clavicle_left"])
    m["field"] = box(m["field"], 0, 64, 0, 399, False)  # field from row 65: 5 mm above apices
    f = run(m)
    assert f["organs.clavicles"].status is Status.FAIL
    assert f["positioning.rotation"].status is Status.NOT_EVALUABLE


def test_unsegmented_clavicle_under_an_open_field_is_not_a_failure() -> None:
    """Field 60 mm above both apices: a clavicle cannot be cut off there, so a missing mask
    is the model's miss (fragments on real films), reported as not evaluable."""
    m = frontal_phantom()
    m["field"] = box(m["field"], 0, 340, 20, 380)  # rows 0-340: 60 mm above the apices
    m["clavicle_left"] = np.zeros_like(m["clavicle_left"])
    f = run(m)["organs.clavicles"]
    assert f.status is Status.NOT_EVALUABLE and f.value == 0.0
    assert f.message.startswith("Left clavicle not segmented") and "60 mm" in f.message
    m = frontal_phantom()
    m["heart"] = box(m["heart"], 0, 399, 0, 399, False)
    assert run(m)["organs.heart"].status is Status.FAIL


def test_lung_truncation_limit_grows_with_the_lung() -> None:
    """A field notch over the right apex: the allowed outline on the edge is
    sqrt(ratio · visible area), so the same cut passes a large lung and fails a small one
    (the outline rule, which lung_loss_fail_share <= 0 restores for the frontal lungs)."""
    ratio = CFG.organs.lung_truncation_fail_ratio
    contact = replace(CFG, organs=replace(CFG.organs, lung_loss_fail_share=-1.0))

    def notched(m: dict[str, BoolMask]) -> dict[str, BoolMask]:
        m["field"] = box(m["field"], 0, 64, 20, 120, False)  # unexposed above row 65, cols ≤ 120
        return {k: (v & m["field"]) if k.startswith("lung") else v for k, v in m.items()}

    assert CFG.organs.edge_tolerance_mm == 2.0
    f = run(notched(frontal_phantom()), cfg=contact)["organs.lungs"]
    # the cut row 65 over cols 60..120 and the notch's side, col 121, rows 60..64 (66 px), plus
    # the edge within the 2 mm edge tolerance: row 65 cols 58..59, col 121 rows 58..59
    assert f.value == pytest.approx(70.0)
    assert f.threshold == pytest.approx(math.sqrt(ratio * (111 * 241 - 61 * 5)))
    assert f.status is Status.PASS
    small = frontal_phantom()
    small["lung_right"] = box(np.zeros_like(small["lung_right"]), 60, 160, 60, 120)
    f = run(notched(small), cfg=contact)["organs.lungs"]
    # the whole width of the small lung on the edge (61 px), cols 58..59 within 2 mm, and the
    # notch's corner (64, 121) at √2 mm
    assert f.value == pytest.approx(64.0)
    assert f.threshold == pytest.approx(math.sqrt(ratio * 61 * 96))
    assert f.status is Status.FAIL


def test_diaphragm_dome_below_the_field() -> None:
    m = frontal_phantom()
    m["field"] = box(m["field"], 250, 399, 0, 399, False)
    m = {k: (v & m["field"]) if k.startswith("lung") else v for k, v in m.items()}
    f = run(m)
    assert f["organs.diaphragm"].status is Status.FAIL
    assert f["organs.diaphragm"].value == 100.0
    m = frontal_phantom()  # only the lateral quarter of the right lung's base clipped
    m["lung_right"] = box(m["lung_right"], 296, 300, 60, 86, False)
    m["field"] = box(m["field"], 296, 399, 0, 86, False)
    f = run(m)
    # 27 clipped columns, and col 87 whose base touches the notch of the field edge
    assert f["organs.diaphragm"].value == pytest.approx(100 * 28 / 111, abs=0.01)
    assert f["organs.diaphragm"].status is Status.PASS


# ---- exposure -------------------------------------------------------------------------------


def test_deviation_index_from_header_and_from_ei() -> None:
    m = frontal_phantom()
    assert run(m, deviation_index=2.0)["exposure.deviation_index"].status is Status.WARN
    assert run(m, deviation_index=-3.5)["exposure.deviation_index"].status is Status.FAIL
    assert run(m, deviation_index=None)["exposure.deviation_index"].status is Status.NOT_EVALUABLE


def test_deviation_index_computed_from_exposure_index() -> None:
    from qcnode.rules.exposure import deviation_index
    from qcnode.rules.geometry import Subject

    m = frontal_phantom()
    image = phantom_image(m, deviation_index=None)
    image = replace(
        image, meta=replace(image.meta, exposure_index=400.0, target_exposure_index=250.0)
    )
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, m)).predict([image])[0]
    f = deviation_index(Subject.build(image, pred), CFG)
    assert f.value == pytest.approx(round(10 * math.log10(400 / 250), 2))
    assert f.status is Status.WARN


def test_saturation_contrast_noise() -> None:
    m = frontal_phantom()
    image = phantom_image(m)
    px = image.pixels.copy()
    px[100:200, 70:160] = 0.0  # burnt-out block, ~9000 of ~50000 lung pixels
    clipped = replace(image, pixels=px)
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, m)).predict([clipped])[0]
    f = {x.rule: x for x in evaluate(clipped, pred, config=CFG)}
    assert f["exposure.saturation"].status is Status.FAIL
    assert f["exposure.saturation"].value == pytest.approx(100 * 9000 / (2 * 241 * 111), abs=0.01)
    noisy = run(m, noise=0.3)
    assert noisy["exposure.noise"].status is Status.FAIL
    assert run(m)["exposure.noise"].status is Status.PASS
    flat = phantom_image(m)
    flat = replace(flat, pixels=(0.5 + (flat.pixels - 0.5) * 0.3).astype(np.float32))
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, m)).predict([flat])[0]
    f = {x.rule: x for x in evaluate(flat, pred, config=CFG)}
    assert f["exposure.contrast"].status is Status.FAIL


def test_spine_invisible_behind_heart_and_blurred_diaphragm() -> None:
    from scipy import ndimage

    m = frontal_phantom()
    image = phantom_image(m)
    px = np.where(m["heart"], 0.6, image.pixels).astype(np.float32)  # spine hidden
    hidden = replace(image, pixels=px)
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, m)).predict([hidden])[0]
    f = {x.rule: x for x in evaluate(hidden, pred, config=CFG)}
    assert f["exposure.spine_through_heart"].status is Status.FAIL
    blurred = replace(image, pixels=ndimage.gaussian_filter(image.pixels, 9.0))
    f = {x.rule: x for x in evaluate(blurred, pred, config=CFG)}
    assert f["exposure.sharpness"].status is Status.FAIL
    assert f["exposure.sharpness"].value > CFG.exposure.sharpness_edge_fail_mm


# ---- positioning ----------------------------------------------------------------------------


def _clavicles(m: dict[str, BoolMask], right_end: int, left_end: int) -> dict[str, BoolMask]:
    m = dict(m)
    z = np.zeros_like(m["lung_right"])
    # rows 68-82 (medial ends at row 75): >= 750 mm² even for the shortest clavicle below,
    # else it would count as an unsegmented fragment under the phantom's open field
    m["clavicle_right"] = box(z, 68, 82, 80, right_end)
    m["clavicle_left"] = box(z, 68, 82, left_end, 320)
    return m


def test_rotation_degrees_from_the_geometric_model() -> None:
    k = CFG.positioning.rotation_half_width_to_depth
    # the medial end is the centre of the innermost 10 mm (11 px columns): 5 px inside
    f = run(_clavicles(frontal_phantom(), 175, 215))  # d_right 30, d_left 20
    assert f["positioning.rotation"].value == pytest.approx(
        round(math.degrees(math.atan(k * 10 / 50)), 2)
    )
    big = run(_clavicles(frontal_phantom(), 185, 270))  # d_right 20, d_left 75
    expected = math.degrees(math.atan(k * 55 / 95))
    assert big["positioning.rotation"].value == pytest.approx(round(expected, 2))
    assert big["positioning.rotation"].status is (
        Status.FAIL if expected > CFG.positioning.rotation_fail_deg else Status.PASS
    )
    assert "left" in big["positioning.rotation"].message
    # an AP header: the AP constant (cone beam from the front magnifies the clavicle heads)
    ap = run(_clavicles(frontal_phantom(), 185, 270), view_position="AP")
    k_ap = CFG.positioning.rotation_half_width_to_depth_ap
    assert k_ap != k
    assert ap["positioning.rotation"].value == pytest.approx(
        round(math.degrees(math.atan(k_ap * 55 / 95)), 2)
    )


def test_scapulae_inspiration_tilt() -> None:
    m = frontal_phantom()
    m["scapula_right"] = box(m["scapula_right"], 90, 200, 40, 80)  # 21 px into the lung
    f = run(m)
    assert f["positioning.scapulae"].value == 21.0
    assert f["positioning.scapulae"].status is Status.FAIL
    for n_ribs, status in ((9, Status.WARN), (8, Status.FAIL), (10, Status.PASS)):
        # move the heart's lower border (the diaphragm) to the depth of n ribs below the apex
        # (the heart spans rows 120 .. 60 + depth: depth - 59 mm tall)
        depth = next(d for d in range(100, 330) if ribs(d, heart_mm=d - 59.0) == n_ribs)
        m = frontal_phantom()
        m["heart"] = box(np.zeros_like(m["heart"]), 120, 60 + depth, 170, 260)
        f = run(m)
        assert f["positioning.inspiration"].value == n_ribs
        assert f["positioning.inspiration"].status is status
        assert f"{depth} mm" in f["positioning.inspiration"].geometry[0].label
    m = frontal_phantom()
    m["field"] = box(m["field"], 290, 399, 0, 399, False)  # the heart runs off the field
    assert run(m)["positioning.inspiration"].status is Status.NOT_EVALUABLE
    m["heart"] &= m["field"]  # as a model sees it: cut at the field edge
    assert run(m)["positioning.inspiration"].status is Status.NOT_EVALUABLE
    m = frontal_phantom()
    z = np.zeros_like(m["lung_right"])
    m["clavicle_right"] = box(z, 40, 50, 80, 185)  # clavicle heads 15 mm above the apices
    m["clavicle_left"] = box(z, 40, 50, 215, 320)
    f = run(m)
    assert f["positioning.tilt"].value == -15.0
    assert f["positioning.tilt"].status is Status.FAIL


def test_tilt_apex_is_where_the_lung_is_wide_enough() -> None:
    """A thin spike on a lung's tip (a ragged model mask) does not move the apex level: the
    apex is the first row at least ``tilt_apex_width_mm`` wide."""
    m = frontal_phantom()
    m["lung_right"] = box(m["lung_right"], 50, 59, 100, 105)  # 6 px wide, 10 px above the apex
    m["lung_left"] = box(m["lung_left"], 56, 59, 200, 340)  # 4 rows full width: the new apex
    f = run(m)
    # apices: right row 60 (the spike is 6 mm < 15 mm wide), left row 56; clavicle ends row 75
    assert f["positioning.tilt"].value == pytest.approx(75 - (60 + 56) / 2)
    assert f["completeness.apices"].value == pytest.approx(30.0)  # margins keep the tip pixel


@pytest.mark.parametrize(
    ("edit", "key"),
    [(np.fliplr, "mirrored"), (lambda a: np.rot90(a, 2), "upside_down"), (np.flipud, "flipped")],
)
def test_orientation_mirrored_and_upside_down(edit: object, key: str) -> None:
    m = {k: np.ascontiguousarray(edit(v)) for k, v in frontal_phantom().items()}  # type: ignore[operator]
    f = run(m)
    o = f["positioning.orientation"]
    assert o.status is Status.FAIL
    from qcnode.rules.messages import template

    assert o.message == template("positioning.orientation", key, "en")
    # every other rule measures the film turned back upright: same values as the original
    upright = run(frontal_phantom())
    for rule, finding in f.items():
        if rule.startswith("exposure.") and finding.value is not None:
            # the noise is painted after the flip: another realisation, nearly equal values
            assert finding.value == pytest.approx(upright[rule].value, rel=0.05), rule
        elif rule != "positioning.orientation":
            assert finding.value == upright[rule].value, rule
            assert finding.status is upright[rule].status, rule
    # and draws where the structure is in the source image
    apex = next(g for g in f["completeness.apices"].geometry if g.label.startswith("right"))
    probe = np.zeros((400, 400), bool)
    probe[60, round(upright_apex_col())] = True
    row, col = np.argwhere(edit(probe))[0]  # type: ignore[operator]
    assert apex.points[0] == pytest.approx((float(col), float(row)))


def test_rotation_and_tilt_skip_a_clavicle_fragment_under_an_open_field() -> None:
    """A 50 mm² left clavicle under a field reaching 40 mm above the apices is the model's
    miss: rotation and tilt are not evaluated; with the field 5 mm above the apices the
    fragment may be a cut clavicle, and both measure it."""
    m = frontal_phantom()
    z = np.zeros_like(m["lung_right"])
    m["clavicle_left"] = box(z, 70, 74, 215, 224)  # 5 x 10 px at 1 mm: 50 mm²
    f = run(m)
    assert f["organs.clavicles"].status is Status.NOT_EVALUABLE
    assert f["positioning.rotation"].status is Status.NOT_EVALUABLE
    assert f["positioning.tilt"].status is Status.NOT_EVALUABLE
    m["field"] = box(m["field"], 0, 54, 0, 399, False)  # field from row 55
    f = run(m)
    assert f["organs.clavicles"].status is Status.FAIL
    assert f["positioning.rotation"].value is not None
    assert f["positioning.tilt"].value is not None


def test_orientation_trusts_the_spine_over_a_lopsided_lung_midline() -> None:
    """Partial lung masks (the model on some real films) move the lungs' midline 25 mm to
    the right of the heart; the heart still lies 15 mm right of the spine: upright."""
    m = frontal_phantom()
    z = np.zeros_like(m["lung_right"])
    m["lung_right"] = box(z, 60, 300, 150, 170)  # medial part only: centroid col 160
    m["lung_left"] = box(z, 60, 300, 300, 340)  # lateral part only: centroid col 320
    assert run(m)["positioning.orientation"].status is Status.PASS
    # the same lungs with the heart 10 mm left of the spine: mirrored
    m["heart"] = box(z, 200, 300, 150, 230)  # centre col 190, spine 200
    o = run(m)["positioning.orientation"]
    assert o.status is Status.FAIL and "mirrored" in o.message


def upright_apex_col() -> float:
    return (60 + 170) / 2.0  # the right lung's top row spans cols 60..170


def test_lateral_superimposition_arms_and_ap() -> None:
    m = lateral_phantom()
    m["ribs_posterior_left"] = np.roll(m["ribs_posterior_left"], -15, axis=1)
    f = run(m, View.LATERAL)
    assert f["positioning.rotation"].value == 15.0
    assert f["positioning.rotation"].unit == "mm"  # contours apart, not the frontal degrees
    assert f["positioning.rotation"].status is Status.FAIL
    assert run(frontal_phantom(), View.FRONTAL)["positioning.rotation"].unit == "deg"
    m = lateral_phantom()
    m["humerus_right"] = box(m["humerus_right"], 0, 150, 150, 200)  # arm down over the lung
    f = run(m, View.LATERAL)
    assert f["positioning.arms"].value == 101 * 51  # rows 50–150 over the lungs
    assert f["positioning.arms"].status is Status.FAIL
    m = lateral_phantom()
    m["field"] = box(m["field"], 0, 399, 0, 82, False)
    f = run(m, View.LATERAL)
    assert f["completeness.anteroposterior"].status is Status.FAIL
    assert f["organs.sternum"].status is Status.FAIL


def test_lateral_sternum_off_the_film_fails_ap_only_when_the_chest_reaches_the_edge() -> None:
    m = lateral_phantom()
    del m["sternum"]  # not segmented, the field untouched: lungs 80 mm from the edge
    f = run(m, View.LATERAL)
    assert f["completeness.anteroposterior"].status is Status.NOT_EVALUABLE
    m = lateral_phantom()
    m["field"] = box(m["field"], 0, 399, 0, 102, False)  # sternum (cols 80-95) off the film
    for name in m:
        m[name] = m[name] & m["field"]  # what a model sees: the exposed part only
    del m["sternum"]
    f = run(m, View.LATERAL)
    ap = f["completeness.anteroposterior"]
    assert ap.status is Status.FAIL
    assert ap.value == 0.0  # the lungs' anterior border (col 103) is the last exposed column
    assert "Sternum not on the film" in ap.message
    m["lung_right"] = box(m["lung_right"], 0, 399, 103, 106, False)  # lungs 4 mm inside,
    m["lung_left"] = box(m["lung_left"], 0, 399, 103, 106, False)  # heart (col 110) 7 mm:
    f = run(m, View.LATERAL)  # beyond the 3 mm tolerance
    assert f["completeness.anteroposterior"].status is Status.NOT_EVALUABLE


# ---- metadata, languages, configuration ------------------------------------------------------


def test_metadata_view_and_spacing() -> None:
    m = frontal_phantom()
    f = run(m, view_position="LL")
    assert f["metadata.view"].status is Status.WARN
    assert run(m, view_position="")["metadata.view"].status is Status.NOT_EVALUABLE
    f = run(m, spacing_mm=None)
    sp = f["metadata.spacing"]
    assert sp.status is Status.WARN
    # anatomy scale: the two lungs span cols 60..340 = 281 px for anatomy_lung_span_mm
    assert sp.value == pytest.approx(CFG.metadata.anatomy_lung_span_mm / 281, abs=1e-3)
    assert f["completeness.apices"].value == pytest.approx(
        40 * CFG.metadata.anatomy_lung_span_mm / 281, abs=0.01
    )


def test_half_resolution_gives_the_same_verdicts() -> None:
    m = frontal_phantom()
    full = run(m)
    half = {k: v[::2, ::2] for k, v in m.items()}
    small = run(half, spacing_mm=(2.0, 2.0))
    for rule in CATALOGUE[View.FRONTAL]:
        assert small[rule].status == full[rule].status, rule


def test_chinese_messages_for_every_finding() -> None:
    f = run(frontal_phantom(), language="zh")
    assert "肺尖" in f["completeness.apices"].message
    assert all(x.message and not x.message.isascii() for x in f.values())
    with pytest.raises(ValueError):
        run(frontal_phantom(), language="fr")


def test_every_template_formats_in_both_languages() -> None:
    from qcnode.rules.messages import render

    for key in TEMPLATES:
        rule, _, outcome = key.rpartition(".")
        rule = "organs.lungs" if rule == "*" else rule
        for lang in ("en", "zh"):
            text = render(
                rule,
                outcome,
                lang,
                value=1.0,
                threshold=2.0,
                side="right",
                structure="lung",
                where="top",
                header="PA",
                detected="frontal",
                d_right=1.0,
                d_left=2.0,
                anatomy=1.0,
                cnr=3.0,
                lung=0.3,
                share=0.3,
                shape="4×4×2",
                margin=25.0,
            )
            assert "{" not in text


def test_catalogue_covers_design_ids() -> None:
    frontal = set(CATALOGUE[View.FRONTAL])
    lateral = set(CATALOGUE[View.LATERAL])
    for rule in (
        "completeness.apices",
        "completeness.costophrenic",
        "completeness.lateral_walls",
        "completeness.collimation",
        "completeness.centering",
        "organs.lungs",
        "organs.heart",
        "organs.clavicles",
        "organs.diaphragm",
        "exposure.deviation_index",
        "exposure.saturation",
        "exposure.contrast",
        "exposure.noise",
        "exposure.spine_through_heart",
        "exposure.sharpness",
        "positioning.rotation",
        "positioning.scapulae",
        "positioning.inspiration",
        "positioning.tilt",
        "positioning.orientation",
        "metadata.view",
        "metadata.spacing",
    ):
        assert rule in frontal
    for rule in (
        "completeness.apices",
        "completeness.costophrenic",
        "completeness.anteroposterior",
        "organs.lungs",
        "organs.heart",
        "organs.spine",
        "organs.sternum",
        "positioning.rotation",
        "positioning.arms",
        "positioning.inspiration",
        "metadata.view",
    ):
        assert rule in lateral
    assert CATALOGUE[View.OTHER] == ()
    for rule in frontal | lateral:
        assert SPECS[rule].family is Family(rule.split(".")[0])


def test_packaged_rules_file_matches_defaults() -> None:
    assert DEFAULT_RULES_FILE.is_file()
    assert load_config() == RulesConfig()
    assert load_config(None) == load_config(DEFAULT_RULES_FILE)


def test_rules_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("[completeness]\napices_margin = 3\n")
    with pytest.raises(ConfigError, match="apices_margin"):
        load_config(bad)
    bad.write_text("[nonsense]\nx = 1\n")
    with pytest.raises(ConfigError):
        load_config(bad)
    good = tmp_path / "ok.toml"
    good.write_text("[completeness]\napices_margin_mm = 45.0\n")
    cfg = load_config(good)
    assert cfg.completeness.apices_margin_mm == 45.0
    assert cfg.organs == RulesConfig().organs


def test_header_spacing_off_by_a_factor_uses_the_anatomy_scale() -> None:
    m = frontal_phantom()
    anatomy = CFG.metadata.anatomy_lung_span_mm / 281  # lungs span cols 60..340
    f = run(m, spacing_mm=(0.5, 0.5))  # half the true 1 mm: beyond the 1.6× tolerance
    assert f["metadata.spacing"].status is Status.WARN
    assert "anatomy" in f["metadata.spacing"].message
    assert f["completeness.apices"].value == pytest.approx(40 * anatomy, abs=0.01)
    ok = run(m, spacing_mm=(0.8, 0.8))  # within the tolerance: the header is trusted
    assert ok["metadata.spacing"].status is Status.PASS
    assert ok["completeness.apices"].value == pytest.approx(40 * 0.8)


def test_synthetic_ct_override_only_changes_the_rotation_reference() -> None:
    path = DEFAULT_RULES_FILE.with_name("rules-synthetic-ct.toml")
    cfg = load_config(path)
    assert cfg.positioning.rotation_ratio_offset < 0
    assert replace(cfg, positioning=RulesConfig().positioning) == RulesConfig()


def test_model_speckle_does_not_move_landmarks() -> None:
    m = frontal_phantom()
    m["lung_right"] = box(m["lung_right"], 25, 27, 30, 32)  # a 3x3 speck near the top edge
    m["heart"] = box(m["heart"], 330, 332, 370, 372)
    f = run(m)
    assert f["completeness.apices"].value == 40.0
    assert f["completeness.collimation"].value == 40.0
    assert f["organs.heart"].value == 0.0


@pytest.mark.parametrize("op", ["erode", "dilate"])
def test_masks_off_by_a_pixel_keep_every_status(op: str) -> None:
    """A model's masks are never pixel-exact: one pixel more or less changes no status."""
    from scipy import ndimage

    base = run(frontal_phantom())
    fn = ndimage.binary_erosion if op == "erode" else ndimage.binary_dilation
    m = {k: (v if k == "field" else fn(v)) for k, v in frontal_phantom().items()}
    moved = run(m)
    for rule, finding in moved.items():
        assert finding.status is base[rule].status, (rule, finding.message)


# ---- the exposed field from the pixels ------------------------------------------------------


def run_on(
    image_masks: dict[str, BoolMask], model_masks: dict[str, BoolMask]
) -> dict[str, Finding]:
    """Paint the film from ``image_masks`` (its field = where the shutters are), QC it with the
    model's ``model_masks`` (whose field may be wrong)."""
    image = phantom_image(image_masks, view_position="PA")
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, model_masks)).predict([image])[0]
    return {f.rule: f for f in evaluate(image, pred, config=CFG)}


def test_shutter_found_from_the_pixels_when_the_model_misses_it() -> None:
    film = frontal_phantom()
    film["field"] = box(film["field"], 0, 61, 0, 399, False)  # shutter down to row 61
    model = frontal_phantom()
    model["field"] = np.ones_like(model["field"])  # the model sees no shutter at all
    model["lung_right"] = box(model["lung_right"], 60, 69, 0, 399, False)  # stops 8 px short
    model["lung_left"] = box(model["lung_left"], 60, 69, 0, 399, False)
    f = run_on(film, model)
    # the model's apex (row 70) lies 8 px below the first exposed row 62
    assert f["completeness.apices"].value == pytest.approx(8.0)
    assert f["completeness.costophrenic"].value == pytest.approx(40.0)  # bottom: band at 341
    assert f["completeness.lateral_walls"].value == pytest.approx(40.0)


def test_a_band_the_model_marks_but_the_pixels_do_not_show_is_exposed() -> None:
    film = frontal_phantom()
    film["field"] = np.ones_like(film["field"])  # no shutter on the film
    model = frontal_phantom()  # the model's field: a 20 px band on every side
    f = run_on(film, model)
    assert f["completeness.apices"].value == pytest.approx(60.0)  # to the image's top row
    assert f["completeness.collimation"].value == pytest.approx(99.0)  # lungs end at row 300


def test_a_one_pixel_shutter_band_and_a_tilted_one() -> None:
    film = frontal_phantom()
    film["field"] = np.ones_like(film["field"])
    film["field"][:, :1] = False  # 1 px band on the image left
    rows = np.arange(400)[:, None]
    cols = np.arange(400)[None, :]
    film["field"] &= rows >= 30 + cols // 40  # top shutter edge tilted by 10 px over the width
    f = run_on(film, frontal_phantom())
    # right lung's outermost column 60: 59 px to the last exposed column 1
    assert f["completeness.lateral_walls"].value == pytest.approx(59.0)
    # apex row 60; the top edge runs at row 30 + col // 40: the left lung's apex (col 285)
    # lies below edge row 37
    assert f["completeness.apices"].value == pytest.approx(23.0, abs=0.2)


def test_saturated_anatomy_along_a_border_is_not_a_shutter() -> None:
    film = frontal_phantom()
    film["field"] = np.ones_like(film["field"])
    image = phantom_image(film, view_position="PA")
    px = image.pixels.copy()
    rows = np.arange(400)[:, None]
    cols = np.arange(400)[None, :]
    dome = rows >= 330 + (20 * np.cos((cols - 200) / 400 * np.pi * 2)).astype(int)
    px[dome] = 1.0  # a burnt-white abdomen below a curved border: flat, bright, not straight
    image = replace(image, pixels=px)
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, film)).predict([image])[0]
    f = {x.rule: x for x in evaluate(image, pred, config=CFG)}
    # as without the white abdomen: the left angle (300, 340) to the last column 399; taken
    # for a shutter, the curved border would come within ~18 px below it
    assert f["completeness.costophrenic"].value == pytest.approx(59.0)
