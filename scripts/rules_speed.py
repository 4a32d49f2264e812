#!/usr/bin/env python
"""The rules stage alone on cached model masks: its median time per film and every finding,
so that two code versions can be timed in the same minutes and their findings compared
(run it from each checkout with ``PYTHONPATH``; the engine runs with a FakePredictor).

    .venv/bin/python scripts/rules_speed.py data/synth/eval-v2 \
        .cache/rules/pred-vis/s10m/eval-v2 [--stride 10] [--passes 2] [--dump out.json] \
        [--compare other.json] [--profile out.prof]

Films are decoded and their masks unpacked before timing; the first pass warms up.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from cache_predictions import load_prediction

import qcnode
from qcnode.engine import QCEngine
from qcnode.evaluate import load_samples
from qcnode.imaging import decode
from qcnode.records import Finding, View
from qcnode.rules import load_config
from qcnode.testing import FakePredictor


def finding_row(f: Finding) -> list[Any]:
    """Everything a finding says, geometry included, as JSON (floats exact via repr)."""
    geometry = [[g.kind, g.label, [[repr(x), repr(y)] for x, y in g.points]] for g in f.geometry]
    return [f.rule, str(f.status), repr(f.value), f.unit, repr(f.threshold), f.message, geometry]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("pred_dir", type=Path)
    ap.add_argument("--stride", type=int, default=10, help="every Nth chest film")
    ap.add_argument("--passes", type=int, default=2, help="the first one warms up")
    ap.add_argument("--dump", type=Path, help="write the findings per film (JSON)")
    ap.add_argument("--compare", type=Path, help="a --dump of another version to compare")
    ap.add_argument("--profile", type=Path, help="cProfile the timed passes to this file")
    args = ap.parse_args(argv)
    print(f"qcnode from {Path(qcnode.__file__).parent}", file=sys.stderr)
    rules = load_config()
    samples = [s for s in load_samples(args.set_dir) if s.view is not View.OTHER]
    films = []
    for s in samples[:: args.stride]:
        cached = args.pred_dir / f"{s.id}.npz"
        if cached.is_file():
            image = decode(s.dcm)
            films.append((s, image, load_prediction(cached)))
    times: dict[str, list[float]] = defaultdict(list)
    dump: dict[str, list[list[Any]]] = {}
    prof = cProfile.Profile() if args.profile else None
    for p in range(args.passes):
        if prof is not None and p == 1:
            prof.enable()
        for s, image, (view, masks) in films:
            uid = image.meta.sop_instance_uid
            engine = QCEngine(predictor=FakePredictor(source={uid: (view, masks)}), rules=rules)
            (result,) = engine.run([image])
            if p > 0 or args.passes == 1:
                times[s.view.value].append(result.timings_ms["rules"])
            dump[s.id] = [finding_row(f) for f in result.findings]
    if prof is not None:
        prof.disable()
        prof.dump_stats(str(args.profile))
    for name, ms in sorted(times.items()):
        n = len(ms) // max(1, args.passes - 1)
        print(f"{name} {n} films, rules median ms: {statistics.median(ms):.2f}")
    if args.dump:
        args.dump.write_text(json.dumps(dump))
    if args.compare:
        other = json.loads(args.compare.read_text())
        differ = [k for k in dump if other.get(k) != dump[k]]
        missing = [k for k in dump if k not in other]
        n_findings = sum(len(v) for v in dump.values())
        print(
            f"compared {len(dump)} films ({n_findings} findings): {len(differ)} differ"
            f" ({len(missing)} missing from {args.compare})"
        )
        for k in differ[:5]:
            for a, b in zip(dump[k], other.get(k, []), strict=False):
                if a != b:
                    print(f"  {k}: {a}\n  {' ' * len(k)}  vs {b}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
