"""Frontal `positioning.inspiration` on real films: the lung's own lower outline (``lung_low``
of scripts/inspiration_study.py) measured on the shipped model's masks vs on the human (V7)
lung masks, and the verdicts of the shipped formula (depth/k + heart height) vs the candidate
(depth/k + lung_low).

Why: on synthetic films (s9's cached masks of rules-cal5-f) the candidate reads ~1.5 points
better held out, but the s9 model is known to overdraw the whole-lung recesses on real films,
and a real film has no rib-count truth. The V7 masks stop at the visible diaphragm, while the
synthetic lung truth (and so the network) runs on into the posterior recess below it; so the
model's whole-lung ``lung_low`` is compared with the human mask's after the synthetic
whole-minus-visible offset (``--synth``: the same function on rules-cal5-f exact masks,
``lung_right`` vs ``lung_right_visible``, and s9's cached masks), and the model's visible-lung
channel is compared with the human mask directly (the same definition).

Per real frontal (``qcnode.model.report.real_cases``): the model's masks (cached as npz under
``--cache``), the Subject as the rules build it (spacing from the header or the model), the
human mask split into its two largest parts (the right lung is the one on the image left),
sampled onto the Subject's grid. Prints the error distributions (mm), the two verdicts, both
against a reference that uses no model mask (``REFERENCE``: the human mask's dome depth in
ribs), and writes a picture of every film (``--pictures``: model right lung green, heart red,
visible right lung cyan, human lungs yellow; the apex, heart-border and lung_low levels).

    .venv/bin/python scripts/inspiration_real.py --cache /tmp/ins10/pred \\
        --pictures /tmp/ins10/pics --json /tmp/ins10/real.json \\
        --synth data/synth/rules-cal5-f --synth-pred .cache/rules/pred-vis/s9b/rules-cal5-f

Result (docs/RULES.md, "Session 10 (helper): frontal inspiration on real films"): the model's
whole-lung lower outline lies 72 mm (median) below its visible lung on real films against 111
on synthetic ones (the heart's lower border: 41.5 vs 42.0 below the visible dome), so the
candidate reads ~0.5 ribs more on real films than its synthetic calibration; not shipped.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from inspiration_study import lung_low_depth
from PIL import Image, ImageDraw
from scipy import ndimage
from study_stats import film_subject, study_samples

from qcnode.evaluate import load_masks
from qcnode.imaging import decode
from qcnode.model.report import REAL_ROOT, real_cases
from qcnode.records import BoolMask, DecodedImage, Prediction, View
from qcnode.rules import RulesConfig, build_subject, load_config
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import despeckle, row_extent
from qcnode.rules.positioning import (
    dome_depth,
    heart_height_mm,
    inspiration,
    inspiration_ribs,
    inspiration_status,
)

# candidate: a + depth / (k mm_per_rib) + c lung_low, least squares on all 601 rules-cal5-f
# films' s9 model masks, a moved to the best pass/problem cut (inspiration_study.final_fit)
CANDIDATE = (5.401, 27.71, -0.01327)
# reference: a + (the human mask's visible dome below its apex) / mm_per_rib, the same least
# squares on rules-cal5-f exact masks' visible-lung dome (inspiration_study's ``vis``; held out
# 87.8 % even/odd, 86.9 % on 20 random halves): a reading that uses no model mask
REFERENCE = (5.142, 41.95)
# rules-cal5-f exact masks: lung_low on the whole right lung minus on its visible part
# (median, mm; printed by --synth)
RECESS_MM = 109.2
PROBLEM = ("warn", "fail")


def save_prediction(path: Path, pred: Prediction) -> None:
    arrays: dict[str, np.ndarray] = {
        "view": np.array(str(pred.view)),
        "spacing": np.array(pred.spacing_mm, dtype=np.float64),
        "spacing_estimated": np.array(pred.spacing_estimated),
        "extra": np.array(sorted(pred.extra_masks)),
    }
    for k, v in {**pred.masks, **pred.extra_masks}.items():
        arrays[f"m_{k}"] = np.asarray(v, dtype=bool)
    np.savez_compressed(path, allow_pickle=False, **arrays)


def read_prediction(path: Path) -> Prediction:
    with np.load(path) as z:
        extra = {str(k) for k in z["extra"]}
        masks = {k[2:]: z[k] for k in z.files if k.startswith("m_")}
        sp = tuple(float(v) for v in z["spacing"])
        return Prediction(
            view=View(str(z["view"])),
            view_probabilities={},
            masks={k: v for k, v in masks.items() if k not in extra},
            spacing_mm=(sp[0], sp[1]),
            spacing_estimated=bool(z["spacing_estimated"]),
            extra_masks={k: v for k, v in masks.items() if k in extra},
        )


def predictions(cache: Path) -> list[tuple[Path, Path | None, DecodedImage, Prediction]]:
    """(film, human lung mask, image, prediction) for every real frontal case."""
    from qcnode.model import load_predictor

    cache.mkdir(parents=True, exist_ok=True)
    predictor = None
    out = []
    for case in real_cases(REAL_ROOT):
        if case.view is not View.FRONTAL:
            continue
        image = decode(case.path)
        npz = cache / f"{case.path.parent.name}__{case.path.stem}.npz"
        if not npz.is_file():
            if predictor is None:
                predictor = load_predictor(None, device="cpu")
            (pred,) = predictor.predict([image])
            save_prediction(npz, pred)
        out.append((case.path, case.lungs, image, read_prediction(npz)))
    return out


def on_grid(s: Subject, mask: BoolMask) -> BoolMask:
    """A full-resolution mask sampled onto the Subject's working grid as Subject.build does
    (stride, offset, despeckle, the same flips)."""
    o = s.stride // 2
    small = despeckle(np.ascontiguousarray(mask[o :: s.stride, o :: s.stride]))
    small = small[: s.shape[0], : s.shape[1]]
    ud = s.orientation in ("upside_down", "flipped")
    lr = s.orientation in ("upside_down", "mirrored")
    if ud:
        small = small[::-1]
    if lr:
        small = small[:, ::-1]
    return np.ascontiguousarray(small)


def human_subject(s: Subject, lungs_png: Path) -> Subject | None:
    """The model's Subject with the human lungs as lung_right / lung_left (the two largest
    parts of the V7 mask; the right lung lies on the image left of an upright film)."""
    truth = np.asarray(Image.open(lungs_png).convert("L")) > 127
    if truth.shape != s.image.pixels.shape:
        return None
    labels, n = ndimage.label(truth)
    if n < 2:
        return None
    sizes = ndimage.sum(truth, labels, range(1, n + 1))
    a, b = (int(i) + 1 for i in np.argsort(sizes)[::-1][:2])
    parts = [on_grid(s, labels == a), on_grid(s, labels == b)]
    cols = [float(np.flatnonzero(p.any(axis=0)).mean()) for p in parts]
    right, left = (parts[0], parts[1]) if cols[0] < cols[1] else (parts[1], parts[0])
    masks = {**s.masks, "lung_right": right, "lung_left": left}
    return replace(s, masks=masks, _cache={})


def top_row(lung: BoolMask) -> int | None:
    rows = np.flatnonzero(lung.any(axis=1))
    return int(rows[0]) if rows.size else None


def low_outline(s: Subject, lung: BoolMask) -> tuple[float | None, float | None]:
    """(lung_low below the lung's own top in mm, the lower outline's depth below the image
    top in mm): the second separates the outline's error from the apex's."""
    top = top_row(lung)
    if top is None:
        return None, None
    rel = lung_low_depth(s, lung, float(top))
    return rel, None if rel is None else rel + top * s.sy


def dome_below_apex(s: Subject, lung: BoolMask) -> float | None:
    """mm from the lung's top row down to its dome: the highest lower border over the middle
    60 % of its columns (inspiration_study.visible_dome, for a mask that stops at the
    diaphragm: the human masks, the model's visible-lung channel)."""
    top = top_row(lung)
    cols = np.flatnonzero(lung.any(axis=0))
    if top is None or cols.size < 5:
        return None
    c0, c1 = int(cols[0]), int(cols[-1])
    w = c1 - c0
    lows = [
        int(np.flatnonzero(lung[:, c])[-1])
        for c in range(c0 + int(0.2 * w), c1 - int(0.2 * w) + 1)
        if lung[:, c].any()
    ]
    return (min(lows) - top) * s.sy if lows else None


def candidate_ribs(s: Subject, cfg: RulesConfig, depth: float, low: float) -> float:
    a, mm, c = CANDIDATE
    ap = s.image.meta.view_position.strip().upper() == "AP"
    k = cfg.positioning.inspiration_ap_magnification if ap else 1.0
    return a + depth / (k * mm) + c * low


def measure_real(
    path: Path, lungs: Path | None, image: DecodedImage, pred: Prediction, cfg: RulesConfig
) -> dict[str, Any] | None:
    if pred.view is not View.FRONTAL:
        return None
    s = build_subject(image, pred, cfg)
    row: dict[str, Any] = {
        "file": f"{path.parent.name}/{path.name}",
        "spacing": s.spacing_source,
        "sy": s.sy,
        "ap": s.image.meta.view_position.strip().upper() == "AP",
        "orientation": s.orientation,
    }
    f = inspiration(s, cfg)
    row["status_now"] = str(f.status)
    row["ribs_now"] = f.value
    lung = s.clean("lung_right")
    m = dome_depth(s, lung)
    if m is not None:
        row["ribs_now_raw"] = inspiration_ribs(s, cfg.positioning, m[0])
    row["lung_low"], row["lung_low_abs"] = low_outline(s, lung)
    if "lung_right_visible" in s.masks:
        vis = s.clean("lung_right_visible")
        row["vis_low"], row["vis_low_abs"] = low_outline(s, vis)
    row["heart_h"] = heart_height_mm(s)
    if "lung_right_visible" in s.masks:
        row["vis_dome"] = dome_below_apex(s, s.clean("lung_right_visible"))
    if m is not None:
        row["depth"] = m[0]
        if row["lung_low"] is not None:
            x = candidate_ribs(s, cfg, m[0], row["lung_low"])
            n = max(0, round(x))
            row["ribs_cand"] = n
            row["ribs_cand_raw"] = x
            row["status_cand"] = str(inspiration_status(n, cfg.positioning)[0])
    if lungs is not None:
        h = human_subject(s, lungs)
        if h is not None:
            hl = h.clean("lung_right")
            row["human_lung_low"], row["human_lung_low_abs"] = low_outline(h, hl)
            ht = top_row(hl)
            mt = top_row(lung)
            if ht is not None and mt is not None:
                row["apex_err"] = (mt - ht) * s.sy  # + : the model's apex lower
            hm = dome_depth(h, hl)
            if hm is not None and row["human_lung_low"] is not None:
                row["human_ribs_cand_raw"] = candidate_ribs(h, cfg, hm[0], row["human_lung_low"])
            vd = dome_below_apex(h, hl)
            if vd is not None:
                row["human_dome"] = vd
                row["ribs_ref_raw"] = REFERENCE[0] + vd / REFERENCE[1]
                n = max(0, round(row["ribs_ref_raw"]))
                row["ribs_ref"] = n
                row["status_ref"] = str(inspiration_status(n, cfg.positioning)[0])
            if m is not None and row["human_lung_low"] is not None:
                # the candidate with the human outline plus the synthetic recess for lung_low
                x = candidate_ribs(s, cfg, m[0], row["human_lung_low"] + RECESS_MM)
                n = max(0, round(x))
                row["status_cand_h"] = str(inspiration_status(n, cfg.positioning)[0])
    return row


def picture(
    out: Path, image: DecodedImage, s: Subject, row: dict[str, Any], lungs: Path | None
) -> None:
    """The film (working grid) with the model's right lung (green), heart (red), visible
    right lung (cyan), the human lungs (yellow), the apex, heart-border and lung_low levels."""
    px = s.pixels
    lo, hi = np.percentile(px, [1, 99])
    g = (np.clip((px - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([g, g, g], -1)

    def edge(m: BoolMask) -> BoolMask:
        return m & ~ndimage.binary_erosion(m)

    layers = [(s.clean("lung_right"), (0, 255, 0)), (s.clean("heart"), (255, 0, 0))]
    if "lung_right_visible" in s.masks:
        layers.append((s.clean("lung_right_visible"), (0, 255, 255)))
    if lungs is not None:
        h = human_subject(s, lungs)
        if h is not None:
            layers += [(h.mask("lung_right"), (255, 255, 0)), (h.mask("lung_left"), (255, 200, 0))]
    for m, c in layers:
        rgb[ndimage.binary_dilation(edge(m))] = c
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    top = top_row(s.clean("lung_right")) or 0
    w = rgb.shape[1]
    for mm, c in ((row.get("depth"), (255, 0, 0)), (row.get("lung_low"), (0, 255, 0))):
        if mm is not None:
            y = top + mm / s.sy
            d.line([(0, y), (w // 2, y)], fill=c)
    d.line([(0, top), (w // 2, top)], fill=(255, 255, 255))
    d.text(
        (4, 4),
        f"now {row['status_now']} {row.get('ribs_now')}  cand {row.get('status_cand')} "
        f"{row.get('ribs_cand_raw', float('nan')):.2f}",
        fill=(255, 0, 255),
    )
    im.save(out / (row["file"].replace("/", "__") + ".png"))


def synth_offsets(set_dir: Path, pred_dir: Path | None, cfg: RulesConfig) -> dict[str, Any]:
    """On synthetic frontals: lung_low on the whole right lung minus on its visible part
    (exact masks: the recess below the dome the V7 masks leave out), and the model's errors
    against the exact masks (whole, visible) on the same films."""
    rows = []
    for smp in study_samples(set_dir, View.FRONTAL):
        got = film_subject(smp, cfg, None)
        if got is None:
            continue
        _, s = got
        raw = load_masks(smp.masks)
        if "lung_right_visible" not in raw:
            continue
        vis_full = raw["lung_right_visible"]
        if row_extent(raw["lung_right"]) != row_extent(s.mask("lung_right")):
            vis_full = vis_full[::-1]
        o = s.stride // 2
        vis = despeckle(np.ascontiguousarray(vis_full[o :: s.stride, o :: s.stride]))
        whole = s.clean("lung_right")
        w_rel, w_abs = low_outline(s, whole)
        v_rel, v_abs = low_outline(s, vis)
        r: dict[str, Any] = {"id": smp.id, "whole": w_rel, "vis": v_rel, "whole_abs": w_abs}
        r["vis_abs"] = v_abs
        if pred_dir is not None:
            mg = film_subject(smp, cfg, pred_dir)
            if mg is not None:
                _, ms = mg
                r["model_whole"], r["model_whole_abs"] = low_outline(ms, ms.clean("lung_right"))
                md = dome_depth(ms, ms.clean("lung_right"))
                if md is not None:
                    r["model_depth"] = md[0]
                if "lung_right_visible" in ms.masks:
                    mv = ms.clean("lung_right_visible")
                    r["model_vis"], r["model_vis_abs"] = low_outline(ms, mv)
                    r["model_vis_dome"] = dome_below_apex(ms, mv)
        rows.append(r)
    return {"rows": rows}


def dist(xs: list[float] | list[float | None]) -> str:
    a = np.array([x for x in xs if x is not None], dtype=float)
    if not a.size:
        return "n 0"
    q = np.percentile(a, [0, 25, 50, 75, 100])
    worst = a[np.argmax(np.abs(a))]
    return (
        f"n {a.size}: median {q[2]:+.1f}, IQR [{q[1]:+.1f}, {q[3]:+.1f}], "
        f"min {q[0]:+.1f}, max {q[4]:+.1f}, worst |.| {worst:+.1f}, mean {a.mean():+.1f}, "
        f"sd {a.std():.1f}, median |.| {np.median(np.abs(a)):.1f}"
    )


def diff(rows: list[dict[str, Any]], a: str, b: str) -> list[float]:
    return [r[a] - r[b] for r in rows if r.get(a) is not None and r.get(b) is not None]


def shifts(rows: list[dict[str, Any]]) -> None:
    """How the two rules rank the films against the reference (correlation, residual sd),
    and their pass/problem agreement with it under a constant shift: separates a level
    offset (the same for every film) from information about the film."""
    keep = [
        r
        for r in rows
        if all(r.get(k) is not None for k in ("ribs_now_raw", "ribs_cand_raw", "ribs_ref_raw"))
    ]
    ref = np.array([r["ribs_ref_raw"] for r in keep])
    for key in ("ribs_now_raw", "ribs_cand_raw"):
        x = np.array([r[key] for r in keep])
        agree = {
            sh: int(np.sum((np.round(x + sh) < 10) == (np.round(ref) < 10)))
            for sh in (-0.5, -0.3, 0.0, 0.3, 0.5)
        }
        print(
            f"   {key:14s} r {np.corrcoef(x, ref)[0, 1]:.2f}, residual sd {np.std(x - ref):.2f}; "
            f"agreement with a shift of {agree} of {len(keep)}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", type=Path, required=True, help="the model's masks per film (npz)")
    ap.add_argument("--pictures", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--synth", type=Path, default=None, help="a synthetic set (train split)")
    ap.add_argument("--synth-pred", type=Path, default=None, help="its cached model masks")
    args = ap.parse_args(argv)
    cfg = load_config()
    out: dict[str, Any] = {"candidate": CANDIDATE}
    rows = []
    for path, lungs, image, pred in predictions(args.cache):
        row = measure_real(path, lungs, image, pred, cfg)
        if row is None:
            print(f"{path.name}: read as {pred.view}, skipped")
            continue
        rows.append(row)
        if args.pictures is not None:
            args.pictures.mkdir(parents=True, exist_ok=True)
            picture(args.pictures, image, build_subject(image, pred, cfg), row, lungs)
    out["real"] = rows
    hum = [r for r in rows if r.get("human_lung_low") is not None]
    print(f"real frontals read frontal: {len(rows)}; with a human lung mask: {len(hum)}")
    print(
        "model whole lung_low - human lung_low (mm):", dist(diff(hum, "lung_low", "human_lung_low"))
    )
    print(
        "  same, lower outline's row only (no apex):",
        dist(diff(hum, "lung_low_abs", "human_lung_low_abs")),
    )
    print("  apex (model top - human top, mm):", dist([r.get("apex_err") for r in hum]))
    print("model visible lung_low - human lung_low:", dist(diff(hum, "vis_low", "human_lung_low")))
    print("  same, outline row only:", dist(diff(hum, "vis_low_abs", "human_lung_low_abs")))
    print("spread across real films: model lung_low", dist([r.get("lung_low") for r in hum]))
    print("                          human lung_low", dist([r.get("human_lung_low") for r in hum]))
    print("                          model heart_h", dist([r.get("heart_h") for r in rows]))
    print(
        "model heart depth - human dome depth (synthetic: +41.6 +- 13.2 model, +40.1 +- 13.0 "
        "exact):",
        dist(diff(hum, "depth", "human_dome")),
    )
    print("model visible dome - human dome:", dist(diff(hum, "vis_dome", "human_dome")))
    print("the model alone, every real frontal:")
    print("   whole - visible lung_low:", dist(diff(rows, "lung_low", "vis_low")))
    print("   heart depth - visible dome:", dist(diff(rows, "depth", "vis_dome")))
    ch = diff(hum, "ribs_cand_raw", "human_ribs_cand_raw")
    print("candidate ribs (model masks - human lungs, model heart):", dist(ch))
    if args.synth is not None:
        syn = synth_offsets(args.synth, args.synth_pred, cfg)["rows"]
        out["synth"] = syn
        print(f"\nsynthetic {args.synth.name} frontals: {len(syn)}")
        print("exact whole - exact visible lung_low:", dist(diff(syn, "whole", "vis")))
        print("  outline row only:", dist(diff(syn, "whole_abs", "vis_abs")))
        print("model whole - exact visible:", dist(diff(syn, "model_whole", "vis")))
        print("model whole - exact whole:", dist(diff(syn, "model_whole", "whole")))
        print("  outline row only:", dist(diff(syn, "model_whole_abs", "whole_abs")))
        print("model visible - exact visible:", dist(diff(syn, "model_vis", "vis")))
        print("the model alone:")
        print("   whole - visible lung_low:", dist(diff(syn, "model_whole", "model_vis")))
        print("   heart depth - visible dome:", dist(diff(syn, "model_depth", "model_vis_dome")))
        print("spread: exact whole lung_low", dist([r.get("whole") for r in syn]))
    both = [r for r in rows if r.get("status_cand") is not None]
    moved = [r for r in both if (r["status_now"] in PROBLEM) != (r["status_cand"] in PROBLEM)]
    print(f"\nverdicts on {len(rows)} real frontals ({len(both)} with both):")
    for k in ("pass", "warn", "fail", "not_evaluable"):
        print(
            f"   {k:14s} now {sum(r['status_now'] == k for r in rows):3d}  "
            f"candidate {sum(r.get('status_cand', r['status_now']) == k for r in rows):3d}"
        )
    print(
        f"   pass/problem changes: {len(moved)}; status changes: "
        f"{sum(r['status_now'] != r['status_cand'] for r in both)}"
    )
    for r in both:
        if r["status_now"] != r["status_cand"]:
            print(
                f"   {r['file']:45s} now {r['status_now']:5s} ({r['ribs_now']}) cand "
                f"{r['status_cand']:5s} ({r['ribs_cand_raw']:.2f}) lung_low "
                f"{r['lung_low']:.0f} human {r.get('human_lung_low') or float('nan'):.0f} "
                f"heart_h {r['heart_h']:.0f} depth {r['depth']:.0f} sp {r['spacing']}"
            )
    print("rule - reference (ribs, unrounded):")
    print("   now      ", dist(diff(hum, "ribs_now_raw", "ribs_ref_raw")))
    print("   candidate", dist(diff(hum, "ribs_cand_raw", "ribs_ref_raw")))
    shifts(hum)
    ref = [r for r in both if r.get("status_ref") is not None]
    print(f"\nagainst the human-mask reference ({len(ref)} films; pass/problem agreement):")
    for key in ("status_now", "status_cand", "status_cand_h"):
        ok = [r for r in ref if r.get(key) is not None]
        agree = sum((r[key] in PROBLEM) == (r["status_ref"] in PROBLEM) for r in ok)
        print(f"   {key:14s} {agree}/{len(ok)}")
    for r in ref:
        if (r["status_now"] in PROBLEM) != (r["status_cand"] in PROBLEM):
            right = (r["status_cand"] in PROBLEM) == (r["status_ref"] in PROBLEM)
            print(
                f"   {r['file']:45s} now {r['status_now']} cand {r['status_cand']} ref "
                f"{r['status_ref']} ({r['ribs_ref']}): candidate {'right' if right else 'wrong'}"
            )
    print(
        "   reference verdicts:",
        {k: sum(r["status_ref"] == k for r in ref) for k in ("pass", "warn", "fail")},
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
