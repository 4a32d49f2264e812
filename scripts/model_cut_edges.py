#!/usr/bin/env python
"""How far the predicted lungs stop from a field edge that cuts the true lungs, in mm.

For frontal samples of a labelled synthetic set whose true lung touches the exposed field's
edge (top: apex, bottom: base, sides: lateral wall), the gap between the predicted lung and
that edge. Predictions come from scripts/cache_predictions.py. Usage:

    python scripts/model_cut_edges.py PREDICTIONS_DIR [--set data/synth/eval-v1] [--limit N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _unpack(z: np.lib.npyio.NpzFile, key: str, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(z[key])[: shape[0] * shape[1]].reshape(shape).astype(bool)


def gaps(set_dir: Path, pred_dir: Path, limit: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"top": [], "bottom": [], "side": []}
    seen = 0
    with (set_dir / "manifest.jsonl").open() as manifest:
        for line in manifest:
            doc = json.loads(line)
            pred_file = pred_dir / f"{doc['id']}.npz"
            if doc["view"] != "frontal" or not pred_file.is_file():
                continue
            truth, pred = np.load(set_dir / doc["masks"]), np.load(pred_file)
            shape = (int(pred["shape"][0]), int(pred["shape"][1]))
            mm = float(pred["spacing"][0])
            rows = np.flatnonzero(truth["field"].any(axis=1))
            cols = np.flatnonzero(truth["field"].any(axis=0))
            if rows.size == 0:
                continue
            r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
            for side in ("right", "left"):
                t = truth[f"lung_{side}"]
                p = _unpack(pred, f"m_lung_{side}", shape)
                if not t.any() or not p.any():
                    continue
                tr, pr = np.flatnonzero(t.any(axis=1)), np.flatnonzero(p.any(axis=1))
                tc, pc = np.flatnonzero(t.any(axis=0)), np.flatnonzero(p.any(axis=0))
                if tr[0] <= r0 + 1:
                    out["top"].append(float(pr[0] - r0) * mm)
                if tr[-1] >= r1 - 1:
                    out["bottom"].append(float(r1 - pr[-1]) * mm)
                if tc[0] <= c0 + 1:
                    out["side"].append(float(pc[0] - c0) * mm)
                if tc[-1] >= c1 - 1:
                    out["side"].append(float(c1 - pc[-1]) * mm)
            seen += 1
            if seen >= limit:
                break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("pred_dir", type=Path)
    ap.add_argument("--set", type=Path, default=Path("data/synth/eval-v1"), dest="set_dir")
    ap.add_argument("--limit", type=int, default=600, help="frontal samples to read")
    args = ap.parse_args()
    for edge, values in gaps(args.set_dir, args.pred_dir, args.limit).items():
        v = np.array(values)
        if v.size:
            print(
                f"{edge}: {v.size} cut lungs, gap median {np.median(v):.1f} mm, "
                f"p90 {np.percentile(v, 90):.1f} mm, within 5 mm {100 * (v <= 5).mean():.0f} %"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
