"""`completeness.costophrenic` measures that tell a cut lung base from an intact one on the
shipped model's masks (train-split calibration sets only).

Why: the rule (the costophrenic landmark ≥ 5 mm inside the field) is right on ~99 % of films
with exact masks but on ~87 % with the model's masks: where the field edge cuts the lung
base, the model's lung often stops some mm above the edge (docs/MODEL.md "Lungs cut by the
field edge"), so the margin reads ≥ 5 mm. This script measures, per lung (frontal: each
side; lateral: the lungs' largest part), the shape of the lower outline and its relation to
the field edge and to other organs, on every film with its exact masks and with a model's
cached masks (same film, same row). It prints the current rule, the model's misses (cut
lungs vs lungs near the edge), single measures (2-fold by pose), and for every measure the
condition "margin < 5 mm or, on some lung, margin < A and the measure beyond B": A and B
chosen on the model's masks of one half of the poses (keeping that half's exact masks at
>= 98 %), scored on the other half's model and exact masks, both ways; for the even/odd pose
split and as mean [min, max] over random pose halves (``--repeats``).

    .venv/bin/python scripts/costophrenic_study.py data/synth/rules-cal5-f \
        --pred .cache/rules/pred-s5/rules-cal5-f --rows /tmp/cp-f.json

Measures per lung (``x_`` exact masks, ``p_`` the model's; the film's value is the worst
lung's, see ``film_value``):
- ``margin``: the rule's landmark margin (mm);
- ``vgap``: the least vertical distance from the lung's lower outline to the field's last
  exposed row in the same column (mm): how far the base stops above the bottom edge;
- ``flat{k}``: the share of the lung's columns whose lowest pixel lies within k mm of the
  lung's lowest row (a base cut straight across is wide and flat; an intact base is a dome
  or a recess);
- ``par{k}``: the share of the lung's columns whose gap to the field's bottom edge is within
  k mm of the least gap (the lower outline parallel to the edge);
- ``hw``: the lung's height over its width;
- ``below_heart``: how far the lung's lowest row lies below the heart's lowest row (mm);
- ``rib_gap``: the least vertical distance from the lowest posterior rib (same side;
  lateral: both) to the field's bottom edge (mm);
- ``rib_below``: the lowest posterior rib row minus the lung's lowest row (mm);
- ``profile``: the lower outline's rise above the lowest row (mm) at 11 points from the
  lateral (lateral view: posterior) end to the other; ``r1``, ``r2``, ``r8``, ``r9``: at
  tenths 1, 2, 8, 9; ``mean19``: mean over tenths 1–9; ``max28`` / ``nmax28``: largest over
  tenths 2–8 (mm / % of the width): an intact base rises from its recess, a cut one is flat;
- ``low_u``: where the lowest row lies along the width (0 lateral/posterior end, 1 the other
  end; mean position of the columns reaching it); ``low_u{k}``: of the columns within k mm
  of it. An intact posterior recess is a narrow lowest point at the posterior end.
Results and conclusions: docs/RULES.md "Session 7 (helper): completeness.costophrenic on the
model's masks".
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from study_stats import film_subject, measured, study_parser, study_samples, two_fold

from qcnode.evaluate import Sample
from qcnode.records import BoolMask
from qcnode.rules import load_config
from qcnode.rules.completeness import (
    SIDES,
    anterior_sign,
    costophrenic,
    costophrenic_point,
    lateral_sign,
)
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import Subject
from qcnode.rules.masks import largest_component

Array = npt.NDArray[np.float64]
FLAT_MM = (3.0, 6.0, 10.0)
PAR_MM = (3.0, 6.0)
PROFILE_N = 11
LOW_MM = (2.0, 3.0, 6.0)


def field_bottom(field: BoolMask) -> npt.NDArray[np.int64]:
    """Per column, the field's last exposed row (−1 where the column has none)."""
    h = field.shape[0]
    last = h - 1 - np.argmax(field[::-1], axis=0)
    return np.where(field.any(axis=0), last, -1).astype(np.int64)


def lung_measures(
    s: Subject, lung: BoolMask, ribs: BoolMask, margin: float, out_sign: float
) -> dict[str, Any]:
    """The measures of one lung (module docstring); ``out_sign``: +1 when the lung's
    lateral (lateral view: posterior) end lies towards +columns."""
    out: dict[str, Any] = {"margin": margin}
    cols = np.flatnonzero(lung.any(axis=0))
    rows = np.flatnonzero(lung.any(axis=1))
    if cols.size < 3:
        return out
    h = lung.shape[0]
    bottom = (h - 1 - np.argmax(lung[::-1, cols], axis=0)).astype(np.float64)
    low = float(bottom.max())
    fb = field_bottom(s.field)[cols].astype(np.float64)
    exposed = fb >= 0  # columns beyond a side edge have no bottom edge
    if not exposed.any():
        return out
    gap = ((fb - bottom) * s.sy)[exposed]
    out["vgap"] = float(gap.min())
    for k in FLAT_MM:
        out[f"flat{k:.0f}"] = float(np.mean(bottom >= low - k / s.sy))
    for k in PAR_MM:
        out[f"par{k:.0f}"] = float(np.mean(gap <= gap.min() + k))
    # the lower outline's rise above the lowest row (mm), from the lateral end (u = 0) to
    # the medial end (u = 1) in tenths of the width
    order = bottom if out_sign < 0 else bottom[::-1]
    n = order.size
    win = max(1, n // 40)
    rise = []
    for u in np.linspace(0.0, 1.0, PROFILE_N):
        i = min(n - 1, round(u * (n - 1)))
        rise.append(float(low - order[max(0, i - win) : i + win + 1].max()) * s.sy)
    out["profile"] = rise
    out["low_u"] = float(np.mean(np.flatnonzero(order >= low))) / max(n - 1, 1)
    for k in LOW_MM:
        near = np.flatnonzero(order >= low - k / s.sy)
        out[f"low_u{k:.0f}"] = float(np.mean(near)) / max(n - 1, 1)
    out["width"] = (cols[-1] - cols[0] + 1) * s.sx
    out["hw"] = (low - rows[0] + 1) * s.sy / ((cols[-1] - cols[0] + 1) * s.sx)
    heart = s.clean("heart")
    if heart.any():
        out["below_heart"] = (low - float(np.flatnonzero(heart.any(axis=1))[-1])) * s.sy
    if ribs.any():
        rc = np.flatnonzero(ribs.any(axis=0))
        rb = (h - 1 - np.argmax(ribs[::-1, rc], axis=0)).astype(np.float64)
        rf = field_bottom(s.field)[rc]
        if (rf >= 0).any():
            out["rib_gap"] = float(((rf - rb) * s.sy)[rf >= 0].min())
        out["rib_below"] = (float(rb.max()) - low) * s.sy
    return out


def film_measures(s: Subject) -> list[dict[str, Any]]:
    """Per lung measures: frontal both sides, lateral the lungs' largest part."""
    if s.view.value == "lateral":
        lungs = largest_component(s.lungs)
        if not lungs.any():
            return []
        f = costophrenic(s, load_config())
        ribs = s.mask("ribs_posterior_right") | s.mask("ribs_posterior_left")
        value = float(f.value if f.value is not None else 0.0)
        return [lung_measures(s, lungs, ribs, value, -anterior_sign(s))]
    out = []
    for side in SIDES:
        lung = s.clean(f"lung_{side}")
        if not lung.any():
            continue
        p = costophrenic_point(lung, lateral_sign(s, side))
        assert p is not None
        ribs = s.mask(f"ribs_posterior_{side}")
        out.append(lung_measures(s, lung, ribs, s.margin_mm(p), lateral_sign(s, side)))
    return out


def measure(smp: Sample, cfg: RulesConfig, pred: Path | None) -> dict[str, Any] | None:
    t = smp.truth["rules"].get("completeness.costophrenic")
    if t is None or t["status"] not in ("pass", "fail"):
        return None
    row: dict[str, Any] = {
        "id": smp.id,
        "pose": smp.id.rsplit("-", 1)[0],
        "fail": t["status"] == "fail",
        "truth": t["value"],
    }
    for m, d in (("x", None), ("p", pred)):
        got = film_subject(smp, cfg, d)
        if got is None:
            return None
        s = got[1]
        f = costophrenic(s, cfg)
        row[f"{m}_rule"] = f.status.value == "fail"
        row[f"{m}_value"] = f.value
        row[f"{m}_lungs"] = film_measures(s)
    return row


def film_value(row: dict[str, Any], m: str, key: str, worst: str = "min") -> float | None:
    """The film's value of a per-lung measure: the worst lung's (``min`` or ``max``)."""
    vals = [lung[key] for lung in row[f"{m}_lungs"] if key in lung]
    if not vals:
        return None
    return float(min(vals) if worst == "min" else max(vals))


DERIVED = ("r1", "r2", "r8", "r9", "mean19", "max28", "nmax28")
KEYS = (
    *("vgap", "flat3", "flat6", "flat10", "par3", "par6", "hw", "below_heart", "rib_gap"),
    *("rib_below", "low_u", "low_u2", "low_u3", "low_u6", *DERIVED),
)
EXACT_FLOOR = 0.98  # a candidate must keep the exact masks at >= 98 % on the fitting half
MARGIN_GRID = (8.0, 10.0, 12.0, 15.0, 18.0, 20.0, 25.0)


def derived(lung: dict[str, Any]) -> dict[str, float]:
    """Measures read off the lower-outline profile: the rise (mm) at tenths 1, 2, 8, 9 of
    the width from the lateral end, its mean over tenths 1–9, its largest over 2–8 (also in
    % of the width)."""
    p = lung.get("profile")
    if not p:
        return {}
    a = np.asarray(p, dtype=np.float64)
    return {
        "r1": float(a[1]),
        "r2": float(a[2]),
        "r8": float(a[8]),
        "r9": float(a[9]),
        "mean19": float(a[1:10].mean()),
        "max28": float(a[2:9].max()),
        "nmax28": float(a[2:9].max()) / float(lung["width"]) * 100.0,
    }


def arrays(rows: list[dict[str, Any]], m: str, key: str) -> tuple[Array, Array]:
    """Per film and lung (2 columns, NaN where absent): the margin and one measure."""
    mar = np.full((len(rows), 2), np.nan)
    val = np.full((len(rows), 2), np.nan)
    for i, r in enumerate(rows):
        for j, lung in enumerate(r[f"{m}_lungs"][:2]):
            full = {**lung, **derived(lung)}
            mar[i, j] = lung["margin"]
            val[i, j] = full.get(key, np.nan)
    return mar, val


def predict(mar: Array, val: Array, ta: float, tb: float, sign: int) -> npt.NDArray[np.bool_]:
    """Fail where some lung has margin < 5 mm, or margin < ta and sign·measure > sign·tb."""
    with np.errstate(invalid="ignore"):
        extra = (mar < ta) & (sign * val > sign * tb)
        return np.asarray(np.any((mar < 5.0) | extra, axis=1))


def held_out(
    rows: list[dict[str, Any]], key: str, sign: int, fold: dict[str, int]
) -> tuple[float, float, list[tuple[float, float]]]:
    """Held-out accuracy (%) on the model's and on the exact masks of "margin < 5 mm or
    (margin < A and sign·key > sign·B)", A and B chosen on the other half's model masks
    (keeping its exact masks >= EXACT_FLOOR), both ways."""
    y = np.array([r["fail"] for r in rows])
    half = np.array([fold[r["pose"]] for r in rows])
    pm, pv = arrays(rows, "p", key)
    xm, xv = arrays(rows, "x", key)
    finite = pv[np.isfinite(pv)]
    if finite.size == 0:
        return float("nan"), float("nan"), []
    b_grid = np.unique(np.percentile(finite, np.arange(5, 100, 5)).round(3))
    hp = hx = 0
    chosen: list[tuple[float, float]] = []
    for held in (0, 1):
        tr, te = half != held, half == held
        best = (-1.0, 5.0, float("inf") * sign)
        for ta, tb in itertools.product(MARGIN_GRID, b_grid):
            if np.mean(predict(xm[tr], xv[tr], ta, tb, sign) == y[tr]) < EXACT_FLOOR:
                continue
            acc = float(np.mean(predict(pm[tr], pv[tr], ta, tb, sign) == y[tr]))
            if acc > best[0]:
                best = (acc, ta, float(tb))
        chosen.append((best[1], best[2]))
        hp += int(np.sum(predict(pm[te], pv[te], best[1], best[2], sign) == y[te]))
        hx += int(np.sum(predict(xm[te], xv[te], best[1], best[2], sign) == y[te]))
    return 100.0 * hp / len(rows), 100.0 * hx / len(rows), chosen


def report(rows: list[dict[str, Any]], repeats: int) -> None:
    n = len(rows)
    y = np.array([r["fail"] for r in rows])
    print(f"{n} films, {int(y.sum())} truth fails")
    base = {}
    for m in ("x", "p"):
        pred = np.array([r[f"{m}_rule"] for r in rows])
        base[m] = 100.0 * float(np.mean(pred == y))
        print(f"[{m}] current rule: acc {base[m]:.1f} % sens {100 * np.mean(pred[y]):.1f} %")
    miss = [r for r in rows if r["fail"] and not r["p_rule"]]
    deep = [r for r in miss if r["truth"] < -3.0]
    print(
        f"model misses {len(miss)}: truth < -3 mm (cut) {len(deep)}, "
        f"-3..5 mm (near the edge) {len(miss) - len(deep)}; model margin quartiles "
        f"{np.percentile([r['p_value'] for r in miss], [25, 50, 75]).round(1).tolist()}"
    )
    for m in ("x", "p"):  # single measures, the film's worst lung
        for key, worst in [
            ("margin", "min"),
            ("vgap", "min"),
            ("low_u", "max"),
            ("flat6", "max"),
            ("hw", "max"),
            ("below_heart", "min"),
        ]:
            fr = []
            for r in rows:
                v = film_value(r, m, key, worst)
                if v is not None:
                    fr.append({"pose": r["pose"], "fail": r["fail"], key: v})
            res = two_fold(fr, [key])
            print(f"[{m}] {key:12s} alone, 2-fold acc {res['acc']:.1f} sens {res['sens']:.1f}")
    poses = sorted({r["pose"] for r in rows})
    even = {p: i % 2 for i, p in enumerate(poses)}
    rng = np.random.default_rng(0)
    splits = []
    for _ in range(repeats):
        perm = rng.permutation(len(poses))
        splits.append({poses[i]: int(k % 2) for k, i in enumerate(perm)})
    print(
        f"margin < 5 or (margin < A and measure beyond B); model / exact held-out acc, "
        f"pose 2-fold (even/odd) and mean [min, max] over {repeats} random pose halves "
        f"(current rule {base['p']:.1f} / {base['x']:.1f})"
    )
    for key in KEYS:
        for sign in (1, -1):
            acc_p, acc_x, chosen = held_out(rows, key, sign, even)
            reps = [held_out(rows, key, sign, f)[:2] for f in splits]
            rp = np.array([a for a, _ in reps])
            rx = np.array([b for _, b in reps])
            rel = ">" if sign > 0 else "<"
            print(
                f"  {key:11s} {rel} B: {acc_p:5.1f} / {acc_x:5.1f}  "
                f"random {rp.mean():5.1f} [{rp.min():.1f}, {rp.max():.1f}] / {rx.mean():5.1f}"
                f"  (A, B) {[(a, round(b, 3)) for a, b in chosen]}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(__doc__)
    ap.add_argument("--repeats", type=int, default=20, help="random pose halves")
    a = ap.parse_args(argv)
    if a.pred is None:
        ap.error("--pred (the model's cached masks) is required")
    cfg = load_config()
    samples = study_samples(a.set_dir, None, train_only=False)[: a.limit]
    rows = measured(a.rows, samples, lambda smp: measure(smp, cfg, a.pred))
    report(rows, a.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
