"""Frontal `positioning.scapulae` measures against the synthetic truth (train-split sets only).

Why: the rule (widest row-wise overlap of the scapula and lung masks > 10 mm) is right on
99.7 % of films with exact masks but on ~78 % with the shipped model's masks, whose scapulae
sit where a scapula usually is (docs/MODEL.md "Known limits"). This script measures
candidates that read the intrusion from the image plus roughly placed masks, on every
frontal film with its exact masks and with a model's cached masks (same film, same row),
prints their correlation with the truth's value and a 2-fold accuracy split by pose
(threshold, or a logistic on several measures, chosen on one half of the poses and scored
on the other, both ways) against the prevalence baseline.

    .venv/bin/python scripts/scapulae_study.py data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s5/rules-cal5-f --rows /tmp/scap-rows.json

Measures per side (the film's value is the larger side), with ``m`` = the mask set
(``x`` exact, ``p`` the model's):
- ``{m}_overlap``: the rule's widest row-wise overlap of scapula and lung (mm);
- ``{m}_area``: the overlap's area (mm²);
- ``{m}_medial``: the scapula mask's medial border measured from the lung's lateral border,
  row by row (positive = medial of the wall, i.e. over the lung; mm, largest over rows);
- ``{m}_medial_q``: the same, 75th percentile over the rows where both exist;
- ``{m}_edge_d`` / ``{m}_edge_e``: from the image: horizontal profiles in the upper 60 % of
  each lung, from the lung's lateral border medially (smoothed, σ 1.5 mm), the brightness
  drop per mm (bone over lung ends in a drop when walking medially) averaged over rows at
  each distance from the wall; the distance (mm) and the height (in units of the lung's
  median gradient) of the strongest drop 6–90 mm medial of the wall;
- ``{m}_prior_e``: the image drop averaged along the scapula mask's own medial border
  (± 3 mm) over lung rows, in the same units (does the mask's border sit on an edge?);
- ``{m}_step``: the mean brightness 0–12 mm lateral of the mask's medial border minus
  12–24 mm medial of it, over lung rows, in units of the lung's brightness spread;
- ``{m}_scap_area`` / ``reach`` / ``centroid`` / ``low``: the mask's area, its medial-most
  point and centroid measured from the lung's outermost column, its lowest row below the
  lung top (the mask's geometry read differently from the overlap);
- ``{m}_strip``: upper lateral lung strip (3–25 mm from the wall) minus a strip 35–60 mm in;
- ``{m}_line_*``: the strongest sheared straight edge in (row, distance from the wall);
- ``{m}_slide_*``: the mask's medial border curve slid sideways onto the strongest edge;
- ``{m}_tm_*``: the mask's whole outline slid sideways as a matched filter.
Also printed: the within-pose r of each measure; ``--aligned`` prints the drop profile
averaged along the exact medial border (is the border visible at all?).
Results and conclusions: docs/RULES.md "Session 6 (helper): frontal positioning.scapulae".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cache_predictions import load_prediction
from scipy import ndimage
from study_stats import corr, measured, study_parser, study_samples, subject, two_fold

from qcnode.evaluate import load_masks
from qcnode.imaging import decode
from qcnode.records import View
from qcnode.rules import build_subject, load_config
from qcnode.rules.completeness import SIDES, lateral_sign
from qcnode.rules.geometry import Subject
from qcnode.testing import FakePredictor

Array = npt.NDArray[np.float64]
NONE_MM = -100.0  # "no scapula over any lung row": far lateral
TREND_MM = 6.0  # σ of the brightness trend removed along each profile
WALL_SKIP_MM = 10.0  # the chest wall's own edge lies within a few mm of the lung mask
SLIDE_RANGE_MM = 45.0  # how far the mask's border may be slid either way
SLIDE_MAX_MM = 70.0  # farthest border position medial of the wall that is scored


def side_measures(s: Subject, side: str, smooth: Array, grad_scale: float) -> dict[str, float]:
    """Every measure of one side (see the module docstring)."""
    lung = s.mask(f"lung_{side}") & s.field
    scap = s.mask(f"scapula_{side}")
    sign = lateral_sign(s, side)  # +1: lateral = +columns
    out: dict[str, float] = {}
    overlap = scap & lung
    per_row = overlap.sum(axis=1)
    out["overlap"] = float(per_row.max()) * s.sx if per_row.size else 0.0
    out["area"] = s.area_mm2(overlap)
    rows = np.flatnonzero(lung.any(axis=1))
    if rows.size < 10:
        return out
    top, bottom = int(rows[0]), int(rows[-1])
    upper = range(top, top + int(0.6 * (bottom - top)) + 1)
    medial: list[float] = []
    kmax = round(90.0 / s.sx)
    prof_sum = np.zeros(kmax)
    prof_n = np.zeros(kmax)
    prior_e: list[float] = []
    step: list[float] = []
    drops: list[Array] = []
    valid: list[npt.NDArray[np.bool_]] = []
    lung_vals = s.pixels[lung]
    spread = float(np.subtract(*np.quantile(lung_vals, [0.9, 0.1]))) or 1.0
    w = s.shape[1]
    for r in upper:
        cols = np.flatnonzero(lung[r])
        if cols.size < 5:
            continue
        wall = int(cols.max()) if sign > 0 else int(cols.min())  # lateral-most lung column
        # profile from the wall medially: k px medial of it
        ks = np.arange(kmax)
        cc = wall - int(sign) * ks
        ok = (cc >= 1) & (cc < w - 1)
        cc = cc[ok]
        # drop per px walking medially: value at k minus value at k+1 (bright bone ends)
        drop = smooth[r, cc + int(sign)] - smooth[r, cc - int(sign)]
        drop = drop / 2.0 / grad_scale
        inside = lung[r, cc]
        dd = np.zeros(kmax)
        vv = np.zeros(kmax, dtype=bool)
        dd[: cc.size] = drop
        width = abs(int(cols.max()) - int(cols.min()))  # the lung's medial border rings too
        reach = min(width - WALL_SKIP_MM / s.sx, SLIDE_MAX_MM / s.sx)
        vv[: cc.size] = inside & (ks[: cc.size] <= reach)
        drops.append(dd)
        valid.append(vv)
        prof_sum[: cc.size] += np.where(inside, drop, 0.0)
        prof_n[: cc.size] += inside
        sc = np.flatnonzero(scap[r])
        if sc.size == 0:
            continue
        edge = int(sc.min()) if sign > 0 else int(sc.max())  # scapula's medial-most column
        medial.append(sign * (wall - edge) * s.sx)
        k0 = sign * (wall - edge)
        band = round(3.0 / s.sx)
        sel = (ks[: cc.size] >= k0 - band) & (ks[: cc.size] <= k0 + band) & inside
        if sel.any():
            prior_e.append(float(drop[sel].max()))
        n12 = round(12.0 / s.sx)
        lat = [edge + int(sign) * j for j in range(0, n12)]
        med = [edge - int(sign) * j for j in range(n12, 2 * n12)]
        lat = [c for c in lat if 0 <= c < w and lung[r, c]]
        med = [c for c in med if 0 <= c < w and lung[r, c]]
        if len(lat) >= 3 and len(med) >= 3:
            step.append((float(s.pixels[r, lat].mean()) - float(s.pixels[r, med].mean())) / spread)
    # the mask's own geometry, measured against the lung's lateral wall
    sc_rows = np.flatnonzero(scap.any(axis=1))
    out["scap_area"] = s.area_mm2(scap)
    lung_cols = np.flatnonzero(lung.any(axis=0))
    if sc_rows.size:
        wall_all = lung_cols.max() if sign > 0 else lung_cols.min()
        sc_cols = np.flatnonzero(scap.any(axis=0))
        med_all = sc_cols.min() if sign > 0 else sc_cols.max()
        out["reach"] = float(sign * (wall_all - med_all)) * s.sx
        _cr, cc0 = ndimage.center_of_mass(scap)
        out["centroid"] = float(sign * (wall_all - cc0)) * s.sx
        out["low"] = float(sc_rows[-1] - top) * s.sy
    else:
        out["reach"] = out["centroid"] = NONE_MM
        out["low"] = NONE_MM
    # density: the lateral strip of the upper lung against a strip farther in
    lat_v: list[float] = []
    med_v: list[float] = []
    for r in upper:
        cols = np.flatnonzero(lung[r])
        if cols.size < 5:
            continue
        wall = int(cols.max()) if sign > 0 else int(cols.min())
        for j in range(round(3 / s.sx), round(25 / s.sx)):
            c = wall - int(sign) * j
            if 0 <= c < w and lung[r, c]:
                lat_v.append(float(s.pixels[r, c]))
        for j in range(round(35 / s.sx), round(60 / s.sx)):
            c = wall - int(sign) * j
            if 0 <= c < w and lung[r, c]:
                med_v.append(float(s.pixels[r, c]))
    if len(lat_v) > 20 and len(med_v) > 20:
        out["strip"] = (float(np.mean(lat_v)) - float(np.mean(med_v))) / spread
    if medial:
        out["medial"] = max(medial)
        out["medial_q"] = float(np.quantile(medial, 0.75))
    else:
        out["medial"] = out["medial_q"] = NONE_MM
    if len(drops) >= 20:
        out.update(oblique_line(np.array(drops), np.array(valid), s.sx))
    enough = prof_n >= 5
    k6 = round(6.0 / s.sx)
    if enough[k6:].any():
        prof = np.where(enough, prof_sum / np.maximum(prof_n, 1), -np.inf)
        prof[:k6] = -np.inf
        k = int(np.argmax(prof))
        out["edge_d"] = k * s.sx
        out["edge_e"] = float(prof[k])
    out["prior_e"] = float(np.median(prior_e)) if prior_e else 0.0
    out["step"] = float(np.median(step)) if step else 0.0
    return out


def slide_border(s: Subject, side: str, smooth: Array, grad_scale: float) -> dict[str, float]:
    """The mask's medial border curve slid sideways onto the image's strongest edge.

    The model draws a scapula of the right shape where a scapula usually is: its medial
    border's course (row by row) is plausible, its position is not. The curve is shifted by
    δ (−60…+60 mm, positive = medially) and scored by the mean detrended brightness drop
    (walking medially) along it, over lung rows more than ``WALL_SKIP_MM`` inside the wall.
    Returns the best score (``slide_e``), its shift (``slide_delta``, mm) and the shifted
    border's largest distance medial of the lung wall (``slide_d``, mm; the ``medial``
    measure on the shifted curve).
    """
    lung = s.mask(f"lung_{side}") & s.field
    scap = s.mask(f"scapula_{side}")
    sign = int(lateral_sign(s, side))
    rows = np.flatnonzero(scap.any(axis=1) & lung.any(axis=1))
    if rows.size < 10:
        return {}
    w = s.shape[1]
    drop = (np.roll(smooth, -sign, axis=1) - np.roll(smooth, sign, axis=1)) / 2.0 / grad_scale
    drop = drop - ndimage.gaussian_filter1d(drop, TREND_MM / s.sx, axis=1, mode="nearest")
    edge = np.array(
        [np.flatnonzero(scap[r]).min() if sign > 0 else np.flatnonzero(scap[r]).max() for r in rows]
    )
    wall = np.array(
        [np.flatnonzero(lung[r]).max() if sign > 0 else np.flatnonzero(lung[r]).min() for r in rows]
    )
    inner = np.array(  # the lung's medial border: its rise rings through the detrending
        [np.flatnonzero(lung[r]).min() if sign > 0 else np.flatnonzero(lung[r]).max() for r in rows]
    )
    skip = WALL_SKIP_MM / s.sx
    best = (-np.inf, 0, 0.0)
    lim = round(SLIDE_RANGE_MM / s.sx)
    for delta in range(-lim, lim + 1):
        cols = edge - sign * delta
        inb = (cols >= 1) & (cols < w - 1)
        c = np.clip(cols, 0, w - 1)
        ok = (
            inb
            & lung[rows, c]
            & (sign * (wall - cols) >= skip)
            & (sign * (cols - inner) >= skip)
            & (sign * (wall - cols) <= SLIDE_MAX_MM / s.sx)
        )
        if ok.sum() < max(10, 0.3 * rows.size):
            continue
        e = float(drop[rows[ok], c[ok]].mean())
        if e > best[0]:
            dist = sign * (wall - cols)
            best = (e, delta, float(dist[inb].max()) * s.sx)
    if not np.isfinite(best[0]):
        return {}
    return {"slide_e": best[0], "slide_delta": best[1] * s.sx, "slide_d": best[2]}


def outline_match(s: Subject, side: str, smooth: Array, grad_scale: float) -> dict[str, float]:
    """The mask's whole outline slid sideways onto the image's bone edges (matched filter).

    A bone brighter than its surroundings has an image gradient pointing into it all round
    its outline; the mask's inward normal (the gradient of the smoothed mask) dotted with the
    image gradient, averaged over the outline inside the field, scores a placement. The
    chest wall has the opposite polarity to the blade's lateral border, so it does not
    attract the template. Returns the best score (``tm_e``), its shift (``tm_delta``, mm,
    positive = medially) and the shifted mask's widest row overlap with the lung
    (``tm_overlap``, mm: the rule's measure on the moved mask).
    """
    scap = s.mask(f"scapula_{side}")
    lung = s.mask(f"lung_{side}")
    if scap.sum() < 50 or not lung.any():
        return {}
    sign = int(lateral_sign(s, side))
    soft = ndimage.gaussian_filter(scap.astype(np.float64), 2.0)
    ny, nx = np.gradient(soft)
    norm = np.hypot(ny, nx)
    ring = scap & ~ndimage.binary_erosion(scap, iterations=2)
    rr, cc = np.nonzero(ring & (norm > 1e-3))
    uy, ux = ny[rr, cc] / norm[rr, cc], nx[rr, cc] / norm[rr, cc]
    grads = np.gradient(smooth)
    gy: Array = np.asarray(grads[0])
    gx: Array = np.asarray(grads[1])
    field = s.field
    w = s.shape[1]
    best = (-np.inf, 0)
    lim = round(SLIDE_RANGE_MM / s.sx)
    for delta in range(-lim, lim + 1):
        c = cc - sign * delta
        ok = (c >= 0) & (c < w)
        ok[ok] &= field[rr[ok], c[ok]]
        if ok.sum() < 0.5 * rr.size:
            continue
        e = float(np.mean(gy[rr[ok], c[ok]] * uy[ok] + gx[rr[ok], c[ok]] * ux[ok])) / grad_scale
        if e > best[0]:
            best = (e, delta)
    if not np.isfinite(best[0]):
        return {}
    d = best[1]
    moved = np.zeros_like(scap)
    shift = -sign * d
    if shift >= 0:
        moved[:, shift:] = scap[:, : w - shift]
    else:
        moved[:, :shift] = scap[:, -shift:]
    per_row = (moved & lung & field).sum(axis=1)
    return {"tm_e": best[0], "tm_delta": d * s.sx, "tm_overlap": float(per_row.max()) * s.sx}


def oblique_line(drop: Array, valid: npt.NDArray[np.bool_], sx: float) -> dict[str, float]:
    """The strongest straight edge in (row, distance from the wall) space.

    The scapula's medial border runs obliquely (lower end more lateral); summing the
    medial brightness drop along sheared lines over the upper lung rows finds it where a
    per-row maximum would pick rib edges. Returns the line's mean drop (``line_e``), its
    distance from the wall at the middle row (``line_d``, mm) and its largest distance over
    the rows (``line_max``, mm).
    """
    n, kmax = drop.shape
    # the lung darkens steadily away from the wall (thicker lung): keep only local steps
    d = drop - ndimage.gaussian_filter1d(drop, TREND_MM / sx, axis=1, mode="nearest")
    d = np.where(valid, d, 0.0)
    mid = (n - 1) / 2.0
    best = (-np.inf, 0.0, 0.0)
    k6 = round(WALL_SKIP_MM / sx)
    rr = np.arange(n)
    for b in np.linspace(-1.2, 0.4, 17):  # px of distance per row (negative: lateral going down)
        for a in range(k6, kmax):
            k = np.round(a + b * (rr - mid)).astype(int)
            ok = (k >= k6) & (k < kmax)
            if ok.sum() < 0.5 * n:
                continue
            sel = valid[rr[ok], k[ok]]
            if sel.sum() < 0.4 * n:
                continue
            e = float(d[rr[ok], k[ok]][sel].mean())
            if e > best[0]:
                best = (e, a * sx, float(k[ok][sel].max()) * sx)
    if not np.isfinite(best[0]):
        return {}
    return {"line_e": best[0], "line_d": best[1], "line_max": best[2]}


PER_SIDE = ("edge_d", "edge_e", "medial", "prior_e", "step", "strip", "reach", "line_e", "line_d")


def film_measures(s: Subject) -> dict[str, float]:
    """The film's measures: the larger side's (the side read by ``overlap``'s larger value
    for the mask measures; each image measure's own larger side)."""
    img = s.pixels.astype(np.float64)
    smooth = ndimage.gaussian_filter(img, 1.5 / s.sx)
    gx = np.abs(ndimage.sobel(smooth, axis=1)) / 8.0
    lungs = s.lungs & s.field
    grad_scale = float(np.median(gx[lungs])) if lungs.any() else 1.0
    grad_scale = grad_scale or 1.0
    per = {side: side_measures(s, side, smooth, grad_scale) for side in SIDES}
    for side in SIDES:
        per[side].update(slide_border(s, side, smooth, grad_scale))
        per[side].update(outline_match(s, side, smooth, grad_scale))
    out: dict[str, float] = {}
    keys = set(per["right"]) | set(per["left"])
    for k in keys:
        vals = [per[sd][k] for sd in SIDES if k in per[sd]]
        out[k] = max(vals)
    for sd in SIDES:
        for k in PER_SIDE:
            if k in per[sd]:
                out[f"{k}_{sd}"] = per[sd][k]
    # edge distance on the side with the stronger edge
    cand = [per[sd] for sd in SIDES if "edge_e" in per[sd]]
    if cand:
        best = max(cand, key=lambda d: d["edge_e"])
        out["edge_d"] = best["edge_d"]
        out["edge_e"] = best["edge_e"]
    cand = [per[sd] for sd in SIDES if "slide_e" in per[sd]]
    if cand:
        best = max(cand, key=lambda d: d["slide_e"])
        for k in ("slide_e", "slide_d", "slide_delta"):
            out[k] = best[k]
    cand = [per[sd] for sd in SIDES if "tm_e" in per[sd]]
    if cand:
        best = max(cand, key=lambda d: d["tm_overlap"])
        for k in ("tm_e", "tm_delta", "tm_overlap"):
            out[k] = best[k]
    cand = [per[sd] for sd in SIDES if "line_e" in per[sd]]
    if cand:
        best = max(cand, key=lambda d: d["line_e"])
        for k in ("line_e", "line_d", "line_max"):
            out[k] = best[k]
    return out


def measure(smp: Any, cfg: Any, pred_dir: Path | None) -> dict[str, Any] | None:
    """One film's row: truth and the measures on exact (x_) and model (p_) masks."""
    image = decode(smp.dcm)
    tr = smp.truth["rules"]["positioning.scapulae"]
    shift = smp.truth["params"].get("scapula_shift_mm", {})
    row: dict[str, Any] = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "fail": tr["status"] == "fail",
        "truth": float(tr["value"] or 0.0),
        "shift": max(float(v) for v in shift.values()) if shift else None,
    }
    sets: list[tuple[str, Any]] = [("x", load_masks(smp.masks))]
    if pred_dir is not None:
        cached = pred_dir / f"{smp.id}.npz"
        if cached.is_file():
            view, masks = load_prediction(cached)
            if view is smp.view:
                sets.append(("p", masks))
    for tag, masks in sets:
        for k, v in film_measures(subject(image, smp.view, masks, cfg)).items():
            row[f"{tag}_{k}"] = v
    return row


def aligned_profile(samples: list[Any], cfg: Any, min_truth: float = 25.0, n: int = 60) -> None:
    """Is the medial border visible at all? The brightness drop (walking medially, σ 1.4 mm,
    in units of the lung's median horizontal gradient, each row's mean over ±20 px removed)
    averaged along the exact scapula's medial border, at offsets −20…+20 px from it, on the
    first ``n`` frontals whose truth exceeds ``min_truth`` mm (exact masks)."""
    half = 20
    acc = np.zeros(2 * half + 1)
    peaks: list[float] = []
    picked = [
        smp
        for smp in samples
        if float(smp.truth["rules"]["positioning.scapulae"]["value"] or 0.0) > min_truth
    ][:n]
    for smp in picked:
        image = decode(smp.dcm)
        masks = load_masks(smp.masks)
        pred = FakePredictor(source={image.meta.sop_instance_uid: (smp.view, masks)})
        s = build_subject(image, pred.predict([image])[0], cfg)
        sm = ndimage.gaussian_filter(s.pixels.astype(np.float64), 1.0)
        scale = float(np.median(np.abs(ndimage.sobel(sm, axis=1))[s.lungs] / 8.0)) or 1.0
        for side in SIDES:
            sign = int(lateral_sign(s, side))
            lung, scap = s.mask(f"lung_{side}"), s.mask(f"scapula_{side}")
            prof = np.zeros(2 * half + 1)
            k = 0
            for r in np.flatnonzero((scap & lung).any(axis=1)):
                cs = np.flatnonzero(scap[r])
                e = int(cs.min()) if sign > 0 else int(cs.max())
                cols = e - sign * np.arange(-half, half + 1)
                if cols.min() < 1 or cols.max() >= s.shape[1] - 1:
                    continue
                drop = (sm[r, cols + sign] - sm[r, cols - sign]) / 2.0 / scale
                prof += drop - drop.mean()
                k += 1
            if k > 10:
                acc += prof / k
                peaks.append(float((prof / k)[half - 2 : half + 3].max()))
    print(f"aligned on the exact medial border: {len(peaks)} sides of {len(picked)} films")
    print("mean drop at offsets -20..+20 px:", np.round(acc / max(len(peaks), 1), 2).tolist())
    print("per side peak (±2 px) p10/50/90:", np.quantile(peaks, [0.1, 0.5, 0.9]).round(2))


def within_pose(rows: list[dict[str, Any]], keys: list[str]) -> None:
    """r between the two variants' differences of a measure and of the truth (same anatomy,
    other scapula shift and exposure): does the measure follow the scapula at all?"""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["pose"], []).append(r)
    for k in keys:
        d, t = [], []
        for v in by.values():
            if len(v) == 2 and all(x.get(k) is not None for x in v):
                d.append(float(v[0][k]) - float(v[1][k]))
                t.append(v[0]["truth"] - v[1]["truth"])
        if len(d) > 10 and np.std(d) > 0:
            print(f"within-pose r {k:14s} {np.corrcoef(d, t)[0, 1]:+.3f} ({len(d)} poses)")


def fixed(rows: list[dict[str, Any]], key: str, t: float) -> float:
    """Accuracy (%) of "fail above t" on every row with the key."""
    ok = [r for r in rows if r.get(key) is not None]
    return 100.0 * float(np.mean([(float(r[key]) > t) == r["fail"] for r in ok]))


MEASURES = (
    "overlap",
    "area",
    "medial",
    "medial_q",
    "edge_d",
    "edge_e",
    "prior_e",
    "step",
    "scap_area",
    "reach",
    "centroid",
    "low",
    "strip",
    "line_e",
    "line_d",
    "line_max",
    "slide_e",
    "slide_d",
    "slide_delta",
    "tm_e",
    "tm_delta",
    "tm_overlap",
)
COMBOS = (
    ("overlap", "medial"),
    ("overlap", "prior_e"),
    ("medial", "prior_e"),
    ("medial", "step"),
    ("overlap", "medial", "prior_e", "step"),
    ("overlap", "medial", "edge_d", "edge_e", "prior_e", "step"),
    ("overlap", "strip"),
    ("overlap", "tm_overlap", "tm_e"),
    ("overlap", "area", "tm_overlap", "tm_e", "tm_delta"),
    ("slide_d", "slide_e"),
    ("overlap", "slide_d", "slide_e"),
    ("overlap", "medial", "slide_d", "slide_e", "slide_delta"),
    ("overlap", "reach", "centroid", "scap_area", "low"),
    ("overlap", "area", "reach", "centroid", "scap_area", "low", "strip", "step"),
)


def report(rows: list[dict[str, Any]]) -> None:
    """Correlation and 2-fold accuracy of every measure on both mask sets."""
    print(f"{len(rows)} films, {len({r['pose'] for r in rows})} poses")
    for tag in ("x", "p"):
        if not any(f"{tag}_overlap" in r for r in rows):
            continue
        print(f"--- {'exact' if tag == 'x' else 'model'} masks")
        for k in MEASURES:
            key = f"{tag}_{k}"
            f = two_fold(rows, [key])
            r = corr(rows, key)
            print(
                f"{key:14s} r {'-' if r is None else f'{r:+.2f}'}  2-fold {f['acc']:.1f} %  "
                f"sens {f['sens']:.0f}  spec {f['spec']:.0f}  (n {f['n']}, base "
                f"{f['baseline']:.1f}, thr {[round(t, 2) for t in f['thr']]})"
            )
        print(f"{tag}_overlap > 10 mm fixed: {fixed(rows, f'{tag}_overlap', 10.0):.1f} %")
        for combo in COMBOS:
            keys = [f"{tag}_{k}" for k in combo]
            f = two_fold(rows, keys)
            print(
                f"logistic {'+'.join(combo):40s} 2-fold {f['acc']:.1f} %  sens "
                f"{f['sens']:.0f}  spec {f['spec']:.0f}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(__doc__)
    ap.add_argument("--aligned", action="store_true", help="only the aligned border profile")
    a = ap.parse_args(argv)
    frontals = study_samples(a.set_dir, View.FRONTAL, train_only=False)
    if a.aligned:
        aligned_profile(frontals, load_config())
        return 0
    cfg = load_config()
    rows = measured(a.rows, frontals[: a.limit], lambda smp: measure(smp, cfg, a.pred))
    rows = [r for r in rows if not any(isinstance(v, float) and math.isnan(v) for v in r.values())]
    report(rows)
    within_pose(rows, [f"{m}_{k}" for m in ("x", "p") for k in MEASURES])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
