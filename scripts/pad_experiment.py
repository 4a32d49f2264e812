#!/usr/bin/env python
"""Experiment: predict on the image reflect-padded by PAD mm on every side, masks cropped
back (does the model draw organs up to a cut image border when the anatomy continues
beyond it?). Writes the cache format of scripts/cache_predictions.py, for
scripts/eval_cached.py. Session 6 (docs/MODEL.md): more cut borders found, more uncut ones
called cut; the mean rule accuracy fell, so the node does not pad.

    .venv/bin/python scripts/pad_experiment.py SET OUT --pad-mm 15 [--mode reflect|edge]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from cache_predictions import mask_arrays

from qcnode.evaluate import load_samples
from qcnode.imaging import decode
from qcnode.model import load_predictor
from qcnode.model.infer import TorchPredictor
from qcnode.model.preprocess import guessed_spacing
from qcnode.records import DecodedImage, Prediction, View


def padded(
    predictor: TorchPredictor, image: DecodedImage, pad_mm: float, mode: str = "reflect"
) -> Prediction:
    sp = image.spacing_mm or guessed_spacing(*image.pixels.shape)
    py, px = max(1, round(pad_mm / sp[0])), max(1, round(pad_mm / sp[1]))
    pix = np.pad(image.pixels, ((py, py), (px, px)), mode=mode)  # type: ignore[call-overload]
    meta = replace(image.meta, rows=pix.shape[0], columns=pix.shape[1])
    pred = predictor.predict([replace(image, pixels=pix, meta=meta)])[0]
    crop = (slice(py, -py), slice(px, -px))
    return replace(
        pred,
        masks={k: v[crop] for k, v in pred.masks.items()},
        extra_masks={k: v[crop] for k, v in pred.extra_masks.items()},
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--pad-mm", type=float, default=15.0)
    ap.add_argument("--mode", default="reflect", help="numpy pad mode: reflect, edge")
    args = ap.parse_args()
    predictor = load_predictor(None, device="cpu")
    samples = [s for s in load_samples(args.set_dir) if s.view is not View.OTHER]
    args.out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        pred = padded(predictor, decode(s.dcm), args.pad_mm, args.mode)
        np.savez(args.out / f"{s.id}.npz", **mask_arrays(pred))  # type: ignore[arg-type]
        if i % 100 == 0:
            print(f"{i}/{len(samples)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
