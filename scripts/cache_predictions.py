#!/usr/bin/env python
"""Cache a model's predictions for a labelled synthetic set (rule calibration without the
network in the loop).

For each frontal/lateral sample the model's masks, view and spacing go to
``OUT/<id>.npz`` (masks bit-packed). ``scripts/calibrate_rules.py --pred OUT`` and
``qcnode.evaluate.cached_pass`` then run the rules on them. Usage:

    .venv/bin/python scripts/cache_predictions.py SET OUT [--weights F | --model NAME]

``--model`` takes a registry name (a single model or a registered ensemble such as
``qcnet_ens``); without ``--model`` and ``--weights`` the registry's default is used.
``--logits`` keeps the canvas outputs instead (float16 mask logits, view logits and the
frame: ``load_canvas``), from which scripts/sweep_bias.py builds the masks at any
operating point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from qcnode.evaluate import load_samples
from qcnode.imaging import decode
from qcnode.model.infer import CanvasOutput
from qcnode.model.preprocess import Frame
from qcnode.records import BoolMask, Prediction, View


def canvas_arrays(out: CanvasOutput) -> dict[str, np.ndarray]:
    f = out.frame
    return {
        "mask_logits": out.mask_logits.numpy().astype(np.float16),
        "view_logits": out.view_logits.numpy().astype(np.float32),
        "frame": np.array([f.rows, f.columns, f.top, f.left, f.height, f.width]),
        "frame_spacing": np.array([*f.spacing_mm, f.input_spacing_mm]),
        "spacing": np.array(out.spacing_mm, dtype=np.float64),
        "spacing_estimated": np.array(out.spacing_estimated),
    }


def mask_arrays(pred: Prediction) -> dict[str, np.ndarray]:
    """A prediction as this cache keeps it: masks bit-packed (the model's extra channels,
    e.g. the visible lungs, too: the rules read them where present), view, spacing."""
    shape = next(iter(pred.masks.values())).shape
    masks = {**pred.masks, **pred.extra_masks}
    return {
        "shape": np.array(shape),
        "view": np.array(str(pred.view)),
        "spacing": np.array(pred.spacing_mm, dtype=np.float64),
        "spacing_estimated": np.array(pred.spacing_estimated),
        **{f"m_{k}": np.packbits(np.asarray(v, dtype=bool)) for k, v in masks.items()},
    }


def load_prediction(path: Path) -> tuple[View, dict[str, BoolMask]]:
    """A cached prediction: the view and the unpacked masks."""
    with np.load(path) as z:
        shape = tuple(int(v) for v in z["shape"])
        n = shape[0] * shape[1]
        masks = {
            k[2:]: np.unpackbits(z[k])[:n].reshape(shape).astype(bool)
            for k in z.files
            if k.startswith("m_")
        }
        return View(str(z["view"])), masks


def load_canvas(path: Path) -> CanvasOutput:
    """A canvas output kept with ``--logits``."""
    with np.load(path) as z:
        rows, columns, top, left, height, width = (int(v) for v in z["frame"])
        sr, sc, si = (float(v) for v in z["frame_spacing"])
        frame = Frame(rows, columns, top, left, height, width, (sr, sc), si)
        return CanvasOutput(
            frame=frame,
            mask_logits=torch.from_numpy(z["mask_logits"].astype(np.float32)),
            view_logits=torch.from_numpy(z["view_logits"]),
            spacing_mm=(float(z["spacing"][0]), float(z["spacing"][1])),
            spacing_estimated=bool(z["spacing_estimated"]),
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--weights", type=Path, default=None, help="a weights file")
    ap.add_argument("--model", default=None, help="registry name (model or ensemble)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--logits", action="store_true", help="keep canvas outputs, not masks")
    args = ap.parse_args(argv)
    from qcnode.model import load_predictor

    if args.model is not None and args.weights is not None:
        ap.error("--model and --weights exclude each other")
    predictor = load_predictor(args.model, device="cpu", weights_path=args.weights)
    print(f"model {predictor.info.name} sha256 {predictor.info.sha256[:12]}", file=sys.stderr)
    samples = [s for s in load_samples(args.set_dir) if s.view is not View.OTHER][: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in samples if not (args.out / f"{s.id}.npz").is_file()]
    for start in range(0, len(todo), args.batch):
        chunk = todo[start : start + args.batch]
        images = [decode(s.dcm) for s in chunk]
        if args.logits:
            for s, out in zip(chunk, predictor.canvas(images), strict=True):
                tmp = args.out / f"{s.id}.tmp.npz"
                np.savez_compressed(tmp, **canvas_arrays(out))  # type: ignore[arg-type]
                tmp.rename(args.out / f"{s.id}.npz")
            print(f"{start + len(chunk)}/{len(todo)}", file=sys.stderr, flush=True)
            continue
        for s, pred in zip(chunk, predictor.predict(images), strict=True):
            tmp = args.out / f"{s.id}.tmp.npz"
            np.savez(tmp, **mask_arrays(pred))  # type: ignore[arg-type]
            tmp.rename(args.out / f"{s.id}.npz")
        print(f"{start + len(chunk)}/{len(todo)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
