#!/usr/bin/env python
"""Re-check model-mask-tuned rule keys for a new default model (session 9, issue 5): the
shipped value against a per-half re-choice on the new model's cached masks.

Why: several keys of etc/rules.toml were chosen on the old default's (qcnet_d10_w3 s4) cached
masks of rules-cal5-f/-l; a new default draws its masks differently. For each key the same
method as its study: the value chosen on one half of the poses (even/odd, and 20 random pose
halves) from a grid, on that half's model masks with its exact-mask accuracy not below the
shipped value's; scored on the other half against the shipped value. A key changes only
where the held-out model-mask accuracy gains >= 1 point with the exact masks not more than
0.5 lower (docs/RULES.md "Session 9 (helper): the model-tuned keys on the new default").
Result there: no key qualifies on rules-cal5-f/-l with qcnet_d10_w3_s9's masks.

    swap SCRIPT OLD_ROWS -- ARGS   run scripts/SCRIPT.py's main with the exact-mask rows of an
                   older rows file (same set, same measure code) and only the model rows
                   measured anew (``measured_by_source`` replaced; measuring is the slow part)
    spine ROWS     lateral organs.spine near-end cut (spine_lung_end_tolerance_mm / _band_mm /
                   ends) on scripts/spine_study.py rows
    lungs ROWS     frontal organs.lungs extrapolated loss (lung_loss_fail_share, the window
                   pair) on scripts/lungs_cut_study.py rows
    sternum SET --pred DIR [--rows R]   lateral completeness.anteroposterior without a
                   sternum mask: sternum_outside_edge_mm (the lungs/heart this close to the
                   anterior field edge = cut), measured here on exact and cached masks
    clavicles SET --pred DIR [--rows R]   frontal organs.clavicles: clavicle_exposed_margin_mm
                   (a too-small clavicle is the model's miss, not evaluable, when the field
                   reaches this far above that lung's apex), measured on exact and cached masks
    edges ROWS     organ edge tolerance and truncation ratios (lateral: lateral_edge_tolerance_mm
                   with lateral_lung_ / sternum_truncation_fail_ratio; frontal: edge_tolerance_mm,
                   heart) on scripts/rules_gap.py rows

    .venv/bin/python scripts/model_recheck.py swap spine_study /tmp/spine_rows.json -- \\
        data/synth/rules-cal5-l --pred .cache/rules/pred-vis/s9b/rules-cal5-l --rows OUT.json
    .venv/bin/python scripts/model_recheck.py spine OUT.json
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import study_stats

Row = dict[str, Any]
Fold = dict[str, int]
PROBLEM = {"warn", "fail"}
REPEATS = 20


def held_out(
    y: dict[str, npt.NDArray[np.bool_]],
    pose: dict[str, list[str]],
    table: dict[Any, dict[str, npt.NDArray[np.bool_]]],
    shipped: Any,
    fold: Fold,
) -> tuple[list[Any], dict[str, float]]:
    """The grid point chosen on each half (best model accuracy among points whose exact
    accuracy on that half is not below the shipped point's; ties: the shipped point, then
    the higher exact accuracy), scored on the other half; pooled held-out accuracies (%) of
    the choice and of the shipped point on both mask sources."""
    ids = {s: np.array([fold[p] for p in pose[s]]) for s in y}
    hit = {k: 0.0 for k in ("model", "exact", "model_shipped", "exact_shipped")}
    chosen = []
    for held in (0, 1):
        tr = {s: ids[s] != held for s in y}
        te = {s: ids[s] == held for s in y}

        def a(g: Any, s: str, part: dict[str, npt.NDArray[np.bool_]] = tr) -> float:
            return float(np.mean(table[g][s][part[s]] == y[s][part[s]]))

        floor = a(shipped, "exact")
        cands = [g for g in table if a(g, "exact") + 1e-9 >= floor]
        best = max(cands, key=lambda g: (a(g, "model"), g == shipped, a(g, "exact")))
        chosen.append(best)
        for s in y:
            hit[s] += float(np.sum(table[best][s][te[s]] == y[s][te[s]]))
            hit[s + "_shipped"] += float(np.sum(table[shipped][s][te[s]] == y[s][te[s]]))
    n = {s: len(y[s]) for s in y}
    return chosen, {k: 100.0 * v / n[k.split("_")[0]] for k, v in hit.items()}


def report(
    name: str,
    y: dict[str, npt.NDArray[np.bool_]],
    pose: dict[str, list[str]],
    table: dict[Any, dict[str, npt.NDArray[np.bool_]]],
    shipped: Any,
) -> dict[str, Any]:
    """Print and return: the shipped point in sample, the even/odd choice, the random halves'
    gains (model and exact, mean [min, max])."""
    ins = {s: 100.0 * float(np.mean(table[shipped][s] == y[s])) for s in y}
    folds = study_stats.pose_halves(pose["exact"] + pose["model"], REPEATS, seed=0)
    chosen, eo = held_out(y, pose, table, shipped, folds[0])
    gains = np.array(
        [
            [r["model"] - r["model_shipped"], r["exact"] - r["exact_shipped"]]
            for r in (held_out(y, pose, table, shipped, f)[1] for f in folds[1:])
        ]
    )
    out = {
        "shipped": str(shipped),
        "in_sample": ins,
        "even_odd": {"chosen": [str(c) for c in chosen], **eo},
        "random": {
            "repeats": len(gains),
            "model_gain": [
                float(gains[:, 0].mean()),
                float(gains[:, 0].min()),
                float(gains[:, 0].max()),
            ],
            "exact_gain": [
                float(gains[:, 1].mean()),
                float(gains[:, 1].min()),
                float(gains[:, 1].max()),
            ],
        },
    }
    print(
        f"[{name}] shipped {shipped}: in sample model {ins['model']:.2f} %, exact "
        f"{ins['exact']:.2f} %\n  even/odd: chosen {chosen}; held out model "
        f"{eo['model_shipped']:.2f} -> {eo['model']:.2f} %, exact {eo['exact_shipped']:.2f} -> "
        f"{eo['exact']:.2f} %\n  {len(gains)} random pose halves: model gain "
        f"{gains[:, 0].mean():+.2f} [{gains[:, 0].min():+.2f}, {gains[:, 0].max():+.2f}], exact "
        f"gain {gains[:, 1].mean():+.2f} [{gains[:, 1].min():+.2f}, {gains[:, 1].max():+.2f}]"
    )
    return out


def _table(
    rows: dict[str, list[Row]], grid: Sequence[Any], pred: Callable[[list[Row], Any], Any]
) -> dict[Any, dict[str, npt.NDArray[np.bool_]]]:
    return {g: {s: np.asarray(pred(rows[s], g), dtype=bool) for s in rows} for g in grid}


def _truth(
    data: dict[str, list[Row]],
) -> tuple[dict[str, npt.NDArray[np.bool_]], dict[str, list[str]]]:
    """Per source: the truth's problem per film (rows' "fail") and the films' poses."""
    y = {s: np.array([bool(r["fail"]) for r in data[s]]) for s in data}
    pose = {s: [str(r["pose"]) for r in data[s]] for s in data}
    return y, pose


def spine(rows_file: Path) -> dict[str, Any]:
    """organs.spine: (tolerance, band, ends) over spine_study's grid, fraction as shipped."""
    from spine_study import near_grid, near_pred

    from qcnode.rules import load_config

    data: dict[str, list[Row]] = json.loads(rows_file.read_text())
    o = load_config().organs
    frac = o.spine_lung_cut_width_fraction
    shipped = (o.spine_lung_end_tolerance_mm, o.spine_lung_end_band_mm, "bottom")
    grid = list(dict.fromkeys([shipped, *near_grid()]))
    table = _table(data, grid, lambda rr, g: near_pred(rr, g[0], g[1], g[2], frac))
    y, pose = _truth(data)
    if data["model"] and "rule_s7" in data["model"][0]:
        same = np.mean(
            table[shipped]["model"] == np.array([bool(r["rule_s7"]) for r in data["model"]])
        )
        print(
            f"shipped point == the rule's stored model-mask status on {100 * same:.1f} % of films"
        )
    return report("organs.spine near-end cut", y, pose, table, shipped)


def lungs(rows_file: Path) -> dict[str, Any]:
    """organs.lungs: the extrapolated-loss share (and the window pair) chosen per half."""
    from lungs_cut_study import ENDS, WINDOWS_MM, preds

    from qcnode.rules import load_config

    data: dict[str, list[Row]] = json.loads(rows_file.read_text())
    o = load_config().organs
    near, far, shift = o.lung_loss_fit_near_mm, o.lung_loss_fit_far_mm, o.lung_loss_fit_shift_mm
    pair = f"w{near:.0f}_{far:.0f}+w{near + shift:.0f}_{far + shift:.0f}"
    shipped = (math.inf, pair, ENDS, o.lung_loss_fail_share, "lostavg")
    shares = (0.15, 0.18, 0.2, 0.22, 0.25, 0.28, 0.3, 0.35, 0.4)
    names = [f"w{a:.0f}_{b:.0f}" for a, b in WINDOWS_MM]
    pairs = [f"{a}+{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
    y, pose = _truth(data)
    out = {}
    for label, ps in (("share", [pair]), ("window pair + share", pairs)):
        grid = list(
            dict.fromkeys(
                [shipped, *[(math.inf, w, ENDS, q, "lostavg") for w in ps for q in shares]]
            )
        )
        table = _table(data, grid, preds)
        out[label] = report(f"organs.lungs lost {label}", y, pose, table, shipped)
    return out


def edges(rows_file: Path) -> dict[str, Any]:
    """Organ truncation with the outline within T mm of the field edge (rules_gap's contact
    lengths): lateral lungs (ratio), heart (truncation_fail_mm) and sternum (ratio) share
    lateral_edge_tolerance_mm; frontal: the heart with edge_tolerance_mm. A film whose rule
    reads neither pass nor fail, or whose organ is missing, keeps the rule's status."""
    from qcnode.rules import load_config

    rows: list[Row] = json.loads(rows_file.read_text())
    rows = [r for r in rows if r.get("exact") and r.get("model")]
    o = load_config().organs
    lateral = rows[0]["view"] == "lateral"
    tols = ("0.0", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0", "8.0")
    organs: dict[str, tuple[str, float]] = {"organs.heart": ("heart", o.heart_min_area_mm2)}
    if lateral:
        organs["organs.lungs"] = ("lungs", o.lung_min_area_mm2)
        organs["organs.sternum"] = ("sternum", o.sternum_min_area_mm2)
        shipped: tuple[str, float, float] = (
            f"{o.lateral_edge_tolerance_mm:.1f}",
            o.lateral_lung_truncation_fail_ratio,
            o.sternum_truncation_fail_ratio,
        )
        grid = [
            (t, lr, sr)
            for t in tols
            for lr in (0.35, 0.45, 0.55, 0.65, 0.8)
            for sr in (0.9, 1.1, 1.3, 1.6, 2.0)
        ]
    else:
        shipped = (f"{o.edge_tolerance_mm:.1f}", 0.0, 0.0)
        grid = [(t, 0.0, 0.0) for t in tols]

    def problem(r: Row, src: str, rule: str, g: tuple[str, float, float]) -> bool:
        status = r[src][rule][0]
        name, min_area = organs[rule]
        area = r[src][f"area:{name}"]
        if status not in ("pass", "fail") or area < min_area:
            return bool(status in PROBLEM)
        ratio = {"organs.lungs": g[1], "organs.sternum": g[2]}.get(rule)
        limit = o.truncation_fail_mm if ratio is None else math.sqrt(ratio * area)
        return bool(r[src][f"contact:{name}"][g[0]] > limit)

    src = ("exact", "model")
    pose = [str(r["id"]).rsplit("-", 1)[0] for r in rows]
    out = {}
    for rule in organs:
        y = np.array([r["truth"][rule][0] in PROBLEM for r in rows])
        stored = {s: np.array([r[s][rule][0] in PROBLEM for r in rows]) for s in src}
        table = {
            g: {s: np.array([problem(r, s, rule, g) for r in rows]) for s in src} for g in grid
        }
        same = {s: 100.0 * float(np.mean(table[shipped][s] == stored[s])) for s in src}
        print(
            f"{rule}: shipped point == stored status on exact {same['exact']:.1f} %, "
            f"model {same['model']:.1f} %"
        )
        out[rule] = report(rule, {s: y for s in src}, {s: pose for s in src}, table, shipped)
    # one tolerance for all of them: the choice on the rules' summed accuracy
    ys = {
        s: np.concatenate([np.array([r["truth"][k][0] in PROBLEM for r in rows]) for k in organs])
        for s in src
    }
    joint = {
        g: {
            s: np.concatenate([np.array([problem(r, s, k, g) for r in rows]) for k in organs])
            for s in src
        }
        for g in grid
    }
    poses = {s: pose * len(organs) for s in src}
    out["joint"] = report("joint (films x rules)", ys, poses, joint, shipped)
    return out


def _measured_grid(
    name: str,
    data: dict[str, list[Row]],
    shipped: float,
    grid: Sequence[float],
    pred: Callable[[list[Row], float], list[bool]],
    flag: str,
    census: str,
) -> dict[str, Any]:
    """One key over a grid on rows measured by this script (rows' "status": the rule's): per
    source the films, how many are ``flag``ged (``census``, formatted with n and same: the
    share of films where the shipped point gives the rule's status), each point's in-sample
    accuracies, then ``report``."""
    grid = list(dict.fromkeys([shipped, *grid]))
    y, pose = _truth(data)
    table = _table(data, grid, pred)
    for s in data:
        same = np.mean(table[shipped][s] == np.array([r["status"] in PROBLEM for r in data[s]]))
        n = sum(bool(r[flag]) for r in data[s])
        print(f"{s}: {len(data[s])} films, " + census.format(n=n, same=100 * same))
    for g in grid:
        print(
            f"  {g:5.1f} mm: model {100 * np.mean(table[g]['model'] == y['model']):.2f} %, "
            f"exact {100 * np.mean(table[g]['exact'] == y['exact']):.2f} %"
        )
    return report(name, y, pose, table, shipped)


STERNUM_TOL_MM = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


def sternum_row(smp: Any, pred_dir: Path | None) -> Row | None:
    """The anteroposterior rule's status, and for a film without a sternum mask the margin
    (mm) of the lungs/heart's anterior-most pixel (None: no chest found)."""
    from qcnode.rules import load_config
    from qcnode.rules.completeness import anterior_sign, anteroposterior
    from qcnode.rules.masks import extreme

    cfg = load_config()
    got = study_stats.film_subject(smp, cfg, pred_dir)
    if got is None:
        return None
    _, s = got
    tr = smp.truth["rules"]["completeness.anteroposterior"]
    row: Row = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "fail": tr["status"] in PROBLEM,
        "status": str(anteroposterior(s, cfg).status),
        "no_sternum": not s.mask("sternum").any(),
        "front_margin": None,
    }
    if row["no_sternum"]:
        p = extreme(s.lungs | s.mask("heart"), 0.0, anterior_sign(s), s.sy, s.sx)
        row["front_margin"] = None if p is None else float(s.margin_mm(p))
    return row


def sternum(set_dir: Path, pred_dir: Path, rows_file: Path | None) -> dict[str, Any]:
    """sternum_outside_edge_mm over a grid (< 0: off), 2-fold by pose as the other keys."""
    from qcnode.records import View
    from qcnode.rules import load_config

    samples = study_stats.study_samples(set_dir, View.LATERAL)
    data = study_stats.measured_by_source(rows_file, samples, sternum_row, pred_dir)

    def pred(rows: list[Row], tol: float) -> list[bool]:
        out = []
        for r in rows:
            if not r["no_sternum"]:
                out.append(r["status"] in PROBLEM)
            else:
                m = r["front_margin"]
                out.append(tol >= 0 and m is not None and m <= tol)
        return out

    return _measured_grid(
        "completeness.anteroposterior sternum_outside_edge_mm",
        data,
        load_config().completeness.sternum_outside_edge_mm,
        STERNUM_TOL_MM,
        pred,
        "no_sternum",
        "{n} without a sternum; shipped == rule {same:.1f} %",
    )


CLAVICLE_MARGIN_MM = (5.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, math.inf)


def clavicle_row(smp: Any, pred_dir: Path | None) -> Row | None:
    """organs.clavicles' status, the smaller clavicle's area and its lung's apex margin."""
    from qcnode.rules import load_config
    from qcnode.rules.organs import _apex_margin_mm, clavicles

    cfg = load_config()
    got = study_stats.film_subject(smp, cfg, pred_dir)
    if got is None:
        return None
    _, s = got
    areas = {side: s.area_mm2(s.mask(f"clavicle_{side}")) for side in ("right", "left")}
    worst = min(areas, key=lambda k: areas[k])
    return {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "fail": smp.truth["rules"]["organs.clavicles"]["status"] in PROBLEM,
        "status": str(clavicles(s, cfg).status),
        "small": areas[worst] < cfg.organs.clavicle_min_area_mm2,
        "apex_margin": _apex_margin_mm(s, worst),
    }


def clavicle(set_dir: Path, pred_dir: Path, rows_file: Path | None) -> dict[str, Any]:
    """clavicle_exposed_margin_mm over a grid (inf: off), 2-fold by pose."""
    from qcnode.records import View
    from qcnode.rules import load_config

    samples = study_stats.study_samples(set_dir, View.FRONTAL)
    data = study_stats.measured_by_source(rows_file, samples, clavicle_row, pred_dir)

    def pred(rows: list[Row], margin: float) -> list[bool]:
        return [
            bool(r["small"]) and (r["apex_margin"] is None or r["apex_margin"] < margin)
            for r in rows
        ]

    return _measured_grid(
        "organs.clavicles clavicle_exposed_margin_mm",
        data,
        load_config().organs.clavicle_exposed_margin_mm,
        CLAVICLE_MARGIN_MM,
        pred,
        "small",
        "{n} small clavicles; shipped == rule {same:.1f}",
    )


def swap(script: str, old_rows: Path, args: list[str]) -> int:
    """scripts/SCRIPT.py's main with the exact rows of ``old_rows`` and model rows measured now."""
    mod = importlib.import_module(script)
    exact = json.loads(old_rows.read_text())["exact"]
    by_source = functools.partial(study_stats.measured_by_source, exact=exact)
    setattr(mod, "measured_by_source", by_source)  # noqa: B010 (a module chosen at run time)
    return int(mod.main(args))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "swap":
        if len(argv) < 4 or argv[3] != "--":
            raise SystemExit("usage: model_recheck.py swap SCRIPT OLD_ROWS -- ARGS")
        return swap(argv[1], Path(argv[2]), argv[4:])
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("mode", choices=("spine", "lungs", "edges", "sternum", "clavicles"))
    ap.add_argument("rows", type=Path, help="rows file (sternum, clavicles: the set)")
    ap.add_argument("--pred", type=Path, help="sternum, clavicles: cached model masks")
    ap.add_argument(
        "--rows", dest="rows_cache", type=Path, help="sternum, clavicles: cache of the rows"
    )
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args(argv)
    if args.mode in ("sternum", "clavicles"):
        if args.pred is None:
            raise SystemExit(f"{args.mode} needs --pred")
        measure = sternum if args.mode == "sternum" else clavicle
        out = measure(args.rows, args.pred, args.rows_cache)
    else:
        out = {"spine": spine, "lungs": lungs, "edges": edges}[args.mode](args.rows)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
