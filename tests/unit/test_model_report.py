"""The label-gap diagnostic of the model report (a bound that uses the truth, not a score)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcnode.model.report import _label_gap, _side_dice, below_truth_floor, human_sides
from qcnode.records import STRUCTURES, Prediction, View


def test_below_truth_floor_is_per_column() -> None:
    truth = np.zeros((10, 4), bool)
    truth[2:5, 0] = True  # floor at row 4
    truth[1:8, 1] = True  # floor at row 7
    below = below_truth_floor(truth)
    assert below[5:, 0].all() and not below[:5, 0].any()
    assert below[8:, 1].all() and not below[:8, 1].any()
    assert not below[:, 2:].any()  # columns without truth: nothing is cut


def test_label_gap_counts_only_the_overshoot_below_the_diaphragm() -> None:
    truth = np.zeros((20, 10), bool)
    truth[2:12, 2:8] = True
    pred = np.zeros_like(truth)
    pred[2:16, 2:8] = True  # the same lung reaching 4 rows deeper (the recess)
    pred[2:12, 8] = True  # and one column too wide: not below any floor
    gap = _label_gap([(pred, truth)])
    assert gap["false_positive_share_below_floor"] == pytest.approx(24 / 34)
    assert gap["dice_cut_mean"] == pytest.approx(2 * 60 / (70 + 60))
    assert gap["area_ratio_median"] == pytest.approx(94 / 60)


def test_synthetic_report_scores_visible_lungs_where_the_set_has_them(tmp_path: Path) -> None:
    from qcnode.model import data as datamod
    from qcnode.model import load_predictor
    from qcnode.model.report import evaluate_synthetic
    from tests.unit.test_model import TEST_WEIGHTS, _tiny_dataset

    root = _tiny_dataset(tmp_path / "set", n=2)
    predictor = load_predictor(weights_path=TEST_WEIGHTS, device="cpu")
    plain = evaluate_synthetic(predictor, root)
    assert "frontal/lungs_union" in plain["dice"]
    assert "frontal/lungs_union_vs_visible" not in plain["dice"]
    for s in datamod.read_synthetic(root):
        assert s.masks is not None
        with np.load(s.masks) as z:
            arrays = {k: z[k] for k in z.files}
        for side in ("right", "left"):
            arrays[f"lung_{side}_visible"] = arrays[f"lung_{side}"]
        np.savez_compressed(s.masks, **arrays)
    both = evaluate_synthetic(predictor, root)
    # Visible lungs equal to the full ones here: the two scores must agree.
    assert both["dice"]["frontal/lungs_union_vs_visible"] == both["dice"]["frontal/lungs_union"]


def _pred(right: np.ndarray, left: np.ndarray) -> Prediction:
    empty = np.zeros_like(right)
    return Prediction(
        view=View.FRONTAL,
        view_probabilities={View.FRONTAL: 1.0},
        masks={n: empty for n in STRUCTURES},
        spacing_mm=(1.0, 1.0),
        spacing_estimated=False,
        extra_masks={"lung_right_visible": right, "lung_left_visible": left},
    )


def test_side_dice_scores_each_channel_against_its_own_lung() -> None:
    truth = np.zeros((40, 60), dtype=bool)
    truth[5:35, 5:25] = True  # the patient's right lung, on the image left
    truth[5:35, 35:55] = True
    right, left = human_sides(truth) or (None, None)
    assert right is not None and left is not None
    image_left = np.arange(60)[None, :] < 30
    assert np.array_equal(right, truth & image_left)
    assert np.array_equal(left, truth & ~image_left)
    assert _side_dice(_pred(right, left), truth) == 1.0
    assert _side_dice(_pred(left, right), truth) == 0.0  # swapped: the union would read 1.0
    both = right | left
    assert _side_dice(_pred(both, left), truth) == pytest.approx((2 / 3 + 1) / 2)
    assert human_sides(right) is None  # one lung: no per-side score
