#!/usr/bin/env python
"""Where the rules lose between exact masks and a model's masks (train-split sets only).

For every sample of the sets: the rules on the exact masks and on the cached model
predictions (scripts/cache_predictions.py), each with candidate measurements that tolerate the
model's typical mask errors (an organ outline stopping a few mm short of the field edge, ...).
Rows (truth, and per mask source every rule's status/value plus the candidate measures:
organ outline on the field edge within 0–8 mm, landmark edge contacts, scapula overlaps,
lateral superimposition from ribs or lungs) go to a JSON file for threshold sweeps. Used in
session 5 to choose the edge tolerances of etc/rules.toml on rules-cal5-f/-l (train split;
never on an evaluation set). Usage:

    .venv/bin/python scripts/rules_gap.py --set data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s5/rules-cal5-f --out rows.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from qcnode.evaluate import load_masks, load_samples
from qcnode.imaging import decode
from qcnode.records import BoolMask, View
from qcnode.rules import RULES, build_subject, load_config
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import row_extent
from qcnode.rules.organs import lungs_cut_share
from qcnode.testing import FakePredictor

PROBLEM = {"warn", "fail"}
TOLS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)


def near_contact(s: Subject, mask: BoolMask, tol_mm: float) -> float:
    """Length (mm) of the field edge ring within ``tol_mm`` of the mask, as the rules take it."""
    return s.edge_contact_mm(mask, tol_mm)


def subject(image: Any, view: View, masks: dict[str, BoolMask], cfg: RulesConfig) -> Subject:
    pred = FakePredictor(source={image.meta.sop_instance_uid: (view, masks)}).predict([image])[0]
    return build_subject(image, pred, cfg)


def measure(s: Subject, view: View, cfg: RulesConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule, fn in RULES[view].items():
        f = fn(s, cfg)
        out[rule] = [str(f.status), f.value]
    organs: dict[str, BoolMask] = {"heart": s.mask("heart")}
    if view is View.FRONTAL:
        organs["lung_right"] = s.mask("lung_right")
        organs["lung_left"] = s.mask("lung_left")
    else:
        organs["lungs"] = s.lungs
        organs["sternum"] = s.mask("sternum")
        ext = row_extent(s.lungs)
        spine = s.mask("spine")
        if ext is not None:
            rows = np.zeros(s.shape[0], dtype=bool)
            rows[ext[0] : ext[1] + 1] = True
            spine = spine & rows[:, None]
            inner = spine.copy()
            inner[ext[0]] = False
            inner[ext[1]] = False
            organs["spine_inner"] = inner
            # lungs cut share with a tolerance, as organs.spine takes it
            shares = {"0.0": lungs_cut_share(s, ext)}
            shares.update(near_end_shares(s, ext))
            out["cut_share"] = shares
        out["spine_area"] = s.area_mm2(spine)
    for name, m in organs.items():
        out[f"area:{name}"] = s.area_mm2(m)
        out[f"contact:{name}"] = {str(t): near_contact(s, m, t) for t in TOLS}
    if view is View.LATERAL:
        out["sep"] = lateral_seps(s)
    else:
        out["scap"] = scapula_measures(s)
    out["landmarks"] = landmark_contacts(s, view)
    return out


LANDMARK_TOLS = (2.0, 3.0, 4.0, 6.0)


def near_end_shares(s: Subject, ext: tuple[int, int]) -> dict[str, float]:
    """Per distance D: a field edge within D mm beyond the lungs' top (bottom) row, and the
    lungs' widest row within D mm of that end as a share of their widest (0: no edge near)."""
    widths = s.lungs.sum(axis=1)
    top = float(widths.max()) or 1.0
    out: dict[str, float] = {}
    for d in (3.0, 5.0, 8.0, 12.0):
        near = s.near(s.lungs, d) & s.field_ring
        k = int(np.ceil(d / s.sy))
        share = 0.0
        r0, r1 = ext
        if near[max(0, r0 - k) : r0 + 1].any():
            share = max(share, float(widths[r0 : r0 + k + 1].max()) / top)
        if near[r1 : r1 + k + 1].any():
            share = max(share, float(widths[max(0, r1 - k) : r1 + 1].max()) / top)
        out[f"end{d}"] = share
    return out


def landmark_contacts(s: Subject, view: View) -> dict[str, dict[str, list[float]]]:
    """Per landmark: [margin, edge ring within t mm of the lung and within 25 mm of the
    landmark (mm) for t in LANDMARK_TOLS] per lung (frontal) or for the lungs (lateral)."""
    from qcnode.rules.completeness import anterior_sign, costophrenic_point, lateral_sign
    from qcnode.rules.masks import extreme, largest_component

    res: dict[str, dict[str, list[float]]] = {}
    rr, cc = np.mgrid[0 : s.shape[0], 0 : s.shape[1]]
    pieces: list[tuple[str, BoolMask, float]] = []
    if view is View.FRONTAL:
        for side in ("right", "left"):
            pieces.append((side, s.clean(f"lung_{side}"), lateral_sign(s, side)))
    else:
        pieces.append(("lungs", largest_component(s.lungs), 0.0))
    for name, lung, out in pieces:
        if not lung.any():
            continue
        pts = {}
        if view is View.FRONTAL:
            pts["apex"] = extreme(lung, -1.0, 0.0, s.sy, s.sx)
            pts["costophrenic"] = costophrenic_point(lung, out)
            pts["wall"] = extreme(lung, 0.0, out, s.sy, s.sx)
        else:
            pts["apex"] = extreme(lung, -1.0, 0.0, s.sy, s.sx)
            rows = np.flatnonzero(lung.any(axis=1))
            r = int(rows[-1])
            cs = np.flatnonzero(lung[r])
            pts["costophrenic"] = (float(r), float(cs[-1] if anterior_sign(s) < 0 else cs[0]))
        d = ndimage.distance_transform_edt(~lung, sampling=(s.sy, s.sx))
        for lm, p in pts.items():
            if p is None:
                continue
            win = np.hypot((rr - p[0]) * s.sy, (cc - p[1]) * s.sx) <= 25.0
            vals = [s.margin_mm(p)]
            for t in LANDMARK_TOLS:
                vals.append(
                    float(np.count_nonzero(s.field_ring & win & (d <= t + 1e-6))) * min(s.sy, s.sx)
                )
            res.setdefault(lm, {})[name] = vals
    return res


def lateral_seps(s: Subject) -> dict[str, float | None]:
    from qcnode.rules.completeness import anterior_sign
    from qcnode.rules.lateral import _posterior_outline

    ext = row_extent(s.lungs)
    res: dict[str, float | None] = {}
    if ext is None:
        return res
    back = -anterior_sign(s)
    h = ext[1] - ext[0]
    for src, (a, b) in {
        "ribs": ("ribs_posterior_right", "ribs_posterior_left"),
        "lungs": ("lung_right", "lung_left"),
    }.items():
        for lo, hi in ((0.25, 0.75), (0.3, 0.7), (0.2, 0.8)):
            r0, r1 = ext[0] + int(lo * h), ext[0] + int(hi * h)
            er = _posterior_outline(s.mask(a)[r0:r1], back)
            el = _posterior_outline(s.mask(b)[r0:r1], back)
            ok = ~np.isnan(er) & ~np.isnan(el)
            res[f"{src}:{lo}"] = (
                float(np.median(np.abs(er[ok] - el[ok]) * s.sx)) if ok.sum() >= 3 else None
            )
    return res


def scapula_measures(s: Subject) -> dict[str, float]:
    res: dict[str, float] = {}
    lungs = s.lungs
    for side in ("right", "left"):
        ov = s.mask(f"scapula_{side}") & lungs
        per_row = ov.sum(axis=1) * s.sx
        nz = per_row[per_row > 0]
        res[f"max:{side}"] = float(per_row.max())
        res[f"p80:{side}"] = float(np.percentile(nz, 80)) if nz.size else 0.0
        res[f"area:{side}"] = s.area_mm2(ov)
        op = ndimage.binary_opening(ov, iterations=2)
        res[f"open:{side}"] = float((op.sum(axis=1) * s.sx).max()) if op.any() else 0.0
    return res


def _load_prediction() -> Any:
    """scripts/cache_predictions.py's reader of cached predictions (scripts is not a
    package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cache_predictions", Path(__file__).with_name("cache_predictions.py")
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load_prediction


def collect(set_dir: Path, pred_dir: Path, limit: int | None) -> list[dict[str, Any]]:
    load_prediction = _load_prediction()
    cfg = load_config()
    rows = []
    samples = [s for s in load_samples(set_dir) if s.view is not View.OTHER][:limit]
    for i, smp in enumerate(samples):
        cached = pred_dir / f"{smp.id}.npz"
        if not cached.is_file():
            continue
        image = decode(smp.dcm)
        row: dict[str, Any] = {
            "id": smp.id,
            "view": smp.view.value,
            "truth": {k: [v["status"], v.get("value")] for k, v in smp.truth["rules"].items()},
        }
        sources = {"exact": (smp.view, load_masks(smp.masks)), "model": load_prediction(cached)}
        for mode, (view, masks) in sources.items():
            if view is not smp.view:
                row[mode] = None
                continue
            row[mode] = measure(subject(image, view, masks, cfg), view, cfg)
        rows.append(row)
        if i % 50 == 0:
            print(f"{i}/{len(samples)}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--set", type=Path, action="append", default=[])
    ap.add_argument("--pred", type=Path, action="append", default=[])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for set_dir, pred_dir in zip(args.set, args.pred, strict=True):
        rows += collect(set_dir, pred_dir, args.limit)
    if args.out:
        args.out.write_text(json.dumps(rows))
    print(f"{len(rows)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
