"""Model card numbers: Dice per structure (synthetic evaluation set, real films), view accuracy,
held-out real negatives, and overlay pictures of real radiographs.

    python -m qcnode.model.report [--model NAME | --weights FILE] [--set data/synth/eval-v1]
        [--real ../shared/data/realcxr] [--overlays docs] [--json-out FILE]

Real films are for evaluation only (never training). Their lung masks include the lung
behind the heart, so they are compared with the union of the predicted right and left lung.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from qcnode.errors import QcnodeError
from qcnode.imaging import decode
from qcnode.model import data as datamod
from qcnode.model.infer import TorchPredictor, load_predictor
from qcnode.model.metrics import dice
from qcnode.records import STRUCTURES, VISIBLE_LUNGS, DecodedImage, Prediction, View

log = logging.getLogger(__name__)

REAL_ROOT = Path("/work/shared/data/realcxr")
ATTRIBUTION = (
    "Images: Hannover Medical School COVID-19 Image Repository (CC BY 3.0), NIH ChestX-ray14 "
    "(NIH Clinical Center), M. Haggstrom (CC0). Lung masks: V7 Labs (CC BY 4.0)."
)


@dataclass(frozen=True)
class RealCase:
    path: Path
    view: View
    lungs: Path | None


def real_cases(root: Path) -> list[RealCase]:
    cases = []
    for folder in ("frontal", "extra_frontal_nomask"):
        for p in sorted((root / folder).glob("*.png")):
            if p.stem.endswith("_lungs"):
                continue
            mask = p.with_name(f"{p.stem}_lungs.png")
            cases.append(RealCase(p, View.FRONTAL, mask if mask.is_file() else None))
    cases += [RealCase(p, View.LATERAL, None) for p in sorted((root / "lateral").glob("*.png"))]
    cases += [RealCase(p, View.FRONTAL, None) for p in sorted((root / "dicom").glob("*.dcm"))]
    return cases


def _predict_all(
    predictor: TorchPredictor, images: Sequence[DecodedImage], batch: int = 8
) -> list[Prediction]:
    out: list[Prediction] = []
    for i in range(0, len(images), batch):
        out += predictor.predict(images[i : i + batch])
    return out


def _lungs(pred: Prediction) -> np.ndarray:
    return np.logical_or(pred.masks["lung_right"], pred.masks["lung_left"])


def _visible_lungs(pred: Prediction) -> np.ndarray | None:
    """The visible-lung channels' union, when the weights have them (VISIBLE_LUNGS)."""
    return pred.lung_fields()


def human_sides(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A two-lung human mask as (patient's right, left): its two largest components, the
    right lung on the image left as a frontal film hangs; None unless it has two."""
    labels, n = ndimage.label(truth)
    if n < 2:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    a, b = (labels == int(k) + 1 for k in np.argsort(sizes)[::-1][:2])
    cols = np.arange(truth.shape[1])
    if (a * cols).sum() / a.sum() > (b * cols).sum() / b.sum():
        a, b = b, a
    return a, b


def _side_dice(pred: Prediction, truth: np.ndarray) -> float | None:
    """Mean Dice of the visible-lung channels per side against the human mask's lungs: the
    rules measure each side on its own, which the union's Dice does not see."""
    sides = human_sides(truth)
    names = VISIBLE_LUNGS if all(n in pred.extra_masks for n in VISIBLE_LUNGS) else ()
    if sides is None or not names:
        return None
    d = [dice(pred.extra_masks[n], t) for n, t in zip(names, sides, strict=True)]
    return float(np.mean([float(x or 0.0) for x in d]))


def below_truth_floor(truth: np.ndarray) -> np.ndarray:
    """Pixels below the human mask's lowest row, per column that holds some of it.

    The V7 masks stop at the visible diaphragm; the synthetic lung truth (and so the
    network) includes the recesses behind the liver. Cutting a prediction here bounds what
    that label definition costs: it uses the truth, so it is a diagnostic, never a score.
    """
    rows = truth.shape[0]
    has = np.asarray(truth.any(axis=0), dtype=bool)
    floor = rows - 1 - np.argmax(truth[::-1], axis=0)
    below: np.ndarray = (np.arange(rows)[:, None] > floor[None, :]) & has[None, :]
    return below


def _label_gap(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    cut: list[float] = []
    area: list[float] = []
    fp_all = fp_below = 0
    for pred, truth in pairs:
        below = below_truth_floor(truth)
        cut.append(float(dice(pred & ~below, truth) or 0.0))
        fp = pred & ~truth
        fp_all += int(fp.sum())
        fp_below += int((fp & below).sum())
        area.append(float(pred.sum()) / max(1, int(truth.sum())))
    return {
        "what": "diagnostic using the human masks (not a score): prediction cut below the "
        "mask's lowest row per column",
        "dice_cut_mean": float(np.mean(cut)),
        "dice_cut_median": float(np.median(cut)),
        "false_positive_share_below_floor": fp_below / max(1, fp_all),
        "area_ratio_median": float(np.median(area)),
    }


def evaluate_real(
    predictor: TorchPredictor, root: Path, *, overlays: Path | None = None
) -> dict[str, Any]:
    cases = real_cases(root)
    rows = []
    shown: list[tuple[RealCase, DecodedImage, Prediction, float | None]] = []
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    whole: list[float] = []
    visible: list[float] = []
    per_side: list[float] = []
    for start in range(0, len(cases), 8):
        chunk = cases[start : start + 8]
        images = [decode(c.path) for c in chunk]
        preds = predictor.predict(images)
        for case, image, pred in zip(chunk, images, preds, strict=True):
            d = dv = None
            if case.lungs is not None:
                truth = np.asarray(Image.open(case.lungs).convert("L")) > 127
                d = dice(_lungs(pred), truth)
                whole.append(float(d or 0.0))
                pairs.append((_lungs(pred), truth))
                seen = _visible_lungs(pred)
                if seen is not None:
                    dv = dice(seen, truth)
                    visible.append(float(dv or 0.0))
                side = _side_dice(pred, truth)
                if side is not None:
                    per_side.append(side)
            rows.append(
                {
                    "file": f"{case.path.parent.name}/{case.path.name}",
                    "expected_view": str(case.view),
                    "view": str(pred.view),
                    "p_view": round(float(pred.view_probabilities[pred.view]), 3),
                    "lung_dice": None if d is None else round(d, 4),
                    "visible_lung_dice": None if dv is None else round(dv, 4),
                    "spacing_mm": [round(s, 3) for s in pred.spacing_mm],
                    "spacing_estimated": pred.spacing_estimated,
                }
            )
            shown.append((case, image, pred, d if dv is None else dv))
    correct = [r["view"] == r["expected_view"] for r in rows]
    if overlays is not None:
        _overlay_sheets(shown, overlays)
    return {
        "lung_dice_mean": float(np.mean(whole)) if whole else None,
        "lung_dice_median": float(np.median(whole)) if whole else None,
        "lung_dice_min": float(np.min(whole)) if whole else None,
        "lung_dice_n": len(whole),
        # the visible-lung channels (cut at the diaphragm, like the human masks)
        "visible_lung_dice_mean": float(np.mean(visible)) if visible else None,
        "visible_lung_dice_median": float(np.median(visible)) if visible else None,
        "visible_lung_dice_min": float(np.min(visible)) if visible else None,
        # each visible-lung channel against its own side of the human mask
        "visible_lung_side_dice_mean": float(np.mean(per_side)) if per_side else None,
        "visible_lung_side_dice_n": len(per_side),
        "view_correct": int(sum(correct)),
        "view_n": len(rows),
        "view_wrong": [r["file"] for r, ok in zip(rows, correct, strict=True) if not ok],
        "label_gap": _label_gap(pairs) if pairs else None,
        "images": rows,
    }


def evaluate_synthetic(
    predictor: TorchPredictor,
    root: Path,
    *,
    limit: int | None = None,
    held_out: bool = False,
    stride: int = 1,
) -> dict[str, Any]:
    """Dice per (view, structure) at source resolution; empty truths are skipped.

    Where the set has visible-lung masks (qcnode.synth.visible), ``lungs_union_vs_visible``
    compares the predicted lungs with them: the diaphragm label gap measured on synthetic
    images, where it is known exactly (not a target; the network learns full lungs).

    ``held_out``: only the poses that training held out of this (training) set.
    """
    samples = datamod.read_synthetic(root)
    if held_out:
        samples = [s for s in samples if datamod.held_out_pose(s.id)]
    samples = samples[::stride][:limit] if limit else samples[::stride]
    scores: dict[str, list[float]] = defaultdict(list)
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for start in range(0, len(samples), 8):
        chunk = samples[start : start + 8]
        images = [decode(s.image) for s in chunk]
        preds = predictor.predict(images)
        for s, pred in zip(chunk, preds, strict=True):
            confusion[str(s.view)][str(pred.view)] += 1
            if s.masks is None or s.view == View.OTHER:
                continue
            with np.load(s.masks) as z:
                for name in STRUCTURES:
                    truth = z[name]
                    if truth.any():
                        d = dice(pred.masks[name], truth)
                        if d is not None:
                            scores[f"{s.view}/{name}"].append(d)
                lungs = np.logical_or(z["lung_right"], z["lung_left"])
                d = dice(_lungs(pred), lungs)
                if d is not None:
                    scores[f"{s.view}/lungs_union"].append(d)
                if "lung_right_visible" in z.files:  # the diaphragm label gap, synthetic
                    seen = np.logical_or(z["lung_right_visible"], z["lung_left_visible"])
                    d = dice(_lungs(pred), seen)
                    if d is not None:
                        scores[f"{s.view}/lungs_union_vs_visible"].append(d)
                    predicted_seen = _visible_lungs(pred)
                    if predicted_seen is not None:
                        d = dice(predicted_seen, seen)
                        if d is not None:
                            scores[f"{s.view}/lungs_visible_union"].append(d)
    total = sum(sum(v.values()) for v in confusion.values())
    right = sum(confusion[v].get(v, 0) for v in confusion)
    return {
        "set": str(root) + (f" (every {stride}th)" if stride > 1 else ""),
        "n": len(samples),
        "dice": {k: round(float(np.mean(v)), 4) for k, v in sorted(scores.items())},
        "dice_n": {k: len(v) for k, v in sorted(scores.items())},
        "view_accuracy": right / total if total else None,
        "view_confusion": {k: dict(v) for k, v in confusion.items()},
    }


def evaluate_negatives(predictor: TorchPredictor) -> dict[str, Any]:
    """Non-chest DICOM images (pydicom test data): held out from training, and seen ones."""
    out: dict[str, Any] = {}
    for held in (True, False):
        images, names = [], []
        for s in datamod.read_negatives(held_out=held):
            try:
                img = decode(s.image)
            except QcnodeError:
                continue
            if min(img.pixels.shape) >= 32:
                images.append(img)
                names.append(s.id)
        preds = _predict_all(predictor, images)
        wrong = [n for n, p in zip(names, preds, strict=True) if p.view != View.OTHER]
        out["held_out" if held else "trained_on"] = {
            "n": len(names),
            "other_correct": len(names) - len(wrong),
            "wrong": wrong,
        }
    return out


# --- pictures -----------------------------------------------------------------------------

_COLOURS = {
    "lung_right": (255, 80, 80),
    "lung_left": (80, 255, 80),
    "heart": (80, 160, 255),
    "clavicle_right": (255, 230, 0),
    "clavicle_left": (255, 230, 0),
    "scapula_right": (255, 0, 255),
    "scapula_left": (255, 0, 255),
    "spine": (0, 255, 255),
}


def _tile(image: DecodedImage, pred: Prediction, truth: Path | None, caption: str) -> Image.Image:
    h = 320
    scale = h / image.pixels.shape[0]
    w = max(1, round(image.pixels.shape[1] * scale))
    grey = Image.fromarray((image.pixels * 255).astype(np.uint8))
    grey = grey.resize((w, h), Image.Resampling.BILINEAR)
    rgb = np.asarray(grey.convert("RGB")).copy()

    def outline(mask: np.ndarray, colour: tuple[int, int, int]) -> None:
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h))) > 127
        edge = small & ~ndimage.binary_erosion(small, iterations=1)
        rgb[edge] = colour

    if truth is not None:
        outline(np.asarray(Image.open(truth).convert("L")) > 127, (255, 255, 255))
    for name, colour in _COLOURS.items():
        # the lung fields (visible-lung channels) where the weights have them: the
        # definition the human masks share
        field = pred.extra_masks.get(f"{name}_visible") if name.startswith("lung_") else None
        outline(pred.masks[name] if field is None else field, colour)
    tile = Image.fromarray(rgb)
    ImageDraw.Draw(tile).text((4, 4), caption, fill=(255, 255, 0))
    return tile


def _sheet(tiles: Sequence[Image.Image], columns: int) -> Image.Image:
    h = max(t.height for t in tiles)
    w = max(t.width for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * h + 18), (0, 0, 0))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * w, (i // columns) * h))
    ImageDraw.Draw(sheet).text((4, rows * h + 3), ATTRIBUTION, fill=(200, 200, 200))
    return sheet


def _overlay_sheets(
    shown: Sequence[tuple[RealCase, DecodedImage, Prediction, float | None]], out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with_masks = [s for s in shown if s[3] is not None]
    picks = sorted(with_masks, key=lambda s: s[3] or 0.0)
    # the worst three, the median and the best two: honest about failures
    chosen = picks[:3] + picks[len(picks) // 2 : len(picks) // 2 + 1] + picks[-2:]
    tiles = [
        _tile(im, p, c.lungs, f"{c.path.stem[:18]} Dice {d:.3f} {p.view}") for c, im, p, d in chosen
    ]
    if tiles:
        _sheet(tiles, 3).save(out / "model_real_frontal.png", optimize=True)
    others = [s for s in shown if s[0].lungs is None and s[0].path.parent.name != "frontal"]
    tiles = [_tile(im, p, None, f"{c.path.stem[:22]} {p.view}") for c, im, p, _ in others]
    if tiles:
        _sheet(tiles, 4).save(out / "model_real_other.png", optimize=True)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth keeping next to the weights (registry ``metrics``)."""
    out: dict[str, Any] = {}
    if "synthetic" in report:
        s = report["synthetic"]
        out["synthetic_set"] = s["set"]
        out["synthetic_n"] = s["n"]
        out["synthetic_view_accuracy"] = s["view_accuracy"]
        out["synthetic_dice"] = s["dice"]
    if "held_out_poses" in report:
        h = report["held_out_poses"]
        out["held_out_poses_n"] = h["n"]
        out["held_out_poses_view_accuracy"] = h["view_accuracy"]
        out["held_out_poses_dice"] = h["dice"]
    if "real" in report:
        r = report["real"]
        out["real_lung_dice_mean"] = r["lung_dice_mean"]
        out["real_lung_dice_median"] = r["lung_dice_median"]
        out["real_lung_dice_n"] = r["lung_dice_n"]
        if r.get("visible_lung_dice_mean") is not None:
            out["real_visible_lung_dice_mean"] = r["visible_lung_dice_mean"]
            out["real_visible_lung_dice_median"] = r["visible_lung_dice_median"]
        if r.get("visible_lung_side_dice_mean") is not None:
            out["real_visible_lung_side_dice_mean"] = r["visible_lung_side_dice_mean"]
        out["real_view_correct"] = f"{r['view_correct']}/{r['view_n']}"
        if r.get("label_gap"):
            out["real_lung_dice_cut_at_truth_floor_mean"] = r["label_gap"]["dice_cut_mean"]
    held = report["negatives"]["held_out"]
    out["held_out_negatives_other"] = f"{held['other_correct']}/{held['n']}"
    return out


_TABLE_STRUCTURES = (
    "lungs_union",
    "lungs_union_vs_visible",
    "lungs_visible_union",
    "lung_right",
    "lung_left",
    "heart",
    "clavicle_right",
    "clavicle_left",
    "scapula_right",
    "scapula_left",
    "spine",
    "trachea",
    "sternum",
    "humerus_right",
    "humerus_left",
    "ribs_posterior_right",
    "ribs_posterior_left",
    "body",
    "field",
)


def markdown(report: dict[str, Any]) -> str:
    """Model-card tables from a report."""
    lines: list[str] = []
    sets = [(k, report[k]) for k in ("synthetic", "held_out_poses") if k in report]
    if sets:
        head = " | ".join(f"{k} frontal | {k} lateral" for k, _ in sets)
        lines += [f"| structure | {head} |", "|---" * (1 + 2 * len(sets)) + "|"]
        for name in _TABLE_STRUCTURES:
            cells = []
            for _, s in sets:
                for view in ("frontal", "lateral"):
                    key = f"{view}/{name}"
                    d, n = s["dice"].get(key), s["dice_n"].get(key, 0)
                    cells.append("—" if d is None else f"{d:.3f} (n={n})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for k, s in sets:
            acc = s["view_accuracy"]
            lines.append(
                f"- {k} ({s['set']}, {s['n']} images): view accuracy "
                f"{'—' if acc is None else f'{100 * acc:.2f} %'}; confusion "
                f"(true → predicted) {json.dumps(s['view_confusion'])}"
            )
    if "real" in report:
        r = report["real"]
        lines.append(
            f"- real films: lung Dice (right ∪ left vs V7 masks) mean {r['lung_dice_mean']:.3f}, "
            f"median {r['lung_dice_median']:.3f}, min {r['lung_dice_min']:.3f} "
            f"(n={r['lung_dice_n']}); view correct {r['view_correct']}/{r['view_n']}"
            + (f" (wrong: {', '.join(r['view_wrong'])})" if r["view_wrong"] else "")
        )
        gap = r.get("label_gap")
        if gap:
            lines.append(
                "- diaphragm label gap (a diagnostic that uses the human masks, NOT a score): "
                f"predicted/true lung area median {gap['area_ratio_median']:.2f}; "
                f"{100 * gap['false_positive_share_below_floor']:.0f} % of false-positive "
                "pixels lie below the mask's lowest row in their column; cutting them gives "
                f"Dice mean {gap['dice_cut_mean']:.3f} (median {gap['dice_cut_median']:.3f})"
            )
    neg = report.get("negatives", {})
    for k, v in neg.items():
        lines.append(
            f"- non-chest DICOM ({k.replace('_', ' ')}): `other` {v['other_correct']}/{v['n']}"
            + (f" (wrong: {', '.join(v['wrong'])})" if v["wrong"] else "")
        )
    return "\n".join(lines) + "\n"


def record(name: str | None, report: dict[str, Any]) -> None:
    import dataclasses

    from qcnode.model.registry import REGISTRY_FILE, load_registry

    registry = load_registry()
    if registry.is_ensemble(name):
        ensemble = registry.ensemble(name)
        metrics = {**dict(ensemble.metrics), **headline(report)}
        registry = registry.with_ensemble(dataclasses.replace(ensemble, metrics=metrics))
    else:
        entry = registry.get(name)
        metrics = {**dict(entry.metrics), **headline(report)}
        registry = registry.with_entry(dataclasses.replace(entry, metrics=metrics))
    registry.save(REGISTRY_FILE)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qcnode.model.report", description=__doc__)
    ap.add_argument("--model", help="registry name (default: the registry's default)")
    ap.add_argument("--weights", type=Path, help="a weights file instead of the registry")
    ap.add_argument("--set", type=Path, dest="eval_set", help="synthetic evaluation set")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--stride", type=int, default=1, help="every Nth sample of the set")
    ap.add_argument("--held-out-of", type=Path, help="training set: evaluate its held-out poses")
    ap.add_argument("--real", type=Path, default=REAL_ROOT)
    ap.add_argument("--overlays", type=Path, help="write overlay pictures here (docs)")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--markdown", type=Path, help="write model-card tables here")
    ap.add_argument(
        "--record", action="store_true", help="store the headline metrics in the registry entry"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    predictor = load_predictor(args.model, device="cpu", weights_path=args.weights)
    t0 = time.monotonic()
    report: dict[str, Any] = {"model": predictor.info.__dict__}
    if args.eval_set:
        report["synthetic"] = evaluate_synthetic(
            predictor, args.eval_set, limit=args.limit, stride=args.stride
        )
    if args.held_out_of:
        report["held_out_poses"] = evaluate_synthetic(predictor, args.held_out_of, held_out=True)
    if args.real and args.real.is_dir():
        report["real"] = evaluate_real(predictor, args.real, overlays=args.overlays)
    report["negatives"] = evaluate_negatives(predictor)
    report["seconds"] = round(time.monotonic() - t0, 1)
    if args.record:
        if args.weights is not None:
            raise SystemExit("--record needs a registry model, not --weights")
        record(args.model, report)
    if args.markdown:
        args.markdown.write_text(markdown(report), encoding="utf-8")
    text = json.dumps(report, indent=1)
    if args.json_out:
        args.json_out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
