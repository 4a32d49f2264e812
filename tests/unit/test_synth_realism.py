"""The v1.13 `--realism` option: denser bones and more dose, nothing else changed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qcnode.synth import physics, sampler
from qcnode.synth.render import Detector

PITCH_MM = 1.4


def _slab(exp: physics.Exposure, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) signal of a 20 cm water slab with 1 cm of bone in the right half."""
    water = np.full((96, 96), 20.0, np.float32)
    bone = np.zeros((96, 96), np.float32)
    bone[:, 48:] = 1.0
    field = np.ones((96, 96), bool)
    exp = replace(exp, scatter_fraction=0.0)
    return physics.detect(water, bone, field, exp, PITCH_MM, np.random.default_rng(seed))


def test_bone_scale_darkens_behind_bone_only() -> None:
    _, c1 = _slab(physics.Exposure())
    _, c2 = _slab(physics.Exposure(bone_scale=2.0))
    # Relative contrast bone/soft: the soft half is the reference of the AEC in both.
    r1 = float(c1[:, 70:].mean() / c1[:, :30].mean())
    r2 = float(c2[:, 70:].mean() / c2[:, :30].mean())
    assert r2 < r1 * 0.9
    # Twice the bone path is the same as drawing twice the bone (Beer–Lambert is exact here).
    water = np.full((96, 96), 20.0, np.float32)
    bone = np.zeros((96, 96), np.float32)
    bone[:, 48:] = 2.0
    ref = physics.detect(
        water,
        bone,
        np.ones((96, 96), bool),
        physics.Exposure(scatter_fraction=0.0),
        PITCH_MM,
        np.random.default_rng(0),
    )[1]
    np.testing.assert_allclose(c2, ref, rtol=1e-5)


def test_dose_scale_lowers_relative_noise() -> None:
    n1, c1 = _slab(physics.Exposure())
    n10, c10 = _slab(physics.Exposure(dose_scale=10.0))
    s1 = float(np.std(n1[:, :40] / c1[:, :40]))
    s10 = float(np.std(n10[:, :40] / c10[:, :40]))
    assert s10 < s1 / 2.5  # ~1/sqrt(10) for quantum noise, electronic noise aside


def test_realism_draws_after_everything_else() -> None:
    det = Detector(pitch_mm=PITCH_MM)
    for view in ("frontal", "lateral"):
        for seed in range(5):
            plain = sampler.draw_variant(
                np.random.default_rng(seed), det, (60, 200, 40, 300), view, 7
            )
            real = sampler.draw_variant(
                np.random.default_rng(seed), det, (60, 200, 40, 300), view, 7, realism=True
            )
            assert plain.exposure.bone_scale == plain.exposure.dose_scale == 1.0
            assert 1.0 <= real.exposure.bone_scale <= 2.4
            assert 1.0 <= real.exposure.dose_scale <= 12.0
            same = replace(real, exposure=replace(real.exposure, bone_scale=1.0, dose_scale=1.0))
            assert same == plain


def test_realism_plain_keeps_a_share_plain_and_v113_draws() -> None:
    det = Detector(pitch_mm=PITCH_MM)
    kept = 0
    for seed in range(200):
        args = (det, (60, 200, 40, 300), "frontal", 7)
        plain = sampler.draw_variant(np.random.default_rng(seed), *args)
        v113 = sampler.draw_variant(np.random.default_rng(seed), *args, realism=True)
        v114 = sampler.draw_variant(
            np.random.default_rng(seed), *args, realism=True, realism_plain=0.3
        )
        # Same realism draws as v1.13 unless this sample was kept plain.
        assert v114 in (plain, v113)
        kept += v114 == plain and v113 != plain
    assert 35 <= kept <= 85  # 30 % of 200, binomial sd ~6.5
