#!/usr/bin/env python
"""Calibrate the "calibrated" thresholds of etc/rules.toml on a labelled synthetic set.

For every sample: decode the DICOM, take the exact masks, measure each rule's quantity with
qcnode.rules, and pair it with the truth status of the sample's JSON. Then, per rule, sweep
the threshold and print the one with the best accuracy (and the accuracy at the current
value), plus the fitted constants (rotation w/D, anatomy scale). Usage:

    .venv/bin/python scripts/calibrate_rules.py data/synth/train-v1 [--limit N] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from qcnode.evaluate import load_masks, load_samples
from qcnode.imaging import decode
from qcnode.records import View
from qcnode.rules import RULES, load_config, shutter_spec
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject, col_extent
from qcnode.rules.positioning import dome_depth, rotation_measure
from qcnode.testing import FakePredictor

PROBLEM = {"warn", "fail"}


def features(path_dcm: Path, path_masks: Path, view: View, cfg: RulesConfig) -> dict[str, Any]:
    image = decode(path_dcm)
    masks = load_masks(path_masks)
    pred = FakePredictor(source={image.meta.sop_instance_uid: (view, masks)}).predict([image])[0]
    s = Subject.build(
        image,
        pred,
        lung_span_mm=cfg.metadata.anatomy_lung_span_mm,
        lung_depth_mm=cfg.metadata.anatomy_lung_depth_mm,
        tolerance=cfg.metadata.spacing_anatomy_tolerance,
        heart_offset_mm=cfg.positioning.orientation_heart_offset_mm,
        shutter=shutter_spec(cfg),
    )
    out: dict[str, Any] = {"spacing_source": s.spacing_source}
    for rule, fn in RULES[view].items():
        try:
            f = fn(s, cfg)
        except Exception as exc:  # report, keep going
            out[rule] = {"error": repr(exc)}
            continue
        out[rule] = {"status": str(f.status), "value": f.value}
    names = ("lung_right", "lung_left") if view is View.FRONTAL else ("lung_right",)
    ratios = []
    for n in names:
        m = s.clean(n) if view is View.FRONTAL else s.lungs
        a = s.area_mm2(m)
        if a > 0:
            ratios.append(s.edge_contact_mm(m) ** 2 / a)
    out["lung_cut_ratio"] = max(ratios) if ratios else None
    lungs = masks["lung_right"] | masks["lung_left"]
    ext = col_extent(lungs)
    if ext is not None and image.spacing_mm is not None:
        out["lung_extent_mm"] = (ext[1] - ext[0] + 1) * image.spacing_mm[1]
    lung = s.clean("lung_right") if view is View.FRONTAL else s.lungs
    dd = dome_depth(s, lung)
    out["dome_depth_mm"] = None if dd is None else dd[0]
    if view is View.FRONTAL:
        unit = RulesConfig(
            positioning=type(cfg.positioning)(
                rotation_half_width_to_depth=1.0, rotation_half_width_to_depth_ap=1.0
            )
        )
        out["header_ap"] = image.meta.view_position.strip().upper() == "AP"
        rm = rotation_measure(s, unit)
        if rm is not None:
            out["rotation_ratio"] = math.tan(math.radians(rm[0]))
    return out


def sweep(values: list[float], truth: list[bool], fail_below: bool) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of `value < t` (or `> t`) as a problem."""
    v = np.asarray(values, float)
    t = np.asarray(truth, bool)
    cands = np.unique(np.concatenate([v, (v[:-1] + v[1:]) / 2 if v.size > 1 else v]))
    best = (float("nan"), -1.0)
    for c in cands:
        pred = v < c if fail_below else v > c
        acc = float((pred == t).mean())
        if acc > best[1]:
            best = (float(c), acc)
    return best


def accuracy_at(values: list[float], truth: list[bool], t: float, fail_below: bool) -> float:
    v = np.asarray(values, float)
    pred = v < t if fail_below else v > t
    return float((pred == np.asarray(truth, bool)).mean())


CALIBRATED = {
    # rule: (config section, key, fail_below)
    "exposure.contrast": ("exposure", "contrast_fail", True),
    "exposure.noise": ("exposure", "noise_fail", False),
    "exposure.spine_through_heart": ("exposure", "spine_through_heart_fail", True),
    "exposure.sharpness": ("exposure", "sharpness_edge_fail_mm", False),
    "exposure.saturation": ("exposure", "saturation_fail_percent", False),
    "organs.lungs": ("organs", "truncation_fail_mm", False),
    "organs.heart": ("organs", "truncation_fail_mm", False),
    "organs.clavicles": ("organs", "clavicle_min_area_mm2", True),
    "organs.diaphragm": ("organs", "diaphragm_cut_fail_percent", False),
    "organs.spine": ("organs", "spine_truncation_fail_mm", False),
    "positioning.rotation": ("positioning", "rotation_fail_deg", False),
    "positioning.arms": ("positioning", "arms_overlap_fail_mm2", False),
    "positioning.scapulae": ("positioning", "scapulae_fail_mm", False),
    "completeness.apices": ("completeness", "apices_margin_mm", True),
    "completeness.costophrenic": ("completeness", "costophrenic_margin_mm", True),
    "completeness.lateral_walls": ("completeness", "lateral_walls_margin_mm", True),
    "completeness.anteroposterior": ("completeness", "anteroposterior_margin_mm", True),
}


# the lateral view's own thresholds, where it has one
LATERAL_KEYS = {
    "noise_fail": "noise_fail_lateral",
    "truncation_fail_mm": "lateral_lung_truncation_fail_mm",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cfg = load_config()
    samples = [s for s in load_samples(args.set_dir, args.limit) if s.view is not View.OTHER]
    rows = []
    for i, s in enumerate(samples):
        if i % 25 == 0:
            print(f"{i}/{len(samples)}", file=sys.stderr)
        try:
            feats = features(s.dcm, s.masks, s.view, cfg)
        except Exception as exc:
            print(f"{s.id}: {exc!r}", file=sys.stderr)
            continue
        rows.append(
            {
                "id": s.id,
                "view": s.view.value,
                "truth": s.truth["rules"],
                "params": s.truth.get("params", {}),
                "spacing": s.truth.get("spacing_mm"),
                "feats": feats,
            }
        )
    if args.out:
        args.out.write_text(json.dumps(rows))
    report(rows, cfg)
    return 0


def rotation_fit(vr: list[dict[str, Any]], cfg: RulesConfig) -> None:
    """w/D and offset of the rotation model against the truth's signed apparent rotation
    (qcnode.synth.truth: 3D landmarks through the known pose), per header ViewPosition (AP
    films have their own constants), and the pass/problem agreement at the fail limit."""
    from qcnode.synth.truth import apparent_rotation

    rr = [(r["feats"].get("rotation_ratio"), r["feats"].get("header_ap"), r["params"]) for r in vr]
    rr = [(a, bool(h), p) for a, h, p in rr if a is not None and "elastic_seed" in p]
    if len(rr) < 10:
        return
    x = np.array([a for a, _, _ in rr])
    ap = np.array([h for _, h, _ in rr])
    true = np.array([apparent_rotation(p) for _, _, p in rr])
    y = np.tan(np.radians(true))
    t = cfg.positioning.rotation_fail_deg
    bad = np.abs(true) > t
    for offset in (False, True):
        pred = np.zeros_like(true)
        for name, m in (("PA", ~ap), ("AP", ap)):
            if m.sum() < 5:
                continue
            a = np.c_[x[m], np.ones(m.sum())] if offset else x[m][:, None]
            c, *_ = np.linalg.lstsq(a, y[m], rcond=None)
            pred[m] = np.degrees(np.arctan(a @ c))
            b = float(c[1]) if offset else 0.0
            print(
                f"  rotation {name} ({'with' if offset else 'no'} offset, n {m.sum()}): "
                f"w/D {c[0]:.3f}, ratio offset {-b / c[0]:+.3f}"
            )
        acc = float(((np.abs(pred) > t) == bad).mean())
        resid = float((pred - true).std())
        kind = "with" if offset else "no"
        print(f"  rotation fit ({kind} offset): resid {resid:.2f} deg; acc {acc:.1%}")


def inspiration_fit(vr: list[dict[str, Any]]) -> None:
    """ribs = a + depth / mm_per_rib against the truth's rib count (least squares), then
    the offset a that maximises the pass/problem agreement."""
    pairs = [
        (r["feats"].get("dome_depth_mm"), r["truth"].get("positioning.inspiration", {})) for r in vr
    ]
    pairs = [(d, t["value"]) for d, t in pairs if d is not None and t.get("value") is not None]
    if len(pairs) < 10:
        return
    d = np.array([a for a, _ in pairs])
    n = np.array([b for _, b in pairs], float)
    (slope, a), *_ = np.linalg.lstsq(np.c_[d, np.ones_like(d)], n, rcond=None)
    best = (-1.0, a)
    for aa in np.arange(a - 1.5, a + 1.5, 0.05):
        est = np.round(aa + d * slope)
        acc = float(((est >= 10) == (n >= 10)).mean())
        if acc > best[0]:
            best = (acc, float(aa))
    est = np.round(best[1] + d * slope)
    print(
        f"  inspiration: ribs = a + depth/{1 / slope:.2f} mm (r {np.corrcoef(d, n)[0, 1]:.3f});"
        f" lsq a {a:.2f}; best a {best[1]:.2f}: pass/problem {best[0]:.1%},"
        f" exact {float((est == n).mean()):.1%} (n {len(n)})"
    )


def report(rows: list[dict[str, Any]], cfg: RulesConfig) -> None:
    for view in ("frontal", "lateral"):
        vr = [r for r in rows if r["view"] == view]
        if not vr:
            continue
        print(f"\n=== {view}: {len(vr)} samples ===")
        rules = sorted({k for r in vr for k in r["truth"]})
        print(f"{'rule':<32} {'n':>4} {'pos':>4} {'acc(status)':>11} {'acc(bin)':>9}")
        for rule in rules:
            pairs = [(r["feats"].get(rule, {}), r["truth"][rule]) for r in vr]
            pairs = [(f, t) for f, t in pairs if "status" in f and t["status"] != "not_evaluable"]
            if not pairs:
                continue
            exact = np.mean([f["status"] == t["status"] for f, t in pairs])
            binary = np.mean(
                [(f["status"] in PROBLEM) == (t["status"] in PROBLEM) for f, t in pairs]
            )
            pos = sum(t["status"] in PROBLEM for _, t in pairs)
            print(
                f"{rule:<32} {len(pairs):>4} {pos:>4} {100 * exact:>10.1f}% {100 * binary:>8.1f}%"
            )
        print("\nthreshold sweeps (value vs truth problem):")
        for rule, (section, key, below) in CALIBRATED.items():
            key = (
                LATERAL_KEYS.get(key, key) if view == "lateral" and rule != "organs.heart" else key
            )
            pairs = [
                (r["feats"].get(rule, {}).get("value"), r["truth"].get(rule, {}).get("status"))
                for r in vr
            ]
            pairs = [(v, t) for v, t in pairs if v is not None and t not in (None, "not_evaluable")]
            if len(pairs) < 5:
                continue
            vals = [float(v) for v, _ in pairs]
            tru = [t in PROBLEM for _, t in pairs]
            cur = getattr(getattr(cfg, section), key)
            t_best, a_best = sweep(vals, tru, below)
            acc_now = 100 * accuracy_at(vals, tru, cur, below)
            print(
                f"  {rule:<30} current {key}={cur:<8g} acc {acc_now:5.1f}%"
                f"  best {t_best:.4g} acc {100 * a_best:5.1f}%  (pos {sum(tru)}/{len(tru)})"
            )
        tilt = [
            (
                r["feats"].get("positioning.tilt", {}).get("value"),
                r["truth"].get("positioning.tilt", {}).get("status"),
            )
            for r in vr
        ]
        tilt = [(v, t) for v, t in tilt if v is not None and t is not None]
        if tilt:
            tvals = np.array([v for v, _ in tilt])
            bad = np.array([t in PROBLEM for _, t in tilt])
            best = (0.0, 0.0, 0.0)
            for lo in np.arange(-20, 30, 1.0):
                for hi in np.arange(lo + 1, 60, 1.0):
                    acc = float((((tvals < lo) | (tvals > hi)) == bad).mean())
                    if acc > best[0]:
                        best = (acc, lo, hi)
            print(f"  tilt: best range [{best[1]}, {best[2]}] mm acc {100 * best[0]:.1f}%")
        if view == "frontal":
            rotation_fit(vr, cfg)
        inspiration_fit(vr)
        lc = [
            (r["feats"].get("lung_cut_ratio"), r["truth"].get("organs.lungs", {}).get("status"))
            for r in vr
        ]
        lc = [(v, t) for v, t in lc if v is not None and t is not None]
        if lc:
            t_best, a_best = sweep([v for v, _ in lc], [t in PROBLEM for _, t in lc], False)
            print(f"  organs.lungs by contact²/area: best {t_best:.4g} acc {100 * a_best:.1f}%")
        ext = [r["feats"].get("lung_extent_mm") for r in vr]
        ext = [e for e in ext if e]
        if ext:
            print(
                f"  lung extent mm: median {np.median(ext):.1f}  p10 {np.percentile(ext, 10):.1f}"
                f"  p90 {np.percentile(ext, 90):.1f}"
            )
        ins = [
            (
                r["feats"].get("positioning.inspiration", {}).get("value"),
                r["truth"].get("positioning.inspiration", {}).get("value"),
            )
            for r in vr
        ]
        ins = [(a, b) for a, b in ins if a is not None and b is not None]
        if ins:
            d = np.array([a - b for a, b in ins])
            print(
                f"  ribs: measured - truth: mean {d.mean():+.2f}, exact {np.mean(d == 0):.2%}, "
                f"|d|<=1 {np.mean(np.abs(d) <= 1):.2%}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
