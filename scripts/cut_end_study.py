"""Frontal `completeness.apices` / `completeness.lateral_walls` (and the lateral apices): does
"a blunt lung end near the field edge" tell a cut lung that the model's mask stops a few mm
short of the edge from an intact one?

Why: on real films cropped just below the right apex (scripts/real_edits.py ``apex_crop``) or
just inside the left lateral wall (``lateral_wall_crop``) the session-8 candidate model
(``runs/s8/qcnet_d10_w3-s8b.pt``) stops 5-10 mm short of the new edge, so the pure margin
rule (landmark >= 5 mm inside the field) passes the cut film. A real apex tapers to a point
and a real lateral border curves away from the edge; a cut lung is still wide where it ends.

Per lung end (apex: the lung's top towards the top field edge; wall: its outer side towards
that side edge; lateral view: the lungs' largest part's top), on the exact masks and on each
model's cached masks, in a frame where the end is the array's last row (as
``qcnode.rules.organs._end_loss``):
- ``margin``: the rule's landmark margin (mm, to the nearest field edge);
- ``gap``: field beyond the end (mm, towards the edge it faces);
- ``fW``: the lung's widest row within the last W mm of its end over its widest row
  (W in ``WIDTHS_MM``), ``aW`` the same in mm;
- ``lost_wX_Y``: ``organs._end_loss`` (the lung extrapolated beyond the edge from its width
  fitted X..Y mm inward of the edge, as a share of the lung).

Candidates: fail when some lung's margin < 5 mm OR (its gap <= D AND its measure >= q);
chosen on one half of the poses' s8b masks among the points whose exact and s5 accuracy on
that half is not below the rule's, scored on the other half (even/odd poses and random pose
halves, as ``study_stats.two_fold``).

    .venv/bin/python scripts/cut_end_study.py data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s8b/rules-cal5-f --pred .cache/rules/pred-s5/rules-cal5-f \
        --rows /tmp/cutend/rows-f.json
    # evaluation only, fixed candidates, nothing chosen on it: real films, unedited and cut
    .venv/bin/python scripts/cut_end_study.py ../shared/data/realcxr \
        --real runs/s8/qcnet_d10_w3-s8b.pt --real qcnode/model/weights/qcnet_d10_w3_s4.pt \
        --rows /tmp/cutend/real.json

Result (docs/RULES.md, "Session 8 (helper): a blunt lung end near the field edge"): nothing
passes. On rules-cal5-f the models miss few cut apices / walls (s8b: 5 / 11), and the
synthetic intact ends near an edge are as wide as the cut ones (apex: 2 mm from its top
20-37 mm wide), so held out every family is -0.1 to +0.0 points on s8b masks (even/odd: apices
98.7 -> 98.7 %, walls 96.6 -> 96.6 %, lateral apices 98.3 -> 98.3 %).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from study_stats import film_subject, measured, real_frontals, real_pngs, study_samples

from qcnode.evaluate import Sample
from qcnode.records import View
from qcnode.rules import RulesConfig, load_config
from qcnode.rules.completeness import lateral_sign
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import extreme, largest_component
from qcnode.rules.organs import _end_loss

WIDTHS_MM = (2.0, 4.0, 6.0, 8.0, 10.0, 15.0)
WINDOWS_MM = ((2.0, 12.0), (5.0, 15.0), (5.0, 25.0))
GAPS_MM = (5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 15.0)
FRACS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8)
ABS_MM = (10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0)
LOST = (0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
RULE_MM = 5.0
Row = dict[str, Any]


def end_measures(
    m: npt.NDArray[np.bool_], field: npt.NDArray[np.bool_], along: float, across: float
) -> dict[str, float]:
    """The lung end at the arrays' last row: field beyond it, width near it, extrapolated loss."""
    rows = np.flatnonzero(m.any(axis=1))
    r = int(rows[-1])
    lo = max(int(rows[0]), r - max(0, round(9.0 / along)))
    cols = np.flatnonzero(m[lo : r + 1].any(axis=0))
    beyond = field[r:][:, cols]
    open_rows = np.where(beyond.all(axis=0), beyond.shape[0], np.argmin(beyond, axis=0))
    widths = m.sum(axis=1)
    top = float(widths.max()) or 1.0
    out = {"gap": (float(open_rows.min()) - 1.0) * along}
    for w in WIDTHS_MM:
        k = max(0, round(w / along))
        wid = float(widths[max(int(rows[0]), r - k) : r + 1].max())
        out[f"f{w:.0f}"] = wid / top
        out[f"a{w:.0f}"] = wid * across
    lost = _end_loss(m, field, along, across, list(WINDOWS_MM))
    for (x0, x1), v in zip(WINDOWS_MM, lost, strict=True):
        out[f"lost_w{x0:.0f}_{x1:.0f}"] = v
    return out


def lung_ends(s: Subject, view: View) -> dict[str, dict[str, float]]:
    """{"r_apex", "l_apex", "r_wall", "l_wall"} (lateral: {"apex"}): margin + end measures."""
    f = s.field
    out: dict[str, dict[str, float]] = {}
    if view is View.LATERAL:
        lungs = largest_component(s.lungs)
        if not lungs.any():
            return out
        p = extreme(lungs, -1.0, 0.0, s.sy, s.sx)
        assert p is not None
        out["apex"] = {"margin": s.margin_mm(p), **end_measures(lungs[::-1], f[::-1], s.sy, s.sx)}
        return out
    for side in ("right", "left"):
        m = s.clean(f"lung_{side}")
        if not m.any():
            continue
        o = lateral_sign(s, side)
        pa = extreme(m, -1.0, 0.0, s.sy, s.sx)
        pw = extreme(m, 0.0, o, s.sy, s.sx)
        assert pa is not None and pw is not None
        mt, ft = (m.T, f.T) if o > 0 else (m.T[::-1], f.T[::-1])
        out[side[0] + "_apex"] = {
            "margin": s.margin_mm(pa),
            **end_measures(m[::-1], f[::-1], s.sy, s.sx),
        }
        out[side[0] + "_wall"] = {"margin": s.margin_mm(pw), **end_measures(mt, ft, s.sx, s.sy)}
    return out


def measure(smp: Sample, cfg: RulesConfig, preds: dict[str, Path]) -> Row | None:
    row: Row = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "apices": smp.truth["rules"]["completeness.apices"]["status"] == "fail",
    }
    if smp.view is View.FRONTAL:
        row["walls"] = smp.truth["rules"]["completeness.lateral_walls"]["status"] == "fail"
    for src, pred in {"exact": None, **preds}.items():
        got = film_subject(smp, cfg, pred)
        if got is None:
            return None
        row[src] = lung_ends(got[1], smp.view)
    return row


def keys() -> list[tuple[str, float, float]]:
    """(measure, D, q): fail when margin < 5 or (gap <= D and measure >= q)."""
    out: list[tuple[str, float, float]] = [("rule", 0.0, 0.0)]
    for d in GAPS_MM:
        out.append(("margin", d, 0.0))  # a plain margin D, for reference
        for w in WIDTHS_MM:
            out += [(f"f{w:.0f}", d, q) for q in FRACS]
            out += [(f"a{w:.0f}", d, q) for q in ABS_MM]
        for x0, x1 in WINDOWS_MM:
            out += [(f"lost_w{x0:.0f}_{x1:.0f}", d, q) for q in LOST]
    return out


def fails(ends: dict[str, dict[str, float]], names: list[str], k: tuple[str, float, float]) -> bool:
    measure_key, d, q = k
    present = [ends[n] for n in names if n in ends]
    if len(present) < len(names):
        return False  # not evaluable: counted as pass (as eval_cached scores a non-fail)
    for e in present:
        if e["margin"] < RULE_MM:
            return True
        if measure_key == "margin" and e["margin"] < d:
            return True
        if measure_key not in ("rule", "margin") and e["gap"] <= d and e[measure_key] >= q:
            return True
    return False


def table(
    rows: list[Row], target: str, names: list[str], srcs: list[str]
) -> tuple[dict[str, npt.NDArray[np.bool_]], dict[tuple[str, float, float], dict[str, Any]]]:
    y = {"y": np.array([bool(r[target]) for r in rows])}
    t = {k: {s: np.array([fails(r[s], names, k) for r in rows]) for s in srcs} for k in keys()}
    return y, t


def held_out(
    y: npt.NDArray[np.bool_],
    t: dict[tuple[str, float, float], dict[str, Any]],
    fold: npt.NDArray[np.int_],
    srcs: list[str],
    family: str | None,
) -> tuple[dict[str, float], dict[str, float], list[Any]]:
    """Chosen on one half (best s8b accuracy with exact and s5 not below the rule's there),
    scored on the other; returns (candidate %, rule %) per source and the choices."""
    chosen = []
    got = {s: 0 for s in srcs}
    base = {s: 0 for s in srcs}
    rule = t[("rule", 0.0, 0.0)]
    for held in (0, 1):
        tr, te = fold != held, fold == held
        ref = {s: float(np.mean(rule[s][tr] == y[tr])) for s in srcs}
        best, best_acc = ("rule", 0.0, 0.0), ref["s8b"]
        for k, p in t.items():
            if family is not None and not k[0].startswith(family) and k[0] != "rule":
                continue
            if any(float(np.mean(p[s][tr] == y[tr])) < ref[s] - 1e-9 for s in srcs if s != "s8b"):
                continue
            a = float(np.mean(p["s8b"][tr] == y[tr]))
            if a > best_acc + 1e-9:
                best, best_acc = k, a
        chosen.append(best)
        for s in srcs:
            got[s] += int(np.sum(t[best][s][te] == y[te]))
            base[s] += int(np.sum(rule[s][te] == y[te]))
    n = len(y)
    return (
        {s: 100.0 * got[s] / n for s in srcs},
        {s: 100.0 * base[s] / n for s in srcs},
        chosen,
    )


def report(rows: list[Row], target: str, names: list[str], srcs: list[str], repeats: int) -> None:
    y, t = table(rows, target, names, srcs)
    print(f"\n=== {target} {names}: {len(rows)} films, truth fail {int(y['y'].sum())}")
    yy = y["y"]
    for s in srcs:
        p = t[("rule", 0.0, 0.0)][s]
        print(
            f"  rule on {s}: {100 * np.mean(p == yy):.1f} % "
            f"(fp {int(np.sum(p & ~yy))}, fn {int(np.sum(~p & yy))})"
        )
    # how short of the edge the models stop on the truth fails the rule misses
    for s in srcs:
        if s == "exact":
            continue
        miss = [
            r for r, p in zip(rows, t[("rule", 0.0, 0.0)][s], strict=True) if r[target] and not p
        ]
        gaps = [min(r[s][n]["margin"] for n in names if n in r[s]) for r in miss]
        print(f"  {s} misses: {len(miss)}; their margin mm {np.round(sorted(gaps), 1).tolist()}")
    scored = []
    for k, p in t.items():
        a = {s: 100.0 * float(np.mean(p[s] == yy)) for s in srcs}
        scored.append((a, k))
    ref = {s: 100.0 * float(np.mean(t[("rule", 0.0, 0.0)][s] == yy)) for s in srcs}
    ok = [x for x in scored if all(x[0][s] >= ref[s] - 1e-9 for s in srcs if s != "s8b")]
    ok.sort(key=lambda x: -x[0]["s8b"])
    print("  in sample, exact and s5 not below the rule, best 12 (" + " / ".join(srcs) + "):")
    for a, k in ok[:12]:
        print("    " + " / ".join(f"{a[s]:5.1f}" for s in srcs) + f"  {k}")
    anyx = sorted(scored, key=lambda x: -x[0]["s8b"])[:6]
    print("  in sample, any exact/s5, best 6:")
    for a, k in anyx:
        print("    " + " / ".join(f"{a[s]:5.1f}" for s in srcs) + f"  {k}")
    poses = sorted({r["pose"] for r in rows})
    eo = {p: i % 2 for i, p in enumerate(poses)}
    rng = np.random.default_rng(0)
    folds = [eo]
    for _ in range(repeats):
        perm = rng.permutation(len(poses))
        folds.append({p: int(perm[i] % 2) for i, p in enumerate(poses)})
    for fam in (None, "f", "a", "lost", "margin"):
        res = []
        for i, fd in enumerate(folds):
            fold = np.array([fd[r["pose"]] for r in rows])
            c, b, ch = held_out(yy, t, fold, srcs, fam)
            res.append((c, b))
            if i == 0:
                print(
                    f"  [{fam or 'all'}] even/odd held out: "
                    + ", ".join(f"{s} {b[s]:.1f} -> {c[s]:.1f}" for s in srcs)
                    + f"; chosen {ch}"
                )
        d = {s: np.array([c[s] - b[s] for c, b in res[1:]]) for s in srcs}
        print(
            f"  [{fam or 'all'}] {repeats} random halves gain: "
            + ", ".join(
                f"{s} {d[s].mean():+.2f} [{d[s].min():+.1f}, {d[s].max():+.1f}]" for s in srcs
            )
        )


def real_rows(weights: Path, films: list[Path], cfg: RulesConfig) -> list[Row]:
    """Evaluation only (nothing is chosen on it): the end measures of each real frontal film,
    unedited and with real_edits.py's apex_crop / lateral_wall_crop, on one model's masks."""
    from real_edits import _apex_crop, _wall_crop

    from qcnode.model.infer import load_predictor
    from qcnode.rules import build_subject
    from qcnode.rules.completeness import apices, lateral_walls

    pred = load_predictor(device="cpu", weights_path=weights)
    out: list[Row] = []
    for path, image, s in real_frontals(pred, films, cfg):
        base = {"completeness.apices": apices(s, cfg), "completeness.lateral_walls": None}
        base["completeness.lateral_walls"] = lateral_walls(s, cfg)
        row: Row = {"id": path.stem, "unedited": lung_ends(s, View.FRONTAL)}
        for name, edit in (("apex_crop", _apex_crop), ("lateral_wall_crop", _wall_crop)):
            rule = "completeness.apices" if name == "apex_crop" else "completeness.lateral_walls"
            f = base[rule]
            assert f is not None
            if f.status.value != "pass":
                continue
            edited = edit(image, base)  # type: ignore[arg-type]
            if edited is None:
                continue
            (pe,) = pred.predict([edited])
            if pe.view is View.FRONTAL:
                row[name] = lung_ends(build_subject(edited, pe, cfg), View.FRONTAL)
        out.append(row)
        print(path.stem, file=sys.stderr, flush=True)
    return out


def real_report(rows: list[Row], candidates: list[tuple[str, str, float, float]]) -> None:
    """Flagged crops and unedited flags of fixed candidates (rule, measure, D, q)."""
    for target, edit, names in (
        ("apices", "apex_crop", ["r_apex", "l_apex"]),
        ("walls", "lateral_wall_crop", ["r_wall", "l_wall"]),
    ):
        cut = [r[edit] for r in rows if edit in r]
        print(f"  {edit}: {len(cut)} films; unedited {len(rows)}")
        # the cut end: the right apex (apex_crop) / the left wall (lateral_wall_crop)
        end = "r_apex" if edit == "apex_crop" else "l_wall"
        vals = [
            (e[end]["margin"], e[end]["gap"], e[end]["a2"], e[end]["f2"], e[end]["a6"])
            for e in cut
            if end in e
        ]
        for v in sorted(vals):
            print("    cut end margin {:.1f} gap {:.1f} a2 {:.0f} f2 {:.2f} a6 {:.0f}".format(*v))
        for t, key, d, q in [("rule", "rule", 0.0, 0.0), *candidates]:
            if t != target and t != "rule":
                continue
            k = (key, d, q)
            flagged = sum(fails(e, names, k) for e in cut)
            unedited = sum(fails(r["unedited"], names, k) for r in rows)
            print(f"    {k}: crops flagged {flagged}/{len(cut)}, unedited flagged {unedited}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("--pred", type=Path, action="append", default=[], help="s8b dir, s5 dir")
    ap.add_argument("--rows", type=Path)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--part", type=str, help="i/n: measure every n-th film from i")
    ap.add_argument("--real", type=Path, action="append", default=[], help="weights (.pt)")
    args = ap.parse_args(argv)
    cfg = load_config()
    if args.real:
        real = args.set_dir
        films = real_pngs((real / "frontal", real / "extra_frontal_nomask"))[: args.limit]
        # fixed before looking at the real films: the calibration set's in-sample best
        cands = [
            ("apices", "a2", 9.0, 40.0),
            ("apices", "f2", 9.0, 0.3),
            ("walls", "a2", 6.0, 10.0),
            ("walls", "f15", 6.0, 0.7),
        ]
        for w in args.real:
            cache = args.rows.with_suffix(f".{w.stem}.json") if args.rows else None
            if cache is not None and cache.is_file():
                rows_r = json.loads(cache.read_text())
            else:
                rows_r = real_rows(w, films, cfg)
                if cache is not None:
                    cache.write_text(json.dumps(rows_r))
            print(f"\n=== real films, {w.name}")
            real_report(rows_r, cands)
        return 0
    srcs = ["exact", "s8b", "s5"][: 1 + len(args.pred)]
    preds = dict(zip(srcs[1:], args.pred, strict=True))
    samples = [
        smp
        for smp in study_samples(args.set_dir, None)
        if smp.view in (View.FRONTAL, View.LATERAL)
        and "completeness.apices" in smp.truth.get("rules", {})
    ][: args.limit]
    if args.part:
        i0, n0 = (int(v) for v in args.part.split("/"))
        samples = samples[i0::n0]
    rows: list[Row] = measured(args.rows, samples, lambda smp: measure(smp, cfg, preds))
    if args.part:
        return 0
    frontal = [r for r in rows if "walls" in r]
    lateral = [r for r in rows if "walls" not in r]
    if frontal:
        report(frontal, "apices", ["r_apex", "l_apex"], srcs, args.repeats)
        report(frontal, "walls", ["r_wall", "l_wall"], srcs, args.repeats)
    if lateral:
        report(lateral, "apices", ["apex"], srcs, args.repeats)
    print(json.dumps({"films": len(rows)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
