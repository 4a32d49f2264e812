"""The unit of an organ finding is that of the value it reports: a missing organ reports its
visible area (mm2), a found one the length of its outline on the field edge (mm)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qcnode.records import BoolMask, Finding, Status, View
from qcnode.report.coding import ucum
from qcnode.testing import frontal_phantom, lateral_phantom
from tests.unit.test_rules import CFG, box, run

# the outline-on-the-edge rule for the frontal lungs (session 5), which lung_loss_fail_share
# <= 0 restores; the shipped frontal lungs use the loss share (unit "1")
OUTLINE = replace(CFG, organs=replace(CFG.organs, lung_loss_fail_share=-1.0))


def small(m: BoolMask) -> BoolMask:
    """A 10 x 10 px (1 mm px: 100 mm²) remnant, below every organ's minimum area."""
    return box(np.zeros_like(m), 100, 109, 200, 209)


def assert_unit_is_ucum(f: Finding) -> None:
    assert f.unit is not None and ucum(f.unit).meaning != f.unit, f  # a known UCUM unit


def test_a_missing_frontal_lung_or_heart_reports_its_area_in_mm2() -> None:
    for cfg in (CFG, OUTLINE):
        m = frontal_phantom()
        m["lung_left"] = np.zeros_like(m["lung_left"])  # (a remnant would rescale the image)
        f = run(m, cfg=cfg)["organs.lungs"]
        assert f.status is Status.FAIL and "not found" in f.message
        assert (f.value, f.unit) == (0.0, "mm2")
        assert f.threshold == CFG.organs.lung_min_area_mm2
        assert_unit_is_ucum(f)
    m = frontal_phantom()
    m["heart"] = small(m["heart"])
    f = run(m)["organs.heart"]
    assert f.status is Status.FAIL
    assert (f.value, f.unit) == (100.0, "mm2")
    assert_unit_is_ucum(f)


def test_whole_or_truncated_frontal_organs_report_the_outline_on_the_edge_in_mm() -> None:
    f = run(frontal_phantom(), cfg=OUTLINE)
    assert f["organs.lungs"].status is Status.PASS
    assert (f["organs.lungs"].value, f["organs.lungs"].unit) == (0.0, "mm")
    assert (f["organs.heart"].value, f["organs.heart"].unit) == (0.0, "mm")
    m = frontal_phantom()
    m["field"] = box(m["field"], 0, 64, 0, 399, False)  # the field starts at row 65
    m = {k: (v & m["field"]) if k.startswith("lung") else v for k, v in m.items()}
    lungs = run(m, cfg=OUTLINE)["organs.lungs"]
    assert lungs.status is Status.FAIL and lungs.unit == "mm"
    assert run(m)["organs.lungs"].unit == "1"  # the shipped rule: a share of the lung lost


def test_missing_lateral_lungs_sternum_and_spine_report_their_area_in_mm2() -> None:
    m = lateral_phantom()
    m["lung_right"] = np.zeros_like(m["lung_right"])  # (a remnant would rescale the image)
    m["lung_left"] = np.zeros_like(m["lung_left"])
    lungs = run(m, View.LATERAL)["organs.lungs"]
    assert lungs.status is Status.FAIL
    assert (lungs.value, lungs.unit) == (0.0, "mm2")
    m = lateral_phantom()
    m["sternum"] = small(m["sternum"])
    m["spine"] = small(m["spine"])
    f = run(m, View.LATERAL)
    for rule in ("organs.sternum", "organs.spine"):
        assert f[rule].status is Status.FAIL, rule
        assert f[rule].unit == "mm2", rule
        assert_unit_is_ucum(f[rule])
    assert f["organs.sternum"].value == 100.0


def test_found_lateral_lungs_sternum_and_spine_report_the_outline_on_the_edge_in_mm() -> None:
    f = run(lateral_phantom(), View.LATERAL)
    for rule in ("organs.lungs", "organs.sternum", "organs.spine"):
        assert f[rule].status is Status.PASS, rule
        assert (f[rule].value, f[rule].unit) == (0.0, "mm"), rule
    m = lateral_phantom()
    m["field"] = box(m["field"], 0, 399, 0, 82, False)  # the sternum on the field edge
    sternum = run(m, View.LATERAL)["organs.sternum"]
    assert sternum.status is Status.FAIL and "truncated" in sternum.message
    assert sternum.unit == "mm" and sternum.value is not None and sternum.value > 0
