#!/usr/bin/env python
"""Median decode → verdict time per image on a subset of a labelled set, the way
``qcnode eval`` times its model pass (batches of 8), without the exact-mask pass: for A/B
timings of two code versions in the same minutes (run it from each checkout with
``PYTHONPATH``), since this VM's speed varies between sessions.

    .venv/bin/python scripts/qc_timing.py data/synth/eval-v2 [--stride 10] [--batch 8]

The first pass over the subset warms up (imports, allocator, caches); the second is timed.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from qcnode.config import load_settings
from qcnode.evaluate import load_samples, model_pass
from qcnode.model import load_predictor
from qcnode.records import View


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("--stride", type=int, default=10, help="every Nth chest film")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    settings = load_settings()
    samples = [s for s in load_samples(args.set_dir) if s.view is not View.OTHER]
    samples = samples[:: args.stride]
    predictor = load_predictor(None, device="cpu")
    times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for timed in (False, True):
        for s, result, _, _ in model_pass(samples, settings, predictor, batch=args.batch):
            if timed:
                for part, ms in result.timings_ms.items():
                    times[s.view.value][part].append(ms)
    for view, parts in times.items():
        medians = {k: round(statistics.median(v), 1) for k, v in parts.items()}
        print(f"{view} {len(parts['total'])} films, median ms: {medians}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
