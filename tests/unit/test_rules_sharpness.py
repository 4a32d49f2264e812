"""exposure.sharpness, "gradient_ratio": the apparent edge FWHM of a hand-built phantom.

The phantom's organs are boxes with perfect steps, so a Gaussian blur of known σ must read
back as about its FWHM (2.355·σ) up to the coarse scale (2.8 mm); a diagonal motion blurs
every edge and must fail. A motion strictly along one axis leaves this phantom's edges along
that axis sharp, and the measure reads the sharper quarter of the edges: it is missed (a
known limit, measured here; on the synthetic sets such motions still raise the value).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from qcnode.errors import ConfigError
from qcnode.records import Finding, Status, View
from qcnode.rules import build_subject
from qcnode.rules.config import ExposureConfig, RulesConfig
from qcnode.rules.exposure import sharpness
from qcnode.testing import FakePredictor, frontal_phantom, phantom_image

CFG = RulesConfig()
MASKS = frontal_phantom()
IMAGE = phantom_image(MASKS)  # 1 mm pixels, noise 0.01
PRED = FakePredictor(source=lambda _i: (View.FRONTAL, MASKS)).predict([IMAGE])[0]


def _finding(px: npt.NDArray[np.float32], cfg: RulesConfig = CFG) -> Finding:
    image = replace(IMAGE, pixels=np.asarray(px, dtype=np.float32))
    return sharpness(build_subject(image, PRED, cfg), cfg)


def test_default_method_and_threshold() -> None:
    assert CFG.exposure.sharpness_method == "gradient_ratio"
    assert CFG.exposure.sharpness_fwhm_fail_mm == 5.6
    assert CFG.exposure.sharpness_fwhm_fail_mm_lateral == 5.3


def test_sharp_phantom_passes() -> None:
    f = _finding(IMAGE.pixels)
    assert f.status is Status.PASS
    assert f.value == pytest.approx(1.69, abs=0.05)  # the pixel and the noise
    assert f.geometry  # where it measured


@pytest.mark.parametrize(("sigma_px", "expected_mm"), [(2.0, 4.73), (2.5, 5.78), (3.0, 6.81)])
def test_gaussian_blur_reads_as_its_fwhm(sigma_px: float, expected_mm: float) -> None:
    f = _finding(ndimage.gaussian_filter(IMAGE.pixels, sigma_px))
    assert f.value == pytest.approx(expected_mm, abs=0.05)
    assert abs(f.value - 2.3548 * sigma_px) < 0.3  # the known FWHM (1 mm pixels)
    assert f.status is (Status.FAIL if sigma_px >= 2.5 else Status.PASS)


def test_diagonal_motion_fails_motion_along_one_axis_is_missed() -> None:
    diagonal = _finding(ndimage.convolve(IMAGE.pixels, np.eye(9) / 9.0))  # 9 px each way
    assert diagonal.status is Status.FAIL
    assert diagonal.value == pytest.approx(9.03, abs=0.05)
    rows = _finding(ndimage.uniform_filter1d(IMAGE.pixels, 9, axis=1))  # horizontal edges stay
    assert rows.status is Status.PASS
    assert rows.value == pytest.approx(1.71, abs=0.05)


def test_edge_width_method_still_selectable() -> None:
    cfg = replace(CFG, exposure=replace(CFG.exposure, sharpness_method="edge_width"))
    blurred = _finding(ndimage.gaussian_filter(IMAGE.pixels, 9.0), cfg)
    assert blurred.status is Status.FAIL
    assert blurred.value is not None and blurred.value > cfg.exposure.sharpness_edge_fail_mm


def test_no_anatomy_is_not_evaluable() -> None:
    empty = {k: np.zeros_like(v) for k, v in MASKS.items()}
    pred = FakePredictor(source=lambda _i: (View.FRONTAL, empty)).predict([IMAGE])[0]
    f = sharpness(build_subject(IMAGE, pred, CFG), CFG)
    assert f.status is Status.NOT_EVALUABLE


def test_unknown_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ExposureConfig(sharpness_method="laplacian")
