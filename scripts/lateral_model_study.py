"""Lateral completeness (costophrenic, apices, anteroposterior) and organs (spine, lungs) on a
model's masks: threshold and small-measure grids, 2-fold by pose.

Why: on the shipped network's lateral masks these rules under-call failures (eval-v2:
costophrenic sensitivity 63 %, spine 42 %): where the field edge cuts the lungs the model's
lungs stop a few mm short of the cut, so a cut base reads like a whole lung ending there
(docs/RULES.md, "Session 12 (helper): lateral completeness and organs on the model's masks").
Each film of a train-split lateral set is measured once on its exact masks and once on the
model's cached masks (the rule's raw values, the lungs' end gaps to the field edge and their
end widths, the spine's and lungs' edge contact at several tolerances); the rules' variants
are then evaluated from those measures. A grid point is chosen on one half of the poses (best
model accuracy among the points whose exact accuracy on that half is at most 1 point below
the shipped rule's) and scored on the other, both ways (even/odd pose rank).

    .venv/bin/python scripts/lateral_model_study.py data/synth/rules-cal5-l \
        --pred .cache/rules/pred-vis/s11c/rules-cal5-l --rows /tmp/lat_rows.json
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from study_stats import (
    RULE,
    Row,
    Table,
    film_subject,
    measured_by_source,
    pose_halves,
    split_eval,
    study_parser,
    study_samples,
)

from qcnode.evaluate import Sample
from qcnode.records import View
from qcnode.rules import RulesConfig, load_config
from qcnode.rules.completeness import anterior_sign, posterior_wall
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import extreme, largest_component, row_extent
from qcnode.rules.organs import lungs_cut_share, spine_beside_lungs

RULES = (
    "completeness.costophrenic",
    "completeness.apices",
    "completeness.anteroposterior",
    "organs.spine",
    "organs.lungs",
)
BANDS_MM = (3.0, 6.0, 10.0, 15.0, 20.0)
NEAR_TOLS_MM = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
TOLERANCES_MM = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def end_measures(s: Subject, lungs: npt.NDArray[np.bool_]) -> Row:
    """Per end of the lungs and band B: the field's open rows beyond the end row (mm, in the
    columns of the lungs' last B mm) and that band's widest row over the lungs' widest."""
    out: Row = {}
    ext = row_extent(lungs)
    if ext is None:
        return out
    widths = lungs.sum(axis=1)
    top = float(widths.max()) or 1.0
    for b in BANDS_MM:
        k = max(0, round(b / s.sy))
        for end, r, step in (("top", ext[0], -1), ("bottom", ext[1], 1)):
            lo, hi = (r, min(ext[1], r + k)) if step < 0 else (max(ext[0], r - k), r)
            cols = np.flatnonzero(lungs[lo : hi + 1].any(axis=0))
            beyond = s.field[r::step][:, cols]
            open_rows = np.where(beyond.all(axis=0), beyond.shape[0], np.argmin(beyond, axis=0))
            gap = (float(open_rows.min()) - 1.0) * s.sy if cols.size else math.inf
            out[f"{end}_gap_b{b:g}"] = gap
            out[f"{end}_share_b{b:g}"] = float(widths[lo : hi + 1].max()) / top
    return out


def _lowest(m: npt.NDArray[np.bool_]) -> int | None:
    rows = np.flatnonzero(m.any(axis=1))
    return int(rows[-1]) if rows.size else None


def room_measures(s: Subject) -> Row:
    """Where the field's bottom (top) edge lies against anatomy the model finds whatever the
    cut: the heart's lowest (highest) row, the visible lungs' lowest row, the lungs' top
    (bottom) row; mm, and over the lungs' antero-posterior depth (``_rel``)."""
    out: Row = {}
    cols = np.flatnonzero(s.lungs.any(axis=0))
    ext = row_extent(s.lungs)
    if ext is None or cols.size == 0:
        return out
    depth = float(cols[-1] - cols[0] + 1) * s.sx
    f = s.field[:, cols[0] : cols[-1] + 1]
    frows = np.flatnonzero(f.any(axis=1))
    f_top, f_bot = int(frows[0]), int(frows[-1])
    out["depth"] = depth
    out["height_rel"] = float(ext[1] - ext[0] + 1) * s.sy / depth
    marks: dict[str, int | None] = {
        "lungtop": ext[0],
        "heartbot": _lowest(s.mask("heart")),
        "visbot": _lowest(s.mask("lung_right_visible") | s.mask("lung_left_visible")),
    }
    hr = np.flatnonzero(s.mask("heart").any(axis=1))
    for name, r in marks.items():
        if r is not None:
            out[f"bot_room_{name}"] = float(f_bot - r) * s.sy
            out[f"bot_room_{name}_rel"] = float(f_bot - r) * s.sy / depth
    for name, r in (("lungbot", ext[1]), ("hearttop", int(hr[0]) if hr.size else None)):
        if r is not None:
            out[f"top_room_{name}"] = float(r - f_top) * s.sy
            out[f"top_room_{name}_rel"] = float(r - f_top) * s.sy / depth
    return out


def measure(smp: Sample, pred_dir: Path | None, cfg: RulesConfig) -> Row | None:
    got = film_subject(smp, cfg, pred_dir)
    if got is None:
        return None
    _, s = got
    truth = smp.truth.get("rules", {})
    row: Row = {"id": smp.id, "pose": smp.id.split("-")[2]}
    for rule in RULES:
        st = truth.get(rule, {}).get("status")
        row[f"t:{rule}"] = None if st in (None, "not_evaluable") else st in ("warn", "fail")
    lungs = largest_component(s.lungs)
    if lungs.any():
        apex = extreme(lungs, -1.0, 0.0, s.sy, s.sx)
        assert apex is not None
        row["apex"] = s.margin_mm(apex)
        rows = np.flatnonzero(lungs.any(axis=1))
        r = int(rows[-1])
        cs = np.flatnonzero(lungs[r])
        p = (float(r), float(cs[-1] if anterior_sign(s) < 0 else cs[0]))
        row["cp"] = s.margin_mm(p)
    row.update(end_measures(s, s.lungs))
    row.update(room_measures(s))
    # anteroposterior
    front = anterior_sign(s)
    sternum = s.mask("sternum")
    back = posterior_wall(s)
    if not back.any():
        back = s.lungs
    row["has_sternum"] = bool(sternum.any())
    row["has_back"] = bool(back.any())
    if sternum.any():
        pf = extreme(sternum, 0.0, front, s.sy, s.sx)
        assert pf is not None
        row["m_front"] = s.margin_mm(pf)
    if back.any():
        pb = extreme(back, 0.0, -front, s.sy, s.sx)
        assert pb is not None
        row["m_back"] = s.margin_mm(pb)
    chest = s.lungs | s.mask("heart")
    pc = extreme(chest, 0.0, front, s.sy, s.sx)
    row["m_chest_front"] = None if pc is None else s.margin_mm(pc)
    # spine
    m, ext = spine_beside_lungs(s)
    row["spine_area"] = s.area_mm2(m)
    inner = m.copy()
    if ext is not None:
        inner[ext[0]] = False
        inner[ext[1]] = False
        row["cut_share"] = lungs_cut_share(s, ext)
    for t in TOLERANCES_MM[:4]:
        row[f"spine_cut_t{t:g}"] = s.edge_contact_mm(inner, t)
    # lungs (the union, as organs.lungs on a lateral)
    u = s.mask("lung_right") | s.mask("lung_left")
    row["lung_area"] = s.area_mm2(u)
    for t in TOLERANCES_MM:
        row[f"lung_cut_t{t:g}"] = s.edge_contact_mm(u, t)
    return row


def _col(rows: list[Row], key: str, default: float = math.nan) -> npt.NDArray[np.float64]:
    return np.array([default if r.get(key) is None else float(r[key]) for r in rows])


Pred = Callable[[list[Row]], npt.NDArray[np.bool_]]


def _below(key: str, t: float) -> Pred:
    """Fail where the measure is below ``t`` (missing: never)."""

    def pred(rs: list[Row]) -> npt.NDArray[np.bool_]:
        return _col(rs, key, 1e9) < t

    return pred


def _either(a: Pred, b: Pred) -> Pred:
    def pred(rs: list[Row]) -> npt.NDArray[np.bool_]:
        return a(rs) | b(rs)

    return pred


def _near_end(end: str, tol: float, band: float, fraction: float) -> Pred:
    """``lungs_near_end_shares``: the field edge within ``tol`` beyond that end of the lungs
    and their last ``band`` mm at least ``fraction`` of their widest row."""

    def pred(rs: list[Row]) -> npt.NDArray[np.bool_]:
        near = _col(rs, f"{end}_gap_b{band:g}", 1e9) <= tol + 1e-6
        return near & (_col(rs, f"{end}_share_b{band:g}", 0.0) >= fraction)

    return pred


def _margin_grid(key: str, end: str, t0: float, rooms: tuple[str, ...]) -> dict[Any, Pred]:
    """A landmark margin rule (fail below t0) and its variants: another margin; the margin OR
    the near-end cut at that end of the lungs; the margin OR a room measure at or below a
    threshold (a fixed grid: mm, or shares of the lungs' depth)."""
    base = _below(key, t0)
    g: dict[tuple[Any, ...], Pred] = {RULE: base}
    for t in np.arange(3.0, 20.01, 0.5):
        g[("margin", float(t))] = _below(key, float(t))
    for tol, b, f in itertools.product(NEAR_TOLS_MM, BANDS_MM, np.arange(0.05, 0.61, 0.05)):
        g[("near_end", t0, tol, b, round(float(f), 2))] = _either(
            base, _near_end(end, tol, b, float(f))
        )
    for k in rooms:
        grid = np.arange(0.0, 2.0, 0.02) if k.endswith("_rel") else np.arange(-20.0, 200.0, 2.0)
        for t in grid:
            g[("or", k, round(float(t), 3))] = _either(base, _below(k, float(t) + 1e-9))
    return g


BOTTOM_ROOMS = (
    *(f"bot_room_{n}{r}" for n in ("lungtop", "heartbot", "visbot") for r in ("", "_rel")),
    "height_rel",
)
TOP_ROOMS = tuple(f"top_room_{n}{r}" for n in ("lungbot", "hearttop") for r in ("", "_rel"))


def costophrenic_grid(cfg: RulesConfig) -> dict[tuple[Any, ...], Pred]:
    """The posterior costophrenic margin (as shipped before session 12: the margin alone)."""
    return _margin_grid("cp", "bottom", cfg.completeness.costophrenic_margin_mm, BOTTOM_ROOMS)


def apices_grid(cfg: RulesConfig) -> dict[tuple[Any, ...], Pred]:
    return _margin_grid("apex", "top", cfg.completeness.apices_margin_mm, TOP_ROOMS)


def anteroposterior_grid(cfg: RulesConfig) -> dict[tuple[Any, ...], Pred]:
    c = cfg.completeness

    def ap(t_front: float, t_back: float, tol: float) -> Pred:
        def pred(rs: list[Row]) -> npt.NDArray[np.bool_]:
            out = []
            for r in rs:
                if not r["has_sternum"]:
                    mc = r.get("m_chest_front")
                    out.append(bool(r["has_back"] and mc is not None and mc <= tol))
                elif not r["has_back"]:
                    out.append(False)
                else:
                    out.append(bool(r["m_front"] < t_front or r["m_back"] < t_back))
            return np.array(out)

        return pred

    t0 = c.anteroposterior_margin_mm
    g: dict[tuple[Any, ...], Pred] = {RULE: ap(t0, t0, c.sternum_outside_edge_mm)}
    for tf, tb, tol in itertools.product(
        np.arange(3.0, 12.01, 1.0), np.arange(3.0, 12.01, 1.0), (3.0, 6.0, 10.0)
    ):
        g[("ap", float(tf), float(tb), tol)] = ap(float(tf), float(tb), tol)
    return g


def spine_grid(cfg: RulesConfig) -> dict[tuple[Any, ...], Pred]:
    """("spine", side contact limit, cut share, near-end share, near-end tolerance, band,
    ends): the spine's side contact, the lungs' cut share, the near-end cut."""
    o = cfg.organs

    def sp(
        c: float, tol_c: float, f: float, f_near: float, tol: float, b: float, ends: str
    ) -> Pred:
        def pred(rs: list[Row]) -> npt.NDArray[np.bool_]:
            fail = _col(rs, "spine_area", 0.0) < o.spine_min_area_mm2
            fail |= _col(rs, f"spine_cut_t{tol_c:g}", 0.0) > c
            fail |= _col(rs, "cut_share", 0.0) >= f
            for end in ("bottom",) if ends == "bottom" else ("bottom", "top"):
                near = _col(rs, f"{end}_gap_b{b:g}", 1e9) <= tol + 1e-6
                fail |= near & (_col(rs, f"{end}_share_b{b:g}", 0.0) >= f_near)
            return fail

        return pred

    # the rule as shipped before session 12 (etc/rules.toml's history)
    g: dict[tuple[Any, ...], Pred] = {RULE: sp(120.0, 0.0, 0.3, 0.3, 5.6, 3.0, "bottom")}
    for c, f, f_near, tol, b, ends in itertools.product(
        (80.0, 100.0, 120.0, 140.0),
        (0.3, 0.4),
        (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
        (*NEAR_TOLS_MM, 5.6),
        BANDS_MM,
        ("bottom", "both"),
    ):
        g[("spine", c, f, f_near, tol, b, ends)] = sp(c, 0.0, f, f_near, tol, b, ends)
    return g


def lungs_grid(cfg: RulesConfig) -> dict[tuple[Any, ...], Pred]:
    o = cfg.organs

    def lu(tol: float, ratio: float) -> Pred:
        def pred(rs: list[Row]) -> npt.NDArray[np.bool_]:
            area = _col(rs, "lung_area", 0.0)
            limit = np.sqrt(ratio * np.maximum(area, 0.0))
            return (area < o.lung_min_area_mm2) | (_col(rs, f"lung_cut_t{tol:g}", 0.0) > limit)

        return pred

    g: dict[tuple[Any, ...], Pred] = {
        RULE: lu(o.lateral_edge_tolerance_mm, o.lateral_lung_truncation_fail_ratio)
    }
    for tol, ratio in itertools.product(TOLERANCES_MM, np.arange(0.2, 1.21, 0.05)):
        g[("lungs", tol, round(float(ratio), 2))] = lu(tol, float(ratio))
    return g


GRIDS = {
    "completeness.costophrenic": costophrenic_grid,
    "completeness.apices": apices_grid,
    "completeness.anteroposterior": anteroposterior_grid,
    "organs.spine": spine_grid,
    "organs.lungs": lungs_grid,
}


Key = tuple[Any, ...]
# the grids' subsets reported (name, which grid points besides the rule)
SUBSETS: dict[str, list[tuple[str, Callable[[Key], bool]]]] = {
    "completeness.costophrenic": [
        ("margin", lambda k: k[0] == "margin"),
        ("near end, band 3 mm", lambda k: k[0] == "near_end" and k[3] == 3.0),
        ("near end, any band", lambda k: k[0] == "near_end"),
        ("all", lambda k: True),
    ],
    "completeness.apices": [
        ("margin", lambda k: k[0] == "margin"),
        ("near end, band 3 mm", lambda k: k[0] == "near_end" and k[3] == 3.0),
        ("all", lambda k: True),
    ],
    "completeness.anteroposterior": [("all", lambda k: True)],
    "organs.spine": [
        (
            "fraction (both) + band, tolerance 5.6",
            lambda k: k[1] == 120.0 and k[2] == k[3] and k[4] == 5.6 and k[6] == "bottom",
        ),
        (
            "fraction (both) + band + tolerance",
            lambda k: k[1] == 120.0 and k[2] == k[3] and k[6] == "bottom",
        ),
        ("all", lambda k: True),
    ],
    "organs.lungs": [("all", lambda k: True)],
}


def report(rule: str, data: dict[str, list[Row]], cfg: RulesConfig, n_random: int) -> None:
    """Per subset of the rule's grid: the point chosen on one half of the poses (the best model
    accuracy among those whose exact accuracy on that half is at most 1 point below the rule's)
    scored on the other, both ways, even/odd and over random halves; the full set's best."""
    key = f"t:{rule}"
    sub = {s: [r for r in data[s] if r[key] is not None] for s in data}
    for s in sub:
        for r in sub[s]:
            r["fail"] = bool(r[key])
    grid = GRIDS[rule](cfg)
    table: Table = {g: {s: pred(sub[s]) for s in sub} for g, pred in grid.items()}
    y = {s: np.array([r["fail"] for r in sub[s]]) for s in sub}

    def acc(g: Key, s: str) -> float:
        return 100.0 * float(np.mean(table[g][s] == y[s]))

    def sens(g: Key, s: str) -> float:
        return 100.0 * float(np.mean(table[g][s][y[s]])) if y[s].any() else math.nan

    def admit(g: Key, a_x: float, rule_x: float) -> bool:
        return a_x >= rule_x - 0.01 - 1e-9

    print(
        f"\n== {rule}: {len(sub['model'])} model / {len(sub['exact'])} exact films, "
        f"{int(y['model'].sum())} truth fails; the rule before session 12: model "
        f"{acc(RULE, 'model'):.2f} % (sens {sens(RULE, 'model'):.0f}), exact "
        f"{acc(RULE, 'exact'):.2f} %"
    )
    halves = pose_halves([r["pose"] for r in sub["model"]], n_random, 12)
    full_rule_x = acc(RULE, "exact") / 100.0
    for name, keep in SUBSETS[rule]:
        part: Table = {g: v for g, v in table.items() if g == RULE or keep(g)}
        gains = []
        for i, fold in enumerate(halves):
            held_m, held_x, base_m, base_x, chosen = split_eval(sub, fold, part, admit)
            gains.append((held_m - base_m, held_x - base_x))
            if i == 0:
                print(
                    f"  [{name}] {len(part)} points; even/odd held out: model {base_m:.2f} -> "
                    f"{held_m:.2f}, exact {base_x:.2f} -> {held_x:.2f}; chosen {chosen}"
                )
        if len(gains) > 1:
            gm = np.array(gains[1:])
            print(
                f"    {len(gm)} random halves: model {gm[:, 0].mean():+.2f} (min "
                f"{gm[:, 0].min():+.2f}), exact {gm[:, 1].mean():+.2f} (min {gm[:, 1].min():+.2f})"
            )
        ok = [g for g in part if admit(g, acc(g, "exact") / 100.0, full_rule_x)]
        best = sorted(ok, key=lambda g: (acc(g, "model"), acc(g, "exact")), reverse=True)[:5]
        print("    full set, best admitted (model acc / sens, exact acc / sens):")
        for g in best:
            print(
                f"      {g}: {acc(g, 'model'):.2f} / {sens(g, 'model'):.0f}, "
                f"{acc(g, 'exact'):.2f} / {sens(g, 'exact'):.0f}"
            )


def main() -> int:
    ap = study_parser(__doc__, random_halves=True)
    ap.add_argument("--rule", action="append", choices=RULES)
    args = ap.parse_args()
    cfg = load_config(None)
    samples = study_samples(args.set_dir, View.LATERAL)[: args.limit]
    data = measured_by_source(
        args.rows, samples, lambda smp, pred: measure(smp, pred, cfg), args.pred
    )
    for rule in args.rule or RULES:
        report(rule, data, cfg, args.random)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
