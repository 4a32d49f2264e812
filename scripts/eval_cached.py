#!/usr/bin/env python
"""The rules on cached model predictions (scripts/cache_predictions.py) and on the exact
masks of a labelled synthetic set, side by side: per-rule accuracy without the network in
the loop (for calibration on train-v1; the reported numbers come from ``qcnode eval``).

    .venv/bin/python scripts/eval_cached.py data/synth/train-v1 .cache/rules/pred/train-v1 \
        [--view frontal] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from cache_predictions import load_prediction

from qcnode.config import load_settings
from qcnode.engine import QCEngine
from qcnode.evaluate import ViewStats, format_report, load_masks, load_samples, score
from qcnode.imaging import decode
from qcnode.records import View
from qcnode.rules import load_config
from qcnode.testing import FakePredictor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("pred_dir", type=Path)
    ap.add_argument("--view", choices=("frontal", "lateral"), default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--model-only", action="store_true", help="skip the exact-mask pass")
    args = ap.parse_args(argv)
    settings = load_settings()
    rules = load_config(settings.rules_file)
    samples = [
        s
        for s in load_samples(args.set_dir)
        if s.view is not View.OTHER and (args.view is None or s.view.value == args.view)
    ][: args.limit]
    stats: dict[str, dict[str, ViewStats]] = {
        "exact": defaultdict(ViewStats),
        "model (cached)": defaultdict(ViewStats),
    }
    for i, s in enumerate(samples):
        if i % 100 == 0:
            print(f"{i}/{len(samples)}", flush=True)
        image = decode(s.dcm)
        uid = image.meta.sop_instance_uid
        sources = {} if args.model_only else {"exact": (s.view, load_masks(s.masks))}
        cached = args.pred_dir / f"{s.id}.npz"
        if cached.is_file():
            sources["model (cached)"] = load_prediction(cached)
        for mode, (view, masks) in sources.items():
            engine = QCEngine(predictor=FakePredictor(source={uid: (view, masks)}), rules=rules)
            (result,) = engine.run([image])
            score(stats[mode], s, result, None, None)
    report = {
        "set": str(args.set_dir),
        "samples": len(samples),
        "machine": "",
        "note": "rules on exact masks and on cached model predictions",
        "modes": {
            m: {k: v.summary() for k, v in sorted(st.items())} for m, st in stats.items() if st
        },
        "real": [],
    }
    if args.json:
        args.json.write_text(json.dumps(report))
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
