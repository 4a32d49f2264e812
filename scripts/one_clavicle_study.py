"""Frontal `positioning.rotation` / `positioning.tilt` from ONE clavicle where the model
missed the other under an open field (since session 5 both rules are not_evaluable there).

Why: on eval-v2 frontals with the shipped model's cached masks both rules are not_evaluable
on 65 of 2000 films, scored as misses. This script measures, on the exact and the cached
model masks of a train-split set, per film:
- the current rules' status and why a film is not_evaluable (which clavicle, its area);
- per found clavicle (area >= ``clavicle_min_area_mm2``): its medial end's distance ``d``
  (mm) from the spinous-process line fitted +-40 mm around that end's row, normalised by a
  width ``W`` (``wl``: both lungs' outer extents; ``ws``: the spine line to the same side's
  outer lung wall); the expected distance of an unrotated film is ``c * W`` (c: the median of
  d/W on the fitting half's films with both clavicles), the other end's distance is taken as
  ``2 c W - d`` and the rule's model gives tan(theta) = (w/D) * (d - c W) / (c W);
- per found clavicle: its medial end's height below its own lung's apex (``tilt_side``,
  mm), against the rule's 8 / 28 mm or thresholds fitted on the other half.
Reported 2-fold by pose (even/odd and 20 random pose halves): held-out accuracy on the films
not_evaluable now vs the truth's majority class there, and overall (rule where evaluable,
one-clavicle measure where not).

    .venv/bin/python scripts/one_clavicle_study.py data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s5/rules-cal5-f --rows /tmp/oc7/rows-f.json

Result (docs/RULES.md, "Session 7 (helper): frontal rotation / tilt from one clavicle"):
nothing qualifies. The one-clavicle rotation is nearly as good as the two-clavicle rule where
both are found (held out, model 84.8 vs 84.7 %), tilt from one side is 10 points worse; but the
model almost never leaves one clavicle to measure on the not_evaluable films (rules-cal5-f 1 of
23, eval-v2 2 of 65: both clavicles cut off by the field or both undrawn), so the fallback
gains +0.17 point on the calibration set, below the 1-point bar. The rules stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from study_stats import (
    film_subject,
    measured_by_source,
    pose_halves,
    study_parser,
    study_samples,
)

from qcnode.evaluate import Sample
from qcnode.records import View
from qcnode.rules import RulesConfig, load_config
from qcnode.rules.completeness import SIDES, lateral_sign
from qcnode.rules.geometry import Subject
from qcnode.rules.organs import _apex_margin_mm, unsegmented_clavicle
from qcnode.rules.positioning import (
    apex_row,
    medial_end,
    rotation,
    rotation_constants,
    spine_line,
    tilt,
)

TILT_GRID = [float(x) for x in range(-10, 41)]


def side_measures(s: Subject, cfg: RulesConfig, side: str) -> dict[str, float]:
    end = medial_end(s, side)
    if end is None:
        return {}
    out: dict[str, float] = {"row": end[0]}
    half = round(40.0 / s.sy)
    line = spine_line(s, int(end[0]) - half, int(end[0]) + half)
    lung = s.clean(f"lung_{side}")
    if line is not None:
        a, b = line
        medial = -lateral_sign(s, side)
        out["d"] = (a * end[0] + b - end[1]) * medial * s.sx
        if lung.any():
            cols = np.flatnonzero(lung.any(axis=0))
            outer = cols.max() if lateral_sign(s, side) > 0 else cols.min()
            out["ws"] = abs(outer - (a * end[0] + b)) * s.sx
    both = s.clean("lung_right") | s.clean("lung_left")
    if both.any():
        cols = np.flatnonzero(both.any(axis=0))
        out["wl"] = float(cols.max() - cols.min() + 1) * s.sx
    apex = apex_row(s, s.mask(f"lung_{side}"), cfg.positioning.tilt_apex_width_mm)
    if apex is not None:
        out["tilt"] = (end[0] - apex) * s.sy
    return out


def measure(smp: Sample, cfg: RulesConfig, pred_dir: Path | None) -> dict[str, Any] | None:
    got = film_subject(smp, cfg, pred_dir)
    if got is None:
        return None
    _, s = got
    tr = smp.truth["rules"]
    rot, tl = rotation(s, cfg), tilt(s, cfg)
    k, _ = rotation_constants(s, cfg)
    row: dict[str, Any] = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "k": k,
        "ap": s.image.meta.view_position.strip().upper() == "AP",
        "rot_fail": tr["positioning.rotation"]["status"] == "fail",
        "rot_truth": tr["positioning.rotation"]["value"],
        "tilt_fail": tr["positioning.tilt"]["status"] == "fail",
        "tilt_truth": tr["positioning.tilt"]["value"],
        "rot_status": str(rot.status),
        "tilt_status": str(tl.status),
        "uns": None,
    }
    u = unsegmented_clavicle(s, cfg)
    if u is not None:
        row["uns"] = u[0]
    t = cfg.organs.clavicle_min_area_mm2
    for side in SIDES:
        p = side[0] + "_"
        row[p + "area"] = s.area_mm2(s.mask(f"clavicle_{side}"))
        row[p + "margin"] = _apex_margin_mm(s, side)
        if row[p + "area"] >= t:
            for key, v in side_measures(s, cfg, side).items():
                row[p + key] = v
    return row


# ---- analysis -------------------------------------------------------------------------------


SCOPE = {"scope": "uns"}


def side_of(r: dict[str, Any]) -> str | None:
    """The one found clavicle ("r_"/"l_") of a film the rules cannot measure now: the other
    missed under an open field (scope "uns"), or any other below the area (scope "any")."""
    found = [p for p in ("r_", "l_") if p + "row" in r]
    if len(found) != 1:
        return None
    if SCOPE["scope"] == "uns" and r["uns"] is None:
        return None
    return found[0]


def rot_one(r: dict[str, Any], p: str, w: str, c: float) -> float | None:
    """theta (deg) from one end: the other's distance taken as 2cW - d."""
    if p + "d" not in r or p + w not in r:
        return None
    exp = c * r[p + w]
    sign = 1.0 if p == "r_" else -1.0  # dR - dL = 2 (dR - cW) = -2 (dL - cW)
    return math.degrees(math.atan(r["k"] * sign * (r[p + "d"] - exp) / exp))


def fit_c(rows: list[dict[str, Any]], w: str) -> dict[bool, float]:
    """Median d/W over films with both clavicles measured, per projection (AP, PA)."""
    out: dict[bool, float] = {}
    for ap in (False, True):
        x = [
            r[p + "d"] / r[p + w]
            for r in rows
            if r["ap"] == ap and r["uns"] is None
            for p in ("r_", "l_")
            if p + "d" in r and p + w in r and "r_d" in r and "l_d" in r
        ]
        out[ap] = float(np.median(x)) if x else 0.0
    return out


def train_rot(rows: list[dict[str, Any]], w: str, fixed: bool) -> tuple[dict[bool, float], float]:
    """c per projection; the |theta| threshold: 5 deg (fixed) or best on every measurable side
    of the fitting half's films (each clavicle alone)."""
    c = fit_c(rows, w)
    if fixed:
        return c, 5.0
    xs, ys = [], []
    for r in rows:
        for p in ("r_", "l_"):
            th = rot_one(r, p, w, c[r["ap"]])
            if th is not None:
                xs.append(abs(th))
                ys.append(r["rot_fail"])
    x, y = np.array(xs), np.array(ys)
    best = (-1.0, 5.0)
    for t in np.arange(1.0, 15.01, 0.25):
        a = float(np.mean((x > t) == y))
        if a > best[0]:
            best = (a, float(t))
    return c, best[1]


def train_tilt(rows: list[dict[str, Any]], fixed: bool) -> tuple[float, float]:
    if fixed:
        return 8.0, 28.0
    xs, ys = [], []
    for r in rows:
        for p in ("r_", "l_"):
            if p + "tilt" in r:
                xs.append(r[p + "tilt"])
                ys.append(r["tilt_fail"])
    x, y = np.array(xs), np.array(ys)
    best = (-1.0, 8.0, 28.0)
    for lo in TILT_GRID:
        for hi in TILT_GRID:
            if hi <= lo:
                continue
            a = float(np.mean((~((x >= lo) & (x <= hi))) == y))
            if a > best[0]:
                best = (a, lo, hi)
    return best[1], best[2]


# the truth's and the rule's columns of each rule
COLUMNS = {"rot": ("rot_fail", "rot_status"), "tilt": ("tilt_fail", "tilt_status")}
SidePred = Callable[[dict[str, Any], str], bool | None]


def side_rule(rows: list[dict[str, Any]], rule: str, variant: str) -> SidePred:
    """The one-clavicle verdict (fail: True; None: not measurable) of one side ("r_"/"l_") of
    a film, trained on ``rows``: rotation ``variant`` "W/fixed" or "W/fit" (``train_rot``),
    tilt "fixed" or "fit" (``train_tilt``)."""
    if rule == "rot":
        w, how = variant.split("/")
        c, t = train_rot(rows, w, how == "fixed")

        def rot(r: dict[str, Any], p: str) -> bool | None:
            th = rot_one(r, p, w, c[r["ap"]])
            return None if th is None else abs(th) > t

        return rot
    lo, hi = train_tilt(rows, variant == "fixed")
    return lambda r, p: None if p + "tilt" not in r else not (lo <= r[p + "tilt"] <= hi)


def evaluate(
    data: dict[str, list[dict[str, Any]]], fold: dict[str, int], rule: str, variant: str
) -> dict[str, Any]:
    """Held-out: on the model's not_evaluable one-clavicle films (accuracy, majority class,
    coverage) and overall per mode (rule where evaluable, the measure where not, a
    not_evaluable film a miss as in eval_cached)."""
    key, st = COLUMNS[rule]
    res: dict[str, Any] = {}
    ne_hit = ne_n = ne_maj = ne_cov = 0
    for mode, rows in data.items():
        hits = base = n = 0
        for held in (0, 1):
            tr = [r for r in rows if fold[r["pose"]] != held]
            te = [r for r in rows if fold[r["pose"]] == held]
            one = side_rule(tr, rule, variant)
            for r in te:
                n += 1
                ok = r[st] != "not_evaluable" and (r[st] == "fail") == r[key]
                base += ok
                if r[st] != "not_evaluable":
                    hits += ok
                    continue
                p = side_of(r)
                pr = None if p is None else one(r, p)
                if pr is not None:
                    hits += pr == r[key]
                if mode == "model" and side_of(r) is not None:
                    ne_n += 1
                    ne_cov += pr is not None
                    ne_hit += pr is not None and pr == r[key]
                    ne_maj += not r[key]
        res[mode] = (100.0 * base / max(n, 1), 100.0 * hits / max(n, 1))
    res["ne"] = (ne_n, ne_cov, 100.0 * ne_hit / max(ne_n, 1), 100.0 * ne_maj / max(ne_n, 1))
    return res


def folds(rows: list[dict[str, Any]], n_random: int) -> list[dict[str, int]]:
    return pose_halves([str(r["pose"]) for r in rows], n_random, seed=7)


def census(rows: list[dict[str, Any]], mode: str, exact: dict[str, dict[str, Any]]) -> None:
    """Not_evaluable films per rule and why: which clavicles are below the area, whether the
    field is open above the apex (``uns``: the session-5 path), what the exact masks hold."""
    t_area = 750.0
    for st in ("rot_status", "tilt_status"):
        cats: dict[str, int] = {}
        fails = 0
        for r in rows:
            if r[st] != "not_evaluable":
                continue
            fails += r[st.replace("status", "fail")]
            small = [p for p in ("r_", "l_") if r[p + "area"] < t_area]
            if not small:
                k = "both clavicles found (spine line / geometry)"
            elif len(small) == 1:
                k = ("open" if r["uns"] else "closed") + " field: one clavicle found, other missed"
            elif r["uns"] is None:
                k = "closed field: both clavicles missing (cut off)"
            else:
                k = "open field: no clavicle mask"
                e = exact.get(r["id"])
                if mode == "model" and e is not None:
                    full = min(e["r_area"], e["l_area"]) >= t_area
                    k += ", exact both found" if full else ", exact small too"
            cats[k] = cats.get(k, 0) + 1
        n = sum(cats.values())
        print(f"[{mode}] {st}: not_evaluable {n}/{len(rows)} (truth fail {fails})")
        for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
            print(f"    {v:3d}  {k}")
    frag = [
        r[p + "area"]
        for r in rows
        if r["rot_status"] == "not_evaluable"
        for p in ("r_", "l_")
        if r[p + "area"] < t_area
    ]
    if frag:
        print(
            f"    missing clavicles' areas (mm2): {len(frag)}, zero {sum(a == 0 for a in frag)}, "
            f"max {max(frag):.0f}"
        )


def one_side_quality(rows: list[dict[str, Any]], mode: str) -> None:
    """The one-clavicle measures on every film the rules measure now (each clavicle alone),
    held out even/odd by pose, next to the two-clavicle rule on the same films."""
    f = folds(rows, 0)[0]
    cases: list[tuple[str, str]] = [("rot", v) for v in ("wl/fixed", "wl/fit", "ws/fixed")]
    cases += [("rot", "ws/fit"), ("tilt", "fixed"), ("tilt", "fit")]
    for rule, v in cases:
        key, st = COLUMNS[rule]
        hit = n = maj = rh = 0
        for held in (0, 1):
            one = side_rule([r for r in rows if f[r["pose"]] != held], rule, v)
            for r in rows:
                if f[r["pose"]] != held or r[st] == "not_evaluable":
                    continue
                for p in ("r_", "l_"):
                    pr = one(r, p)
                    if pr is None:
                        continue
                    n += 1
                    hit += pr == r[key]
                    maj += not r[key]
                    rh += (r[st] == "fail") == r[key]
        print(
            f"[{mode}] one side {rule} {v}: {n} clavicles, held-out acc {100 * hit / n:.1f} "
            f"(majority {100 * maj / n:.1f}; the two-clavicle rule {100 * rh / n:.1f})"
        )


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(
        __doc__, random_halves=True, descriptive=("--census-only", "why films are not_evaluable")
    )
    args = ap.parse_args(argv)
    cfg = load_config()
    samples = study_samples(args.set_dir, View.FRONTAL, train_only=not args.census_only)
    data = measured_by_source(
        args.rows, samples[: args.limit], lambda smp, pred: measure(smp, cfg, pred), args.pred
    )
    exact = {r["id"]: r for r in data["exact"]}
    for mode, rows in data.items():
        census(rows, mode, exact)
    if args.census_only:
        return 0
    for mode, rows in data.items():
        one_side_quality(rows, mode)
    fs = folds(data["model"], args.random)
    variants = [("rot", v) for v in ("wl/fixed", "wl/fit", "ws/fixed", "ws/fit")]
    variants += [("tilt", "fixed"), ("tilt", "fit")]
    for scope, (rule, v) in [(sc, x) for sc in ("uns", "any") for x in variants]:
        SCOPE["scope"] = scope
        print(f"scope {scope}:", end=" ")
        res = [evaluate(data, f, rule, v) for f in fs]
        r0 = res[0]
        ne = r0["ne"]
        print(
            f"{rule:4s} {v:9s} even/odd: not_eval films {ne[0]} measured {ne[1]} held-out acc "
            f"{ne[2]:.1f} (majority {ne[3]:.1f}); overall model {r0['model'][0]:.2f} -> "
            f"{r0['model'][1]:.2f}, exact {r0['exact'][0]:.2f} -> {r0['exact'][1]:.2f}"
        )
        acc = [x["ne"][2] for x in res[1:]]
        gm = [x["model"][1] - x["model"][0] for x in res[1:]]
        ge = [x["exact"][1] - x["exact"][0] for x in res[1:]]
        if acc:
            print(
                f"     random halves ({len(acc)}): ne acc {np.mean(acc):.1f} "
                f"[{min(acc):.1f}, {max(acc):.1f}]; model gain {np.mean(gm):+.2f} "
                f"[{min(gm):+.2f}, {max(gm):+.2f}]; exact gain {np.mean(ge):+.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
