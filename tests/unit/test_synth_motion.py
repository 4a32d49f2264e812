"""Motion blur in `physics.detect`: the patient moves, the collimator does not.

A real film's shutter shadow keeps its own (focal spot, detector) penumbra whatever the
patient does; only the anatomy smears. Up to generator v1.11 the motion kernel acted after
the field was applied and the synthetic shutter edge widened with the motion, which a
sharpness rule could learn instead of the anatomy (docs/RULES.md, exposure.sharpness).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qcnode.synth import physics

PITCH_MM = 1.4
SHUTTER_COL = 8  # first exposed column
BONE_COL = 40  # first column behind the bone slab


def _row(motion_mm: float, angle_deg: float = 0.0) -> npt.NDArray[np.float32]:
    """Noise-free signal along one row of a water slab with a bone step and a left shutter.

    Uniform water around the shutter edge, so any change there can only come from the
    field's edge itself; no scatter, so nothing spreads from the bone edge to it.
    """
    water = np.full((64, 64), 20.0, np.float32)
    bone = np.zeros((64, 64), np.float32)
    bone[:, BONE_COL:] = 1.0
    field = np.zeros((64, 64), bool)
    field[:, SHUTTER_COL:] = True
    exp = physics.Exposure(
        motion_blur_mm=motion_mm, motion_angle_deg=angle_deg, scatter_fraction=0.0
    )
    _, clean = physics.detect(water, bone, field, exp, PITCH_MM, np.random.default_rng(0))
    return np.asarray(clean[32], np.float32)


def _width_10_90(profile: npt.NDArray[np.float32]) -> int:
    """Pixels strictly between 10 % and 90 % of a monotone step."""
    t = (profile - profile[-1]) / (profile[0] - profile[-1])
    return int(np.sum((t > 0.1) & (t < 0.9)))


def test_shutter_edge_ignores_motion_while_the_bone_edge_blurs() -> None:
    still = _row(0.0)
    moved = _row(6.0)  # 4.3 px along the row, across both edges
    # The shutter edge (a few pixels either side) is identical: only the detector blur.
    # (v1.11: the first exposed pixel dropped from 17.7e-3 to 7.2e-3, the next from 18.0e-3
    # to 10.8e-3.)
    edge = slice(SHUTTER_COL - 3, SHUTTER_COL + 6)
    np.testing.assert_allclose(moved[edge], still[edge], rtol=1e-6, atol=1e-9)
    assert _width_10_90(still[SHUTTER_COL - 3 : SHUTTER_COL + 6][::-1]) == 0
    # The bone step smears over the motion length (measured: 0 → 4 pixels at 10–90 %).
    bone = slice(BONE_COL - 10, BONE_COL + 10)
    assert _width_10_90(still[bone]) == 0
    assert _width_10_90(moved[bone]) == 4
    step_still = float(np.abs(np.diff(still[bone])).max())
    step_moved = float(np.abs(np.diff(moved[bone])).max())
    assert step_moved < 0.3 * step_still  # measured ratio 1 / 3.9


def test_motion_along_the_edge_leaves_the_bone_step_alone() -> None:
    """Vertical motion over vertical edges changes nothing (a direction check of the kernel)."""
    np.testing.assert_allclose(_row(6.0, angle_deg=90.0), _row(0.0), rtol=1e-6, atol=1e-9)
