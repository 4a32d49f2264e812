"""Frontal positioning.inspiration's habitus estimator on hand-built masks of known geometry:
the AP magnification, the heart-height term and the v7 formula behind its key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from qcnode.errors import ConfigError
from qcnode.records import BoolMask, Finding, Status, View
from qcnode.rules import RulesConfig, evaluate
from qcnode.rules.config import PositioningConfig
from qcnode.testing import FakePredictor, frontal_phantom, phantom_image

CFG = RulesConfig()
P = CFG.positioning
APEX_ROW = 60  # frontal_phantom: right lung rows 60-300, 1 mm pixels


def inspiration(masks: dict[str, BoolMask], view_position: str, cfg: RulesConfig = CFG) -> Finding:
    image = phantom_image(masks, view_position=view_position)
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, masks)).predict([image])[0]
    (f,) = [x for x in evaluate(image, pred, config=cfg) if x.rule == "positioning.inspiration"]
    return f


def with_heart(depth: int, height: int) -> dict[str, BoolMask]:
    """The phantom with its heart's lower border ``depth`` mm below the right apex and the
    heart ``height`` mm tall."""
    m = frontal_phantom()
    bottom = APEX_ROW + depth
    heart = np.zeros_like(m["heart"])
    heart[bottom - height + 1 : bottom + 1, 170:261] = True
    m["heart"] = heart
    return m


def expected(depth: float, height: float, *, ap: bool) -> float:
    k = P.inspiration_ap_magnification if ap else 1.0
    return float(
        round(
            P.inspiration_habitus_ribs_at_apex
            + depth / (k * P.inspiration_habitus_mm_per_rib)
            + P.inspiration_heart_ribs_per_mm * height
        )
    )


def test_ap_header_divides_the_depth_by_the_magnification() -> None:
    assert P.inspiration_ap_magnification > 1.0
    # a dome depth that passes on a PA header and reads one rib fewer on an AP one
    depth = next(
        d
        for d in range(150, 300)
        if expected(d, 100, ap=False) == 10 and expected(d, 100, ap=True) == 9
    )
    pa = inspiration(with_heart(depth, 100), "PA")
    ap = inspiration(with_heart(depth, 100), "AP")
    assert (pa.value, pa.status) == (10.0, Status.PASS)
    assert (ap.value, ap.status) == (9.0, Status.WARN)


def test_taller_heart_reads_fewer_ribs_at_the_same_depth() -> None:
    assert P.inspiration_heart_ribs_per_mm < 0.0
    depth = 230
    short, tall = (
        inspiration(with_heart(depth, 60), "PA"),
        inspiration(with_heart(depth, 200), "PA"),
    )
    assert short.value == expected(depth, 60, ap=False)
    assert tall.value == expected(depth, 200, ap=False)
    assert tall.value is not None and short.value is not None and tall.value < short.value


@pytest.mark.parametrize("view_position", ["PA", "AP"])
def test_depth_estimator_restores_the_v7_formula(view_position: str) -> None:
    cfg = replace(CFG, positioning=replace(P, inspiration_estimator="depth"))
    for depth, height in ((200, 60), (230, 200), (260, 120)):
        f = inspiration(with_heart(depth, height), view_position, cfg)
        assert f.value == float(
            round(P.inspiration_ribs_at_apex + depth / P.inspiration_mm_per_rib)
        )


def test_geometry_and_unknown_estimator() -> None:
    f = inspiration(with_heart(240, 101), "PA")
    assert "240 mm" in f.geometry[0].label
    with pytest.raises(ConfigError):
        PositioningConfig(inspiration_estimator="ribs")
