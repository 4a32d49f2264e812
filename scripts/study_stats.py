"""Shared pieces of the rule studies (scripts/*_study.py): a film's measured Subject from its
exact or cached model masks (or a real film's from the model), the truth's pose parameters,
and the pose-split statistics every study reports."""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from cache_predictions import load_prediction

from qcnode.evaluate import Sample, load_masks, load_samples
from qcnode.imaging import decode
from qcnode.records import BoolMask, DecodedImage, Predictor, View
from qcnode.rules import RulesConfig, build_subject
from qcnode.rules.geometry import Subject
from qcnode.testing import FakePredictor

Array = npt.NDArray[np.float64]
Row = dict[str, Any]
Pose = TypeVar("Pose", int, str)


def study_parser(
    doc: str | None, *, random_halves: bool = False, descriptive: tuple[str, str] | None = None
) -> argparse.ArgumentParser:
    """The arguments every study takes: the set, the model's cached masks, a cache of the
    per-film measures (measuring is the slow part) and a film limit; ``random_halves``: also
    ``--random``, how many random pose halves (``pose_halves``) beside even/odd;
    ``descriptive`` (flag, what it reports): a flag for a run that only describes, so that it
    may read an eval split (``study_samples(..., train_only=not flag)``)."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("--pred", type=Path, help="cached model masks (cache_predictions.py)")
    ap.add_argument("--rows", type=Path, help="cache of the per-film measures (JSON)")
    ap.add_argument("--limit", type=int)
    if random_halves:
        ap.add_argument("--random", type=int, default=20, help="random pose halves")
    if descriptive is not None:
        flag, what = descriptive
        ap.add_argument(
            flag, action="store_true", help=f"only {what} (descriptive; allowed on an eval split)"
        )
    return ap


def study_samples(set_dir: Path, view: View | None, *, train_only: bool = True) -> list[Sample]:
    """The set's films of one view (None: all); calibration studies refuse an eval split."""
    samples = [s for s in load_samples(set_dir) if view is None or s.view is view]
    if train_only and any(s.truth.get("split") != "train" for s in samples):
        raise SystemExit("train-split sets only")
    return samples


def measured(
    rows_file: Path | None,
    samples: Sequence[Sample],
    measure: Callable[[Sample], Any],
    *,
    every: int = 50,
) -> list[Any]:
    """``measure`` of each sample (None results dropped), read from / written to rows_file."""
    if rows_file is not None and rows_file.is_file():
        cached: list[Any] = json.loads(rows_file.read_text())
        return cached
    rows = []
    for i, smp in enumerate(samples):
        r = measure(smp)
        if r is not None:
            rows.append(r)
        if i % every == 0:
            print(f"{i}/{len(samples)}", file=sys.stderr, flush=True)
    if rows_file is not None:
        rows_file.write_text(json.dumps(rows))
    return rows


def measured_by_source(
    rows_file: Path | None,
    samples: Sequence[Sample],
    measure: Callable[[Sample, Path | None], Row | None],
    pred_dir: Path | None,
    *,
    every: int = 50,
    exact: list[Row] | None = None,
) -> dict[str, list[Row]]:
    """{"exact": rows, "model": rows}: each film measured on its exact masks and on the
    model's cached ones (skipped without pred_dir), cached in rows_file like ``measured``.
    ``exact``: exact-mask rows measured before (kept as they are; only the model's masks are
    measured, as for a new model's cache)."""
    if rows_file is not None and rows_file.is_file():
        cached: dict[str, list[Row]] = json.loads(rows_file.read_text())
        return cached

    def both(smp: Sample) -> dict[str, Row | None]:
        return {
            "exact": measure(smp, None) if exact is None else None,
            "model": measure(smp, pred_dir) if pred_dir is not None else None,
        }

    pairs = measured(None, samples, both, every=every)
    data = {src: [p[src] for p in pairs if p[src] is not None] for src in ("exact", "model")}
    if exact is not None:
        data["exact"] = exact
    if rows_file is not None:
        rows_file.write_text(json.dumps(data))
    return data


def subject(
    image: DecodedImage, view: View, masks: dict[str, BoolMask], cfg: RulesConfig
) -> Subject:
    """The film as the rules measure it, with these masks in place of the model's."""
    pred = FakePredictor(source={image.meta.sop_instance_uid: (view, masks)})
    return build_subject(image, pred.predict([image])[0], cfg)


def film_subject(
    smp: Sample, cfg: RulesConfig, pred_dir: Path | None = None
) -> tuple[DecodedImage, Subject] | None:
    """A sample measured on its exact masks, or on a model's cached masks (pred_dir, from
    scripts/cache_predictions.py); None when the cache lacks it or read another view."""
    image = decode(smp.dcm)
    if pred_dir is None:
        return image, subject(image, smp.view, load_masks(smp.masks), cfg)
    cached = pred_dir / f"{smp.id}.npz"
    if not cached.is_file():
        return None
    view, masks = load_prediction(cached)
    if view is not smp.view:
        return None
    return image, subject(image, view, masks, cfg)


def real_pngs(folders: Iterable[Path]) -> list[Path]:
    """The real films (PNG) of some folders, sorted, without their ``*_lungs`` masks."""
    return sorted(p for d in folders for p in d.glob("*.png") if not p.stem.endswith("_lungs"))


def real_frontals(
    pred: Predictor, films: Iterable[Path], cfg: RulesConfig
) -> Iterator[tuple[Path, DecodedImage, Subject]]:
    """Each real film that the model reads as frontal, measured on the model's masks
    (descriptive checks only: nothing is chosen on real films)."""
    for path in films:
        image = decode(path)
        (prediction,) = pred.predict([image])
        if prediction.view is View.FRONTAL:
            yield path, image, build_subject(image, prediction, cfg)


# the truth's pose parameters (truth["params"]) under the studies' row keys: (key, index)
POSE_PARAMS: dict[str, tuple[str, int | None]] = {
    "sz": ("scale_zyx", 0),
    "sy_": ("scale_zyx", 1),
    "sx_": ("scale_zyx", 2),
    "mag": ("magnification", None),
    "shift": ("diaphragm_shift_mm", None),
    "tilt": ("tilt_deg", None),
    "tilt_deg": ("tilt_deg", None),
    "rot": ("rotation_deg", None),
    "elastic": ("elastic_mm", None),
    "cz": ("beam_center_mm", 1),
    "sid": ("sid_mm", None),
    "vp": ("view_position", None),
}


def pose_params(params: Mapping[str, Any], *names: str) -> Row:
    """Some of the truth's pose parameters (``POSE_PARAMS``), in the order named: the
    nuisances a study relates its measures and residuals to."""
    out: Row = {}
    for name in names:
        key, i = POSE_PARAMS[name]
        out[name] = params[key] if i is None else params[key][i]
    return out


def pose_halves(poses: Iterable[Pose], n_random: int, seed: int) -> list[dict[Pose, int]]:
    """Pose -> fold (0/1): even/odd by pose rank first (``two_fold``'s split), then
    ``n_random`` random halves of the poses (``random.Random(seed)``)."""
    ordered = sorted(set(poses))
    out = [{p: i % 2 for i, p in enumerate(ordered)}]
    rng = random.Random(seed)
    for _ in range(n_random):
        order = ordered[:]
        rng.shuffle(order)
        out.append({p: int(i < len(order) // 2) for i, p in enumerate(order)})
    return out


def best_threshold(x: Array, y: npt.NDArray[np.bool_]) -> tuple[float, int]:
    """Threshold and sign (+1: fail above) with the best accuracy on (x, y)."""
    best = (-1.0, 0.0, 1)
    for t in np.unique(x):
        for sign in (1, -1):
            acc = float(np.mean((sign * x > sign * t) == y))
            if acc > best[0]:
                best = (acc, float(t), sign)
    return best[1], best[2]


def logistic(x: Array, y: npt.NDArray[np.bool_], l2: float = 1.0) -> Array:
    """L2-regularised logistic regression by Newton steps (x standardised, bias first)."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xb.shape[1])
    reg = l2 * np.eye(xb.shape[1])
    reg[0, 0] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-xb @ w))
        g = xb.T @ (p - y) + reg @ w
        h = xb.T @ (xb * (p * (1 - p))[:, None]) + reg
        w = w - np.linalg.solve(h, g)
    return w


def two_fold(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Held-out accuracy / sensitivity / specificity (%) of a threshold on one key, or of a
    logistic on several: fitted on one half of the poses (rows' "pose"), scored on the
    other, both ways. ``thr``: the signed thresholds of the two halves (one key)."""
    ok = [r for r in rows if all(r.get(k) is not None for k in keys)]
    poses = sorted({r["pose"] for r in ok})
    fold = {p: i % 2 for i, p in enumerate(poses)}
    hits = tp = pos = tn = neg = 0
    thr: list[float] = []
    for held in (0, 1):
        tr = [r for r in ok if fold[r["pose"]] != held]
        te = [r for r in ok if fold[r["pose"]] == held]
        ytr = np.array([r["fail"] for r in tr])
        yte = np.array([r["fail"] for r in te])
        xtr = np.array([[float(r[k]) for k in keys] for r in tr])
        xte = np.array([[float(r[k]) for k in keys] for r in te])
        if len(keys) == 1:
            t, sign = best_threshold(xtr[:, 0], ytr)
            thr.append(t * sign)
            pred = sign * xte[:, 0] > sign * t
        else:
            mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
            w = logistic((xtr - mu) / sd, ytr)
            pred = np.hstack([np.ones((len(xte), 1)), (xte - mu) / sd]) @ w > 0
        hits += int(np.sum(pred == yte))
        tp += int(np.sum(pred & yte))
        pos += int(np.sum(yte))
        tn += int(np.sum(~pred & ~yte))
        neg += int(np.sum(~yte))
    n = len(ok)
    return {
        "n": n,
        "acc": 100.0 * hits / max(n, 1),
        "sens": 100.0 * tp / max(pos, 1),
        "spec": 100.0 * tn / max(neg, 1),
        "baseline": 100.0 * neg / max(n, 1),
        "thr": thr,
    }


def corr(rows: list[dict[str, Any]], key: str, target: str = "truth") -> float | None:
    """Pearson r of a measure with a truth column, on rows with both (None below 10 rows)."""
    ok = [r for r in rows if r.get(key) is not None and r.get(target) is not None]
    if len(ok) < 10:
        return None
    x = np.array([float(r[key]) for r in ok])
    y = np.array([float(r[target]) for r in ok])
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


Table = dict[tuple[Any, ...], dict[str, npt.NDArray[np.bool_]]]
RULE: tuple[Any, ...] = ("rule",)


def split_eval(
    data: dict[str, list[Row]],
    fold: dict[str, int],
    table: Table,
    admit: Callable[[tuple[Any, ...], float, float], bool],
) -> tuple[float, float, float, float, list[Any]]:
    """Held-out (model, exact) accuracy (%) of the grid point chosen on the other half's
    model masks, and the rule's (``table[RULE]``, which must be present). A point competes on
    a half only if ``admit(point, its exact accuracy, the rule's exact accuracy)`` (fractions
    on that half); the studies differ only in that acceptance."""
    ids = {s: np.array([fold[r["pose"]] for r in data[s]]) for s in data}
    y = {s: np.array([r["fail"] for r in data[s]]) for s in data}
    hit = {"model": 0, "exact": 0}
    base = {"model": 0, "exact": 0}
    chosen = []
    for held in (0, 1):
        tr = {s: ids[s] != held for s in data}
        te = {s: ids[s] == held for s in data}
        rule_x = float(np.mean(table[RULE]["exact"][tr["exact"]] == y["exact"][tr["exact"]]))
        best, best_key = RULE, (-1.0, -1.0)
        for g, pr in table.items():
            a_m = float(np.mean(pr["model"][tr["model"]] == y["model"][tr["model"]]))
            a_x = float(np.mean(pr["exact"][tr["exact"]] == y["exact"][tr["exact"]]))
            if admit(g, a_x, rule_x) and (a_m, a_x) > best_key:
                best, best_key = g, (a_m, a_x)
        chosen.append(best)
        for s in data:
            hit[s] += int(np.sum(table[best][s][te[s]] == y[s][te[s]]))
            base[s] += int(np.sum(table[RULE][s][te[s]] == y[s][te[s]]))
    n = {s: len(data[s]) for s in data}
    return (
        100.0 * hit["model"] / n["model"],
        100.0 * hit["exact"] / n["exact"],
        100.0 * base["model"] / n["model"],
        100.0 * base["exact"] / n["exact"],
        chosen,
    )
