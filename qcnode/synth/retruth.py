"""Re-deriving the truth of a stored synthetic set (no re-rendering).

When a truth definition changes (qcnode.synth.truth, qcnode.synth.pose), the stored samples'
JSONs are rewritten from what each sample keeps: its pose parameters (positioning) or its
stored masks (the lateral costophrenic angle), marked in ``params.truth_rederived``.

``python -m qcnode.synth.retruth --retruth SET_DIR...`` (``python -m qcnode.synth.truth``
still runs the same command).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qcnode.synth.pose import ct_landmarks
from qcnode.synth.truth import (
    COSTOPHRENIC_REVISION,
    Mask,
    _bbox,
    _margin_status,
    _r,
    costophrenic_margin_mm,
    load_thresholds,
    rotation_truth,
    tilt_truth,
)

_ORDER = {"pass": 0, "not_evaluable": 0, "warn": 1, "fail": 2}
TRUTH_REVISION = "positioning-3d-v1"  # recorded in params.truth_rederived of changed samples


def retruth(set_dir: Path) -> dict[str, int]:
    """Recompute the frontal ``positioning.rotation`` and ``positioning.tilt`` truth of a
    stored set from each sample's recorded pose parameters and the CT's landmarks (today's
    definitions, qcnode.synth.pose), rewrite changed JSONs atomically and recompute
    ``verdict_expected``.

    Needs the CT (scripts/fetch_ct), not the renderer: seconds for a few thousand samples.
    """
    thr = load_thresholds()
    ct_landmarks()  # load the CT once, up front (fails early without it)
    changed: dict[str, int] = {"samples": 0, "rewritten": 0}
    for _, path, doc in _frontal_docs(set_dir):
        changed["samples"] += 1
        p = doc["params"]
        new = {
            "positioning.rotation": rotation_truth(p, thr),
            "positioning.tilt": tilt_truth(p),
        }
        dirty = False
        for rule, value in new.items():
            old = doc["rules"].get(rule)
            if old == value:
                continue
            if old is None or old["status"] != value["status"]:
                key = f"{rule}:{'?' if old is None else old['status']}->{value['status']}"
                changed[key] = changed.get(key, 0) + 1
            doc["rules"][rule] = value
            dirty = True
        if dirty:
            _save_rederived(path, doc, "positioning", TRUTH_REVISION)
            changed["rewritten"] += 1
    return changed


def _frontal_docs(set_dir: Path) -> Iterator[tuple[dict[str, Any], Path, dict[str, Any]]]:
    """(manifest record, truth JSON path, its document) for each frontal sample with rules."""
    for line in (set_dir / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        path = set_dir / rec["truth"]
        doc = json.loads(path.read_text())
        if doc.get("view") == "frontal" and doc.get("rules"):
            yield rec, path, doc


def _save_rederived(path: Path, doc: dict[str, Any], what: str, revision: str) -> None:
    """Write a sample's re-derived truth back (atomically), with its expected verdict
    recomputed and ``params.truth_rederived[what] = revision``."""
    worst = max(_ORDER[x["status"]] for x in doc["rules"].values())
    doc["verdict_expected"] = ["pass", "warn", "fail"][worst]
    doc["params"].setdefault("truth_rederived", {})[what] = revision
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def stored_costophrenic(doc: dict[str, Any], masks: dict[str, Mask]) -> dict[str, Any] | None:
    """The frontal ``completeness.costophrenic`` truth of a stored sample from its stored
    masks: ``lung_*_visible`` and ``field``, turned back to the window orientation (the
    patient's right lung on the image left). None when the visible lungs were not stored.

    Stored masks are clipped to the field: an angle outside it lands on the field edge and
    reads 0 mm (a fail as before, not its negative distance)."""
    names = ("lung_right_visible", "lung_left_visible", "field")
    if any(n not in masks for n in names):
        return None
    p = doc["params"]

    def upright(m: Mask) -> Mask:
        m = m[::-1, ::-1] if p.get("rotated180") else m
        return m[:, ::-1] if p.get("flipped") else m

    field = upright(masks["field"])
    fb = _bbox(field)
    if fb is None:
        return None
    rect = (fb[0], fb[1] + 1, fb[2], fb[3] + 1)
    pitch = float(doc["spacing_mm"][0])
    thr = load_thresholds()["completeness"]["costophrenic_margin_mm"]
    cp = min(
        costophrenic_margin_mm(upright(masks[f"lung_{s}_visible"]), s, rect, pitch)
        for s in ("right", "left")
    )
    return _r(_margin_status(cp, thr), cp, "mm")


def retruth_costophrenic(set_dir: Path, backup: Path) -> dict[str, int]:
    """Rewrite the frontal ``completeness.costophrenic`` truth of a stored set with today's
    definition (the visible lung's lateral angle, ``stored_costophrenic``), mark each
    rewritten sample ``params.truth_rederived.costophrenic = COSTOPHRENIC_REVISION`` and
    recompute ``verdict_expected``. Every JSON is first copied to ``backup`` (an existing copy
    is kept: a rerun does not overwrite the originals)."""
    backup.mkdir(parents=True, exist_ok=True)
    changed: dict[str, int] = {"samples": 0, "rewritten": 0, "no_visible_masks": 0}
    rule = "completeness.costophrenic"
    for rec, path, doc in _frontal_docs(set_dir):
        changed["samples"] += 1
        with np.load(set_dir / rec["masks"]) as z:
            masks = {k: np.asarray(z[k], dtype=bool) for k in z.files}
        new = stored_costophrenic(doc, masks)
        if new is None:
            changed["no_visible_masks"] += 1
            continue
        copy = backup / path.name
        if not copy.exists():
            copy.write_text(path.read_text())
        old = doc["rules"].get(rule)
        if old is None or old["status"] != new["status"]:
            key = f"{rule}:{'?' if old is None else old['status']}->{new['status']}"
            changed[key] = changed.get(key, 0) + 1
        doc["rules"][rule] = new
        _save_rederived(path, doc, "costophrenic", COSTOPHRENIC_REVISION)
        changed["rewritten"] += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m qcnode.synth.retruth --retruth DIR... [--rule costophrenic --backup DIR]``
    (``python -m qcnode.synth.truth`` runs the same): re-derive stored positioning truth, or
    (``--rule costophrenic``) the frontal lateral costophrenic angle from the stored
    visible-lung masks."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--retruth", type=Path, nargs="+", required=True, metavar="SET_DIR")
    ap.add_argument("--rule", choices=("positioning", "costophrenic"), default="positioning")
    ap.add_argument(
        "--backup",
        type=Path,
        default=Path(".cache/rules/truth-backup-costophrenic"),
        help="costophrenic: the old JSONs go to BACKUP/<set name>/ first",
    )
    args = ap.parse_args(argv)
    for d in args.retruth:
        if args.rule == "costophrenic":
            res = retruth_costophrenic(d, args.backup / d.resolve().name)
        else:
            res = retruth(d)
        print(json.dumps({"set": str(d), **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
