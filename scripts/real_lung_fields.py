#!/usr/bin/env python
"""Where a network's lung fields differ from the human masks of the real films (session 13).

Per film with a human mask (realcxr/frontal/*_lungs.png): Dice, precision and recall of the
union of the visible-lung channels, and where the disagreement lies: the share of the false
positive area in the **midline band** (columns between the human mask's two lungs, within
its rows), **below** the mask's lowest row per column, and elsewhere; the same for the
false negatives. This is how session 13 found that the visible-v1 fields ran over the
spine and mediastinum (docs/MODEL.md "Shipped default (session 13)"). A diagnostic on the
evaluation films, never a training signal.

    .venv/bin/python scripts/real_lung_fields.py [--weights W.pt | --model NAME] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qcnode.imaging import decode
from qcnode.model.infer import load_predictor
from qcnode.model.report import (
    REAL_ROOT,
    _visible_lungs,
    below_truth_floor,
    human_sides,
    real_cases,
)


def midline_band(truth: np.ndarray) -> np.ndarray:
    """Pixels between the human mask's right and left lung, row by row, within its rows."""
    out = np.zeros_like(truth)
    sides = human_sides(truth)
    if sides is None:
        return out
    right, left = sides  # the patient's right lung on the image left
    for r in np.flatnonzero(right.any(axis=1) | left.any(axis=1)):
        cols_r, cols_l = np.flatnonzero(right[r]), np.flatnonzero(left[r])
        inner_r = cols_r.max() if cols_r.size else None
        inner_l = cols_l.min() if cols_l.size else None
        if inner_r is not None and inner_l is not None and inner_r + 1 < inner_l:
            out[r, inner_r + 1 : inner_l] = True
    return out


def film_row(pred_fields: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int((pred_fields & truth).sum())
    fp_m, fn_m = pred_fields & ~truth, ~pred_fields & truth
    fp, fn = int(fp_m.sum()), int(fn_m.sum())
    band, below = midline_band(truth), below_truth_floor(truth)
    return {
        "dice": 2 * tp / max(1, 2 * tp + fp + fn),
        "precision": tp / max(1, tp + fp),
        "recall": tp / max(1, tp + fn),
        "fp_share_midline": float((fp_m & band).sum()) / max(1, fp),
        "fp_share_below_floor": float((fp_m & below & ~band).sum()) / max(1, fp),
        "fn_share_midline_edges": float((fn_m & _dilated(band)).sum()) / max(1, fn),
    }


def _dilated(m: np.ndarray, px: int = 6) -> np.ndarray:
    from scipy import ndimage

    out: np.ndarray = ndimage.binary_dilation(m, iterations=px)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--model")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    predictor = load_predictor(args.model, device="cpu", weights_path=args.weights)
    rows: dict[str, dict[str, float]] = {}
    for case in real_cases(REAL_ROOT):
        if case.lungs is None:
            continue
        (pred,) = predictor.predict([decode(case.path)])
        fields = _visible_lungs(pred)
        if fields is None:
            raise SystemExit(f"{predictor.info.name} has no visible-lung channels")
        truth = np.asarray(Image.open(case.lungs).convert("L")) > 127
        rows[case.path.stem] = film_row(np.asarray(fields, dtype=bool), truth)
    keys = next(iter(rows.values())).keys()
    print(f"{'film':<28}" + "".join(f"{k[:22]:>24}" for k in keys))
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["dice"]):
        print(f"{name:<28}" + "".join(f"{r[k]:>24.3f}" for k in keys))
    summary: dict[str, Any] = {
        k: {
            "mean": float(np.mean([r[k] for r in rows.values()])),
            "median": float(np.median([r[k] for r in rows.values()])),
        }
        for k in keys
    }
    for stat in ("mean", "median"):
        print(f"{stat:<28}" + "".join(f"{summary[k][stat]:>24.3f}" for k in keys))
    if args.json:
        doc = {"model": predictor.info.__dict__, "films": rows, "summary": summary}
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
