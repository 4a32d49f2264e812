"""The positioning truth's 3D geometry (qcnode.synth.pose), on hand-made landmarks: no CT.

The truth must follow the renderer's own pose transform (inverted) and measure the angles a
radiographer reads: clavicle heads vs spinous processes, clavicles vs apices plus the beam.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from qcnode.synth import render
from qcnode.synth.pose import Landmarks, apparent_rotation, apparent_tilt, positioned

SYMMETRIC = Landmarks(
    clavicle_right=(-40.0, 50.0, 110.0),
    clavicle_left=(40.0, 50.0, 110.0),
    spinous=(0.0, -60.0, 110.0),
    apex=(0.0, -10.0, 125.0),
)


def params(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "rotation_deg": 0.0,
        "tilt_deg": 0.0,
        "scale_zyx": [1.0, 1.0, 1.0],
        "elastic_mm": 0.0,
        "elastic_seed": 7,
        "beam_center_mm": [0.0, 0.0],
        "sid_mm": 1800.0,
        "view_position": "PA",
    }
    return {**base, **kw}


def test_positioned_inverts_the_renderers_pose_transform() -> None:
    p = params(rotation_deg=9.0, tilt_deg=-6.0, scale_zyx=[1.05, 0.93, 1.1], elastic_mm=9.0)
    pose = render.Pose(
        rotation_deg=9.0,
        tilt_deg=-6.0,
        scale=(1.05, 0.93, 1.1),
        elastic_mm=9.0,
        elastic_seed=7,
    )
    ct_points = np.random.default_rng(0).uniform(-150, 150, (20, 3))
    moved = positioned(ct_points, p)
    back = render._to_ct(
        torch.as_tensor(moved, dtype=torch.float32),
        pose,
        render._rot(pose),
        render._elastic_terms(pose),
    )
    assert np.abs(back.numpy() - ct_points).max() < 0.01  # mm


@pytest.mark.parametrize("rotation", [-12.0, -5.0, 0.0, 3.0, 14.0])
def test_symmetric_anatomy_reads_the_pose_rotation(rotation: float) -> None:
    assert apparent_rotation(params(rotation_deg=rotation), SYMMETRIC) == pytest.approx(rotation)


def test_asymmetric_anatomy_is_straight_where_its_clavicle_heads_are_symmetric() -> None:
    lm = Landmarks(
        clavicle_right=(-38.0, 54.0, 110.0),
        clavicle_left=(46.0, 50.0, 112.0),
        spinous=(2.0, -62.0, 111.0),
        apex=(0.0, -10.0, 125.0),
    )
    sum_x = -38.0 + 46.0 - 2 * 2.0
    sum_y = 54.0 + 50.0 + 2 * 62.0
    t0 = math.degrees(math.atan2(sum_x, sum_y))  # the pose that makes them symmetric
    assert apparent_rotation(params(rotation_deg=t0), lm) == pytest.approx(0.0, abs=1e-4)
    assert apparent_rotation(params(rotation_deg=t0 + 6.0), lm) == pytest.approx(6.0, abs=1e-3)


def test_elastic_asymmetry_counts_as_rotation() -> None:
    """A warp that moves one clavicle head relative to the spine reads as rotated, as it
    would to a radiographer; the same warp with symmetric effect would not."""
    values = {apparent_rotation(params(elastic_mm=9.0, elastic_seed=s), SYMMETRIC) for s in (1, 2)}
    assert all(abs(v) > 0.05 for v in values)


def test_tilt_reads_the_patient_and_the_beam() -> None:
    # central ray at the apex/clavicle level, standard PA: the patient's tilt only
    level = (125.0 + 110.0) / 2.0
    pa = params(beam_center_mm=[0.0, level])
    assert apparent_tilt(params(**{**pa, "tilt_deg": 10.0}), SYMMETRIC) == pytest.approx(
        10.0, abs=1e-3
    )
    # the apices 120 mm above the central ray: a PA at 180 cm is the reference (0) ...
    low = params(beam_center_mm=[0.0, level - 120.0])
    assert apparent_tilt(low, SYMMETRIC) == pytest.approx(0.0, abs=1e-6)
    # ... an AP at 110 cm projects the clavicles up: lordotic by both beam angles
    ap = apparent_tilt({**low, "view_position": "AP", "sid_mm": 1100.0}, SYMMETRIC)
    expected = math.degrees(math.atan(120.0 / 1100.0) + math.atan(120.0 / 1800.0))
    assert ap == pytest.approx(expected, abs=1e-3)
    assert apparent_tilt({**low, "tilt_deg": -10.0}, SYMMETRIC) == pytest.approx(-10.0, abs=1e-3)
