"""Segmentation and view metrics: Dice per structure and view, view accuracy."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from qcnode.model import data as datamod
from qcnode.model.network import VIEWS, QCNet
from qcnode.model.preprocess import standardise


def dice(pred: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float | None:
    """Dice of two bool masks; None when both are empty (undefined, not perfect)."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def evaluate_pack(
    model: QCNet, pack: datamod.Pack, *, device: torch.device | None = None, batch: int = 16
) -> dict[str, Any]:
    """Dice per (view, structure) on the canvas and view accuracy, without augmentation.

    Structures absent in the truth are skipped (Dice undefined), as are channels not
    supervised for a sample.
    """
    dev = device or torch.device("cpu")
    model.eval()
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    correct, total = 0, 0
    confusion = np.zeros((len(VIEWS), len(VIEWS)), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(pack), batch):
            idx = list(range(start, min(start + batch, len(pack))))
            valid = pack.valid(idx) > 0.5
            x = standardise(pack.canvas[idx].float(), valid)
            logits, view_logits = model(x.to(dev))
            pred = (logits.cpu() > 0).numpy()
            truth = pack.masks(idx).numpy() > 0.5
            views = pack.views[idx].numpy()
            guess = view_logits.argmax(dim=1).cpu().numpy()
            for j, i in enumerate(idx):
                confusion[views[j], guess[j]] += 1
                correct += int(views[j] == guess[j])
                total += 1
                view = str(VIEWS[views[j]])
                for c, name in enumerate(model.structures):
                    if pack.channel_weight[i, c] <= 0 or not truth[j, c].any():
                        continue
                    d = dice(pred[j, c], truth[j, c])
                    if d is not None:
                        scores[(view, name)].append(d)
    return {
        "dice": {f"{v}/{s}": float(np.mean(d)) for (v, s), d in sorted(scores.items())},
        "dice_n": {f"{v}/{s}": len(d) for (v, s), d in sorted(scores.items())},
        "view_accuracy": correct / total if total else None,
        "view_confusion": confusion.tolist(),
        "n": total,
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers: lungs, heart, clavicles, scapulae per view, view accuracy."""
    d = result.get("dice", {})
    keys = ["lung_right", "lung_left", "heart", "clavicle_right", "clavicle_left"]
    keys += ["scapula_right", "scapula_left", "spine"]
    out: dict[str, Any] = {
        f"{v}/{k}": round(d[f"{v}/{k}"], 4)
        for v in ("frontal", "lateral")
        for k in keys
        if f"{v}/{k}" in d
    }
    out["view_accuracy"] = result.get("view_accuracy")
    out["n"] = result.get("n")
    return out
