#!/usr/bin/env python
"""The engine's second look at turned films (session 10): what it changes, measured.

Real films (evaluation only): every real frontal that the model reads frontal and upright
is mirrored, rotated 180° and flipped top–bottom; per edit, how many films the orientation
rule names correctly, and how many other findings change status against the film as hung
— with the second look (``QCEngine.analyze``, the node's pipeline) and with the first
look only (the rules turning the model's masks of the turned pixels, before session 10).

Synthetic sets: the samples whose truth is turned (params ``flipped`` = mirrored,
``rotated180``); per rule, agreement of the problem flag with the truth, second look vs
first look only (films the first look finds upright are identical both ways: counted in
``missed``). The two paths differ only on films the first look finds turned. With
``--upright-cache ROOT``: the upright samples instead, screened on the model's cached
masks (ROOT/<set>/<id>.npz), scored where the live first look calls them turned (the
false turns, where the second look shows the model a wrongly turned film).

    python scripts/orientation_second_look.py [--real] [--set DIR...] [--limit N] [--json OUT]
        [--upright-cache .cache/rules/pred-vis/s9b]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from cache_predictions import load_prediction

from qcnode.engine import QCEngine
from qcnode.evaluate import Sample, load_samples
from qcnode.imaging import decode
from qcnode.model import load_predictor
from qcnode.records import DecodedImage, Finding, Predictor, Status, View
from qcnode.rules import assess
from qcnode.rules.messages import template
from qcnode.testing import FakePredictor

PROBLEM = (Status.WARN, Status.FAIL)
TURNS = {"mirrored": (1,), "upside_down": (0, 1), "flipped": (0,)}
ORIENT = "positioning.orientation"


def _flagged(f: Finding) -> bool:
    return f.status in PROBLEM


def _first_look_only(
    engine: QCEngine, predictor: Predictor, image: DecodedImage
) -> dict[str, Finding]:
    (first,) = predictor.predict([image])
    r, _ = engine.result(image, first)
    return {f.rule: f for f in r.findings}


def real_films(predictor: Predictor, films: list[Path]) -> dict[str, Any]:
    engine = QCEngine(predictor=predictor)
    out: dict[str, Any] = {"films": 0, "skipped": 0}
    per = {
        k: {"named": 0, "new_changed_films": 0, "old_changed_films": 0, "new_flips": 0}
        | {"old_flips": 0, "new_identical": 0}
        for k in TURNS
    }
    old_rules: dict[str, Counter[str]] = {k: Counter() for k in TURNS}
    for path in films:
        image = decode(path)
        ((_, r),) = engine.analyze([image])
        base = {f.rule: f for f in r.findings}
        if r.view is not View.FRONTAL or base[ORIENT].status is not Status.PASS:
            out["skipped"] += 1
            continue
        out["films"] += 1
        for name, axes in TURNS.items():
            px = np.ascontiguousarray(np.flip(image.pixels, axes))
            turned = replace(image, pixels=px)
            ((_, a),) = engine.analyze([turned])
            if a.view is not View.FRONTAL:
                continue
            new = {f.rule: f for f in a.findings}
            old = _first_look_only(engine, predictor, turned)
            s = per[name]
            s["named"] += int(new[ORIENT].message == template(ORIENT, name, "en"))
            others = [k for k in base if k != ORIENT]
            nf = [k for k in others if _flagged(base[k]) != _flagged(new[k])]
            of = [k for k in others if k in old and _flagged(base[k]) != _flagged(old[k])]
            s["new_flips"] += len(nf)
            s["old_flips"] += len(of)
            s["new_changed_films"] += int(bool(nf))
            s["old_changed_films"] += int(bool(of))
            s["new_identical"] += int(
                all(
                    (base[k].status, base[k].value) == (new[k].status, new[k].value) for k in others
                )
            )
            old_rules[name].update(of)
    out["turns"] = per
    out["first_look_only_flips_by_rule"] = {k: dict(v) for k, v in old_rules.items()}
    return out


def _turned_truth(s: Sample) -> bool:
    params = s.truth.get("params", {})
    return bool(params.get("flipped") or params.get("rotated180"))


def _cached_first_look_turned(s: Sample, cache: Path) -> bool:
    """Whether the first look on the model's cached masks finds this film turned."""
    path = cache / f"{s.id}.npz"
    if not path.is_file():
        return True  # not screened: the live model decides
    view, masks = load_prediction(path)
    if view is not s.view:
        return False
    image = decode(s.dcm)
    fake = FakePredictor(source=lambda _i: (view, masks))
    (pred,) = fake.predict([image])
    return assess(image, pred, stop_if_turned=True).orientation != "upright"


def synth_set(
    predictor: Predictor,
    set_dir: Path,
    limit: int | None,
    upright_cache: Path | None = None,
) -> dict[str, Any]:
    """Turned samples; with ``upright_cache`` instead the upright samples that the first
    look (screened on the cached masks, confirmed with the live model) calls turned."""
    engine = QCEngine(predictor=predictor)
    samples = [
        s
        for s in load_samples(set_dir)
        if s.view is not View.OTHER and _turned_truth(s) == (upright_cache is None)
    ][:limit]
    screened = len(samples)
    if upright_cache is not None:
        samples = [s for s in samples if _cached_first_look_turned(s, upright_cache)]
    agree: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"new": [0, 0], "old": [0, 0]})
    counts = Counter[str]()
    t0 = time.perf_counter()
    for s in samples:
        image = decode(s.dcm)
        (first,) = predictor.predict([image])
        counts[f"{s.view.value}"] += 1
        if first.view is not s.view:
            counts["view_wrong"] += 1
            continue
        if assess(image, first, stop_if_turned=True).orientation == "upright":
            counts["missed"] += 1
            continue
        counts["found_turned"] += 1
        r_old, _ = engine.result(image, first)
        ((_, r_new),) = engine.analyze([image])
        old = {f.rule: f for f in r_old.findings}
        new = {f.rule: f for f in r_new.findings}
        for rule, t in s.truth["rules"].items():
            if rule == ORIENT or rule not in new or t["status"] == "not_evaluable":
                continue
            truth = t["status"] in ("warn", "fail")
            for mode, found in (("new", new), ("old", old)):
                a = agree[f"{s.view.value} {rule}"][mode]
                a[0] += int(_flagged(found[rule]) == truth)
                a[1] += 1
    totals = {
        mode: [sum(v[mode][0] for v in agree.values()), sum(v[mode][1] for v in agree.values())]
        for mode in ("new", "old")
    }
    return {
        "set": str(set_dir),
        "films": "upright, found turned (false)" if upright_cache else "turned",
        "screened": screened,
        "samples": len(samples),
        "counts": dict(counts),
        "agreement_total": totals,
        "agreement_by_rule": {k: v for k, v in sorted(agree.items()) if v["new"] != v["old"]},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--real", action="store_true", help="the real-film edits")
    ap.add_argument("--set", type=Path, action="append", default=[], help="synthetic set dirs")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument(
        "--upright-cache",
        type=Path,
        default=None,
        help="cached predictions root (<root>/<set name>/<id>.npz): score the upright "
        "samples the first look calls turned instead of the turned ones",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    predictor = load_predictor(None, device="cpu")
    report: dict[str, Any] = {"model": predictor.info.name}
    if args.real:
        real = Path("../shared/data/realcxr")
        folders = [real / "frontal", real / "extra_frontal_nomask"]
        films = sorted(p for d in folders for p in d.glob("*.png") if not p.stem.endswith("_lungs"))
        report["real"] = real_films(predictor, films[: args.limit])
        print(json.dumps(report["real"], indent=1), flush=True)
    for set_dir in args.set:
        cache = args.upright_cache / set_dir.name if args.upright_cache else None
        rep = synth_set(predictor, set_dir, args.limit, cache)
        report[set_dir.name] = rep
        print(json.dumps(rep, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
