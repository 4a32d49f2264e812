"""No rule raises on empty, full, speckled or tiny masks and images (hardening finding 20).

``evaluate`` turns a rule's exception into ``not_evaluable``/"internal" and logs "rule
failed"; these tests treat such a log record as a failure, so a rule that only survives
thanks to that safety net is caught here.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest

from qcnode.records import STRUCTURES, BoolMask, Prediction, Status, View
from qcnode.rules import CATALOGUE, evaluate, load_config
from qcnode.rules.config import RulesConfig
from qcnode.testing import frontal_phantom, lateral_phantom, phantom_image

EDITS = ("keep", "empty", "full", "noise", "pixel", "shift", "row", "column")


def _resize(mask: BoolMask, shape: tuple[int, int]) -> BoolMask:
    rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
    cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
    return mask[np.ix_(rows, cols)]


def _edit(mask: BoolMask, edit: str, rng: np.random.Generator) -> BoolMask:
    shape = mask.shape
    out = np.zeros(shape, dtype=bool)
    if edit == "keep":
        return mask
    if edit == "full":
        out[:] = True
    elif edit == "noise":
        out = rng.random(shape) < 0.3
    elif edit == "pixel":
        out[rng.integers(0, shape[0]), rng.integers(0, shape[1])] = True
    elif edit == "shift":
        out = np.roll(mask, (shape[0] // 3, -shape[1] // 4), axis=(0, 1))
    elif edit == "row":
        out[rng.integers(0, shape[0]), :] = True
    elif edit == "column":
        out[:, rng.integers(0, shape[1])] = True
    return out


def _prediction(view: View, masks: dict[str, BoolMask], spacing: tuple[float, float] | None):
    return Prediction(
        view=view,
        view_probabilities={v: float(v is view) for v in View},
        masks=masks,
        spacing_mm=(0.0, 0.0) if spacing is None else spacing,
        spacing_estimated=False,
    )


def _check(findings, view: View, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    failed = [r for r in caplog.records if r.name.startswith("qcnode.rules") and r.exc_info]
    assert not failed, failed[0].exc_info
    assert tuple(f.rule for f in findings) == CATALOGUE[view]
    for f in findings:
        assert f.value is None or math.isfinite(f.value), f
        assert f.message
        for g in f.geometry:
            assert all(math.isfinite(c) for p in g.points for c in p), f


@pytest.fixture(scope="module")
def config() -> RulesConfig:
    return load_config()


@pytest.mark.parametrize("view", [View.FRONTAL, View.LATERAL], ids=["frontal", "lateral"])
@pytest.mark.parametrize(
    "shape", [(8, 8), (9, 300), (300, 9), (40, 33), (150, 120)], ids=lambda s: f"{s[0]}x{s[1]}"
)
@pytest.mark.parametrize("spacing", [None, (0.05, 0.05), (1.0, 1.0), (30.0, 30.0), (0.2, 3.0)])
def test_no_rule_raises_on_degenerate_masks(
    view: View,
    shape: tuple[int, int],
    spacing: tuple[float, float] | None,
    config: RulesConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    phantom = lateral_phantom() if view is View.LATERAL else frontal_phantom()
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for trial in range(len(EDITS) + 4):
        masks = {}
        for name in STRUCTURES:
            base = phantom.get(name)
            mask = _resize(base, shape) if base is not None else np.zeros(shape, dtype=bool)
            # every structure the same edit first, then a random edit per structure
            edit = EDITS[trial] if trial < len(EDITS) else str(rng.choice(EDITS))
            masks[name] = _edit(mask, edit, rng)
        image = phantom_image(masks, spacing_mm=spacing, seed=trial)
        findings = evaluate(image, _prediction(view, masks, spacing), config=config)
        _check(findings, view, caplog)


@pytest.mark.parametrize(
    "shape", [(0, 0), (0, 5), (1, 1), (7, 400), (0, 0, 2), (4, 4, 2), (64, 64, 3)]
)
@pytest.mark.parametrize("view", [View.FRONTAL, View.LATERAL], ids=["frontal", "lateral"])
@pytest.mark.parametrize("language", ["en", "zh"])
def test_degenerate_image_is_not_evaluable_with_a_reason(
    shape: tuple[int, ...],
    view: View,
    language: str,
    config: RulesConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 20: a 3-D pixel array or an empty region made a rule raise a broadcast
    ValueError; now every rule says why it cannot measure."""
    caplog.set_level(logging.ERROR)
    base = phantom_image(frontal_phantom((16, 16)))
    image = dataclasses.replace(base, pixels=np.full(shape, 0.5, dtype=np.float32))
    for fill in (False, True):
        masks = {name: np.full(shape, fill) for name in STRUCTURES}
        findings = evaluate(
            image, _prediction(view, masks, (1.0, 1.0)), config=config, language=language
        )
        _check(findings, view, caplog)
        assert {f.status for f in findings} == {Status.NOT_EVALUABLE}
        shape_text = "×".join(map(str, shape))
        assert all(shape_text in f.message for f in findings), findings[0].message


def test_non_finite_pixels_and_mismatched_masks_are_not_evaluable(
    config: RulesConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    masks = frontal_phantom((64, 64))
    image = phantom_image(masks)
    nan = image.pixels.copy()
    nan[3, 3] = np.nan
    for img, m in (
        (dataclasses.replace(image, pixels=nan), masks),
        (image, {**masks, "heart": np.zeros((32, 32), dtype=bool)}),
    ):
        findings = evaluate(img, _prediction(View.FRONTAL, m, (1.0, 1.0)), config=config)
        _check(findings, View.FRONTAL, caplog)
        assert {f.status for f in findings} == {Status.NOT_EVALUABLE}


def test_a_tiny_film_with_a_fine_spacing_is_still_measured(config: RulesConfig) -> None:
    """The working grid keeps >= 8 pixels per side: a 40 px film at 0.05 mm/px (a 2 mm
    thumbnail, stride would be 20) is measured, not emptied."""
    masks = frontal_phantom((40, 40))
    image = phantom_image(masks, spacing_mm=(0.05, 0.05))
    findings = evaluate(image, _prediction(View.FRONTAL, masks, (0.05, 0.05)), config=config)
    assert any(f.status is not Status.NOT_EVALUABLE for f in findings)
