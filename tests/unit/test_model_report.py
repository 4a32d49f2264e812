"""The label-gap diagnostic of the model report (a bound that uses the truth, not a score)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcnode.model.report import _label_gap, below_truth_floor


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
