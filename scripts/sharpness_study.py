"""No-reference sharpness measures against the synthetic blur truth (train-split sets only).

Why: `exposure.sharpness` (heart-border edge width) agrees with the truth (FWHM of motion
and extra blur > 3 mm) on ~77 % of films, the pass prevalence. This script measures several
candidates on every frontal film of a set with its exact masks, prints their correlation
with the truth's blur and a 2-fold threshold accuracy split by pose (chosen on one half of
the poses, scored on the other, both ways), against the prevalence baseline.

    .venv/bin/python scripts/sharpness_study.py data/synth/sharp-cal6 --rows /tmp/rows.json
    .venv/bin/python scripts/sharpness_study.py data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s5/rules-cal5-f      # a model's cached masks instead
    .venv/bin/python scripts/sharpness_study.py x --real ../shared/data/realcxr/frontal

Measures (working grid, upright, MONOCHROME2; pixel values as the rules see them):
- ``rule``: the heart-border edge width (mm; the rule's method up to session 6);
- ``dome``: the same edge width on vertical profiles across the diaphragm domes;
- ``band_*``: log energy ratios of difference-of-Gaussian bands inside the aerated lungs
  (fine bands over coarse ones; ``nc`` = white noise's share subtracted, the noise taken
  as the rule's `region_noise`);
- ``dir_x`` / ``dir_y`` / ``dir_min``: fine-over-coarse derivative energy along the rows,
  the columns, and the smaller of the two (motion lowers it along its direction only);
- ``R_{h,v,all}{tag}``: the median fine/coarse gradient-magnitude ratio at the strongest
  coarse-gradient maxima inside the lungs and heart, per gradient orientation (h: gradient
  along the rows, i.e. vertical edges; v: along the columns), for several scale pairs (px)
  and edge quantiles (the exploration behind the rule's measure);
- ``grad_fwhm``: the rule's measure (`exposure.edge_sharpness`: R_h at 1.0 / 2.8 mm turned
  into an apparent edge FWHM in mm);
- ``shutter``: the largest step between the first and second exposed line along a shutter
  edge (only the system blur since generator v1.12; motion must not show there).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from study_stats import corr, film_subject, measured, study_parser, study_samples, two_fold

from qcnode.imaging import decode
from qcnode.records import View
from qcnode.rules import build_subject, load_config
from qcnode.rules.exposure import (
    _edge_width,
    edge_sharpness,
    gradient_maxima,
    region_noise,
    sharpness,
)
from qcnode.rules.geometry import Subject

Array = npt.NDArray[np.float64]
SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0)  # px: band k = G(σk−1) − G(σk), band 0 = I − G(0.5)


def _white_share(sig_lo: float, sig_hi: float) -> float:
    """Variance share of a unit white noise in the band G(sig_lo) − G(sig_hi) (2-D)."""
    d = np.zeros((65, 65))
    d[32, 32] = 1.0
    lo = d if sig_lo <= 0 else ndimage.gaussian_filter(d, sig_lo)
    return float(np.sum((lo - ndimage.gaussian_filter(d, sig_hi)) ** 2))


def lung_roi(s: Subject) -> npt.NDArray[np.bool_]:
    """Aerated lung inside the field, away from the heart, spine and field edge."""
    other = s.mask("heart") | s.mask("spine") | s.mask("clavicles") | s.mask("scapulae")
    roi = s.lungs & ~ndimage.binary_dilation(other, iterations=3)
    return ndimage.binary_erosion(roi & s.field, iterations=4)


def band_measures(s: Subject, roi: npt.NDArray[np.bool_]) -> dict[str, float]:
    """Band energies (log) and fine/coarse ratios, raw and noise-corrected."""
    img = s.pixels.astype(np.float64)
    levels = [img] + [ndimage.gaussian_filter(img, g) for g in SIGMAS]
    noise = region_noise(s, roi) or 0.0
    out: dict[str, float] = {"noise": noise}
    e: list[float] = []
    enc: list[float] = []
    prev = 0.0
    for k, sig in enumerate(SIGMAS):
        band = levels[k] - levels[k + 1]
        ek = float(np.mean(band[roi] ** 2))
        e.append(ek)
        enc.append(max(ek - noise**2 * _white_share(prev, sig), 1e-12))
        prev = sig
    for k in range(len(SIGMAS)):
        out[f"e{k}"] = math.log(max(e[k], 1e-12))
    # noise from the finest band (anatomy is smooth at the pixel: voxels 1.4 mm, detector)
    n2 = e[0] / _white_share(0.0, SIGMAS[0])
    out["noise0"] = math.sqrt(n2)
    e0c = [
        max(ek - n2 * _white_share(lo, hi), 1e-12)
        for ek, lo, hi in zip(e, (0.0, *SIGMAS[:-1]), SIGMAS, strict=True)
    ]
    for a, b in ((1, 3), (2, 3), (2, 4), (1, 4)):
        out[f"band_{a}{b}_n0"] = math.log(e0c[a] / e0c[b])
    out["snr_2"] = math.log(e0c[2] / max(n2, 1e-12))
    for a, b in ((1, 3), (1, 4), (2, 3), (2, 4), (0, 3), (1, 2)):
        out[f"band_{a}{b}"] = math.log(max(e[a], 1e-12) / max(e[b], 1e-12))
        out[f"band_{a}{b}_nc"] = math.log(enc[a] / enc[b])
    # directional derivative energies: fine (G 0.7) over coarse (G 2.8, scaled by σ²)
    fine = ndimage.gaussian_filter(img, 0.7)
    coarse = ndimage.gaussian_filter(img, 2.8)
    d = np.zeros((65, 65))
    d[32, 32] = 1.0
    for name, axis in (("x", 1), ("y", 0)):
        df = np.diff(fine, axis=axis)
        dc = np.diff(coarse, axis=axis)
        r = roi[:, 1:] & roi[:, :-1] if axis == 1 else roi[1:] & roi[:-1]
        ef, ec = float(np.mean(df[r] ** 2)), float(np.mean(dc[r] ** 2))
        out[f"dir_{name}"] = math.log(max(ef, 1e-12) / max(ec, 1e-12))
        wf = float(np.sum(np.diff(ndimage.gaussian_filter(d, 0.7), axis=axis) ** 2))
        wc = float(np.sum(np.diff(ndimage.gaussian_filter(d, 2.8), axis=axis) ** 2))
        out[f"dir_{name}_n0"] = math.log(max(ef - n2 * wf, 1e-12) / max(ec - n2 * wc, 1e-12))
    out["dir_min"] = min(out["dir_x"], out["dir_y"])
    out["dir_min_n0"] = min(out["dir_x_n0"], out["dir_y_n0"])
    out["dir_aniso"] = abs(out["dir_x"] - out["dir_y"])
    return out


def dome_width(s: Subject) -> float | None:
    """Edge width (mm) on vertical profiles from lung down across the hemidiaphragms."""
    half = max(3, round(15.0 / s.sy))
    widths = []
    for side in ("lung_right", "lung_left"):
        lung = s.clean(side) if s.mask(side).any() else s.mask(side)
        cols = np.flatnonzero(lung.any(axis=0))
        if cols.size < 10:
            continue
        c0, c1 = cols[0] + cols.size // 4, cols[-1] - cols.size // 4
        profiles = []
        for c in range(int(c0), int(c1) + 1):
            rows = np.flatnonzero(lung[:, c])
            if rows.size == 0:
                continue
            r = int(rows[-1])
            r0, r1 = r - half, r + half + 1
            if r0 < 0 or r1 > s.shape[0] or not s.field[r0:r1, c].all():
                continue
            if s.mask("heart")[r0:r1, c].any():
                continue
            profiles.append(s.pixels[r0:r1, c].astype(np.float64))
        if len(profiles) >= 5:
            w = _edge_width(np.mean(profiles, axis=0), s.sy)
            if w is not None:
                widths.append(w)
    return float(np.mean(widths)) if widths else None


RATIO_SETS = (  # (fine px, coarse px, edge quantile, tag)
    (0.7, 2.0, 0.8, ""),
    (0.7, 2.0, 0.95, "_q95"),
    (2.0, 4.0, 0.8, "_24"),
    (0.7, 1.4, 0.8, "_714"),
)


def edge_ratios(s: Subject, fine: float, coarse: float, q: float, tag: str) -> dict[str, float]:
    """Median fine/coarse gradient ratio at strong edge maxima, per gradient orientation."""
    img = s.pixels.astype(np.float64)
    region = ndimage.binary_dilation(s.lungs | s.mask("heart"), iterations=3)
    region &= ndimage.binary_erosion(s.field, iterations=6)
    gf = [ndimage.sobel(ndimage.gaussian_filter(img, fine), axis=a) / 8.0 for a in (0, 1)]
    gc = [ndimage.sobel(ndimage.gaussian_filter(img, coarse), axis=a) / 8.0 for a in (0, 1)]
    mc, mf = np.hypot(gc[1], gc[0]), np.hypot(gf[1], gf[0])
    ang = np.degrees(np.arctan2(gc[0], gc[1])) % 180
    cand = region & gradient_maxima(mc, gc[0], gc[1]) & (mc > 0)
    out: dict[str, float] = {}
    if cand.sum() < 50:
        return out
    edge = cand & (mc >= np.quantile(mc[cand], q))
    noise = region_noise(s, lung_roi(s)) or 0.0
    d = np.zeros((33, 33))
    d[16, 16] = 1.0
    wa = float(np.sum((ndimage.sobel(ndimage.gaussian_filter(d, fine), 1) / 8) ** 2))
    sel_h = (ang < 30) | (ang >= 150)
    for name, sel in (("h", sel_h), ("v", (ang >= 60) & (ang < 120)), ("all", ang >= 0)):
        e = edge & sel
        if e.sum() >= 8:
            ra2 = np.maximum(mf[e] ** 2 - noise**2 * wa, 1e-12)
            out[f"R_{name}{tag}"] = float(np.median(np.sqrt(ra2) / mc[e]))
    return out


def shutter_step(s: Subject) -> float | None:
    """Largest first-minus-second exposed line step over the shutter edges (or None)."""
    f = s.field
    rows = np.flatnonzero(f.any(axis=1))
    cols = np.flatnonzero(f.any(axis=0))
    if rows.size < 20 or cols.size < 20:
        return None
    p = s.pixels.astype(np.float64)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    ri = slice(r0 + (r1 - r0) // 5, r1 - (r1 - r0) // 5)
    ci = slice(c0 + (c1 - c0) // 5, c1 - (c1 - c0) // 5)
    steps = []
    h, w = s.shape
    if r0 > 1:
        steps.append(float(np.mean(p[r0, ci] - p[r0 + 1, ci])))
    if r1 < h - 2:
        steps.append(float(np.mean(p[r1, ci] - p[r1 - 1, ci])))
    if c0 > 1:
        steps.append(float(np.mean(p[ri, c0] - p[ri, c0 + 1])))
    if c1 < w - 2:
        steps.append(float(np.mean(p[ri, c1] - p[ri, c1 - 1])))
    return max(steps) if steps else None


def measure(smp: Any, cfg: Any, pred_dir: Path | None = None) -> dict[str, Any] | None:
    """Every measure of one film, on its exact masks or on a model's cached masks."""
    film = film_subject(smp, cfg, pred_dir)
    if film is None:
        return None
    _, s = film
    # the heart-border edge width (the rule's method up to session 6)
    edge_cfg = replace(cfg, exposure=replace(cfg.exposure, sharpness_method="edge_width"))
    ex = smp.truth["params"]["exposure"]
    tr = smp.truth["rules"]["exposure.sharpness"]
    a = math.radians(float(ex["motion_angle_deg"]))
    m = float(ex["motion_blur_mm"])
    row: dict[str, Any] = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "fail": tr["status"] == "fail",
        "blur": float(tr["value"]),
        "motion": m,
        "motion_x": m * abs(math.cos(a)),
        "motion_y": m * abs(math.sin(a)),
        "extra_fwhm": 2.355 * float(ex["extra_blur_mm"]),
        "unsharp": float(ex["unsharp"]),
        "di": float(ex["deviation_index"]),
        "rule": sharpness(s, edge_cfg).value,
        "dome": dome_width(s),
        "shutter": shutter_step(s),
    }
    es = edge_sharpness(s)
    row["grad_fwhm"] = None if es is None else es[0]
    for fine, coarse, q, tag in RATIO_SETS:
        row.update(edge_ratios(s, fine, coarse, q, tag))
    roi = lung_roi(s)
    if roi.sum() >= 200:
        row.update(band_measures(s, roi))
    return row


SINGLE = [
    "grad_fwhm",
    "R_h",
    "R_v",
    "R_all",
    "R_h_q95",
    "R_all_q95",
    "R_h_24",
    "R_all_24",
    "R_h_714",
    "R_all_714",
    "rule",
    "dome",
    "shutter",
    "noise",
    "e0",
    "e1",
    "e2",
    "band_13",
    "band_13_nc",
    "band_14",
    "band_14_nc",
    "band_23",
    "band_23_nc",
    "band_24",
    "band_24_nc",
    "band_03",
    "band_03_nc",
    "band_12",
    "band_12_nc",
    "dir_x",
    "dir_y",
    "dir_min",
    "dir_aniso",
    "noise0",
    "band_13_n0",
    "band_23_n0",
    "band_24_n0",
    "band_14_n0",
    "snr_2",
    "dir_x_n0",
    "dir_y_n0",
    "dir_min_n0",
]
COMBOS = [
    ["R_h", "R_v", "R_all_24"],
    ["R_h", "R_all_24", "noise0"],
    ["band_13_nc", "band_24_nc", "noise", "dir_min"],
    ["band_13_n0", "band_24_n0", "noise0", "dir_min_n0"],
    ["e0", "e1", "e2", "e3", "e4", "noise"],
    ["e0", "e1", "e2", "e3", "e4", "noise", "dir_x", "dir_y", "rule", "dome"],
]


def fixed(rows: list[dict[str, Any]], key: str, threshold: float) -> str:
    """Accuracy of ``key > threshold`` with no fitting (a threshold chosen on another set)."""
    ok = [r for r in rows if r.get(key) is not None]
    y = np.array([r["fail"] for r in ok])
    p = np.array([float(r[key]) > threshold for r in ok])
    return (
        f"{key} > {threshold} (fixed): n {len(ok)} acc {100 * np.mean(p == y):.1f} "
        f"sens {100 * np.mean(p[y]):.1f} spec {100 * np.mean(~p[~y]):.1f} "
        f"base {100 * np.mean(~y):.1f}"
    )


def report(rows: list[dict[str, Any]], threshold: float = 5.6) -> None:
    y = np.array([r["fail"] for r in rows])
    print(
        f"{len(rows)} films, {len({r['pose'] for r in rows})} poses, "
        f"truth fail {100 * y.mean():.1f} %"
    )
    print(
        f"{'measure':12s} {'r blur':>7s} {'r motion':>8s} {'r mot_x':>7s} {'r mot_y':>7s} "
        f"{'r extra':>7s} {'n':>4s} {'acc':>6s} {'sens':>6s} {'base':>6s}"
    )
    for k in SINGLE:
        c = [corr(rows, k, t) for t in ("blur", "motion", "motion_x", "motion_y", "extra_fwhm")]
        f = two_fold(rows, [k])
        cs = " ".join(f"{v:7.2f}" if v is not None else "      -" for v in c)
        print(f"{k:12s} {cs} {f['n']:4d} {f['acc']:6.1f} {f['sens']:6.1f} {f['baseline']:6.1f}")
    print(fixed(rows, "grad_fwhm", threshold))
    for keys in COMBOS:
        f = two_fold(rows, keys)
        print(
            f"logistic[{','.join(keys)}]: n {f['n']} acc {f['acc']:.1f} "
            f"sens {f['sens']:.1f} base {f['baseline']:.1f}"
        )


def real_films(films: Path, threshold: float) -> None:
    """The measure on real frontal films with the default model's masks (evaluation only).

    Real archive films are mostly sharp: the share read above the threshold is a false-alarm
    estimate (and shows whether the synthetic calibration transfers at all).
    """
    from qcnode.model.infer import load_predictor

    cfg = load_config()
    edge_cfg = replace(cfg, exposure=replace(cfg.exposure, sharpness_method="edge_width"))
    predictor = load_predictor(device="cpu")
    vals: list[float] = []
    widths: list[float] = []
    for path in sorted(films.glob("*.png")):
        if path.stem.endswith("_lungs"):
            continue
        image = decode(path)
        pred = predictor.predict([image])[0]
        if pred.view is not View.FRONTAL:
            continue
        s = build_subject(image, pred, cfg)
        es = edge_sharpness(s)
        w = sharpness(s, edge_cfg)
        print(
            f"{path.name:40s} px {s.sx:.2f} mm  grad_fwhm "
            f"{'-' if es is None else f'{es[0]:.2f}'}  edge_width {w.value}"
        )
        if es is not None:
            vals.append(es[0])
        if w.value is not None:
            widths.append(w.value)
    v = np.array(vals)
    print(
        f"{len(v)} real frontals: grad_fwhm p10/50/90 "
        f"{np.quantile(v, [0.1, 0.5, 0.9]).round(2).tolist()}, max {v.max():.2f}, "
        f"> {threshold}: "
        f"{int(np.sum(v > threshold))}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(__doc__)
    ap.add_argument("--view", default="frontal", choices=("frontal", "lateral"))
    ap.add_argument("--real", type=Path, help="also read real frontal films (PNG) in DIR")
    ap.add_argument("--threshold", type=float, default=5.6, help="grad_fwhm limit (mm)")
    args = ap.parse_args(argv)
    if args.real:
        real_films(args.real, args.threshold)
        return 0
    cfg = load_config()
    samples = study_samples(args.set_dir, View(args.view))[: args.limit]
    rows = measured(args.rows, samples, lambda smp: measure(smp, cfg, args.pred), every=40)
    report(rows, args.threshold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
