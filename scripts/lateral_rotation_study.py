"""Lateral `positioning.rotation` from the image instead of the two sides' rib masks.

Why: the rule (median horizontal gap between the posterior outlines of the right and left
posterior rib masks, mid thorax, fail > 10 mm) is ~96 % accurate on exact masks but only
~63–68 % on the shipped model's masks, whose right and left ribs lie on top of each other.
This script measures candidates that need only roughly placed masks (lungs, ribs union,
spine) plus the pixels, on every lateral of a train-split set, with exact masks and with a
model's cached masks, and prints their correlation with the truth's separation and a 2-fold
threshold accuracy split by pose (chosen on one half of the poses, scored on the other).

    .venv/bin/python scripts/lateral_rotation_study.py data/synth/rules-cal5-l \
        --pred .cache/rules/pred-s5/rules-cal5-l --rows /tmp/rot_rows.json

Measures (working grid, upright, columns turned so that posterior is +x; rows = the middle
half of the lungs' height, as the rule; values in mm):
- ``rule``: the rule's separation (ribs, falling back to the lungs);
- ``lungs``: the same on the right and left lung masks;
- ``ribs_behind_lung``: posterior-most pixel of the ribs union minus that of the lungs
  union (a rotated chest shows one side's rib cage behind the other lung);
- ``ribs_band``: per row, the width of the ribs union's last run (its posterior band);
- ``spread_pos`` / ``spread_neg``: per row, the 15–85 % width of the cumulative positive
  (negative) posterior derivative of the smoothed image in a window around the lungs'
  posterior outline (a double edge widens it);
- ``peaks``: per row, the gap between the two strongest posterior-derivative maxima of the
  same sign in that window (0 when the second is under half the first);
- ``acf_lag`` / ``acf_peak``: the lag (mm) and height of the largest secondary maximum of the
  horizontal autocorrelation of the derivative image in that band (two copies of one
  contour shifted by the rotation give a maximum at the shift);
  the three edge measures above come in three variants (``VARIANTS``: smoothing, window);
- ``two_border_*`` / ``two_border_h_*`` / ``ahead_energy_*`` / ``ahead_pos_*``: the
  posterior derivative averaged (mean or median) over the rows, aligned on the lungs'
  posterior outline (``ALIGN_MM``); the distance from the main rising edge at the outline
  to the strongest one ahead of it (the nearer lung's border), its relative height, and the
  share of the rising edges' mass ahead of it; ``_hp`` on the band-passed image, either
  polarity.
Also printed, not measures: how far the generator's own rotation angle goes (``oracle``).

Result on rules-cal5-l (docs/RULES.md, "Session 6 (helper): lateral positioning.rotation"):
no image measure reaches 75 % on the model's masks; the angle itself gives only ~75 %.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from study_stats import (
    corr,
    film_subject,
    measured_by_source,
    study_parser,
    study_samples,
    two_fold,
)

from qcnode.records import View
from qcnode.rules import load_config
from qcnode.rules.completeness import anterior_sign
from qcnode.rules.geometry import Subject
from qcnode.rules.lateral import superimposition
from qcnode.rules.masks import row_extent

Array = npt.NDArray[np.float64]
# (tag, Gaussian σ px (rows, columns), window mm around the lungs' posterior outline, negative
# = anterior): the first as in the docstring, then a smoother, narrower and a wider one
VARIANTS: tuple[tuple[str, tuple[float, float], tuple[float, float]], ...] = (
    ("", (2.0, 1.0), (-25.0, 45.0)),
    ("_s4", (4.0, 1.0), (-15.0, 30.0)),
    ("_w", (4.0, 1.5), (-40.0, 60.0)),
)
ALIGN_MM = (-55.0, 15.0)  # the aligned profile's window around the lungs' posterior outline


def _posterior(mask: npt.NDArray[np.bool_]) -> Array:
    """Per row, the last (posterior-most, +x) column of the mask (NaN where empty)."""
    cols = np.arange(mask.shape[1])
    edge = np.where(mask, cols[None, :], -1).max(axis=1).astype(float)
    edge[edge < 0] = np.nan
    return edge


def _last_run_width(mask: npt.NDArray[np.bool_]) -> Array:
    """Per row, the length (px) of the mask's posterior-most run (NaN where empty)."""
    out = np.full(mask.shape[0], np.nan)
    for r, row in enumerate(mask):
        idx = np.flatnonzero(row)
        if idx.size == 0:
            continue
        gaps = np.flatnonzero(np.diff(idx) > 1)
        start = idx[gaps[-1] + 1] if gaps.size else idx[0]
        out[r] = idx[-1] - start + 1
    return out


def _med(x: Array, scale: float) -> float | None:
    ok = x[~np.isnan(x)]
    return None if ok.size < 3 else float(np.median(ok)) * scale


def _edge_band(
    img: Array,
    inside: npt.NDArray[np.bool_],
    pl: Array,
    r0: int,
    sx: float,
    smooth: tuple[float, float],
    window: tuple[float, float],
    tag: str,
) -> dict[str, Any]:
    """Edge-profile measures in a band of rows around the lungs' posterior outline ``pl``."""
    out: dict[str, Any] = {}
    sm = ndimage.gaussian_filter(img, smooth)
    d = np.zeros_like(sm)
    d[:, 1:-1] = (sm[:, 2:] - sm[:, :-2]) / 2.0
    a, b = round(window[0] / sx), round(window[1] / sx)
    width = b - a + 1
    band = np.full((len(pl), width), np.nan)
    for i, c in enumerate(pl):
        if np.isnan(c):
            continue
        cols = np.arange(int(c) + a, int(c) + b + 1)
        if cols[0] < 0 or cols[-1] >= img.shape[1] or not inside[r0 + i, cols].all():
            continue
        band[i] = d[r0 + i, cols]
    good = ~np.isnan(band).any(axis=1)
    if good.sum() < 5:
        return out
    band = band[good]
    band = band / (float(np.median(np.abs(band))) + 1e-9)
    for sgn_tag, sign in (("pos", 1.0), ("neg", -1.0)):
        part = np.clip(sign * band, 0.0, None)
        cum = np.cumsum(part, axis=1)
        tot = cum[:, -1:] + 1e-9
        lo = (cum < 0.15 * tot).sum(axis=1)
        hi = (cum < 0.85 * tot).sum(axis=1)
        out[f"spread_{sgn_tag}{tag}"] = float(np.median(hi - lo)) * sx
        gaps = []
        for row in part:
            peaks = [j for j in range(1, width - 1) if row[j] >= row[j - 1] and row[j] > row[j + 1]]
            peaks.sort(key=lambda j: -row[j])
            ok = len(peaks) >= 2 and row[peaks[1]] >= 0.5 * row[peaks[0]]
            gaps.append(abs(peaks[0] - peaks[1]) if ok else 0)
        out[f"peaks_{sgn_tag}{tag}"] = float(np.median(gaps)) * sx
    z = band - band.mean(axis=1, keepdims=True)
    acf = np.array([np.sum(z[:, : width - k] * z[:, k:]) for k in range(width // 2)])
    acf = acf / (acf[0] + 1e-9)
    k0 = int(np.argmax(acf < 0)) if (acf < 0).any() else len(acf)
    if k0 < len(acf) - 1:
        k = k0 + int(np.argmax(acf[k0:]))
        out[f"acf_lag{tag}"] = float(k) * sx
        out[f"acf_peak{tag}"] = float(acf[k])
    return out


def _aligned_profile(
    img: Array, inside: npt.NDArray[np.bool_], pl: Array, r0: int, sx: float, hp: bool = False
) -> dict[str, Any]:
    """Two posterior lung borders: the mean posterior derivative over the rows, aligned on
    the lungs' posterior outline; a rotated lateral adds a second rising edge (the nearer
    lung's border) anterior to the outline, parallel to it. ``hp``: on the band-passed
    image (G 1 px − G 6 px, the smooth fall towards the back removed), either polarity."""
    out: dict[str, Any] = {}
    sm = ndimage.gaussian_filter(img, (2.0, 1.0))
    if hp:
        sm = ndimage.gaussian_filter(img, 1.0) - ndimage.gaussian_filter(img, 6.0)
    sfx = "_hp" if hp else ""
    d = np.zeros_like(sm)
    d[:, 1:-1] = (sm[:, 2:] - sm[:, :-2]) / 2.0
    a, b = round(ALIGN_MM[0] / sx), round(ALIGN_MM[1] / sx)
    prof = []
    for i, c in enumerate(pl):
        if np.isnan(c):
            continue
        cols = np.arange(int(c) + a, int(c) + b + 1)
        ok = (cols >= 0) & (cols < img.shape[1])
        row = np.full(cols.size, np.nan)
        row[ok] = np.where(inside[r0 + i, cols[ok]], d[r0 + i, cols[ok]], np.nan)
        if np.count_nonzero(~np.isnan(row)) < cols.size // 2:
            continue
        prof.append(row / (float(np.nanmedian(np.abs(row))) + 1e-9))
    if len(prof) < 5:
        return out
    rows = np.array(prof)
    enough = np.count_nonzero(~np.isnan(rows), axis=0) >= 3
    rows[:, ~enough] = 0.0
    x = np.arange(a, b + 1) * sx  # mm, 0 = the outline, negative = anterior
    near = np.abs(x) <= 10.0
    for tag, p in (("mean", np.nanmean(rows, axis=0)), ("median", np.nanmedian(rows, axis=0))):
        tag += sfx
        pp = np.clip(p, 0.0, None)
        out[f"ahead_pos_{tag}"] = float(pp[x <= -6.0].sum() / (pp.sum() + 1e-9))
        if hp:  # the polarity of the strongest edge at the outline
            p = p * np.sign(p[near][np.argmax(np.abs(p[near]))])
        main = int(np.flatnonzero(near)[np.argmax(p[near])])
        ahead = x <= x[main] - 6.0
        ahead &= x >= ALIGN_MM[0] + 3.0
        if not ahead.any() or p[main] <= 0:
            continue
        j = int(np.flatnonzero(ahead)[np.argmax(p[ahead])])
        out[f"two_border_{tag}"] = float(x[main] - x[j])
        out[f"two_border_h_{tag}"] = float(p[j] / p[main])
        # posterior edge energy spread: mean position (mm ahead of the main edge) of the
        # positive derivative anterior of it
        pos = np.clip(p, 0.0, None) * ahead
        out[f"ahead_energy_{tag}"] = float(pos.sum() / (np.clip(p, 0, None).sum() + 1e-9))
    return out


def image_measures(s: Subject) -> dict[str, Any]:
    """Every candidate of one film (see the module docstring)."""
    out: dict[str, Any] = {}
    sup = superimposition(s)
    out["rule"] = None if sup is None else sup[0]
    ext = row_extent(s.lungs)
    if ext is None:
        return out
    flip = -anterior_sign(s) < 0  # posterior towards −x: mirror so that it is +x

    def m(name: str) -> npt.NDArray[np.bool_]:
        a = s.mask(name)
        return a[:, ::-1] if flip else a

    img = s.pixels.astype(np.float64)
    img = img[:, ::-1] if flip else img
    field = s.field[:, ::-1] if flip else s.field
    h = ext[1] - ext[0]
    r0, r1 = ext[0] + h // 4, ext[1] - h // 4 + 1
    sx = s.sx
    lr, ll = _posterior(m("lung_right")[r0:r1]), _posterior(m("lung_left")[r0:r1])
    out["lungs"] = _med(np.abs(lr - ll), sx)
    lungs = (m("lung_right") | m("lung_left"))[r0:r1]
    ribs = (m("ribs_posterior_right") | m("ribs_posterior_left"))[r0:r1]
    pl, pr = _posterior(lungs), _posterior(ribs)
    out["ribs_behind_lung"] = _med(pr - pl, sx)
    out["ribs_band"] = _med(_last_run_width(ribs), sx)
    inside = ndimage.binary_erosion(field, iterations=3)
    for tag, smooth, window in VARIANTS:
        out.update(_edge_band(img, inside, pl, r0, sx, smooth, window, tag))
    out.update(_aligned_profile(img, inside, pl, r0, sx))
    out.update(_aligned_profile(img, inside, pl, r0, sx, hp=True))
    return out


def measure(smp: Any, cfg: Any, pred_dir: Path | None) -> dict[str, Any] | None:
    """One film's row: truth, and the measures on its exact or cached model masks."""
    film = film_subject(smp, cfg, pred_dir)
    if film is None:
        return None
    _, s = film
    tr = smp.truth["rules"]["positioning.rotation"]
    if tr["value"] is None:
        return None
    row: dict[str, Any] = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "fail": tr["status"] == "fail",
        "sep": float(tr["value"]),
        "rotation_deg": float(smp.truth["params"]["rotation_deg"]),
        "beam_x_mm": float(smp.truth["params"]["beam_center_mm"][0]),
        "right_lateral": smp.truth["params"]["view_position"] == "RL",
        "magnification": float(smp.truth["params"]["magnification"]),
        "abs_tilt_deg": abs(float(smp.truth["params"]["tilt_deg"])),
        "sid_mm": float(smp.truth["params"]["sid_mm"]),
    }
    row.update(image_measures(s))
    return row


EDGE = ["spread_pos", "spread_neg", "peaks_pos", "peaks_neg", "acf_lag", "acf_peak"]
TWO = [
    f"{k}_{t}{h}"
    for h in ("", "_hp")
    for t in ("mean", "median")
    for k in ("two_border", "two_border_h", "ahead_energy", "ahead_pos")
]
SINGLE = ["rule", "lungs", "ribs_behind_lung", "ribs_band", *TWO] + [
    k + tag for tag, _, _ in VARIANTS for k in EDGE
]
COMBOS = [
    ["rule", "lungs"],
    ["rule", "ribs_behind_lung", "ribs_band"],
    EDGE,
    [k + "_s4" for k in EDGE],
    ["two_border_mean", "two_border_h_mean"],
    ["two_border_median", "two_border_h_median", "ahead_energy_median"],
    ["two_border_mean_hp", "two_border_h_mean_hp", "ahead_energy_mean_hp"],
    ["rule", "lungs", "ribs_behind_lung", "ribs_band", "spread_pos", "spread_neg", "acf_lag"],
]


def fixed_accuracy(rows: list[dict[str, Any]], key: str, t: float) -> tuple[float, float]:
    """(accuracy, sensitivity) % of ``key > t`` (None = pass, like a not-evaluable film)."""
    y = np.array([r["fail"] for r in rows])
    p = np.array([r.get(key) is not None and r[key] > t for r in rows])
    return 100.0 * float(np.mean(p == y)), 100.0 * float(p[y].mean()) if y.any() else 0.0


def _logistic_acc(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """2-fold accuracy of a logistic on ``keys`` as text ("-" when too few films to fit)."""
    try:
        return f"{two_fold(rows, keys)['acc']:.1f} %"
    except np.linalg.LinAlgError:
        return "-"


def report(rows: list[dict[str, Any]], tag: str) -> None:
    print(
        f"\n== {tag}: {len(rows)} films, {len({r['pose'] for r in rows})} poses, "
        f"truth fail {100.0 * np.mean([r['fail'] for r in rows]):.1f} %"
    )
    for t in (4.0, 6.0, 8.0, 10.0, 12.0):
        acc, sens = fixed_accuracy(rows, "rule", t)
        print(f"rule at a fixed {t:.0f} mm: {acc:.1f} % (sens {sens:.0f} %)")
    for row in rows:  # not a measure: the generator's angle, how far the angle alone goes
        row["abs_rotation_deg"] = abs(row["rotation_deg"])
    flat = [row for row in rows if row["abs_rotation_deg"] < 1.0]
    if flat:
        print(
            f"rotated < 1 deg: {len(flat)} films, truth fail "
            f"{100.0 * np.mean([row['fail'] for row in flat]):.1f} %, median separation "
            f"{np.median([row['sep'] for row in flat]):.1f} mm"
        )
        for key in ("magnification", "abs_tilt_deg", "sid_mm", "beam_x_mm", "rotation_deg"):
            if key in flat[0] and len(flat) >= 10:
                r = corr(flat, key, "sep")
                print(f"  r(separation, {key}) on them: {'-' if r is None else f'{r:.2f}'}")
    tf = two_fold(rows, ["abs_rotation_deg"])
    ra = corr(rows, "abs_rotation_deg", "sep")
    print(
        f"oracle |rotation_deg| (truth params, not a measure): 2-fold {tf['acc']:.1f} %, "
        f"r with sep {'-' if ra is None else f'{ra:.2f}'}"
    )
    if "right_lateral" in rows[0]:  # the angle signed by the side at the detector
        for row in rows:
            side = 1.0 if row["right_lateral"] else -1.0
            row["signed_rotation_deg"] = row["rotation_deg"] * side
        keys = ["signed_rotation_deg", "abs_rotation_deg"]
        print(f"oracle signed + |rotation| (logistic): 2-fold {_logistic_acc(rows, keys)}")
        keys = [*keys, "beam_x_mm"]
        print(
            "oracle signed + |rotation| + beam centre x (logistic): 2-fold "
            + _logistic_acc(rows, keys)
        )
    print(f"{'measure':28s} {'n':>4s} {'r sep':>6s} {'2-fold':>7s} {'sens':>5s} {'base':>5s}")
    for key in SINGLE:
        tf = two_fold(rows, [key])
        r = corr(rows, key, "sep")
        rs = "   -  " if r is None else f"{r:6.2f}"
        print(
            f"{key:28s} {tf['n']:4d} {rs} {tf['acc']:6.1f}% {tf['sens']:4.0f}% "
            f"{tf['baseline']:4.1f}%"
        )
    for keys in COMBOS:
        try:
            tf = two_fold(rows, keys)
        except np.linalg.LinAlgError:  # a handful of films (--limit): nothing to fit
            print(f"{'+'.join(keys)[:60]:60s} logistic: singular on this few films")
            continue
        print(
            f"{'+'.join(keys)[:60]:60s} {tf['n']:4d} logistic {tf['acc']:6.1f}% {tf['sens']:4.0f}%"
        )


def main(argv: list[str] | None = None) -> int:
    args = study_parser(__doc__).parse_args(argv)
    cfg = load_config()
    samples = study_samples(args.set_dir, View.LATERAL)[: args.limit]
    data = measured_by_source(
        args.rows, samples, lambda smp, pred: measure(smp, cfg, pred), args.pred, every=40
    )
    for src, rows in data.items():
        if rows:
            report(rows, f"{args.set_dir.name}, {src} masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
