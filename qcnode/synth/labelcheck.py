"""Where a model's masks and a synthetic set's truth disagree, and whether the pixels show it.

    python -m qcnode.synth.labelcheck --set data/synth/eval-v1 --view frontal \\
        --structures scapula_right,scapula_left --count 48 [--weights PATH]

Per structure: Dice, Dice inside / outside the lungs' projection, false-negative and
false-positive area inside / outside the lungs, mean boundary distances both ways, and the
truth's contrast on the stored image (mean inside the mask minus mean in a ring 3-8 px
around it): a structure the image does not show has a contrast near 0 and cannot be learnt,
whatever the loss. Samples are taken evenly over the set's manifest (docs/SYNTH.md, "Known
label issues").
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

BoolArray = npt.NDArray[np.bool_]


def dice(a: BoolArray, b: BoolArray) -> float | None:
    """Dice; None when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else 2.0 * int((a & b).sum()) / s


def _edge(m: BoolArray) -> BoolArray:
    out: BoolArray = m & ~ndimage.binary_erosion(m)
    return out


def boundary_mm(a: BoolArray, b: BoolArray, pitch_mm: float) -> float | None:
    """Mean distance from a's boundary pixels to b's boundary, in mm (None if one is empty)."""
    if not a.any() or not b.any():
        return None
    dist = ndimage.distance_transform_edt(~_edge(b))
    return float(np.asarray(dist)[_edge(a)].mean()) * pitch_mm


def ring_contrast(image: npt.NDArray[np.floating[Any]], mask: BoolArray, field: BoolArray) -> float:
    """Mean image value inside ``mask`` minus the mean in a 3-8 px ring around it (in field)."""
    ring = ndimage.binary_dilation(mask, iterations=8)
    ring &= ~ndimage.binary_dilation(mask, iterations=3) & field
    if not mask.any() or not ring.any():
        return float("nan")
    return float(image[mask].mean() - image[ring].mean())


def compare(
    truth: BoolArray, pred: BoolArray, lungs: BoolArray, pitch_mm: float
) -> dict[str, float | None]:
    """One structure of one sample: the numbers of the module docstring (areas in mm²)."""
    px = pitch_mm * pitch_mm
    fn, fp = truth & ~pred, pred & ~truth
    return {
        "dice": dice(truth, pred),
        "dice_in_lungs": dice(truth & lungs, pred & lungs),
        "dice_outside_lungs": dice(truth & ~lungs, pred & ~lungs),
        "truth_mm2": float(truth.sum()) * px,
        "pred_mm2": float(pred.sum()) * px,
        "fn_in_lungs_mm2": float((fn & lungs).sum()) * px,
        "fn_outside_mm2": float((fn & ~lungs).sum()) * px,
        "fp_in_lungs_mm2": float((fp & lungs).sum()) * px,
        "fp_outside_mm2": float((fp & ~lungs).sum()) * px,
        "truth_to_pred_mm": boundary_mm(truth, pred, pitch_mm),
        "pred_to_truth_mm": boundary_mm(pred, truth, pitch_mm),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean of every number per structure, ignoring None/NaN; n = rows per structure."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["structure"]].append(r)
    out: dict[str, dict[str, float]] = {}
    for name, rs in by.items():
        keys = [
            k for k, v in rs[0].items() if k not in ("structure", "id") and not isinstance(v, str)
        ]
        stats: dict[str, float] = {"n": float(len(rs))}
        for k in keys:
            vals = [float(r[k]) for r in rs if r[k] is not None and not np.isnan(float(r[k]))]
            stats[k] = float(np.mean(vals)) if vals else float("nan")
        out[name] = stats
    return out


def run(
    set_dir: Path,
    view: str,
    structures: Sequence[str],
    count: int,
    weights: Path | None = None,
) -> list[dict[str, Any]]:
    """Predict ``count`` samples of one view evenly spread over the set; one row per structure."""
    from qcnode.imaging import decode
    from qcnode.model import load_predictor

    recs = [json.loads(x) for x in (set_dir / "manifest.jsonl").read_text().splitlines() if x]
    recs = [r for r in recs if r["view"] == view]
    recs = recs[:: max(1, len(recs) // max(1, count))][:count]
    predictor = load_predictor(None, device="cpu", weights_path=weights)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(recs), 4):
        chunk = recs[start : start + 4]
        images = [decode(set_dir / r["dcm"]) for r in chunk]
        for rec, img, pred in zip(chunk, images, predictor.predict(images), strict=True):
            with np.load(set_dir / rec["masks"]) as z:
                masks = {k: z[k] for k in z.files}
            meta = json.loads((set_dir / rec["truth"]).read_text())
            pitch = float(meta["spacing_mm"][0])
            lungs = masks["lung_right"] | masks["lung_left"]
            for name in structures:
                t, p = masks[name], np.asarray(pred.masks[name], dtype=bool)
                if not t.any() and not p.any():
                    continue
                row: dict[str, Any] = {"id": rec["id"], "structure": name}
                row.update(compare(t, p, lungs, pitch))
                row["truth_contrast"] = ring_contrast(img.pixels, t, masks["field"])
                row["params"] = json.dumps(
                    {
                        k: meta["params"].get(k)
                        for k in ("scapula_shift_mm", "arms", "arms_shift_mm")
                    }
                )
                rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", type=Path, required=True)
    ap.add_argument("--view", choices=("frontal", "lateral"), required=True)
    ap.add_argument("--structures", required=True, help="comma-separated STRUCTURES names")
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--weights", type=Path, default=None, help="default: the registry's")
    ap.add_argument("--rows", type=Path, default=None, help="write every row as JSON lines")
    a = ap.parse_args(argv)
    rows = run(a.set, a.view, a.structures.split(","), a.count, a.weights)
    if a.rows:
        a.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, stats in summarise(rows).items():
        print(name, json.dumps({k: round(v, 3) for k, v in stats.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
