#!/usr/bin/env python
"""Cache a model's predictions for a labelled synthetic set (rule calibration without the
network in the loop).

For each frontal/lateral sample the model's masks, view and spacing go to
``OUT/<id>.npz`` (masks bit-packed). ``scripts/calibrate_rules.py --pred OUT`` and
``qcnode.evaluate.cached_pass`` then run the rules on them. Usage:

    .venv/bin/python scripts/cache_predictions.py SET OUT [--weights F | --model NAME]

``--model`` takes a registry name (a single model or a registered ensemble such as
``qcnet_ens``); without ``--model`` and ``--weights`` the registry's default is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from qcnode.evaluate import load_samples
from qcnode.imaging import decode
from qcnode.records import View


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--weights", type=Path, default=None, help="a weights file")
    ap.add_argument("--model", default=None, help="registry name (model or ensemble)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
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
        for s, pred in zip(chunk, predictor.predict(images), strict=True):
            packed = {
                f"m_{k}": np.packbits(np.asarray(v, dtype=bool)) for k, v in pred.masks.items()
            }
            shape = next(iter(pred.masks.values())).shape
            tmp = args.out / f"{s.id}.tmp.npz"
            arrays: dict[str, np.ndarray] = {
                "shape": np.array(shape),
                "view": np.array(str(pred.view)),
                "spacing": np.array(pred.spacing_mm, dtype=np.float64),
                "spacing_estimated": np.array(pred.spacing_estimated),
                **packed,
            }
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            tmp.rename(args.out / f"{s.id}.npz")
        print(f"{start + len(chunk)}/{len(todo)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
