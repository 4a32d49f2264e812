"""Generator v1.17: lung filled towards water density in 3D (render.Opacity)."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest

from qcnode.synth import ct as ctmod
from qcnode.synth import render, sampler
from qcnode.synth.render import Detector, Opacity, Pose

SMALL = Detector(width_mm=500.0, height_mm=480.0, pitch_mm=4.0, depth_step_mm=4.0)


@pytest.fixture(scope="module")
def plain(ct: ctmod.PreparedCT) -> render.Projection:
    return render.render(ct, Pose(), SMALL)


def _only(p: render.Projection, side: str) -> np.ndarray:
    other = "left" if side == "right" else "right"
    m: np.ndarray = p.masks[f"lung_{side}"] & ~p.masks[f"lung_{other}"] & ~p.masks["heart"]
    return m


def test_white_out_fills_one_lung_and_keeps_every_mask(
    ct: ctmod.PreparedCT, plain: render.Projection
) -> None:
    op = render.render(
        ct, Pose(opacities=(Opacity(kind="whole", side="left", density=1.0),)), SMALL
    )
    for name, m in plain.masks.items():
        assert np.array_equal(m, op.masks[name]), name
    gain = op.water_cm - plain.water_cm
    left, right = _only(plain, "left"), _only(plain, "right")
    # Filling ~0.87 of water equivalent per cm of lung crossed: several cm more water behind
    # the left lung, none behind the right one nor outside the lungs.
    assert float(np.median(gain[left])) > 5.0
    assert float(np.abs(gain[right]).max()) < 0.05
    lungs = plain.masks["lung_right"] | plain.masks["lung_left"]
    assert float(np.abs(gain[~lungs]).max()) < 0.05
    assert np.array_equal(op.bone_cm, plain.bone_cm)


def test_basal_effusion_is_densest_low_and_rises_at_the_wall(
    ct: ctmod.PreparedCT, plain: render.Projection
) -> None:
    o = Opacity(kind="basal", side="right", density=1.0, level=0.5, meniscus_mm=60.0, edge_mm=3.0)
    gain = render.render(ct, Pose(opacities=(o,)), SMALL).water_cm - plain.water_cm
    right = _only(plain, "right")
    rows = np.nonzero(right.any(axis=1))[0]
    top, bottom = int(rows[0]), int(rows[-1])
    upper = gain[top : top + (bottom - top) // 4][right[top : top + (bottom - top) // 4]]
    assert float(np.abs(upper).max()) < 0.05  # the apex stays clear
    # Rows just above the level: the opacity reaches higher at the chest wall (image left
    # for the patient's right) than next to the mediastinum: the meniscus.
    cols = np.nonzero(right.any(axis=0))[0]
    lateral, medial = int(cols[0]) + 3, int(cols[-1]) - 3
    first = {c: int(np.argmax(gain[:, c] > 1.0)) for c in (lateral, medial)}
    assert first[lateral] < first[medial]
    lo, hi = top + 6 * (bottom - top) // 10, top + 8 * (bottom - top) // 10
    assert float(gain[lo:hi][right[lo:hi]].mean()) > 2.0


def test_blob_and_dependent_stay_in_their_lung(
    ct: ctmod.PreparedCT, plain: render.Projection
) -> None:
    ops = (
        Opacity(kind="blob", side="right", density=1.0, center=(0.5, 0.5, 0.6), radius_mm=40.0),
        Opacity(kind="dependent", side="left", density=0.6, level=0.5),
    )
    gain = render.render(ct, Pose(opacities=ops), SMALL).water_cm - plain.water_cm
    right, left = _only(plain, "right"), _only(plain, "left")
    # A 40 mm sphere: at most about 8 cm of added water, over a compact patch of the lung.
    patch = gain[right] > 1.0
    assert 0.02 < float(patch.mean()) < 0.5
    assert float(gain[right].max()) < 8.5
    # Layering behind a supine patient veils the whole height of the lung.
    assert float((gain[left] > 0.5).mean()) > 0.8


def test_draws_are_seeded_and_respect_the_share() -> None:
    none = [sampler.draw_opacities(np.random.default_rng(i), 0.0) for i in range(50)]
    assert all(o == () for o in none)
    some = [sampler.draw_opacities(np.random.default_rng(i), 0.7) for i in range(200)]
    share = sum(bool(o) for o in some) / len(some)
    assert 0.55 < share < 0.85
    again = [sampler.draw_opacities(np.random.default_rng(i), 0.7) for i in range(200)]
    assert some == again
    kinds = {o.kind for ops in some for o in ops}
    assert kinds == set(render.OPACITY_KINDS)
    for ops in some:
        for o in ops:
            assert 0.0 < o.density <= 1.0 and o.side in ("right", "left")
            assert asdict(o)["kind"] == o.kind


def test_texture_makes_an_opacity_patchy(ct: ctmod.PreparedCT, plain: render.Projection) -> None:
    smooth = Opacity(kind="whole", side="right", density=1.0)
    patchy = replace(smooth, texture=0.8, seed=4)
    right = _only(plain, "right")
    g_smooth = render.render(ct, Pose(opacities=(smooth,)), SMALL).water_cm - plain.water_cm
    g_patchy = render.render(ct, Pose(opacities=(patchy,)), SMALL).water_cm - plain.water_cm
    # Less water overall, but still an opacity everywhere behind the lung.
    assert 0.3 < float(g_patchy[right].mean() / g_smooth[right].mean()) < 0.9
    assert float((g_patchy[right] > 0.5).mean()) > 0.8
    # The texture's drop varies from pixel to pixel: patches.
    drop = 1.0 - g_patchy[right] / np.maximum(g_smooth[right], 1e-3)
    assert float(drop.std()) > 0.03


def test_texture_draws_come_after_the_v117_draws() -> None:
    for i in range(100):
        plain = sampler.draw_opacities(np.random.default_rng(i), 0.7)
        textured = sampler.draw_opacities(np.random.default_rng(i), 0.7, 0.5)
        assert [replace(o, texture=0.0, seed=0) for o in textured] == list(plain)
    ops = [
        o for i in range(200) for o in sampler.draw_opacities(np.random.default_rng(i), 1.0, 0.5)
    ]
    share = sum(o.texture > 0 for o in ops) / len(ops)
    assert 0.35 < share < 0.65


def test_unknown_kind_is_an_error(ct: ctmod.PreparedCT) -> None:
    with pytest.raises(ValueError, match="opacity kind"):
        render.render(ct, Pose(opacities=(Opacity(kind="cloud", side="left", density=1.0),)), SMALL)
