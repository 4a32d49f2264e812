"""Shared pieces of the rule studies (scripts/*_study.py): a film's measured Subject from its
exact or cached model masks, and the pose-split statistics every study reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cache_predictions import load_prediction

from qcnode.evaluate import Sample, load_masks
from qcnode.imaging import decode
from qcnode.records import BoolMask, DecodedImage, View
from qcnode.rules import RulesConfig, build_subject
from qcnode.rules.geometry import Subject
from qcnode.testing import FakePredictor

Array = npt.NDArray[np.float64]


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
