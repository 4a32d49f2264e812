#!/usr/bin/env python
"""Calibrate the "calibrated" thresholds of etc/rules.toml on a labelled synthetic set.

For every sample: decode the DICOM, take the exact masks, measure each rule's quantity with
qcnode.rules, and pair it with the truth status of the sample's JSON. Then, per rule, sweep
the threshold and print the one with the best accuracy (and the accuracy at the current
value), plus the fitted constants (rotation w/D, anatomy scale). Usage:

    .venv/bin/python scripts/calibrate_rules.py data/synth/train-v1 [more sets…] [--limit N]
        [--out f.json] [--rows f.json]

Several sets are pooled (e.g. train-v1 plus a many-pose calibration set: the positioning
truths are one value per 3D pose, and train-v1 has only 54 frontal / 26 lateral poses).
``--rows`` re-reports from a saved ``--out`` file without measuring again.
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
from qcnode.rules import RULES, build_subject, load_config
from qcnode.rules.completeness import anterior_sign
from qcnode.rules.config import RulesConfig
from qcnode.rules.masks import col_extent, extreme
from qcnode.rules.organs import edge_tolerance_mm
from qcnode.rules.positioning import dome_depth, rotation_measure, tilt_value
from qcnode.testing import FakePredictor

PROBLEM = {"warn", "fail"}


def features(path_dcm: Path, path_masks: Path, view: View, cfg: RulesConfig) -> dict[str, Any]:
    image = decode(path_dcm)
    masks = load_masks(path_masks)
    pred = FakePredictor(source={image.meta.sop_instance_uid: (view, masks)}).predict([image])[0]
    s = build_subject(image, pred, cfg)
    out: dict[str, Any] = {"spacing_source": s.spacing_source}
    for rule, fn in RULES[view].items():
        try:
            f = fn(s, cfg)
        except Exception as exc:  # report, keep going
            out[rule] = {"error": repr(exc)}
            continue
        out[rule] = {"status": str(f.status), "value": f.value}
    # organs.lungs / organs.sternum: (outline on the field edge)² / visible area, as the rule
    # takes the masks (frontal: each lung; lateral: their union)
    lung_masks = (
        [s.mask("lung_right"), s.mask("lung_left")]
        if view is View.FRONTAL
        else [s.mask("lung_right") | s.mask("lung_left")]
    )
    ratios = []
    tol = edge_tolerance_mm(s, cfg)  # the outline within this distance of the edge counts
    for m in lung_masks:
        a = s.area_mm2(m)
        if a > 0:
            ratios.append(s.edge_contact_mm(m, tol) ** 2 / a)
    out["lung_cut_ratio"] = max(ratios) if ratios else None
    if view is View.LATERAL:
        a = s.area_mm2(s.mask("sternum"))
        cut = s.edge_contact_mm(s.mask("sternum"), tol)
        out["sternum_cut_ratio"] = cut**2 / a if a else None
    # an apex on the field edge: the tilt (apex above the clavicles) is not measured there
    apices = [extreme(s.mask(f"lung_{side}"), -1.0, 0.0) for side in ("right", "left")]
    out["apex_on_edge"] = any(p is not None and s.margin_mm(p) <= 0.0 for p in apices)
    if view is View.FRONTAL:
        tv = tilt_value(s, cfg)
        out["tilt_mm"] = None if tv is None else tv[0]
    else:  # the sternum's inclination (columns per row, + leaning anteriorly downwards)
        st = s.mask("sternum")
        rr = np.flatnonzero(st.any(axis=1))
        out["sternum_slope"] = None
        if rr.size > 5:
            cc = [float(np.flatnonzero(st[r]).mean()) for r in rr]
            out["sternum_slope"] = float(np.polyfit(rr, cc, 1)[0]) * anterior_sign(s)
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
LATERAL_KEYS = {"noise_fail": "noise_fail_lateral"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("set_dir", type=Path, nargs="*")
    ap.add_argument("--limit", type=int, help="samples per set")
    ap.add_argument("--out", type=Path, help="write the measured rows (JSON)")
    ap.add_argument("--rows", type=Path, help="report from rows written by --out")
    args = ap.parse_args(argv)
    cfg = load_config()
    if args.rows:
        report(json.loads(args.rows.read_text()), cfg)
        return 0
    samples = [
        s for d in args.set_dir for s in load_samples(d, args.limit) if s.view is not View.OTHER
    ]
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
        args.out.write_text(json.dumps(rows, default=float))
    report(rows, cfg)
    return 0


def rotation_fit(vr: list[dict[str, Any]], cfg: RulesConfig) -> None:
    """w/D and offset of the rotation model against the truth's signed apparent rotation
    (qcnode.synth.pose: 3D landmarks through the known pose), per header ViewPosition (AP
    films have their own constants), and the pass/problem agreement at the fail limit."""
    from qcnode.synth.pose import apparent_rotation

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


def tilt_fit(vr: list[dict[str, Any]]) -> None:
    """The rule's value (apices above the medial clavicle ends, mm) against the truth's signed
    apparent tilt (qcnode.synth.pose), least squares on films whose apices are not on a field
    edge; the range [value at +limit, value at −limit] and its pass/problem agreement."""
    from qcnode.synth.pose import apparent_tilt
    from qcnode.synth.truth import TILT_FAIL_DEG

    pts = [
        (r["feats"]["positioning.tilt"]["value"], r["feats"].get("apex_on_edge"), r)
        for r in vr
        if r["feats"].get("positioning.tilt", {}).get("value") is not None
        and "elastic_seed" in r["params"]
    ]
    if len(pts) < 10:
        return
    v = np.array([p[0] for p in pts], float)
    cut = np.array([bool(p[1]) for p in pts])
    true = np.array([apparent_tilt(p[2]["params"]) for p in pts])
    slope, icpt = np.polyfit(true[~cut], v[~cut], 1)
    lo, hi = sorted((icpt + slope * TILT_FAIL_DEG, icpt - slope * TILT_FAIL_DEG))
    resid = float((v[~cut] - (icpt + slope * true[~cut])).std() / abs(slope))
    truth_bad = [r["truth"]["positioning.tilt"]["status"] in PROBLEM for r in vr]
    vals = [r["feats"].get("positioning.tilt", {}).get("value") for r in vr]
    acc = np.mean(
        [(x is not None and not lo <= x <= hi) == b for x, b in zip(vals, truth_bad, strict=True)]
    )
    print(
        f"  tilt fit (apex not on an edge, n {int((~cut).sum())}): value = {icpt:.2f} "
        f"{slope:+.3f}·tilt, resid {resid:.2f} deg; range [{lo:.1f}, {hi:.1f}] mm: acc {acc:.1%}"
    )


def _pose(row: dict[str, Any]) -> str:
    return str(row["id"]).rsplit("-v", 1)[0]


def inspiration_fit(vr: list[dict[str, Any]], extra: str | None, ref: float) -> None:
    """ribs = a + depth / mm_per_rib [+ c·(extra − ref)] against the truth's rib count (least
    squares), then the offset a that maximises the pass/problem agreement; and the same
    agreement in a 5-fold cross-validation by 3D pose (every variant of a pose shares its
    truth, so films of one pose never sit on both sides). This is the lateral estimator and
    the frontal `inspiration_estimator = "depth"` (v7); the frontal default since session 8,
    "habitus", is fitted by scripts/inspiration_study.py."""
    rows = []
    for r in vr:
        d = r["feats"].get("dome_depth_mm")
        n = r["truth"].get("positioning.inspiration", {}).get("value")
        x = r["feats"].get(extra) if extra else 0.0
        if d is not None and n is not None and x is not None:
            rows.append((d, float(x) - ref, float(n), _pose(r)))
    if len(rows) < 10:
        return
    d = np.array([a[0] for a in rows])
    x = np.array([a[1] for a in rows])
    n = np.array([a[2] for a in rows])
    poses = np.array([a[3] for a in rows])
    design = np.c_[d, x, np.ones_like(d)] if extra else np.c_[d, np.ones_like(d)]

    def fit(m: Any) -> tuple[Any, float, float]:
        c, *_ = np.linalg.lstsq(design[m], n[m], rcond=None)
        best = (-1.0, 0.0)
        for off in np.arange(-1.5, 1.5, 0.05):
            acc = float(((np.round(design[m] @ c + off) >= 10) == (n[m] >= 10)).mean())
            if acc > best[0]:
                best = (acc, float(off))
        return c, best[1], best[0]

    c, off, acc = fit(np.ones(len(n), bool))
    uniq = np.unique(poses)
    fold = dict(zip(uniq, np.random.default_rng(0).permutation(len(uniq)) % 5, strict=True))
    fi = np.array([fold[p] for p in poses])
    hits = 0
    for k in range(5):
        ck, ok, _ = fit(fi != k)
        est = np.round(design[fi == k] @ ck + ok)
        hits += int(((est >= 10) == (n[fi == k] >= 10)).sum())
    est = np.round(design @ c + off)
    term = f" {c[1]:+.4f}·({extra} − {ref:g})" if extra else ""
    print(
        f"  inspiration (depth formula; frontal ships 'habitus', scripts/inspiration_study.py):"
        f" ribs = {c[-1] + off:.2f} + depth/{1 / c[0]:.2f} mm{term} "
        f"(lsq offset {off:+.2f}); pass/problem {acc:.1%}, pose-CV {hits / len(n):.1%}, "
        f"exact {float((est == n).mean()):.1%} (n {len(n)}, poses {len(uniq)})"
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
            key = LATERAL_KEYS.get(key, key) if view == "lateral" else key
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
            tilt_fit(vr)
        inspiration_fit(vr, None, 0.0)
        if view == "frontal":
            inspiration_fit(vr, "tilt_mm", 18.5)
        else:
            inspiration_fit(vr, "sternum_slope", 0.0)
        ratio_keys = [("organs.lungs", "lung_cut_ratio", "lung_truncation_fail_ratio")]
        if view == "lateral":
            ratio_keys = [
                ("organs.lungs", "lung_cut_ratio", "lateral_lung_truncation_fail_ratio"),
                ("organs.sternum", "sternum_cut_ratio", "sternum_truncation_fail_ratio"),
            ]
        for rule, feat, key in ratio_keys:
            lc = [(r["feats"].get(feat), r["truth"].get(rule, {}).get("status")) for r in vr]
            lc = [(v, t) for v, t in lc if v is not None and t not in (None, "not_evaluable")]
            if not lc:
                continue
            vals, tru = [v for v, _ in lc], [t in PROBLEM for _, t in lc]
            cur = getattr(cfg.organs, key)
            t_best, a_best = sweep(vals, tru, False)
            if key == "lung_truncation_fail_ratio" and cfg.organs.lung_loss_fail_share > 0:
                print("  (frontal organs.lungs reads lung_loss_* since session 7: ratio inactive)")
            print(
                f"  {rule} by contact²/area: current {key}={cur:g} acc "
                f"{100 * accuracy_at(vals, tru, cur, False):.1f}%  best {t_best:.4g} acc "
                f"{100 * a_best:.1f}%  (pos {sum(tru)}/{len(tru)})"
            )
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
