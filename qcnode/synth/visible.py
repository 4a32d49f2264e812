"""Add visible-lung masks to an existing synthetic set without regenerating it.

    python -m qcnode.synth.visible --set data/synth/train-v1 [--limit N]

Sets made before ``qcnode synth --visible-lungs`` carry only the full lung projection. The
diaphragm silhouette depends only on the 3D pose, which every sample's truth records, so a
coarse re-render of each pose (4 mm pitch: seconds, not the minutes of a full render) gives
the top of the abdomen per detector column; interpolated to the set's pitch and put through
the sample's window and flips, it cuts the stored lung masks into ``lung_*_visible`` arrays
(added to ``<id>_masks.npz``; nothing else changes). The re-rendered lungs are compared with
the stored ones as a check that the pose was reconstructed (Dice printed per pose).

    python -m qcnode.synth.visible --set DIR --lung-fields

brings a set's stored frontal visible lungs to the medial border of ``visible-v2``
(generator v1.16: cut at the column of the vertebral bodies and the trachea) from the
set's own spine and trachea masks, in place: seconds per thousand samples.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qcnode.synth import ct as ctmod
from qcnode.synth import render
from qcnode.synth.generate import (
    BIG,
    LUNG_FIELD_REVISION,
    VISIBLE_LUNGS,
    cut_lung_fields,
    mediastinal_column,
)
from qcnode.synth.render import Detector, Pose

log = logging.getLogger(__name__)

COARSE_PITCH_MM = 4.0


def pose_from_params(p: dict[str, Any]) -> Pose:
    sz, sy, sx = p["scale_zyx"]
    cx, cz = p["beam_center_mm"]
    return Pose(
        view_position=p["view_position"],
        sid_mm=float(p["sid_mm"]),
        rotation_deg=float(p["rotation_deg"]),
        tilt_deg=float(p["tilt_deg"]),
        scale=(float(sz), float(sy), float(sx)),
        elastic_mm=float(p["elastic_mm"]),
        elastic_seed=int(p["elastic_seed"]),
        diaphragm_shift_mm=float(p["diaphragm_shift_mm"]),
        center_mm=(float(cx), float(cz)),
    )


def above_diaphragm(
    masks: dict[str, npt.NDArray[np.bool_]], coarse: Detector, fine: Detector
) -> npt.NDArray[np.bool_]:
    """(H, W) on ``fine``: pixels above the top of the abdomen's projection in their column,
    from masks rendered on ``coarse`` (same detector size); columns without abdomen keep all.
    """
    abdomen = masks["abdomen_right"] | masks["abdomen_left"]
    hc, wc = abdomen.shape
    hf, wf = fine.shape
    has = np.asarray(abdomen.any(axis=0), dtype=bool)
    # The abdomen's top edge in detector mm (v up), per coarse column: half a pixel above
    # the first abdomen row's centre.
    top_row = np.argmax(abdomen, axis=0).astype(np.float64) - 0.5
    v_top = -(top_row - (hc - 1) / 2.0) * coarse.pitch_mm
    u_coarse = (np.arange(wc) - (wc - 1) / 2.0) * coarse.pitch_mm
    u_fine = (np.arange(wf) - (wf - 1) / 2.0) * fine.pitch_mm
    nearest = np.clip(np.round(u_fine / coarse.pitch_mm + (wc - 1) / 2.0).astype(int), 0, wc - 1)
    v_fine = np.interp(u_fine, u_coarse[has], v_top[has]) if has.any() else np.zeros(wf)
    row_top = (hf - 1) / 2.0 - v_fine / fine.pitch_mm  # fractional fine row of the edge
    keep_all = ~has[nearest]
    rows = np.arange(hf)[:, None]
    out: npt.NDArray[np.bool_] = (rows < row_top[None, :]) | keep_all[None, :]
    return out


def _nearest(m: npt.NDArray[np.bool_], coarse: Detector, fine: Detector) -> npt.NDArray[np.bool_]:
    """A coarse-detector mask sampled at the fine detector's pixel centres."""
    idx = []
    for nf, nc in zip(fine.shape, m.shape, strict=True):
        mm = (np.arange(nf) - (nf - 1) / 2.0) * fine.pitch_mm
        idx.append(np.clip(np.round(mm / coarse.pitch_mm + (nc - 1) / 2.0).astype(int), 0, nc - 1))
    out: npt.NDArray[np.bool_] = m[idx[0]][:, idx[1]]
    return out


def _to_sample_frame(full: npt.NDArray[np.bool_], params: dict[str, Any]) -> npt.NDArray[np.bool_]:
    w = params["window_px"]
    out = full[w["row0"] : w["row0"] + w["rows"], w["col0"] : w["col0"] + w["cols"]]
    if params.get("flipped"):
        out = out[:, ::-1]
    if params.get("rotated180"):
        out = out[::-1, ::-1]
    return np.ascontiguousarray(out)


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def add_visible_lungs(set_dir: Path, *, limit: int | None = None) -> dict[str, Any]:
    """Write ``lung_*_visible`` into every sample's masks (the frontal ones then cut at the
    mediastinal column, unless ``limit`` leaves the set half done); returns check numbers."""
    recipe = json.loads((set_dir / "recipe.json").read_text())
    pitch = float(recipe.get("pitch_mm", BIG.pitch_mm))
    fine = Detector(width_mm=BIG.width_mm, height_mm=BIG.height_mm, pitch_mm=pitch)
    coarse = Detector(
        width_mm=BIG.width_mm,
        height_mm=BIG.height_mm,
        pitch_mm=COARSE_PITCH_MM,
        depth_step_mm=COARSE_PITCH_MM,
    )
    by_pose: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in (set_dir / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_pose[rec["id"].rsplit("-v", 1)[0]].append(rec)
    ct = ctmod.load()
    checks: list[float] = []
    cut: list[float] = []
    done = 0
    for n, (pose_id, recs) in enumerate(sorted(by_pose.items())):
        if limit is not None and n >= limit:
            break
        docs = [json.loads((set_dir / r["truth"]).read_text()) for r in recs]
        proj = render.render(ct, pose_from_params(docs[0]["params"]), coarse)
        above = above_diaphragm(proj.masks, coarse, fine)
        lungs_coarse = proj.masks["lung_right"] | proj.masks["lung_left"]
        # Check: the coarse lungs, on the fine grid, against the stored full-frame lungs.
        lungs_fine = _nearest(lungs_coarse, coarse, fine)
        for rec, doc in zip(recs, docs, strict=True):
            path = set_dir / rec["masks"]
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files if k not in VISIBLE_LUNGS}
            keep = _to_sample_frame(above, doc["params"])
            stored = arrays["lung_right"] | arrays["lung_left"]
            if stored.sum() > 100 and doc["view"] != "other":
                field = arrays["field"]
                checks.append(_dice(_to_sample_frame(lungs_fine, doc["params"]) & field, stored))
                cut.append(1.0 - float((stored & keep).sum()) / float(stored.sum()))
            for side in ("right", "left"):
                arrays[f"lung_{side}_visible"] = arrays[f"lung_{side}"] & keep
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, allow_pickle=False, **arrays)
            tmp.replace(path)
            done += 1
        log.info("%s: %d samples", pose_id, len(recs))
    result: dict[str, Any] = {
        "samples": done,
        "poses": min(len(by_pose), limit or len(by_pose)),
        "pose_check_lung_dice_median": float(np.median(checks)) if checks else None,
        "pose_check_lung_dice_min": float(np.min(checks)) if checks else None,
        "lung_share_cut_mean": float(np.mean(cut)) if cut else None,
        "coarse_pitch_mm": COARSE_PITCH_MM,
    }
    (set_dir / "visible_lungs.json").write_text(json.dumps(result, indent=1))
    if limit is None:  # the frontal lung fields' medial border, as the generator draws it
        result["lung_field"] = cut_stored_lung_fields(set_dir)
    return result


def cut_stored_lung_fields(set_dir: Path) -> dict[str, Any]:
    """Bring a stored set's frontal visible lungs to ``visible-v2`` (generate.visible_lungs:
    cut at the mediastinal column) from its own stored spine and trachea masks, in place;
    other views are left. Idempotent. Returns the counts and the mean share of visible lung
    removed, also written to ``visible_lungs.json`` under ``lung_field``."""
    removed: list[float] = []
    counts = {"frontal": 0, "other_views": 0, "no_visible_masks": 0}
    for line in (set_dir / "manifest.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        doc = json.loads((set_dir / rec["truth"]).read_text())
        if doc["view"] != "frontal":
            counts["other_views"] += 1
            continue
        path = set_dir / rec["masks"]
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if not all(k in arrays for k in VISIBLE_LUNGS):
            counts["no_visible_masks"] += 1
            continue
        column = mediastinal_column(arrays["spine"], arrays["trachea"], doc["spacing_mm"][0])
        old = [arrays[k] for k in VISIBLE_LUNGS]
        new = cut_lung_fields(old[0], old[1], column)
        before = int(old[0].sum() + old[1].sum())
        removed.append(1.0 - int(new[0].sum() + new[1].sum()) / max(1, before))
        arrays.update(zip(VISIBLE_LUNGS, new, strict=True))
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, allow_pickle=False, **arrays)
        tmp.replace(path)
        counts["frontal"] += 1
    result = {
        "revision": LUNG_FIELD_REVISION,
        **counts,
        "visible_share_removed_mean": float(np.mean(removed)) if removed else None,
    }
    info = set_dir / "visible_lungs.json"
    doc_all = json.loads(info.read_text()) if info.is_file() else {}
    doc_all["lung_field"] = result
    info.write_text(json.dumps(doc_all, indent=1))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--set", type=Path, dest="set_dir", required=True)
    ap.add_argument("--limit", type=int, help="only the first N poses")
    ap.add_argument(
        "--lung-fields",
        action="store_true",
        help="only cut the stored frontal visible lungs at the mediastinal column (visible-v2)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.lung_fields:
        print(json.dumps(cut_stored_lung_fields(args.set_dir), indent=1))
        return 0
    print(json.dumps(add_visible_lungs(args.set_dir, limit=args.limit), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
