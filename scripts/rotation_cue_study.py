"""Frontal `positioning.rotation`: where the end-to-end loss comes from, and a second cue.

Why: on eval-v2 frontals the rule (medial clavicle ends vs the spinous-process line) is right
on ~92 % of films with exact masks but 82 % with the shipped model's masks, and is
not_evaluable wherever both clavicles are missing (mostly cut off by a closed field).
This script measures, per frontal film of a train-split set, on its exact masks AND on the
model's cached masks (one row per film, both subjects built together so that they can be
mixed):
- the truth's signed apparent rotation (qcnode/synth/pose.py ``apparent_rotation``);
- the rule's status and signed angle on each source, its medial ends and spine line; on the
  model's masks also the angle with the exact ends + the model's spine line and with the
  model's ends + the exact spine line (which part of the mask error moves the verdict);
- second cues, each an anterior structure (or the thorax outline) against the spinous
  processes, signed so that + means the same turn as the rule's + angle:
  ``sternum`` / ``trachea`` / ``heart``: the structure's mean centre column minus the spine
  line over the structure's rows (mm); ``lungs`` / ``ribs``: at 30/50/70 % of the lungs'
  height, (dR - dL) / (dR + dL) of the spine centre's distances to the right and left outer
  lung (or posterior-rib) borders, averaged over the three heights.
Analysis, 2-fold by pose (the same halves as study_stats.two_fold): each cue, alone or with
the rule's angle, mapped to degrees by least squares against the signed truth per
projection (AP/PA), fitted on one half (exact or model masks) and scored on the other at
the rule's 5 deg or at a threshold fitted on the half; (a) used where the rule is
not_evaluable (vs the truth's majority class there); (b) combined with the rule: in the
least squares, or the rule's angle averaged with the cue's estimate (weight 0.5 or fitted).
Twice: without intercepts with the rule as shipped (etc/rules.toml has no offset: this one
CT's anatomy is not patients'), and with intercepts with the rule as in
etc/rules-synthetic-ct.toml (the CT's own offsets taken out: what a cue adds beyond them).

The same for positioning.tilt (the value with the exact clavicle ends + the model's apices
and vice versa; cues: the sternum's top below the apices, the posterior recesses below the
heart's lowest row, below the sternum's lowest row). ``--census-only`` prints only the
decompositions (nothing fitted), so it may run on an eval set.

    .venv/bin/python scripts/rotation_cue_study.py data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s5/rules-cal5-f --rows /tmp/rc8/rows-f.json

Result (docs/RULES.md, "Session 8 (helper): frontal rotation — a second cue"): nothing
ships. On the model's masks 56 of the rule's 65 lost films (vs exact) are verdicts moved by
mask errors, 9 are not_evaluable; the spine line and the medial ends move the angle about
equally. The trachea's offset combined with the rule wins both folds only in the shipped
world, where its gain is this one CT's trachea offset (+2 mm) cancelling this CT's
spine-line bias (-0.9 deg); with both offsets taken out no cue adds a point to the rule, and
no cue beats the majority class on the not_evaluable films. Tilt: the model's clavicle-end
rows dominate; no cue helps.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from study_stats import best_threshold, corr, film_subject, measured, study_parser, study_samples

from qcnode.evaluate import Sample
from qcnode.records import BoolMask, View
from qcnode.rules import RulesConfig, load_config
from qcnode.rules.completeness import SIDES, lateral_sign
from qcnode.rules.geometry import Subject
from qcnode.rules.organs import unsegmented_clavicle
from qcnode.rules.positioning import (
    apex_row,
    medial_ends,
    rotation_constants,
    rotation_measure,
    spine_line,
    tilt_value,
)
from qcnode.synth.pose import apparent_rotation, apparent_tilt

Row = dict[str, Any]
HEIGHTS = (0.3, 0.5, 0.7)
SPINE_WINDOWS_MM = (20.0, 60.0, 80.0, 120.0)  # the rule: +-40 mm


def x_left(s: Subject, col: float) -> float:
    """A column as mm towards the patient's left (flips and mirroring taken out)."""
    return col * lateral_sign(s, "left") * s.sx


def spine_col(s: Subject, row: int, half_mm: float = 20.0) -> float | None:
    """The spine line's column at ``row`` (line fitted +-half_mm around it)."""
    h = round(half_mm / s.sy)
    line = spine_line(s, row - h, row + h)
    return None if line is None else line[0] * row + line[1]


def structure_offset(s: Subject, name: str) -> float | None:
    """mm the structure's centre lies to the patient's RIGHT of the spine line over its
    rows (the sign of the rule's angle: anterior structures move right for + turns)."""
    m = s.clean(name)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size < 5:
        return None
    line = spine_line(s, int(rows[0]), int(rows[-1]))
    if line is None:
        return None
    a, b = line
    offs = []
    for r in rows:
        cc = np.flatnonzero(m[r])
        offs.append(x_left(s, a * r + b) - x_left(s, float(cc.mean())))
    return float(np.mean(offs))


def outline_asymmetry(s: Subject, right: str, left: str) -> float | None:
    """Mean over HEIGHTS of (dR - dL) / (dR + dL): the spine centre's distances to the
    right and left outer borders of two masks (lungs or posterior ribs), at rows spaced over
    the lungs' height; rows where a border is missing or on the field edge are skipped."""
    lungs = s.clean("lung_right") | s.clean("lung_left")
    rows = np.flatnonzero(lungs.any(axis=1))
    if rows.size < 10:
        return None
    mr, ml = s.mask(right), s.mask(left)
    sr, sl = lateral_sign(s, "right"), lateral_sign(s, "left")
    vals = []
    for f in HEIGHTS:
        r = int(rows[0] + f * (rows[-1] - rows[0]))
        c = spine_col(s, r)
        if c is None:
            continue
        cr, cl = np.flatnonzero(mr[r]), np.flatnonzero(ml[r])
        if cr.size == 0 or cl.size == 0:
            continue
        outer_r = cr.max() if sr > 0 else cr.min()
        outer_l = cl.max() if sl > 0 else cl.min()
        ring = s.field_ring[r]
        if ring[outer_r] or ring[outer_l] or not s.field[r, outer_r] or not s.field[r, outer_l]:
            continue
        dr = (outer_r - c) * sr * s.sx
        dl = (outer_l - c) * sl * s.sx
        if dr + dl <= 1.0:
            continue
        vals.append((dr - dl) / (dr + dl))
    return float(np.mean(vals)) if vals else None


def rule_angle(s: Subject, cfg: RulesConfig, ends: Any, line: tuple[float, float]) -> float | None:
    """The rule's signed angle from given ends and spine line (positioning.rotation_measure's
    formula, so that ends and line from different masks can be mixed)."""
    a, b = line
    d = {}
    for side, (r, c) in ends.items():
        d[side] = (a * r + b - c) * (-lateral_sign(s, side)) * s.sx
    total = d["right"] + d["left"]
    if total <= 1.0:
        return None
    k, offset = rotation_constants(s, cfg)
    return math.degrees(math.atan(k * ((d["right"] - d["left"]) / total - offset)))


def lowest_row(s: Subject, mask: BoolMask) -> float | None:
    """A mask's lowest row; None when the lowest pixel of any of its columns lies on the
    field edge (the mask may go on beyond it)."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    bottoms = mask.shape[0] - 1 - np.argmax(mask[::-1, cols], axis=0)
    if (s.field_ring[bottoms, cols] | ~s.field[bottoms, cols]).any():
        return None
    return float(bottoms.max())


def tilt_measures(s: Subject, cfg: RulesConfig, p: str) -> Row:
    """positioning.tilt's value on these masks and second tilt cues (mm, + = the anterior
    structure projects higher than a posterior one, as for the rule's apices above the
    clavicles): ``t_recess`` the lungs' lowest row (posterior recesses) below the heart's
    lowest row (the anterior dome); ``t_sternum`` the sternum's top below the apices;
    ``t_xiphoid`` the lungs' lowest row below the sternum's lowest row; also the rule's
    value from the clavicle ends (``t_ends_row``) and apex rows for mixing sources."""
    row: Row = {}
    tv = tilt_value(s, cfg)
    if tv is not None:
        row[p + "tilt"] = tv[0]
    width = cfg.positioning.tilt_apex_width_mm
    apices = [apex_row(s, s.mask(f"lung_{side}"), width) for side in SIDES]
    top = None if any(a is None for a in apices) else float(np.mean(apices))  # type: ignore[arg-type]
    row[p + "apex_row"] = top
    ends = medial_ends(s)
    row[p + "ends_row"] = None if ends is None else (ends["right"][0] + ends["left"][0]) / 2.0
    lungs = s.clean("lung_right") | s.clean("lung_left")
    lung_low = lowest_row(s, lungs)
    heart_low = lowest_row(s, s.clean("heart"))
    sternum = s.clean("sternum")
    st_rows = np.flatnonzero(sternum.any(axis=1))
    row[p + "t_recess"] = (
        None if lung_low is None or heart_low is None else (lung_low - heart_low) * s.sy
    )
    row[p + "t_sternum"] = (
        None
        if top is None
        or st_rows.size == 0
        or s.margin_mm((float(st_rows[0]), float(np.flatnonzero(sternum[st_rows[0]]).mean())))
        <= 0.0
        else (st_rows[0] - top) * s.sy
    )
    st_low = lowest_row(s, sternum)
    row[p + "t_xiphoid"] = (
        None if lung_low is None or st_low is None else (lung_low - st_low) * s.sy
    )
    return row


def source_row(s: Subject, cfg: RulesConfig, p: str) -> Row:
    row: Row = {}
    m = rotation_measure(s, cfg)
    if m is None:
        ends = medial_ends(s)
        row[p + "why"] = (
            "no_clavicle"
            if ends is None
            else "unsegmented"
            if unsegmented_clavicle(s, cfg) is not None
            else "geometry"
        )
    else:
        theta, d, ends, line, _ = m
        row[p + "theta"] = theta
        row[p + "dR"], row[p + "dL"] = d["right"], d["left"]
        row[p + "ends"] = {k: list(v) for k, v in ends.items()}
        row[p + "line"] = list(line)
        mid = (ends["right"][0] + ends["left"][0]) / 2.0
        for half_mm in SPINE_WINDOWS_MM:  # the spine line fitted over other windows
            h = round(half_mm / s.sy)
            other = spine_line(s, int(mid) - h, int(mid) + h)
            row[f"{p}theta_w{half_mm:.0f}"] = (
                None if other is None else rule_angle(s, cfg, ends, other)
            )
    row.update(tilt_measures(s, cfg, p))
    for name in ("sternum", "trachea", "heart"):
        row[p + name] = structure_offset(s, name)
    row[p + "lungs"] = outline_asymmetry(s, "lung_right", "lung_left")
    row[p + "ribs"] = outline_asymmetry(s, "ribs_posterior_right", "ribs_posterior_left")
    return row


def measure(smp: Sample, cfg: RulesConfig, pred_dir: Path | None) -> Row | None:
    ex = film_subject(smp, cfg, None)
    mo = film_subject(smp, cfg, pred_dir) if pred_dir is not None else None
    if ex is None:
        return None
    se = ex[1]
    tr = smp.truth["rules"]["positioning.rotation"]
    row: Row = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "ap": se.image.meta.view_position.strip().upper() == "AP",
        "truth": apparent_rotation(smp.truth["params"]),
        "fail": tr["status"] == "fail",
        "tilt_truth": apparent_tilt(smp.truth["params"]),
        "tilt_fail": smp.truth["rules"]["positioning.tilt"]["status"] == "fail",
    }
    row.update(source_row(se, cfg, "e_"))
    if mo is not None:
        sm = mo[1]
        row.update(source_row(sm, cfg, "m_"))
        same = sm.orientation == se.orientation and sm.shape == se.shape and sm.sy == se.sy
        row["sy"] = se.sy
        row["same_frame"] = same
        if same and "m_ends" in row and "e_ends" in row:
            row["mix_eline"] = rule_angle(sm, cfg, row["m_ends"], tuple(row["e_line"]))
            row["mix_eends"] = rule_angle(sm, cfg, row["e_ends"], tuple(row["m_line"]))
    return row


# ---- analysis -------------------------------------------------------------------------------

CUES = ("sternum", "trachea", "heart", "lungs", "ribs")
# the rule's constants (w/D, ratio offset) per projection (AP?): etc/rules.toml (no offset)
# and etc/rules-synthetic-ct.toml (this one CT's spine-line offset, evaluation only)
SHIPPED = {False: (0.185, 0.0), True: (0.256, 0.0)}
CT_OFFSET = {False: (0.203, -0.104), True: (0.258, -0.035)}
COMBOS: tuple[tuple[str, ...], ...] = (
    ("theta",),
    ("trachea",),
    ("sternum",),
    ("sternum", "trachea"),
    ("theta", "trachea"),
    ("theta", "sternum"),
    ("theta", "sternum", "trachea"),
    ("theta", "heart"),
    ("theta", "lungs"),
)


def halves(rows: list[Row]) -> dict[str, int]:
    """Pose -> fold (0/1): sorted poses alternate, the halves of study_stats.two_fold."""
    return {p: i % 2 for i, p in enumerate(sorted({r["pose"] for r in rows}))}


def hit(v: bool | None, fail: bool) -> bool:
    """A verdict right? not_evaluable (None) counts as no problem flagged, as
    qcnode.evaluate scores it (eval_cached.py's accuracies)."""
    return bool(v) == fail


def verdict(theta: float | None, t: float = 5.0) -> bool | None:
    return None if theta is None else abs(theta) > t


def angle(r: Row, p: str, consts: dict[bool, tuple[float, float]]) -> float | None:
    """The rule's signed angle from the stored distances with other constants."""
    if r.get(p + "dR") is None:
        return None
    k, off = consts[r["ap"]]
    return math.degrees(
        math.atan(k * ((r[p + "dR"] - r[p + "dL"]) / (r[p + "dR"] + r[p + "dL"]) - off))
    )


def with_theta(rows: list[Row], consts: dict[bool, tuple[float, float]]) -> list[Row]:
    """Rows whose ``e_theta`` / ``m_theta`` use ``consts`` instead of the shipped ones."""
    return [
        {**r, "e_theta": angle(r, "e_", consts), "m_theta": angle(r, "m_", consts)} for r in rows
    ]


def decomposition(rows: list[Row]) -> None:
    """Why the model-mask verdict differs from the truth, film by film (5 deg, shipped)."""
    cats: Counter[str] = Counter()
    for r in rows:
        y, e, m = r["fail"], verdict(r.get("e_theta")), verdict(r.get("m_theta"))
        if m is None:
            cats["model not_evaluable (exact " + ("too)" if e is None else "evaluable)")] += 1
        elif m == y:
            cats["model right" + ("" if e == y else " (exact wrong or not_evaluable)")] += 1
        elif e != y:
            cats["model wrong, exact wrong too"] += 1
        elif r.get("mix_eline") is None or r.get("mix_eends") is None:
            cats["model wrong, exact right: not comparable (scale/orientation differ)"] += 1
        else:
            a = verdict(r.get("mix_eline")) == y
            b = verdict(r.get("mix_eends")) == y
            cats[
                "model wrong, exact right: "
                + {
                    (True, False): "exact spine line fixes it",
                    (False, True): "exact medial ends fix it",
                    (True, True): "either fixes it",
                    (False, False): "needs both",
                }[(a, b)]
            ] += 1
    n = len(rows)
    for src in ("e_", "m_"):
        ok = sum(hit(verdict(r.get(src + "theta")), r["fail"]) for r in rows)
        ne = sum(r.get(src + "theta") is None for r in rows)
        print(f"{src[0]}: accuracy {100 * ok / n:.2f} %  not_evaluable {ne}")
    for k, v in sorted(cats.items()):
        print(f"  {v:4d}  {k}")

    def outcome(r: Row, p: str) -> str:
        v = verdict(r.get(p + "theta"))
        return "n/e" if v is None else "right" if v == r["fail"] else "wrong"

    tab = Counter((outcome(r, "e_"), outcome(r, "m_")) for r in rows)
    print("  exact (rows) x model (columns):  right  wrong    n/e")
    outcomes = ("right", "wrong", "n/e")
    for oe in outcomes:
        print(f"  {oe:>30s}  " + "  ".join(f"{tab[(oe, om)]:5d}" for om in outcomes))
    fold = halves(rows)
    for k in ("theta", *(f"theta_w{w:.0f}" for w in SPINE_WINDOWS_MM)):
        line = []
        for p in ("e_", "m_"):
            acc = [
                100.0
                * np.mean(
                    [hit(verdict(r.get(p + k)), r["fail"]) for r in rows if fold[r["pose"]] == h]
                )
                for h in (0, 1)
            ]
            err = np.array([r[p + k] - r["truth"] for r in rows if r.get(p + k) is not None])
            line.append(f"{p[0]} {fmt(acc)} rms {np.sqrt(np.mean(err**2)):.2f}")
        print(
            f"  spine line {'+-40 mm (rule)' if k == 'theta' else '+-' + k[7:] + ' mm':14s} "
            + "  ".join(line)
        )
    keys = ("truth", "e_theta", "m_theta", "mix_eline", "mix_eends")
    d = np.array([[r[k] for k in keys] for r in rows if all(r.get(k) is not None for k in keys)])
    print(f"signed angle errors on {len(d)} films with all four measures (deg):")
    for i, name in enumerate(
        ("exact", "model", "model ends + exact line", "exact ends + model line"), 1
    ):
        err = d[:, i] - d[:, 0]
        wrong = int(np.sum(np.sign(d[:, i]) != np.sign(d[:, 0])))
        rms = np.sqrt(np.mean(err**2))
        print(f"  {name:26s} vs truth: bias {err.mean():+.2f} rms {rms:.2f}  sign wrong {wrong}")
    for i, name in ((2, "model - exact"), (3, "  from the ends"), (4, "  from the spine line")):
        err = d[:, i] - d[:, 1]
        rms, p90 = np.sqrt(np.mean(err**2)), np.percentile(abs(err), 90)
        slope = np.polyfit(d[:, 0], err, 1)[0]  # < 0: the model's masks shrink the angle
        print(f"  {name:22s} rms {rms:.2f}  p90 |.| {p90:.2f}  per degree of truth {slope:+.3f}")
    for scale in (1.1, 1.27):  # undo the shrink: the model's angle scaled up
        right = sum(
            hit(verdict(scale * r["m_theta"] if "m_theta" in r else None), r["fail"]) for r in rows
        )
        print(f"  model angle x {scale}: accuracy {100 * right / len(rows):.2f} %")
    both = [r for r in rows if r.get("e_dR") is not None and r.get("m_dR") is not None]
    diff = np.array([(r["m_dR"] - r["m_dL"]) - (r["e_dR"] - r["e_dL"]) for r in both])
    span = float(np.median([r["e_dR"] + r["e_dL"] for r in both]))
    per_deg = span / SHIPPED[False][0] * math.tan(math.radians(1.0))
    print(
        f"  dR - dL model minus exact (mm): median |.| {np.median(abs(diff)):.1f}, "
        f"p90 {np.percentile(abs(diff), 90):.1f} (1 deg ~ {per_deg:.1f} mm on PA)"
    )


def fit(rows: list[Row], p: str, keys: tuple[str, ...], icpt: bool) -> dict[bool, Any]:
    """Least squares of the signed truth on the keys, per projection (AP?)."""
    out = {}
    for ap in (False, True):
        xs, ys = [], []
        for r in rows:
            x = features(r, p, keys, icpt)
            if r["ap"] == ap and x is not None:
                xs.append(x)
                ys.append(r["truth"])
        out[ap] = np.linalg.lstsq(np.array(xs), np.array(ys), rcond=None)[0]
    return out


def features(r: Row, p: str, keys: tuple[str, ...], icpt: bool) -> list[float] | None:
    vals = [r.get(p + k) for k in keys]
    if any(v is None for v in vals):
        return None
    return ([1.0] if icpt else []) + [float(v) for v in vals if v is not None]


def estimate(
    r: Row, p: str, keys: tuple[str, ...], icpt: bool, coef: dict[bool, Any]
) -> float | None:
    x = features(r, p, keys, icpt)
    return None if x is None else float(np.dot(coef[r["ap"]], x))


def held_out(
    rows: list[Row],
    keys: tuple[str, ...],
    icpt: bool,
    fit_src: str,
    fixed: bool,
    mode: str = "alone",
) -> dict[str, list[float]]:
    """Held-out accuracy (%) per fold on exact ("e_") and model ("m_") masks of a linear
    estimate fitted on one half's ``fit_src`` masks; fail at 5 deg or at the half's best
    threshold. mode "alone": the estimate everywhere (missing: pass); "fallback": the rule
    (5 deg) where it measures, the estimate where it does not."""
    fold = halves(rows)
    out: dict[str, list[float]] = {"e_": [], "m_": [], "fb_hits": [], "fb_n": [], "fb_major": []}
    for held in (0, 1):
        tr = [r for r in rows if fold[r["pose"]] != held]
        te = [r for r in rows if fold[r["pose"]] == held]
        coef = fit(tr, fit_src, keys, icpt)
        t = 5.0
        if not fixed:
            pts = [(estimate(r, fit_src, keys, icpt, coef), r["fail"]) for r in tr]
            ok = [(abs(a), b) for a, b in pts if a is not None]
            t = best_threshold(np.array([a for a, _ in ok]), np.array([b for _, b in ok]))[0]
        w = 0.5
        if mode == "average" and not fixed:  # the half's best weight of the cue
            w = max(WEIGHTS, key=lambda x: (averaged_hits(tr, fit_src, keys, icpt, coef, x), -x))
        out["w"] = [*out.get("w", []), w]
        for p in ("e_", "m_"):
            hits = fb = fbh = maj = 0
            for r in te:
                v = verdict(estimate(r, p, keys, icpt, coef), t)
                if mode == "average":
                    v = verdict(averaged(r, p, keys, icpt, coef, w))
                if mode == "fallback":
                    rule = verdict(r.get(p + "theta"))
                    if rule is None:
                        fb, fbh, maj = fb + 1, fbh + hit(v, r["fail"]), maj + (not r["fail"])
                    else:
                        v = rule
                hits += hit(v, r["fail"])
            out[p].append(100.0 * hits / len(te))
            if p == "m_":
                out["fb_hits"].append(fbh)
                out["fb_n"].append(fb)
                out["fb_major"].append(maj)
    return out


WEIGHTS = [i / 10 for i in range(11)]


def averaged(
    r: Row, p: str, keys: tuple[str, ...], icpt: bool, coef: dict[bool, Any], w: float
) -> float | None:
    """(1 - w) x the rule's angle + w x the cue's estimate where both exist, else the rule."""
    rule, cue = r.get(p + "theta"), estimate(r, p, keys, icpt, coef)
    if rule is None or cue is None:
        return rule
    return float((1.0 - w) * rule + w * cue)


def averaged_hits(
    rows: list[Row], p: str, keys: tuple[str, ...], icpt: bool, coef: dict[bool, Any], w: float
) -> int:
    return sum(hit(verdict(averaged(r, p, keys, icpt, coef, w)), r["fail"]) for r in rows)


def fmt(v: Sequence[Any]) -> str:
    return f"{np.mean(v):6.2f} [{v[0]:.1f} {v[1]:.1f}]"


def cue_tables(rows: list[Row]) -> None:
    print("\ncorrelation with the signed truth (r), exact / model:")
    for k in ("theta", *CUES):
        print(f"  {k:8s} " + " / ".join(f"{corr(rows, p + k):.3f}" for p in ("e_", "m_")))
    worlds = (
        ("shipped (no intercept; rule with etc/rules.toml)", SHIPPED, False),
        (
            "synthetic-CT reference (intercepts; rule with etc/rules-synthetic-ct.toml)",
            CT_OFFSET,
            True,
        ),
    )
    for name, consts, icpt in worlds:
        rs = with_theta(rows, consts)
        n = len(rs)
        base: dict[str, list[float]] = {p: [] for p in ("e_", "m_")}
        fold = halves(rs)
        for held in (0, 1):
            te = [r for r in rs if fold[r["pose"]] == held]
            for p in base:
                base[p].append(
                    100.0 * sum(hit(verdict(r.get(p + "theta")), r["fail"]) for r in te) / len(te)
                )
        print(f"\n== {name}: {n} films; the rule at 5 deg:")
        print(f"   exact {fmt(base['e_'])}  model {fmt(base['m_'])}")
        print(
            "   held-out accuracy %, mean [fold 0, fold 1]; without every key: no problem flagged"
        )
        for fit_src in ("e_", "m_"):
            for fixed in (True, False):
                src = "exact" if fit_src == "e_" else "model"
                print(f"   fitted on {src} masks, threshold {'5 deg' if fixed else 'fitted'}:")
                for keys in COMBOS:
                    o = held_out(rs, keys, icpt, fit_src, fixed)
                    print(f"     {'+'.join(keys):24s} exact {fmt(o['e_'])}  model {fmt(o['m_'])}")
        print(
            "   (b) the rule's angle averaged with the cue's estimate (cue fitted on model masks):"
        )
        for keys in (("trachea",), ("sternum",), ("sternum", "trachea"), ("lungs",), ("heart",)):
            for fixed in (True, False):
                o = held_out(rs, keys, icpt, "m_", fixed, mode="average")
                label = "w 0.5" if fixed else f"w {o['w']}"
                name = "+".join(keys)
                print(f"     {name:16s} {label:12s} exact {fmt(o['e_'])}  model {fmt(o['m_'])}")
        print(
            "   (a) fallback where the rule is not_evaluable (model masks; fitted on model, 5 deg):"
        )
        for keys in (("trachea",), ("sternum",), ("sternum", "trachea"), ("lungs",), ("heart",)):
            o = held_out(rs, keys, icpt, "m_", True, mode="fallback")
            nfb = sum(o["fb_n"])
            print(
                f"     {'+'.join(keys):18s} overall {fmt(o['m_'])}  on the rule's not_evaluable "
                f"films {sum(o['fb_hits']):.0f}/{nfb:.0f} right, pass {sum(o['fb_major']):.0f}"
            )


def bias_check(rows: list[Row]) -> None:
    """Where the shipped-world gain of rule + trachea comes from: the signed error near
    zero rotation of the rule and of the trachea (mm) on exact masks."""
    near = [r for r in rows if abs(r["truth"]) < 2.0]
    for p in ("e_", "m_"):
        th = [r[p + "theta"] - r["truth"] for r in near if r.get(p + "theta") is not None]
        tr = [r[p + "trachea"] for r in near if r.get(p + "trachea") is not None]
        st = [r[p + "sternum"] for r in near if r.get(p + "sternum") is not None]
        print(
            f"{p[0]}: |truth| < 2 deg ({len(near)} films): rule error mean {np.mean(th):+.2f} deg; "
            f"trachea {np.mean(tr):+.1f} mm, sternum {np.mean(st):+.1f} mm right of the spine line"
        )


TILT_CUES = ("t_sternum", "t_recess", "t_xiphoid")
TILT_COMBOS: tuple[tuple[str, ...], ...] = (
    ("tilt",),
    ("t_sternum",),
    ("t_recess",),
    ("t_xiphoid",),
    ("tilt", "t_sternum"),
    ("tilt", "t_recess"),
    ("tilt", "t_xiphoid"),
    ("tilt", "t_sternum", "t_recess"),
)


def tilt_verdict(value: float | None, cfg: RulesConfig) -> bool | None:
    p = cfg.positioning
    return None if value is None else not p.tilt_min_mm <= value <= p.tilt_max_mm


def tilt_decomposition(rows: list[Row], cfg: RulesConfig) -> None:
    """positioning.tilt, the same questions: the decomposition on the model's masks (the
    value with the exact clavicle ends + the model's apices and vice versa); ``tilt_cue_table``
    then maps each cue to degrees by least squares per projection (with an intercept: the
    value's normal height is anatomy the rule already calibrates), fail at |estimate| > 8."""
    n = len(rows)
    print(f"\n==== positioning.tilt: {n} films, truth fail {sum(r['tilt_fail'] for r in rows)}")
    for p in ("e_", "m_"):
        ok = sum(hit(tilt_verdict(r.get(p + "tilt"), cfg), r["tilt_fail"]) for r in rows)
        ne = sum(r.get(p + "tilt") is None for r in rows)
        print(f"{p[0]}: accuracy {100 * ok / n:.2f} %  not_evaluable {ne}")
    cats: Counter[str] = Counter()
    errs: dict[str, list[float]] = {"ends": [], "apices": [], "both": []}
    for r in rows:
        y = r["tilt_fail"]
        e, m = tilt_verdict(r.get("e_tilt"), cfg), tilt_verdict(r.get("m_tilt"), cfg)
        if m is None:
            cats["model not_evaluable (exact " + ("too)" if e is None else "evaluable)")] += 1
            continue
        if m == y:
            cats["model right" + ("" if e == y else " (exact wrong or not_evaluable)")] += 1
            continue
        if e != y or not r.get("same_frame") or r.get("e_apex_row") is None:
            cats["model wrong, exact wrong too (or not comparable)"] += 1
            continue
        sy = r["sy"]
        mix_e_apex = (r["m_ends_row"] - r["e_apex_row"]) * sy  # model ends, exact apices
        mix_e_ends = (r["e_ends_row"] - r["m_apex_row"]) * sy  # exact ends, model apices
        a = tilt_verdict(mix_e_apex, cfg) == y
        b = tilt_verdict(mix_e_ends, cfg) == y
        cats[
            "model wrong, exact right: "
            + {
                (True, False): "exact apices fix it",
                (False, True): "exact clavicle ends fix it",
                (True, True): "either fixes it",
                (False, False): "needs both",
            }[(a, b)]
        ] += 1
    for k, v in sorted(cats.items()):
        print(f"  {v:4d}  {k}")
    for r in rows:
        if r.get("same_frame") and all(
            r.get(k) is not None for k in ("e_tilt", "m_tilt", "m_apex_row", "e_apex_row")
        ):
            sy = r["sy"]
            errs["ends"].append((r["m_ends_row"] - r["e_ends_row"]) * sy)
            errs["apices"].append((r["m_apex_row"] - r["e_apex_row"]) * sy)
            errs["both"].append(r["m_tilt"] - r["e_tilt"])
    for part, diffs in errs.items():
        x = np.array(diffs)
        rms = np.sqrt(np.mean(x**2))
        print(f"  model - exact, {part:7s} (mm, + lower): mean {x.mean():+.2f} rms {rms:.2f}")
    print("correlation with the signed truth (r), exact / model:")
    for k in ("tilt", *TILT_CUES):
        rr = [corr(rows, p + k, "tilt_truth") for p in ("e_", "m_")]
        print(f"  {k:9s} " + " / ".join("-" if c is None else f"{c:.3f}" for c in rr))


def tilt_cue_table(rows: list[Row], cfg: RulesConfig) -> None:
    """Each tilt cue (and with the rule's value) held out, 2-fold by pose."""
    rt = [{**r, "truth": r["tilt_truth"], "fail": r["tilt_fail"]} for r in rows]
    fold = halves(rt)
    base = {
        p: [
            100.0
            * np.mean(
                [
                    hit(tilt_verdict(r.get(p + "tilt"), cfg), r["fail"])
                    for r in rt
                    if fold[r["pose"]] == h
                ]
            )
            for h in (0, 1)
        ]
        for p in ("e_", "m_")
    }
    print(
        f"the rule [{cfg.positioning.tilt_min_mm}, {cfg.positioning.tilt_max_mm}] mm: "
        f"exact {fmt(base['e_'])}  model {fmt(base['m_'])}"
    )
    for fit_src in ("e_", "m_"):
        print(
            f"  fitted on {'exact' if fit_src == 'e_' else 'model'} masks, |estimate| > 8 deg; "
            "where a cue is missing the rule decides (alone: missing = pass):"
        )
        for keys in TILT_COMBOS:
            res: dict[str, list[float]] = {"e_": [], "m_": []}
            alone: dict[str, list[float]] = {"e_": [], "m_": []}
            fb = [0, 0, 0]
            for held in (0, 1):
                tr = [r for r in rt if fold[r["pose"]] != held]
                te = [r for r in rt if fold[r["pose"]] == held]
                coef = fit(tr, fit_src, keys, True)
                for p in ("e_", "m_"):
                    hits = ahits = 0
                    for r in te:
                        est = verdict(estimate(r, p, keys, True, coef), 8.0)
                        rule = tilt_verdict(r.get(p + "tilt"), cfg)
                        ahits += hit(est, r["fail"])
                        hits += hit(rule if est is None else est, r["fail"])
                        if p == "m_" and rule is None:
                            fb[0] += 1
                            fb[1] += hit(est, r["fail"])
                            fb[2] += not r["fail"]
                    res[p].append(100.0 * hits / len(te))
                    alone[p].append(100.0 * ahits / len(te))
            print(
                f"    {'+'.join(keys):26s} exact {fmt(res['e_'])}  model {fmt(res['m_'])}"
                f"  | alone: exact {fmt(alone['e_'])} model {fmt(alone['m_'])}"
                f"  | on the rule's model not_evaluable {fb[1]}/{fb[0]} (pass {fb[2]})"
            )


def report(rows: list[Row], cfg: RulesConfig) -> None:
    print(f"films {len(rows)}  truth fail {sum(r['fail'] for r in rows)}")
    decomposition(rows)
    cue_tables(rows)
    print()
    bias_check(rows)
    tilt_decomposition(rows, cfg)
    tilt_cue_table(rows, cfg)


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(__doc__)
    ap.add_argument(
        "--census-only",
        action="store_true",
        help="only the descriptive decompositions (nothing fitted): allowed on an eval set",
    )
    args = ap.parse_args(argv)
    cfg = load_config(Path("etc/rules.toml"))
    samples = study_samples(args.set_dir, View.FRONTAL, train_only=not args.census_only)
    rows = measured(
        args.rows, samples[: args.limit], lambda smp: measure(smp, cfg, args.pred), every=25
    )
    if args.census_only:
        decomposition(rows)
        tilt_decomposition(rows, cfg)
        return 0
    report(rows, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
