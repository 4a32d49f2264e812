"""`positioning.inspiration` (frontal and lateral): where the dome-depth measure disagrees with
the truth's rib count, and whether a habitus-normalised estimator does better.

Why: the rule reads ``ribs = a + depth / mm_per_rib`` with depth = the heart's lower border
below the right lung apex in mm. The truth counts posterior right ribs above the right dome in
3D; the synthetic patient is one CT under a habitus scale (z 0.9-1.1), a diaphragm shift (soft
tissue only: the ribs stay), tilt, rotation and an elastic warp, projected with a
magnification of ~1.12 (PA, LL) or ~1.21 (AP). The depth in mm carries scale_z x magnification
as well as the inspiration; the count does not. Per film, on exact and cached model masks of a
train-split set (``study_stats.film_subject``):

- the rule's depth (right apex to the heart's lower border; laterals: both lungs' apex, as
  the lateral rule), the heart's height, the lung's own lower outline 40-60 % across it, the
  lung's height; on exact masks the visible lung's dome (``lung_right_visible``, the lung cut
  at the liver's top: the truth's dome);
- habitus scales: posterior rib period (band spacing and autocorrelation down the lateral
  half of each lung), rib bands above the dome, lung widths, apex-to-clavicle height;
- the truth: rib count, scale_z, magnification, diaphragm shift, tilt, rotation, elastic.

Reports: (1) on exact masks, what each nuisance costs (the depth replaced by truth-corrected
versions); (2) candidate rib counts (least squares on one pose half, the pass cut chosen there,
scored on the other; even/odd as ``study_stats.two_fold`` and random pose halves), fitted on
exact or model masks and scored on all films of both (films a candidate cannot measure keep the
v7 status), plus ``two_fold``'s logistic on the same keys; (3) the coefficients for rules.toml.
``--census`` (allowed on an eval split): the v7 rule vs rules.toml now with a pose bootstrap.

    .venv/bin/python scripts/inspiration_study.py data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s5/rules-cal5-f --rows /tmp/insp8/rows3-f.json
    .venv/bin/python scripts/inspiration_study.py data/synth/eval-v2 --view frontal --census \
        --pred .cache/rules/pred-s5/eval-v2 --rows /tmp/insp8/rows-eval-f.json

Result (docs/RULES.md, "Session 8 (helper): positioning.inspiration"): frontal
``depth / k_AP`` + the heart's height (rules.toml ``inspiration_estimator = "habitus"``);
lateral: nothing qualifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from study_stats import (
    Row,
    corr,
    film_subject,
    measured_by_source,
    pose_halves,
    pose_params,
    study_parser,
    study_samples,
    two_fold,
)

from qcnode.evaluate import Sample, load_masks
from qcnode.records import BoolMask, View
from qcnode.rules import RulesConfig, load_config
from qcnode.rules.geometry import Subject
from qcnode.rules.lateral import inspiration as lateral_inspiration
from qcnode.rules.masks import col_extent, row_extent, runs
from qcnode.rules.positioning import dome_depth, heart_height_mm, inspiration, medial_ends

PASS_RIBS = 10


def bands(profile: BoolMask, min_px: int = 2) -> list[float]:
    """Centres (rows) of the True runs of a column profile at least ``min_px`` long."""
    return [(a + b - 1) / 2.0 for a, b in runs(profile) if b - a >= min_px]


def rib_columns(s: Subject, lung: BoolMask) -> list[int]:
    """Columns of the lateral half of one lung (frontal) or of the whole lung (lateral)."""
    ext = col_extent(lung)
    if ext is None:
        return []
    c0, c1 = ext
    if s.view is View.LATERAL:
        return list(range(c0, c1 + 1))
    centre = (c0 + c1) / 2.0
    mid = s.shape[1] / 2.0
    if centre < mid:  # the lung on the image left: its lateral half is its left half
        return list(range(c0, int(centre) + 1))
    return list(range(int(centre), c1 + 1))


def rib_period(
    s: Subject, ribs: BoolMask, cols: Sequence[int], r0: int, r1: int
) -> tuple[float | None, float | None, int]:
    """(median band spacing mm, autocorrelation period mm, most bands on one column) of a rib
    mask down ``cols`` between rows r0..r1: the posterior rib spacing on the film scales with
    the patient's height and the magnification exactly as the dome depth does."""
    gaps: list[float] = []
    most = 0
    r0, r1 = max(0, r0), min(s.shape[0], r1)
    if r1 - r0 < 10:
        return None, None, 0
    acf = np.zeros(r1 - r0)
    for c in cols:
        prof = ribs[r0:r1, c]
        centres = bands(prof)
        most = max(most, len(centres))
        gaps.extend(np.diff(centres).tolist())
        x = prof.astype(float) - prof.mean()
        if prof.sum() >= 4:
            full = np.correlate(x, x, mode="full")[len(x) - 1 :]
            acf += full / max(full[0], 1e-9)
    med = float(np.median(gaps)) * s.sy if len(gaps) >= 3 else None
    lo, hi = int(10.0 / s.sy), min(len(acf) - 1, int(60.0 / s.sy))
    period = None
    if hi > lo + 2 and acf[0] > 0:
        seg = acf[lo:hi]
        k = int(np.argmax(seg))
        if 0 < k < len(seg) - 1:
            period = (lo + k) * s.sy
    return med, period, most


def visible_dome(s: Subject, smp: Sample) -> float | None:
    """Row of the right visible lung's dome (exact masks only; the Subject drops the extra
    channel, so it is read from the file and turned upright like the lung): the highest lower
    border over the middle 60 % of its columns (the visible lung stops at the liver's top)."""
    raw = load_masks(smp.masks)
    if "lung_right_visible" not in raw or raw["lung_right"].shape != s.shape:
        return None
    vis = raw["lung_right_visible"]
    if row_extent(raw["lung_right"]) != row_extent(s.mask("lung_right")):
        vis = vis[::-1]
    ext = col_extent(vis)
    if ext is None:
        return None
    c0, c1 = ext
    w = c1 - c0
    best = None
    for c in range(c0 + int(0.2 * w), c1 - int(0.2 * w) + 1):
        rows = np.flatnonzero(vis[:, c])
        if rows.size:
            best = rows[-1] if best is None else min(best, rows[-1])
    return None if best is None else float(best)


def lung_low_depth(s: Subject, lung: BoolMask, apex_row: float) -> float | None:
    """Depth (mm) below the apex of the lung mask's lowest outline on the columns 40-60 %
    across it (median): the lung's own lower border instead of the heart's (frontal: about the
    mid-clavicular line, where the mask runs on into the posterior recess; lateral: half-way
    between the anterior and posterior walls)."""
    ext = col_extent(lung)
    if ext is None:
        return None
    c0, c1 = ext
    w = c1 - c0
    lows = [
        int(np.flatnonzero(lung[:, c])[-1])
        for c in range(c0 + int(0.4 * w), c0 + int(0.6 * w) + 1)
        if lung[:, c].any()
    ]
    return (float(np.median(lows)) - apex_row) * s.sy if lows else None


def measure(smp: Sample, cfg: RulesConfig, pred: Path | None) -> Row | None:
    """One film's measures; ``status`` is the v7 rule's, ``status_now`` the rule's under
    ``cfg`` (etc/rules.toml)."""
    v7 = replace(cfg, positioning=replace(cfg.positioning, inspiration_estimator="depth"))
    got = film_subject(smp, cfg, pred)
    if got is None:
        return None
    _, s = got
    p = smp.truth["params"]
    n = int(p["ribs_above_right_dome"])
    lateral = s.view is View.LATERAL
    rule = lateral_inspiration if lateral else inspiration
    f = rule(s, v7)
    row: Row = {
        "id": smp.id,
        "pose": int(smp.id.split("-p")[1].split("-")[0]),
        "n": n,
        "fail": n < PASS_RIBS,
        "status": str(f.status),
        "status_now": str(rule(s, cfg).status),
        "est": f.value,
        "vp": p["view_position"],
        "ap": float(s.image.meta.view_position.strip().upper() == "AP"),
        **pose_params(p, "sz", "sx_", "mag", "shift", "tilt", "rot", "elastic"),
    }
    # the rule's lung: the right lung on a frontal, both lungs on a lateral
    lung = s.lungs if lateral else s.clean("lung_right")
    m = dome_depth(s, lung)
    top_rows = np.flatnonzero(lung.any(axis=1))
    if m is None or not top_rows.size:
        return row
    depth, _, dome = m
    top = int(top_rows[0])
    row |= {"depth": depth, "heart_h": heart_height_mm(s)}
    row["lung_low"] = lung_low_depth(s, lung, float(top))
    row["lung_h"] = (int(top_rows[-1]) - top) * s.sy
    vd = visible_dome(s, smp) if pred is None else None
    if vd is not None:
        row["vis_depth"] = (vd - top) * s.sy
    both = col_extent(s.lungs)
    if both is not None:
        row["lungs_w"] = (both[1] - both[0] + 1) * s.sx
    for side in ("right", "left"):
        ln = s.clean(f"lung_{side}")
        ribs = s.mask(f"ribs_posterior_{side}")
        med, per, most = rib_period(s, ribs, rib_columns(s, ln), top, int(dome[0]))
        row[f"rib_med_{side}"] = med
        row[f"rib_acf_{side}"] = per
        row[f"rib_bands_{side}"] = most
    ends = None if lateral else medial_ends(s)
    if ends is not None:
        row["apex_clav"] = ((ends["right"][0] + ends["left"][0]) / 2.0 - top) * s.sy
    return row


# ---- analysis -------------------------------------------------------------------------------

AP_MAG = 1.08  # rules.toml inspiration_ap_magnification (the study's fixed divisor)
# the depth with the truth's nuisances taken out (Q1; the lateral study's too)
DEPTH_TRUTH: list[list[str]] = [
    ["depth"],
    ["depth/mag"],
    ["depth/sz"],
    ["depth/sm"],
    ["depth/sm", "tilt"],
    ["depth/sm", "tilt", "rot"],
]
FOLD_SEED = 8  # the random pose halves (study_stats.pose_halves)


def feature(r: Row, key: str) -> float | None:
    """A row's value of one key, or of a derived one: ``a/b`` divides (``apm``: the AP
    magnification divisor, ``sm``: the truth's scale_z x magnification), ``vis``: the
    visible-lung dome depth (exact masks), else the stored value (None when missing)."""
    if "/" in key:
        a, b = key.split("/", 1)
        x = feature(r, a)
        if b == "apm":
            y: float | None = AP_MAG if r.get("ap") else 1.0
        elif b == "sm":
            y = float(r["sz"]) * float(r["mag"])
        else:
            y = feature(r, b)
        return None if x is None or y is None or y <= 0 else x / y
    v = r.get("vis_depth" if key == "vis" else key)
    return None if v is None else float(v)


def with_features(rows: list[Row], keys: Sequence[str]) -> list[Row]:
    return [dict(r) | {k: feature(r, k) for k in keys} for r in rows]


def fit_count(x: np.ndarray, n: np.ndarray, fail: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares of the rib count on the features (bias first), then the pass cut chosen
    for the best pass/problem agreement on the same rows (as rules.toml's a was chosen)."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w, *_ = np.linalg.lstsq(xb, n.astype(float), rcond=None)
    est = xb @ w
    best = (-1.0, PASS_RIBS - 0.5)
    for cut in np.arange(PASS_RIBS - 1.5, PASS_RIBS + 0.5, 0.02):
        acc = float(np.mean((est < cut) == fail))
        if acc > best[0]:
            best = (acc, float(cut))
    return w, best[1]


def fitted(rows: list[Row], keys: Sequence[str]) -> tuple[np.ndarray, float]:
    ok = [r for r in rows if all(r.get(k) is not None for k in keys)]
    x = np.array([[float(r[k]) for k in keys] for r in ok])
    return fit_count(x, np.array([r["n"] for r in ok]), np.array([r["fail"] for r in ok]))


def rib_formula(rows: list[Row], keys: Sequence[str]) -> tuple[np.ndarray, float, float]:
    """The count fitted on all of ``rows`` (``fitted``): its weights, the intercept for
    rules.toml (moved so that rounding at 9.5 reproduces the chosen pass cut) and the cut."""
    w, cut = fitted(with_features(rows, keys), keys)
    return w, float(w[0]) + (PASS_RIBS - 0.5 - cut), cut


PROBLEM = ("warn", "fail")


def predict(rows: list[Row], keys: Sequence[str], w: np.ndarray, cut: float) -> np.ndarray:
    """Problem (True) per film from a fitted count; films without the keys keep v7's status
    (not_evaluable reads as pass, as in qcnode eval)."""
    out = []
    for r in rows:
        if all(r.get(k) is not None for k in keys):
            est = float(w[0] + sum(w[i + 1] * float(r[k]) for i, k in enumerate(keys)))
            out.append(est < cut)
        else:
            out.append(r["status"] in PROBLEM)
    return np.array(out, dtype=bool)


def scored(
    fit_rows: list[Row], score_rows: list[Row], keys: Sequence[str], fold: dict[int, int]
) -> tuple[float, list[float]]:
    """Held-out pass/problem accuracy (%) on ALL score_rows films: the count fitted on one pose
    half of fit_rows, scored on the other half of score_rows, both ways (``predict``).
    Returns (accuracy, [accuracy on fold 0, on fold 1])."""
    hits = total = 0
    per = []
    for held in (0, 1):
        w, cut = fitted([r for r in fit_rows if fold[r["pose"]] != held], keys)
        te = [r for r in score_rows if fold[r["pose"]] == held]
        h = int(np.sum(predict(te, keys, w, cut) == np.array([bool(r["fail"]) for r in te])))
        per.append(100.0 * h / max(len(te), 1))
        hits += h
        total += len(te)
    return 100.0 * hits / max(total, 1), per


def held_scores(
    fit_rows: list[Row], score_rows: list[Row], keys: Sequence[str], folds: list[dict[int, int]]
) -> tuple[np.ndarray, list[float]]:
    """``scored`` on every pose split: the accuracies (%), and the even/odd split's per fold."""
    res = [scored(fit_rows, score_rows, keys, f) for f in folds]
    return np.array([x[0] for x in res]), res[0][1]


def featured(data: dict[str, list[Row]], cands: Sequence[Sequence[str]]) -> dict[str, list[Row]]:
    """The sources with films, their rows with every candidate's (derived) keys."""
    keys = sorted({k for c in cands for k in c})
    return {m: with_features(rows, keys) for m, rows in data.items() if rows}


def q2_header(src: str, rows: list[Row], how: str) -> None:
    """Q2's line before a scoring source's candidates."""
    n, acc = len(rows), rule_acc(rows)
    print(f"\n== Q2 scored on {src} masks ({n} films): v7 rule {acc:.1f} %; {how}")


def refit_depth(
    fdata: dict[str, list[Row]], src: str, folds: list[dict[int, int]]
) -> dict[str, np.ndarray]:
    """The depth alone, refitted on each fitting source and scored on ``src`` (the
    candidates' reference: their gain is over it)."""
    return {fit: held_scores(fdata[fit], fdata[src], ["depth"], folds)[0] for fit in fdata}


def rule_acc(rows: list[Row], key: str = "status") -> float:
    return 100.0 * float(np.mean([(r[key] in PROBLEM) == r["fail"] for r in rows]))


def decomposition(rows: list[Row], folds: list[dict[int, int]], view: str) -> None:
    """Q1 on exact masks: how much each nuisance costs, by replacing the measure with a
    truth-corrected one (held out like the candidates, films with a measured depth only)."""
    meas = [r for r in rows if r.get("depth") is not None]
    ne = [r for r in rows if r["status"] == "not_evaluable"]
    print(
        f"\n== Q1 exact masks: {len(rows)} films, v7 rule {rule_acc(rows):.1f} %; "
        f"not_evaluable {len(ne)} (truth problem on {sum(r['fail'] for r in ne)})"
    )
    print(f"   v7 rule on the {len(meas)} measured films: {rule_acc(meas):.1f} %")
    sets = [
        *DEPTH_TRUTH,
        ["vis"],
        ["vis/sm"],
        ["vis/sm", "tilt"],
        ["shift"],
        ["shift", "tilt"],
        ["shift", "tilt", "rot"],
        ["shift", "tilt", "rot", "elastic"],
    ]
    if view == "frontal":
        sets.insert(1, ["depth/apm"])
    for keys in sets:
        fr = with_features(meas, keys)
        ok = [r for r in fr if all(r.get(k) is not None for k in keys)]
        if len(ok) < 20:
            continue
        accs = [scored(ok, ok, keys, f)[0] for f in folds]
        print(
            f"   {'+'.join(keys):28s} even/odd {accs[0]:5.1f}  random halves "
            f"{np.mean(accs[1:]):5.1f} [{min(accs[1:]):.1f}, {max(accs[1:]):.1f}]  (n {len(ok)})"
        )
    dv = [r for r in meas if r.get("vis_depth") is not None]
    if dv:
        e = np.array([r["depth"] - r["vis_depth"] for r in dv])
        print(
            f"   heart's lower border below the visible-lung dome: mean {e.mean():+.1f} mm, "
            f"sd {e.std():.1f} mm"
        )
    fr = with_features(meas, ["rib_med", "sm"])
    for r in fr:
        r["smag"] = float(r["sz"]) * float(r["mag"])
        meds = [v for v in (r.get("rib_med_right"), r.get("rib_med_left")) if v is not None]
        r["rib_med"] = float(np.mean(meds)) if meds else None
    for k in (
        "rib_med",
        "rib_acf_right",
        "rib_bands_right",
        "heart_h",
        "lungs_w",
        "apex_clav",
        "lung_low",
        "lung_h",
        "depth",
    ):
        c1, c2 = corr(fr, k, "smag"), corr(fr, k, "n")
        if c1 is not None and c2 is not None:
            print(f"   r({k}, scale_z x mag) = {c1:+.2f}   r({k}, ribs) = {c2:+.2f}")


def report(data: dict[str, list[Row]], folds: list[dict[int, int]], view: str) -> None:
    """Q2: candidates fitted on exact or model masks, scored on both (all films)."""
    cands: list[list[str]] = [
        ["depth"],
        ["depth", "heart_h"],
        ["depth", "lung_low"],
        ["depth", "lung_h"],
        ["depth", "rib_bands_right"],
        ["depth", "rib_med_right"],
        ["depth", "lungs_w"],
    ]
    if view == "frontal":
        cands += [
            ["depth/apm"],
            ["depth", "ap"],
            ["depth/apm", "heart_h"],
            ["depth/apm", "lung_low"],
            ["depth/apm", "lung_h"],
            ["depth/apm", "rib_bands_right"],
            ["depth/apm", "rib_med_right"],
            ["depth/apm", "apex_clav"],
            ["depth/apm", "heart_h", "lung_h"],
        ]
    fdata = featured(data, cands)
    for src in fdata:
        q2_header(
            src,
            fdata[src],
            f"held out, 2-fold by pose (even/odd: both folds; {len(folds) - 1} random halves: "
            "mean [min, max], gain over the refitted depth)",
        )
        base = refit_depth(fdata, src, folds)
        for c in cands:
            for fit in fdata:
                acc, eo = held_scores(fdata[fit], fdata[src], c, folds)
                gain = acc - base[fit]
                print(
                    f"   {'+'.join(c):26s} fit {fit:5s}: even/odd {acc[0]:5.1f} "
                    f"({eo[0]:.1f} / {eo[1]:.1f})  random {acc[1:].mean():5.1f} "
                    f"[{acc[1:].min():.1f}, {acc[1:].max():.1f}]  gain {gain[1:].mean():+.2f} "
                    f"(<0 in {int(np.sum(gain[1:] < 0))}/{len(gain) - 1})"
                )


def logistic_check(data: dict[str, list[Row]], cands: Sequence[Sequence[str]]) -> None:
    """``study_stats.two_fold`` on the measured films: a logistic of pass/problem on the keys
    (even/odd by pose), a cross-check of the least-squares counts that needs no cut."""
    print("\n== study_stats.two_fold (logistic on the keys, films with every key measured)")
    for src, rows in data.items():
        for c in cands:
            fr = with_features(rows, c)
            r = two_fold(fr, list(c))
            print(
                f"   {src:5s} {'+'.join(c):26s} acc {r['acc']:5.1f} sens {r['sens']:5.1f} "
                f"spec {r['spec']:5.1f} (n {r['n']}, majority {r['baseline']:.1f})"
            )


def final_fit(rows: list[Row], keys: Sequence[str]) -> None:
    """The coefficients for rules.toml: least squares on all films of ``rows``, then the
    intercept moved so that rounding at 9.5 reproduces the chosen pass cut."""
    w, a, cut = rib_formula(rows, keys)
    terms = ", ".join(
        f"{k}: {w[i + 1]:.5f} ribs/unit ({1.0 / w[i + 1]:.2f} units/rib)"
        for i, k in enumerate(keys)
    )
    print(f"   final fit {'+'.join(keys)}: ribs_at_apex {a:.3f} (cut {cut:.2f}); {terms}")


def census(rows: list[Row], mode: str, n_boot: int = 2000) -> None:
    """The v7 rule vs the rule now on one set: accuracy, the gain with a bootstrap over poses
    (the truth is one count per pose, so the poses, not the films, are the samples), and by
    header (AP / PA)."""
    v7 = np.array([(r["status"] in PROBLEM) == r["fail"] for r in rows])
    now = np.array([(r["status_now"] in PROBLEM) == r["fail"] for r in rows])
    poses = sorted({r["pose"] for r in rows})
    idx = {p: [i for i, r in enumerate(rows) if r["pose"] == p] for p in poses}
    rng = np.random.default_rng(8)
    gains = []
    for _ in range(n_boot):
        pick = [i for p in rng.choice(poses, len(poses)) for i in idx[p]]
        gains.append(100.0 * float(np.mean(now[pick]) - np.mean(v7[pick])))
    lo, hi = np.percentile(gains, [2.5, 97.5])
    print(
        f"{mode}: {len(rows)} films, {len(poses)} poses: v7 {100 * v7.mean():.2f} % -> now "
        f"{100 * now.mean():.2f} % (gain {100 * (now.mean() - v7.mean()):+.2f}, 95 % pose "
        f"bootstrap [{lo:+.2f}, {hi:+.2f}]); films whose pass/problem changed "
        f"{int(np.sum(v7 != now))}"
    )
    for head in (1.0, 0.0):
        sel = np.array([r["ap"] == head for r in rows])
        if sel.any():
            print(
                f"   {'AP' if head else 'not AP'} header ({int(sel.sum())}): v7 "
                f"{100 * v7[sel].mean():.1f} -> {100 * now[sel].mean():.1f} %"
            )


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(
        __doc__,
        random_halves=True,
        descriptive=("--census", "the v7 rule vs rules.toml now, per pose"),
    )
    ap.add_argument("--view", choices=("frontal", "lateral"), default=None)
    args = ap.parse_args(argv)
    cfg = load_config()
    samples = [
        s
        for s in study_samples(args.set_dir, None, train_only=not args.census)
        if s.view in (View.FRONTAL, View.LATERAL)
        and (args.view is None or s.view.value == args.view)
    ]
    view = samples[0].view.value
    data = measured_by_source(
        args.rows, samples[: args.limit], lambda smp, pred: measure(smp, cfg, pred), args.pred
    )
    folds = pose_halves([r["pose"] for r in data["exact"]], args.random, FOLD_SEED)
    for mode, rows in data.items():
        if rows and not args.census:
            now = rule_acc(rows, "status_now")
            print(
                f"{mode}: v7 rule {rule_acc(rows):.1f} %, rules.toml now {now:.1f} % "
                "(in-sample: its coefficients were fitted on these films)"
            )
    if args.census:
        for mode, rows in data.items():
            census(rows, mode)
        return 0
    decomposition(data["exact"], folds, view)
    report(data, folds, view)
    checks = [["depth"], ["depth", "heart_h"], ["depth", "lung_low"]]
    if view == "frontal":
        checks += [["depth/apm"], ["depth/apm", "heart_h"]]
    logistic_check({m: r for m, r in data.items() if r}, checks)
    print("\n== coefficients fitted on all films' model masks")
    chosen = [["depth/apm", "heart_h"]] if view == "frontal" else [["depth", "lung_low"]]
    for c in chosen:
        final_fit(data["model"], c)
        final_fit(data["exact"], c)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
