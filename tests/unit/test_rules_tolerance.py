"""Session 5: organ truncation that tolerates a model's outline stopping a few mm short of the
field edge it crosses (``edge_tolerance_mm`` / ``lateral_edge_tolerance_mm``), with hand-built
masks on the 1 mm phantoms whose every distance is known."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from qcnode.records import BoolMask, Finding, Status, View
from qcnode.rules import RulesConfig, evaluate, shutter_spec
from qcnode.rules.geometry import Subject
from qcnode.rules.organs import lung_loss_share, lungs_near_end_shares
from qcnode.testing import FakePredictor, frontal_phantom, lateral_phantom, phantom_image

BASE = RulesConfig()


def with_tolerance(frontal: float, lateral: float) -> RulesConfig:
    """The edge tolerances, with the frontal lungs on the outline rule they apply to (session
    7 measures the frontal lungs by their extrapolated loss instead; <= 0 restores it)."""
    organs = replace(
        BASE.organs,
        edge_tolerance_mm=frontal,
        lateral_edge_tolerance_mm=lateral,
        lung_loss_fail_share=-1.0,
    )
    return replace(BASE, organs=organs)


def qc(
    film: dict[str, BoolMask], model: dict[str, BoolMask], view: View, cfg: RulesConfig
) -> dict[str, Finding]:
    """Paint the film from ``film`` (shutters where its field is not), QC it on ``model``."""
    image = phantom_image(film, view_position="PA" if view is View.FRONTAL else "LL")
    pred = FakePredictor(source=lambda _i: (view, model)).predict([image])[0]
    return {f.rule: f for f in evaluate(image, pred, config=cfg)}


def subject(film: dict[str, BoolMask], model: dict[str, BoolMask]) -> Subject:
    image = phantom_image(film, view_position="PA")
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, model)).predict([image])[0]
    return Subject.build(image, pred, shutter=shutter_spec(BASE))


def top_shutter(m: dict[str, BoolMask], last_row: int) -> dict[str, BoolMask]:
    """A straight shutter across the top down to ``last_row``; the lungs cut there."""
    m = dict(m)
    field = m["field"].copy()
    field[: last_row + 1] = False
    m["field"] = field
    for k in ("lung_right", "lung_left"):
        m[k] = m[k] & field
    return m


def short_by(m: dict[str, BoolMask], rows: slice) -> dict[str, BoolMask]:
    """The model's lungs: the film's with the given rows left out (stopping short)."""
    out = dict(m)
    for k in ("lung_right", "lung_left"):
        v = m[k].copy()
        v[rows] = False
        out[k] = v
    return out


def test_edge_contact_counts_the_ring_within_the_tolerance() -> None:
    film = top_shutter(frontal_phantom(), 61)  # first exposed row 62; lungs rows 62..300
    model = short_by(film, slice(0, 64))  # the model's lungs start at row 64: 2 mm short
    s = subject(film, model)
    lung = s.mask("lung_right")  # cols 60..170
    assert s.edge_contact_mm(lung) == 0.0
    # ring row 62 within 2 mm of the lung: straight above it, cols 60..170
    assert s.edge_contact_mm(lung, 2.0) == pytest.approx(111.0)
    # within 3 mm: also the columns with hypot(2, dx) <= 3, dx <= 2: cols 58..172
    assert s.edge_contact_mm(lung, 3.0) == pytest.approx(115.0)
    assert s.near(lung, 0.0) is lung
    # 1 mm: the 4-neighbours of the rectangle (diagonals are sqrt(2) away)
    assert int(s.near(lung, 1.0).sum()) == int(lung.sum()) + 2 * (237 + 111)


def test_lungs_stopping_short_of_a_shutter_still_fail_with_the_tolerance() -> None:
    film = top_shutter(frontal_phantom(), 61)
    model = short_by(film, slice(0, 64))
    ratio = BASE.organs.lung_truncation_fail_ratio
    area = 237.0 * 111.0  # model lung rows 64..300, 111 columns
    without = qc(film, model, View.FRONTAL, with_tolerance(0.0, 0.0))["organs.lungs"]
    assert without.value == 0.0 and without.status is Status.PASS
    f = qc(film, model, View.FRONTAL, with_tolerance(3.0, 0.0))["organs.lungs"]
    assert f.value == pytest.approx(115.0)
    assert f.threshold == pytest.approx(math.sqrt(ratio * area))
    assert f.status is Status.FAIL
    # the exact masks, cut at the edge row itself, fail either way
    exact = qc(film, film, View.FRONTAL, with_tolerance(3.0, 0.0))["organs.lungs"]
    assert exact.value == pytest.approx(117.0)  # cols 57..173 of ring row 62
    assert exact.status is Status.FAIL
    # a lung that ends 5 mm below the edge is not on it at 3 mm
    far = short_by(film, slice(0, 67))
    assert qc(film, far, View.FRONTAL, with_tolerance(3.0, 0.0))["organs.lungs"].value == 0.0


def test_lateral_lungs_stopping_short_of_the_bottom_edge_fail_but_the_spine_has_no_tolerance() -> (
    None
):
    film = lateral_phantom()
    field = film["field"].copy()
    field[281:] = False  # bottom shutter from row 281: last exposed row 280
    film["field"] = field
    for k in ("lung_right", "lung_left"):
        film[k] = film[k] & field
    model = dict(film)
    for k in ("lung_right", "lung_left"):
        v = film[k].copy()
        v[278:] = False  # the model's lungs end at row 277, 3 mm above the edge row
        model[k] = v
    ratio = BASE.organs.lateral_lung_truncation_fail_ratio
    f0 = qc(film, model, View.LATERAL, with_tolerance(0.0, 0.0))
    assert f0["organs.lungs"].value == 0.0 and f0["organs.lungs"].status is Status.PASS
    f = qc(film, model, View.LATERAL, with_tolerance(0.0, 3.0))
    # ring row 280 within 3 mm of the lungs' bottom row 277: straight below, cols 100..300
    assert f["organs.lungs"].value == pytest.approx(201.0)
    assert f["organs.lungs"].threshold == pytest.approx(math.sqrt(ratio * 228 * 201))
    assert f["organs.lungs"].status is Status.FAIL
    # the spine (cols 300..340, beside the lungs' rows 50..277) measures as without tolerance
    assert f["organs.spine"].value == f0["organs.spine"].value
    assert f["organs.spine"].status is f0["organs.spine"].status
    # the frontal tolerance does not apply to a lateral
    assert qc(film, model, View.LATERAL, with_tolerance(3.0, 0.0))["organs.lungs"].value == 0.0


def test_heart_a_few_mm_from_a_side_shutter() -> None:
    """Frontal heart (rows 200..300, cols 170..260) with a shutter 2 mm to its image right."""
    film = frontal_phantom()
    field = film["field"].copy()
    field[:, 263:] = False  # last exposed column 262
    film["field"] = field
    for k in ("lung_left",):
        film[k] = film[k] & field
    model = dict(film)
    heart = film["heart"]
    assert qc(film, model, View.FRONTAL, with_tolerance(0.0, 0.0))["organs.heart"].value == 0.0
    f = qc(film, model, View.FRONTAL, with_tolerance(2.0, 0.0))["organs.heart"]
    # ring column 262 within 2 mm of the heart's column 260: rows 200..300 (101 px)
    assert f.value == pytest.approx(101.0)
    assert f.status is Status.FAIL  # > truncation_fail_mm
    assert f.threshold == BASE.organs.truncation_fail_mm
    assert heart.any()


def test_zero_tolerance_is_the_plain_edge_contact() -> None:
    film = top_shutter(frontal_phantom(), 61)
    s = subject(film, film)
    lung = s.mask("lung_left")  # cols 230..340, cut at row 62
    assert s.edge_contact_mm(lung) == pytest.approx(111.0)
    assert s.edge_contact_mm(lung, 0.0) == s.edge_contact_mm(lung)
    assert np.array_equal(s.near(lung, 0.0), lung)


def with_spine_end(tolerance_mm: float) -> RulesConfig:
    return replace(BASE, organs=replace(BASE.organs, spine_lung_end_tolerance_mm=tolerance_mm))


def bottom_cut_lateral() -> tuple[dict[str, BoolMask], dict[str, BoolMask]]:
    """A lateral cut by a bottom shutter (last exposed row 280; lungs rows 50..280 × cols
    100..300 on the film) and the model's lungs ending at row 277, 3 mm short of it."""
    film = lateral_phantom()
    field = film["field"].copy()
    field[281:] = False
    film["field"] = field
    for k in ("lung_right", "lung_left"):
        film[k] = film[k] & field
    model = dict(film)
    for k in ("lung_right", "lung_left"):
        v = film[k].copy()
        v[278:] = False
        model[k] = v
    return film, model


def test_lung_end_near_the_bottom_edge_reads_its_last_band_width() -> None:
    """Session 7: the field edge beyond the lungs' bottom row, per column of their last band:
    rows 277..280 are exposed below the model's lungs, 3 mm of field beyond their end row."""
    film, model = bottom_cut_lateral()
    image = phantom_image(film, view_position="LL")

    def lateral(masks: dict[str, BoolMask]) -> Subject:
        pred = FakePredictor(source=lambda _i: (View.LATERAL, masks)).predict([image])[0]
        return Subject.build(image, pred, shutter=shutter_spec(BASE))

    s = lateral(model)
    ext = (50, 277)
    # rectangles: the last 3 mm are as wide as the widest row; the top is 30 mm from its edge
    assert lungs_near_end_shares(s, ext, 3.0, 3.0) == {"top": 0.0, "bottom": 1.0}
    assert lungs_near_end_shares(s, ext, 2.9, 3.0) == {"top": 0.0, "bottom": 0.0}
    assert lungs_near_end_shares(s, ext, 30.0, 0.0) == {"top": 1.0, "bottom": 1.0}
    # the cut itself: the exact lungs end on the edge row, 0 mm
    exact = lungs_near_end_shares(lateral(film), (50, 280), 0.0, 0.0)
    assert exact == {"top": 0.0, "bottom": 1.0}


def test_spine_fails_when_the_models_lungs_stop_short_of_a_bottom_cut() -> None:
    film, model = bottom_cut_lateral()
    # without the near-end cut the model's lungs do not reach the edge: the spine passes
    off = qc(film, model, View.LATERAL, with_spine_end(-1.0))["organs.spine"]
    assert off.status is Status.PASS
    assert qc(film, model, View.LATERAL, BASE)["organs.spine"].status is Status.FAIL
    # the exact masks fail on the cut row itself, either way
    assert qc(film, film, View.LATERAL, with_spine_end(-1.0))["organs.spine"].status is (
        Status.FAIL
    )
    # lungs ending 8 mm above the edge (beyond 5.6 mm): not a cut
    far = dict(model)
    for k in ("lung_right", "lung_left"):
        v = film[k].copy()
        v[273:] = False  # last row 272, field to row 280
        far[k] = v
    assert BASE.organs.spine_lung_end_tolerance_mm < 8.0
    assert qc(film, far, View.LATERAL, BASE)["organs.spine"].status is Status.PASS
    # an intact lung narrows to its recess: a last band 40 of 201 columns wide, over more
    # rows than the band, is no cut
    tip = dict(model)
    for k in ("lung_right", "lung_left"):
        v = model[k].copy()
        v[262:278, 140:] = False  # rows 262..277 keep cols 100..139
        tip[k] = v
    assert BASE.organs.spine_lung_cut_width_fraction > 40 / 201
    assert BASE.organs.spine_lung_end_band_mm < 16.0
    assert qc(film, tip, View.LATERAL, BASE)["organs.spine"].status is Status.PASS


def test_spine_reads_a_rounded_cut_end_over_its_band() -> None:
    """Session 12: the model's end of a lung cut at the bottom is rounded over several mm; the
    band (``spine_lung_end_band_mm``, 10 mm) reaches above the rounding to the cut width. A
    cut only 0.35 of the lungs' widest, on the edge row, leaves the spine (fraction 0.4)."""
    film, model = bottom_cut_lateral()
    rounded = dict(model)
    for k in ("lung_right", "lung_left"):
        v = model[k].copy()
        v[272:278, 140:] = False  # rows 272..277 keep cols 100..139; rows ..271 all 201
        rounded[k] = v
    o = BASE.organs
    assert o.spine_lung_end_band_mm > 6.0
    assert qc(film, rounded, View.LATERAL, BASE)["organs.spine"].status is Status.FAIL
    narrow = replace(BASE, organs=replace(o, spine_lung_end_band_mm=3.0))
    assert qc(film, rounded, View.LATERAL, narrow)["organs.spine"].status is Status.PASS
    # the film cut through a narrow part: 70 of 201 columns on the edge row
    shallow = dict(film)
    for k in ("lung_right", "lung_left"):
        v = film[k].copy()
        v[250:281, 170:] = False  # rows 250..280 keep cols 100..169
        shallow[k] = v
    assert 0.3 < 70 / 201 < o.spine_lung_cut_width_fraction
    assert qc(film, shallow, View.LATERAL, BASE)["organs.spine"].status is Status.PASS
    old = replace(BASE, organs=replace(o, spine_lung_cut_width_fraction=0.3))
    assert qc(film, shallow, View.LATERAL, old)["organs.spine"].status is Status.FAIL


# ---- session 7: frontal organs.lungs by the lung extrapolated beyond the field edge ---------


def tapered_film(last_row: int) -> dict[str, BoolMask]:
    """The frontal phantom with a bottom shutter (last exposed row ``last_row``) and a right
    lung that tapers linearly to a tip at row 320: rows 150..169 150 columns wide, from row
    170 ``320 - row`` wide (cols from 60); the left lung rows 60..190, far from every edge."""
    m = frontal_phantom()
    right = np.zeros_like(m["lung_right"])
    for r in range(150, 320):
        right[r, 60 : 60 + min(150, 320 - r)] = True
    left = np.zeros_like(m["lung_left"])
    left[60:191, 230:341] = True
    field = m["field"].copy()
    field[last_row + 1 :] = False
    m.update(field=field, lung_right=right & field, lung_left=left & field)
    return m


def test_lung_loss_of_a_linear_taper_is_the_triangle_beyond_the_edge() -> None:
    """Width 40 + x mm at x mm inside the edge (row 280): the fitted line meets the edge at
    40 mm and tapers 1 mm per mm, so 40² / 2 = 800 mm² lie beyond it, as many as the film's
    lung has there (780 mm² in whole rows)."""
    film = tapered_film(280)
    s = subject(film, film)
    visible = 20 * 150 + sum(range(40, 151))  # rows 150..169, then widths 150..40
    share, side, where = lung_loss_share(s, BASE.organs)
    assert (side, where) == ("right", "bottom")
    assert share == pytest.approx(800.0 / (visible + 800.0))
    f = qc(film, film, View.FRONTAL, BASE)["organs.lungs"]
    assert f.status is Status.PASS and f.threshold == BASE.organs.lung_loss_fail_share
    # cut 50 mm higher (row 230): width 90 mm at the edge, 90² / 2 mm² beyond: over the share
    deep = tapered_film(230)
    visible = 20 * 150 + sum(range(90, 151))
    f = qc(deep, deep, View.FRONTAL, BASE)["organs.lungs"]
    assert f.value == pytest.approx(4050.0 / (visible + 4050.0), abs=1e-3)
    assert f.value is not None and f.value >= BASE.organs.lung_loss_fail_share
    assert f.status is Status.FAIL
    assert f.message.startswith("Right lung cut by the field edge (bottom)")


def test_lung_loss_ignores_the_models_rounded_end_short_of_the_cut() -> None:
    """The model's lung stops 3 mm short of the cut (row 230) with its last rows narrowed:
    the fit starts 5 mm inside the edge (row 225), so it reads the film's loss and fails, where the
    outline on the edge (2 mm tolerance) reads nothing."""
    film = tapered_film(230)
    model = dict(film)
    right = film["lung_right"].copy()
    right[228:] = False  # last row 227: 3 mm short of the edge row 230
    right[226:228, 60 + 60 :] = False  # the rounded end: 60 of its 93..94 columns
    model["lung_right"] = right
    # the same fit (rows 205..225 and 200..220) as the film's, 90² / 2 mm² beyond the edge,
    # over the model's smaller lung (rows 228..230 and 34 + 33 columns of rows 226..227 less)
    visible = 20 * 150 + sum(range(90, 151)) - (92 + 91 + 90) - (34 + 33)
    share = lung_loss_share(subject(film, model), BASE.organs)[0]
    assert share == pytest.approx(4050.0 / (visible + 4050.0))
    assert qc(film, model, View.FRONTAL, BASE)["organs.lungs"].status is Status.FAIL
    outline = qc(film, model, View.FRONTAL, with_tolerance(2.0, 3.0))["organs.lungs"]
    assert outline.value == 0.0 and outline.status is Status.PASS


def test_lung_loss_of_a_lung_cut_through_its_full_width() -> None:
    """The phantom's rectangular lungs (111 columns) cut by a bottom shutter at row 280 keep
    their width to the edge: the taper is floored at 0.05, 111² / 0.1 mm² beyond the edge."""
    film = top_shutter(frontal_phantom(), 0)  # field rows 20..340 as before
    field = film["field"].copy()
    field[281:] = False
    film["field"] = field
    for k in ("lung_right", "lung_left"):
        film[k] = film[k] & field
    lost = 111.0**2 / 0.1
    share, _, where = lung_loss_share(subject(film, film), BASE.organs)
    assert where == "bottom"
    assert share == pytest.approx(lost / (111.0 * 221.0 + lost))
    # the whole phantom, its lungs 40 mm inside every edge: nothing beyond
    whole = frontal_phantom()
    assert lung_loss_share(subject(whole, whole), BASE.organs)[0] == 0.0
    assert qc(whole, whole, View.FRONTAL, BASE)["organs.lungs"].status is Status.PASS


# ---- session 12: lateral completeness.costophrenic when the model's base stops short -------


def with_base_end(tolerance_mm: float) -> RulesConfig:
    return replace(
        BASE,
        completeness=replace(BASE.completeness, lateral_costophrenic_end_tolerance_mm=tolerance_mm),
    )


def short_lateral(film: dict[str, BoolMask], last_row: int) -> dict[str, BoolMask]:
    """The model's lungs of a lateral: the film's, ending at ``last_row``."""
    out = dict(film)
    for k in ("lung_right", "lung_left"):
        v = film[k].copy()
        v[last_row + 1 :] = False
        out[k] = v
    return out


def test_lateral_costophrenic_fails_a_wide_base_that_stops_short_of_the_bottom_edge() -> None:
    """The film's lungs run into the bottom shutter (last exposed row 280); the model's end
    at row 270, 10 mm above it: the margin passes (>= 5 mm), the wide base within
    ``lateral_costophrenic_end_tolerance_mm`` of the edge is the cut (15 mm: the value
    calibrated for qcnet_d10_w3_s10; off in etc/rules.toml since the s12 default)."""
    rule = "completeness.costophrenic"
    film, _ = bottom_cut_lateral()
    model = short_lateral(film, 270)
    on = with_base_end(15.0)
    c = on.completeness
    assert c.costophrenic_margin_mm < 10.0 < c.lateral_costophrenic_end_tolerance_mm
    off = qc(film, model, View.LATERAL, BASE)[rule]  # the shipped setting: off
    assert BASE.completeness.lateral_costophrenic_end_tolerance_mm < 0
    assert off.status is Status.PASS
    assert off.value == pytest.approx(10.0)
    cut = qc(film, model, View.LATERAL, on)[rule]
    assert cut.status is Status.FAIL
    assert cut.value == pytest.approx(10.0)
    assert "100%" in cut.message
    # an intact base narrows to its posterior recess: a last band 30 of 201 columns wide
    tip = dict(model)
    for k in ("lung_right", "lung_left"):
        v = model[k].copy()
        v[265:271, :270] = False  # rows 265..270 keep cols 270..300 (posterior)
        tip[k] = v
    assert c.lateral_costophrenic_end_fraction > 31 / 201
    assert qc(film, tip, View.LATERAL, on)[rule].status is Status.PASS
    # a base farther above the edge than the tolerance: the margin alone decides
    far = short_lateral(film, 280 - round(c.lateral_costophrenic_end_tolerance_mm) - 2)
    assert qc(film, far, View.LATERAL, on)[rule].status is Status.PASS
