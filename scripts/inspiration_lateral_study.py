"""Lateral `positioning.inspiration`: where the dome-depth measure loses on laterals, and whether
a habitus scale seen on the lateral film (the sternum, the heart, the trachea, ...) fixes it.

Why: the lateral rule reads ``ribs = a + depth / mm_per_rib``, depth = the heart's lower border
below both lungs' apex (mm). The truth (qcnode/synth/truth.py ``_lateral``) is the same count
as on a frontal: the posterior right ribs above the right dome, counted on the pose projected
PA (``generate.count_ribs``). It depends on the diaphragm shift (soft tissue below the dome
moves, the ribs do not), tilt, rotation and the elastic warp, but not on the habitus scale
(z 0.9-1.1) nor the magnification (~1.12 on LL / RL), which the depth in mm carries. Session 8
found truth scale_z would give +5-6 points on laterals; this study looks for that scale on the
film. Per film, on exact and cached model masks (``study_stats.film_subject``), besides
``inspiration_study.measure``'s keys:

- the sternum (bone: the diaphragm shift does not move it): vertical extent ``st_h`` and
  length along its axis ``st_len`` (mm), its top and lower end below the apex (``st_top``,
  ``st_low``) and the dome below its lower end (``xiph``: the diaphragm relative to the
  xiphoid), whether it touches the field edge;
- the heart's top below the apex (``heart_top``: the shift tapers off above the dome), the
  trachea's lower end below the apex (``trach``, ~ the carina), the clavicles' mean row below
  the apex (``clav``), the chest's AP depth at mid-lung (``body_ap``, body mask) and the lungs'
  AP extent (``lungs_w``);
- the spine's vertebral period (``vert``: autocorrelation of the spine mask's width profile,
  exact masks show the discs), the scapulae's height (``scap_h``), the heart's area, the
  inclination of the spine and of the sternum (``spine_lean``, ``st_lean``: the tilt on a
  lateral is an in-plane turn);
- ``depth_cut``: the rule's depth read even when the heart's lowest row touches the field edge.

Reports: the v7 formula on ``depth_cut`` where the rule is not evaluable; Q1 (per mask source)
the depth replaced by truth-corrected versions, r of each measure with scale_z x magnification,
the count, tilt and shift; Q2 least-squares counts fitted on one pose half (exact or model
masks), the pass cut chosen there, scored on the other half of both sources (even/odd as
``study_stats.two_fold`` plus random halves; films a candidate cannot measure keep the v7
status); the choice itself held out (``chooser``). ``--extra SET[:PRED][:ROWS]`` pools more
train-split sets (repeatable).

    .venv/bin/python scripts/inspiration_lateral_study.py data/synth/rules-cal5-l \
        --pred .cache/rules/pred-s5/rules-cal5-l --rows /tmp/insp9/rows-l.json \
        --extra data/synth/insp-cal9-l:.cache/rules/pred-s9/insp-cal9-l:/tmp/insp9/rows-l9.json \
        --extra data/synth/train-v4::/tmp/insp9/rows-v4.json

Result (docs/RULES.md, "Session 9 (helper): lateral positioning.inspiration"): nothing reaches
the bar (+3 points held out on the model's masks, exact not worse); the lateral rule is
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from inspiration_study import (
    DEPTH_TRUTH,
    FOLD_SEED,
    PROBLEM,
    featured,
    fitted,
    held_scores,
    measure,
    predict,
    q2_header,
    refit_depth,
    rib_formula,
    rule_acc,
    scored,
    with_features,
)
from study_stats import (
    Row,
    corr,
    film_subject,
    measured_by_source,
    pose_halves,
    study_parser,
    study_samples,
)

from qcnode.evaluate import Sample
from qcnode.records import BoolMask, View
from qcnode.rules import RulesConfig, load_config
from qcnode.rules.completeness import anterior_sign
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import col_extent, extreme, row_extent

PASS_RIBS = 10
V7_A, V7_MM = 3.25, 39.3  # rules.toml lateral_inspiration_* (v7)
Data = dict[str, list[Row]]


def axis_length_mm(s: Subject, mask: BoolMask) -> float | None:
    """Extent (mm) of a mask along its principal axis (a tilted sternum's length)."""
    r, c = np.nonzero(mask)
    if r.size < 5:
        return None
    xy = np.stack([r * s.sy, c * s.sx], axis=1)
    xy = xy - xy.mean(axis=0)
    _, _, vt = np.linalg.svd(xy, full_matrices=False)
    t = xy @ vt[0]
    return float(t.max() - t.min()) + s.sy


def vertebral_period(s: Subject, spine: BoolMask, r0: int, r1: int) -> float | None:
    """Period (mm, 15-40 mm) of the spine mask's per-row width between rows r0..r1: discs
    narrow the mask between the vertebral bodies (exact masks)."""
    w = spine[r0:r1].sum(axis=1).astype(float)
    if len(w) < 20 or w.std() == 0:
        return None
    x = w - w.mean()
    acf = np.correlate(x, x, mode="full")[len(x) - 1 :]
    acf /= max(acf[0], 1e-9)
    lo, hi = int(15.0 / s.sy), min(len(acf) - 1, int(40.0 / s.sy))
    if hi <= lo + 2:
        return None
    k = int(np.argmax(acf[lo:hi]))
    if not (0 < k < hi - lo - 1) or acf[lo + k] < 0.1:
        return None
    return (lo + k) * s.sy


def cut_depth(s: Subject) -> float | None:
    """The rule's depth without its field-edge check on the heart: the heart's lowest row
    below the lungs' apex even when that row touches the field edge (an anterior shutter cuts
    a lateral's heart from the front, where its lower border runs on along the diaphragm);
    None when the heart or apex is missing or the apex lies beyond the field."""
    heart = s.clean("heart")
    apex = extreme(s.lungs, -1.0, 0.0)
    ext = row_extent(heart)
    if apex is None or ext is None or s.margin_mm(apex) < 0.0:
        return None
    return (ext[1] - apex[0]) * s.sy


def lean_deg(s: Subject, mask: BoolMask, r0: int, r1: int) -> float | None:
    """Inclination (degrees) of a mask's per-row centre line between rows r0..r1, positive
    when its upper end leans anterior: the patient's tilt shows on a lateral as an in-plane
    turn of the spine and the sternum."""
    rows, centres = [], []
    for r in range(max(0, r0), min(s.shape[0], r1)):
        cols = np.flatnonzero(mask[r])
        if cols.size:
            rows.append(r * s.sy)
            centres.append(float(np.median(cols)) * s.sx)
    if len(rows) < 10:
        return None
    slope = float(np.polyfit(rows, centres, 1)[0])  # mm of column per mm down
    return float(np.degrees(np.arctan(-slope * anterior_sign(s))))


def measure_lateral(smp: Sample, cfg: RulesConfig, pred: Path | None) -> Row | None:
    row = measure(smp, cfg, pred)
    if row is None:
        return row
    got = film_subject(smp, cfg, pred)
    assert got is not None
    _, s = got
    row["depth_cut"] = cut_depth(s)
    row["spacing_source"] = s.spacing_source
    if row.get("depth") is None:
        return row
    lungs = s.lungs
    top_rows = np.flatnonzero(lungs.any(axis=1))
    top = float(top_rows[0])
    dome_row = top + float(row["depth"]) / s.sy
    st = s.clean("sternum")
    ext = row_extent(st)
    if ext is not None and st.sum() >= 5:
        row["st_h"] = (ext[1] - ext[0] + 1) * s.sy
        row["st_len"] = axis_length_mm(s, st)
        row["st_top"] = (ext[0] - top) * s.sy
        row["st_low"] = (ext[1] - top) * s.sy
        row["xiph"] = (dome_row - ext[1]) * s.sy
        row["st_cut"] = float(s.edge_contact_mm(st) > 0.0)
    heart = row_extent(s.clean("heart"))
    if heart is not None:
        row["heart_top"] = (heart[0] - top) * s.sy
    tr = row_extent(s.clean("trachea"))
    if tr is not None:
        row["trach"] = (tr[1] - top) * s.sy
    clav = s.mask("clavicle_right") | s.mask("clavicle_left")
    if clav.any():
        row["clav"] = (float(np.nonzero(clav)[0].mean()) - top) * s.sy
    mid = int(top + 0.5 * float(row["depth"]) / s.sy)
    body = s.mask("body")
    if 0 <= mid < s.shape[0] and body[mid].any():
        cols = np.flatnonzero(body[mid])
        row["body_ap"] = (cols[-1] - cols[0] + 1) * s.sx
    lw = col_extent(lungs)
    if lw is not None:
        row["lungs_w"] = (lw[1] - lw[0] + 1) * s.sx
    scap = [row_extent(s.clean(f"scapula_{side}")) for side in ("right", "left")]
    hs = [(e[1] - e[0] + 1) * s.sy for e in scap if e is not None]
    row["scap_h"] = float(np.mean(hs)) if hs else None
    row["heart_sqrt_area"] = float(np.sqrt(s.area_mm2(s.clean("heart"))))
    row["vert"] = vertebral_period(s, s.mask("spine"), int(top), int(dome_row))
    row["ant"] = anterior_sign(s)
    lung_rows = row_extent(lungs)
    if lung_rows is not None:
        row["spine_lean"] = lean_deg(s, s.clean("spine"), lung_rows[0], int(dome_row))
    if ext is not None:
        row["st_lean"] = lean_deg(s, st, ext[0], ext[1] + 1)
    return row


CANDS: list[list[str]] = [
    ["depth"],
    ["depth", "heart_h"],
    ["depth", "lung_low"],
    ["depth", "lung_h"],
    ["depth", "st_len"],
    ["depth", "st_h"],
    ["depth/st_len"],
    ["depth/st_h"],
    ["depth", "heart_h", "st_len"],
    ["depth", "st_len", "lung_low"],
    ["xiph"],
    ["xiph/st_len"],
    ["depth", "xiph"],
    ["depth", "st_low"],
    ["depth", "st_top"],
    ["depth", "heart_top"],
    ["depth/heart_top"],
    ["depth", "trach"],
    ["depth/trach"],
    ["depth", "clav"],
    ["depth", "body_ap"],
    ["depth", "lungs_w"],
    ["depth", "vert"],
    ["depth", "scap_h"],
    ["depth/scap_h"],
    ["depth", "heart_sqrt_area"],
    ["depth", "lung_low", "heart_h"],
    ["depth", "spine_lean"],
    ["depth", "st_lean"],
    ["depth", "heart_h", "spine_lean"],
    ["depth", "heart_h", "st_lean"],
    ["depth", "lung_low", "lung_h"],
    ["depth/vert"],
]
TRUTH_SETS: list[list[str]] = [
    *DEPTH_TRUTH,
    ["vis/sm"],
    ["shift", "tilt", "rot"],
]
SCALES = [
    "heart_h",
    "heart_top",
    "lung_h",
    "st_h",
    "st_len",
    "st_top",
    "st_low",
    "xiph",
    "trach",
    "clav",
    "body_ap",
    "lungs_w",
    "vert",
    "scap_h",
    "heart_sqrt_area",
    "spine_lean",
    "st_lean",
    "rib_med_right",
    "depth",
]


def truth_costs(rows: list[Row], folds: list[dict[int, int]], src: str) -> None:
    """Q1: the measure replaced by truth-corrected versions (held out like the candidates,
    films with a measured depth only): what each nuisance costs, and so the most a film-seen
    habitus scale could give on these masks."""
    meas = [r for r in rows if r.get("depth") is not None]
    print(f"\n== Q1 {src} masks: v7 rule {rule_acc(rows):.1f} % on {len(rows)} films")
    for keys in TRUTH_SETS:
        fr = [r for r in with_features(meas, keys) if all(r.get(k) is not None for k in keys)]
        if len(fr) < 0.5 * len(meas):
            continue
        accs = [scored(fr, fr, keys, f)[0] for f in folds]
        print(
            f"   {'+'.join(keys):24s} even/odd {accs[0]:5.1f}  random {np.mean(accs[1:]):5.1f} "
            f"(n {len(fr)})"
        )


def scale_table(data: dict[str, list[Row]]) -> None:
    print("\n== r with the truth's scale_z x magnification / with the count / tilt / shift")
    for src, rows in data.items():
        fr = [dict(r) | {"smag": float(r["sz"]) * float(r["mag"])} for r in rows]
        for k in SCALES:
            vals = [corr(fr, k, t) for t in ("smag", "n", "tilt", "shift")]
            n = sum(r.get(k) is not None for r in fr)
            if all(v is not None for v in vals):
                txt = "  ".join(f"{v:+.2f}" for v in vals if v is not None)
                print(f"   {src:5s} {k:14s} {txt}   (n {n})")


def report(
    data: dict[str, list[Row]],
    folds: list[dict[int, int]],
    cands: Sequence[Sequence[str]],
) -> None:
    fdata = featured(data, cands)
    for src in fdata:
        q2_header(
            src,
            fdata[src],
            "held out: even/odd (folds), random halves mean [min, max], gain over the refitted "
            "depth (<0 in k/N), vs v7 even/odd",
        )
        v7 = [scored_v7(fdata[src], f) for f in folds]
        base = refit_depth(fdata, src, folds)
        print(f"   v7 as shipped: even/odd {v7[0]:5.1f} random {np.mean(v7[1:]):5.1f}")
        for c in cands:
            for fit in fdata:
                n_fit = sum(all(r.get(k) is not None for k in c) for r in fdata[fit])
                if n_fit < 0.5 * len(fdata[fit]):
                    print(f"   {'+'.join(c):24s} fit {fit:5s}: measured on {n_fit} films only")
                    continue
                acc, eo = held_scores(fdata[fit], fdata[src], c, folds)
                gain = acc - base[fit]
                gv7 = acc - np.array(v7)
                print(
                    f"   {'+'.join(c):24s} fit {fit:5s}: {acc[0]:5.1f} "
                    f"({eo[0]:.1f} / {eo[1]:.1f})  random {acc[1:].mean():5.1f} "
                    f"[{acc[1:].min():.1f}, {acc[1:].max():.1f}]  vs refit {gain[1:].mean():+.2f} "
                    f"(<0 {int(np.sum(gain[1:] < 0))}/{len(gain) - 1})  vs v7 {gv7[0]:+.1f} / "
                    f"{gv7[1:].mean():+.2f}"
                )


def chooser(data: Data, folds: list[dict[int, int]], cands: Sequence[Sequence[str]]) -> None:
    """The study's choice itself held out: on one pose half every candidate (fitted there on
    exact or on model masks) and v7 compete; the best model-mask accuracy wins among those not
    worse than v7 on that half's exact masks; the winner is scored on the other half. Printed
    per pose split: held-out (model, exact) accuracy of the winners vs v7, and the winners."""
    keys = sorted({k for c in cands for k in c})
    fd = {m: with_features(rows, keys) for m, rows in data.items()}
    y = {m: np.array([bool(r["fail"]) for r in fd[m]]) for m in fd}
    v7 = {m: np.array([r["status"] in PROBLEM for r in fd[m]]) for m in fd}
    print("\n== the choice held out (winner on one half's model masks, exact not worse than v7)")
    gains: dict[str, list[float]] = {"model": [], "exact": []}
    for j, fold in enumerate(folds):
        half = {m: np.array([fold[int(r["pose"])] for r in fd[m]]) for m in fd}
        hit = {m: 0 for m in fd}
        base = {m: 0 for m in fd}
        won = []
        for held in (0, 1):
            tr = {m: half[m] != held for m in fd}
            te = {m: half[m] == held for m in fd}

            def acc(pred: dict[str, np.ndarray], m: str, sel: dict[str, np.ndarray]) -> float:
                return float(np.mean(pred[m][sel[m]] == y[m][sel[m]]))

            best, best_key, best_name = v7, (acc(v7, "model", tr), acc(v7, "exact", tr)), "v7"
            for c in cands:
                for fit in fd:
                    rows_tr = [r for r, k in zip(fd[fit], tr[fit], strict=True) if k]
                    if sum(all(r.get(k) is not None for k in c) for r in rows_tr) < 20:
                        continue
                    w, cut = fitted(rows_tr, c)
                    pred = {m: predict(fd[m], c, w, cut) for m in fd}
                    key = (acc(pred, "model", tr), acc(pred, "exact", tr))
                    if key[1] >= acc(v7, "exact", tr) and key > best_key:
                        best, best_key, best_name = pred, key, f"{'+'.join(c)} ({fit})"
            won.append(best_name)
            for m in fd:
                hit[m] += int(np.sum(best[m][te[m]] == y[m][te[m]]))
                base[m] += int(np.sum(v7[m][te[m]] == y[m][te[m]]))
        res = {m: (100.0 * hit[m] / len(y[m]), 100.0 * base[m] / len(y[m])) for m in fd}
        for m in fd:
            gains[m].append(res[m][0] - res[m][1])
        if j < 6:
            print(
                f"   split {j}: model {res['model'][0]:.1f} vs v7 {res['model'][1]:.1f}, exact "
                f"{res['exact'][0]:.1f} vs v7 {res['exact'][1]:.1f}; winners {won[0]} | {won[1]}"
            )
    for m, g in gains.items():
        ga = np.array(g)
        neg = int(np.sum(ga[1:] < 0))
        print(
            f"   {m}: gain over v7 even/odd {ga[0]:+.2f}, random halves mean {ga[1:].mean():+.2f} "
            f"[{ga[1:].min():+.2f}, {ga[1:].max():+.2f}], <0 in {neg}/{len(ga) - 1}"
        )


def fallback(data: Data) -> None:
    """The v7 formula on ``depth_cut`` where the rule is not evaluable (the heart's lowest row
    on the field edge): what reading a cut heart's lower border would change, per set."""
    print("\n== v7 with the cut heart's lowest row where the rule is not evaluable")
    for src, rows in data.items():
        for name in sorted({str(r["set"]) for r in rows}):
            sel = [r for r in rows if r["set"] == name]
            ne = [r for r in sel if r.get("depth") is None]
            hit = 0
            for r in sel:
                d = r.get("depth", None)
                d = r.get("depth_cut") if d is None else d
                if d is None:
                    hit += not r["fail"]
                else:
                    hit += (round(V7_A + float(d) / V7_MM) < PASS_RIBS) == r["fail"]
            bad = sum(bool(r["fail"]) for r in ne)
            print(
                f"   {src:5s} {name:14s} v7 {rule_acc(sel):5.1f} % -> "
                f"{100.0 * hit / len(sel):5.1f} % (not evaluable {len(ne)}, truth problems {bad})"
            )


def scored_v7(rows: list[Row], fold: dict[int, int]) -> float:
    """The shipped rule's accuracy on the films of both folds (nothing fitted)."""
    return rule_acc([r for r in rows if int(r["pose"]) in fold])


def final_fit(rows: list[Row], keys: Sequence[str]) -> None:
    w, a, cut = rib_formula(rows, keys)
    terms = ", ".join(f"{k}: {w[i + 1]:.5f} ribs/unit" for i, k in enumerate(keys))
    print(f"   {'+'.join(keys)}: a {a:.3f} (cut {cut:.2f}); {terms}")


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(__doc__, random_halves=True)
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="SET[:PRED][:ROWS]",
        help="another train-split lateral set to pool (its cached model masks, its rows cache)",
    )
    ap.add_argument("--final", nargs="*", default=[], help="'+'-joined key sets to fit on all")
    args = ap.parse_args(argv)
    cfg = load_config()

    def rows_of(set_dir: Path, pred: Path | None, cache: Path | None, offset: int) -> Data:
        samples = study_samples(set_dir, View.LATERAL)[: args.limit]
        data = measured_by_source(cache, samples, lambda smp, p: measure_lateral(smp, cfg, p), pred)
        for rows in data.values():
            for r in rows:
                r["pose"] = int(r["pose"]) + offset
                r["set"] = set_dir.name
        return data

    data = rows_of(args.set_dir, args.pred, args.rows, 0)
    for i, spec in enumerate(args.extra, start=1):
        parts = spec.split(":")
        paths = [Path(x) if x else None for x in parts[1:]] + [None, None]
        more = rows_of(Path(parts[0]), paths[0], paths[1], 100_000 * i)
        data = {k: data[k] + more.get(k, []) for k in data}
    data = {k: v for k, v in data.items() if v}
    for src, rows in data.items():
        sets = sorted({str(r["set"]) for r in rows})
        print(f"{src}: {len(rows)} films ({', '.join(sets)}), v7 rule {rule_acc(rows):.1f} %")
    fallback(data)
    folds = pose_halves([int(r["pose"]) for r in data["exact"]], args.random, FOLD_SEED)
    for src, rows in data.items():
        truth_costs(rows, folds, src)
    scale_table(data)
    report(data, folds, CANDS)
    if "model" in data:
        chooser(data, folds, CANDS)
    if args.final:
        print("\n== coefficients fitted on all films")
        for src, rows in data.items():
            for c in args.final:
                print(f"  {src}:", end="")
                final_fit(rows, c.split("+"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
