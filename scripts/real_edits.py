#!/usr/bin/env python
"""Controlled edits of every real frontal film, per weights file: does the edit's rule flag
it, and what else flips? tests/unit/test_rules_real.py does this on one film as tests; this
measures it over all of them (evaluation only: the real films are never trained on).

Edits (as in the tests): crop 4 % below the right apex, a white shutter over the apices,
crop 4 % above the right costophrenic angle, crop 3 % inside the left lateral wall. A film
counts for an edit only when its unedited finding for that rule passes with its point.
Also counts, per rule, the unedited films it flags (warn/fail): on real films most of these
should pass, so a high count (e.g. organs.clavicles) points at a real-film mask problem; and
the films it cannot evaluate (a clavicle missed: no rotation, no tilt).

    python scripts/real_edits.py [WEIGHTS.pt...] [--model NAME...] [--films DIR] [--limit N]
        [--json OUT]

``--model`` takes registry names (ensembles included), ``WEIGHTS.pt`` files directly.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from qcnode.engine import QCEngine
from qcnode.imaging import decode
from qcnode.model.infer import load_predictor
from qcnode.records import DecodedImage, Finding, Predictor, Status, View

PROBLEM = (Status.WARN, Status.FAIL)
Edit = Callable[[DecodedImage, dict[str, Finding]], DecodedImage | None]


def _point(f: Finding, label: str) -> tuple[float, float] | None:
    for g in f.geometry:
        if g.label.startswith(label) and g.points:
            return g.points[0]
    return None


def _edited(image: DecodedImage, px: np.ndarray) -> DecodedImage:
    px = np.ascontiguousarray(px, dtype=np.float32)
    meta = replace(image.meta, rows=px.shape[0], columns=px.shape[1])
    return replace(image, pixels=px, meta=meta)


def _apex_crop(im: DecodedImage, base: dict[str, Finding]) -> DecodedImage | None:
    p = _point(base["completeness.apices"], "right")
    return None if p is None else _edited(im, im.pixels[int(p[1] + 0.04 * im.pixels.shape[0]) :])


def _apex_shutter(im: DecodedImage, base: dict[str, Finding]) -> DecodedImage | None:
    p = _point(base["completeness.apices"], "right")
    if p is None:
        return None
    px = im.pixels.copy()
    px[: int(p[1] + 0.04 * px.shape[0])] = 1.0
    return _edited(im, px)


def _cp_crop(im: DecodedImage, base: dict[str, Finding]) -> DecodedImage | None:
    p = _point(base["completeness.costophrenic"], "right")
    return None if p is None else _edited(im, im.pixels[: int(p[1] - 0.04 * im.pixels.shape[0])])


def _wall_crop(im: DecodedImage, base: dict[str, Finding]) -> DecodedImage | None:
    p = _point(base["completeness.lateral_walls"], "left")
    return None if p is None else _edited(im, im.pixels[:, : int(p[0] - 0.03 * im.pixels.shape[1])])


EDITS: dict[str, tuple[str, Edit]] = {
    "apex_crop": ("completeness.apices", _apex_crop),
    "apex_shutter": ("completeness.apices", _apex_shutter),
    "costophrenic_crop": ("completeness.costophrenic", _cp_crop),
    "lateral_wall_crop": ("completeness.lateral_walls", _wall_crop),
}


def run(predictor: Predictor, films: list[Path]) -> dict[str, dict[str, int]]:
    engine = QCEngine(predictor=predictor)
    stats = {k: {"films": 0, "flagged": 0, "extra_flips": 0, "not_frontal": 0} for k in EDITS}
    unedited: dict[str, int] = {}
    not_evaluable: dict[str, int] = {}
    for path in films:
        image = decode(path)
        (r,) = engine.run([image])
        if r.view is not View.FRONTAL:
            for s in stats.values():
                s["not_frontal"] += 1
            continue
        base = {f.rule: f for f in r.findings}
        unedited["films"] = unedited.get("films", 0) + 1
        for f in r.findings:
            unedited[f.rule] = unedited.get(f.rule, 0) + int(f.status in PROBLEM)
            not_evaluable[f.rule] = not_evaluable.get(f.rule, 0) + int(
                f.status is Status.NOT_EVALUABLE
            )
        for name, (rule, edit) in EDITS.items():
            if base[rule].status is not Status.PASS:
                continue
            edited = edit(image, base)
            if edited is None:
                continue
            (a,) = engine.run([edited])
            after = {f.rule: f for f in a.findings}
            s = stats[name]
            s["films"] += 1
            if a.view is not View.FRONTAL:
                continue
            s["flagged"] += int(after[rule].status in PROBLEM)
            s["extra_flips"] += sum(
                (base[k].status in PROBLEM) != (after[k].status in PROBLEM)
                for k in base
                if k != rule and k in after and k.startswith("completeness.")
            )
    return {**stats, "unedited_flags": unedited, "unedited_not_evaluable": not_evaluable}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("weights", type=Path, nargs="*")
    ap.add_argument("--model", action="append", default=[], help="registry name (repeatable)")
    real = Path("../shared/data/realcxr")
    ap.add_argument("--films", type=Path, action="append", default=None, help="folders")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    folders = args.films or [real / "frontal", real / "extra_frontal_nomask"]
    films = sorted(p for d in folders for p in d.glob("*.png") if not p.stem.endswith("_lungs"))
    films = films[: args.limit]
    if not args.weights and not args.model:
        ap.error("give weights files and/or --model NAME")
    predictors: list[tuple[str, Callable[[], Predictor]]] = [
        (w.name, functools.partial(load_predictor, device="cpu", weights_path=w))
        for w in args.weights
    ]
    predictors += [(n, functools.partial(load_predictor, n, device="cpu")) for n in args.model]
    out = {}
    for label, load in predictors:
        out[label] = run(load(), films)
        flags = {k: v for k, v in out[label]["unedited_flags"].items() if v}
        print(f"{label:<28}unedited films flagged per rule: {flags}")
        blind = {k: v for k, v in out[label]["unedited_not_evaluable"].items() if v}
        print(f"{label:<28}unedited films not evaluable per rule: {blind}")
        for name in EDITS:
            s = out[label][name]
            print(
                f"{label:<28}{name:<20}films {s['films']:3d}  flagged {s['flagged']:3d}  "
                f"other completeness flips {s['extra_flips']:3d}  not frontal {s['not_frontal']}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
