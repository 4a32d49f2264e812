"""The pool: a few hundred 3D renders, many cheap 2D variants of each, written as samples.

Sample files (the contract others code against, see docs/SYNTH.md): `<id>.dcm`,
`<id>_masks.npz` (one bool array per name in STRUCTURES, the image's shape, plus
``lung_right_visible`` / ``lung_left_visible`` when the plan asks for visible lungs),
`<id>.json` (truth), and one line per sample appended to `manifest.jsonl`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qcnode.records import STRUCTURES
from qcnode.rules.masks import largest_component
from qcnode.synth import ct as ctmod
from qcnode.synth import dicomio, edits, render, sampler, truth
from qcnode.synth.render import Detector, Pose, Projection

log = logging.getLogger(__name__)

BIG = Detector(width_mm=500.0, height_mm=480.0, pitch_mm=1.4, depth_step_mm=2.5)
_COUNT_DET = Detector(width_mm=500.0, height_mm=480.0, pitch_mm=4.0, depth_step_mm=4.0)


@dataclass(frozen=True)
class Plan:
    split: str
    seed: int
    view: str  # frontal | lateral | both
    variants_per_pose: int = 8
    other_fraction: float = 0.15
    detector: Detector = BIG
    visible_lungs: bool = False  # also write VISIBLE_LUNGS masks (data v2 onwards)
    # Shorten lateral scapula shifts that would leave the scapula outside the body (v1.10
    # option; off by default: it also removes most "scapulae clear of the lungs" cases).
    scapulae_in_body: bool = False
    # Denser bones and more dose per sample (v1.13 option, for training sets; docs/SYNTH.md).
    realism: bool = False
    # v1.14: this share of the realism samples keeps the plain appearance (the evaluation
    # sets' look; a network trained on realism alone called some of those frontals lateral).
    realism_plain: float = 0.0
    # v1.15: this share of frontals gets lowered clavicles (edits.lower_clavicle).
    clavicles_down: float = 0.0
    # v1.17: this share of chest renders gets lung filled towards water density in 3D
    # (render.Opacity: effusions, consolidations, white-outs), for training sets; drawn from
    # a stream of its own, so the rest of a seed's draws stay as before. The rule truth does
    # not model pathology (an opacity changes what exposure rules measure): not for
    # evaluation sets.
    opacities: float = 0.0
    # v1.18: this share of those opacities is patchy (render.Opacity.texture).
    opacity_texture: float = 0.0


# Extra mask arrays (not network channels): the lungs as a radiograph shows them.
VISIBLE_LUNGS = ("lung_right_visible", "lung_left_visible")


# The lung field's medial border ("visible-v2", generator v1.16): the projected 3D lungs
# meet over the spine (the anterior junction and the azygo-oesophageal recess reach the
# midline), so visible-v1 lungs had no gap between them, while a radiograph shows each lung
# field medially only to the mediastinal silhouette. Frontal fields now stop at the column of
# the vertebral bodies and at the trachea; the lung behind the heart stays (the heart is not
# cut), as in the human masks the real films carry. The vertebral bodies' column is the
# spine's projection opened with a vertical line this long: the transverse processes and rib
# heads (shorter than it, with gaps between them) go, the continuous column of bodies stays.
SPINE_COLUMN_MM = 25.0
LUNG_FIELD_REVISION = "visible-v2"


def mediastinal_column(
    spine: npt.NDArray[np.bool_], trachea: npt.NDArray[np.bool_], pitch_mm: float
) -> npt.NDArray[np.bool_]:
    """Pixels where a frontal film shows the mediastinum rather than lung: the vertical
    column of the vertebral bodies and the trachea (the oblique main bronchi, which a film
    shows inside the lung fields, go with the transverse processes)."""
    k = max(1, round(SPINE_COLUMN_MM / pitch_mm))
    # edge-padded: a column running off the top or bottom of the frame stays to its edge
    padded = np.pad(spine | trachea, ((k, k), (0, 0)), mode="edge")
    column = ndimage.binary_opening(padded, structure=np.ones((k, 1), dtype=bool))[k:-k]
    out: npt.NDArray[np.bool_] = np.asarray(column, dtype=bool)
    return out


def cut_lung_fields(
    right: npt.NDArray[np.bool_], left: npt.NDArray[np.bool_], column: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Each visible lung without the mediastinal column; a piece of one lung left beyond
    the column (its projection crossing the midline) is dropped: each side keeps its
    largest component. Idempotent, so stored visible-v1 and v2 masks both give v2."""
    return largest_component(right & ~column), largest_component(left & ~column)


def visible_lungs(
    masks: dict[str, npt.NDArray[np.bool_]], *, frontal_pitch_mm: float | None = None
) -> dict[str, npt.NDArray[np.bool_]]:
    """Lung projections cut, per detector column, below the top of the abdomen's projection,
    and on a frontal view (``frontal_pitch_mm`` given) at the mediastinal column.

    The full lung projection reaches into the posterior costophrenic recesses behind the
    liver and stomach; a radiograph shows the lung only down to the hemidiaphragm silhouette,
    which is the upper edge of the abdominal organs' projection in each column. Human lung
    masks on real films (V7, SCR) stop there, so this is the definition to compare with them.
    Row 0 is the head end of the projection frame (before any 2D flip).
    """
    abdomen = masks["abdomen_right"] | masks["abdomen_left"]
    rows = abdomen.shape[0]
    top = np.where(abdomen.any(axis=0), abdomen.argmax(axis=0), rows)
    above = np.arange(rows)[:, None] < top[None, :]
    right, left = masks["lung_right"] & above, masks["lung_left"] & above
    if frontal_pitch_mm is not None:
        column = mediastinal_column(masks["spine"], masks["trachea"], frontal_pitch_mm)
        right, left = cut_lung_fields(right, left, column)
    return {"lung_right_visible": right, "lung_left_visible": left}


def _bbox(
    m: npt.NDArray[np.bool_], what: str = "projection without lungs"
) -> tuple[int, int, int, int]:
    """First and last rows and columns of a mask; TruthError when it is empty: the beam is
    centred on the lungs of a detector far larger than they are, so an empty lung projection
    comes from a CT whose labels lack that lung (ct.prepare rejects such a CT since
    2026-11-27, an older prepared cache of one does not)."""
    rows = np.nonzero(m.any(axis=1))[0]
    if rows.size == 0:
        raise truth.TruthError(f"{what}: no truth for this sample")
    cols = np.nonzero(m.any(axis=0))[0]
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def count_ribs(ct: ctmod.PreparedCT, pose: Pose, proj: Projection | None = None) -> dict[str, Any]:
    """Posterior ribs above the right hemidiaphragm dome, counted in a frontal view.

    The dome is the top of the liver's projection (refined on a 1 mm column through its top);
    the count is the highest posterior rib number seen above the dome's row on five columns
    across the lateral half of the right lung (the labelled posterior ribs stop ≈2 cm lateral
    of the spine, so a single mid-lung column misses them on rotated patients). Lateral poses
    are projected PA at low resolution to count.
    """
    if proj is None or pose.view_position not in render.FRONTAL_POSITIONS:
        pose = replace(pose, view_position="PA", sid_mm=1800.0)
        proj = render.render(ct, pose, _COUNT_DET)
    lung = proj.masks["lung_right"]
    r0, r1, c0, c1 = _bbox(lung, "frontal projection without the right lung (rib count)")
    p = proj.pitch_mm
    h, w = proj.water_cm.shape
    det = Detector(width_mm=w * p, height_mm=h * p, pitch_mm=1.0, depth_step_mm=2.0)

    def fine(c: float) -> int:
        return round((c + 0.5) * p - 0.5)

    lung_cols = np.asarray(lung.any(axis=0), dtype=bool)
    liver = proj.masks["abdomen_right"] & lung_cols[None, :]
    lrows = np.nonzero(liver.any(axis=1))[0]
    if lrows.size:
        dome_col = fine(float(np.median(np.nonzero(liver[lrows[0]])[0])))
    else:
        dome_col = fine((c0 + c1) / 2.0)
    bits = render.soft_bits_along_column(ct, pose, det, dome_col)
    liv = np.nonzero((bits >> ctmod.SOFT_BITS["abdomen_right"]) & 1)[0]
    dome_row = int(liv[0]) if liv.size else int((r1 + 1) * p)
    top = max(0, int(r0 * p) - 10)
    ribs: set[int] = set()
    cols = [fine(c0 + f * (c1 - c0)) for f in (0.1, 0.2, 0.3, 0.4, 0.5)]
    for col in cols:
        for seen in render.rib_indices_along_column(ct, pose, det, col, range(top, dome_row)):
            ribs |= seen
    return {
        "count": max(ribs) if ribs else 0,
        "ribs_seen": sorted(ribs),
        "columns": cols,
        "dome_row": dome_row,
        "dome_column": dome_col,
        "pitch_mm": det.pitch_mm,
    }


def _params(pose: Pose, v: edits.Variant, extra: dict[str, Any], pitch: float) -> dict[str, Any]:
    ex = asdict(v.exposure)
    r0, c0, hh, ww = v.window
    return {
        "view_position": pose.view_position,
        "sid_mm": round(pose.sid_mm, 2),
        "rotation_deg": round(pose.rotation_deg, 4),
        "tilt_deg": round(pose.tilt_deg, 4),
        "scale_zyx": [round(s, 5) for s in pose.scale],
        "elastic_mm": round(pose.elastic_mm, 4),
        "elastic_seed": pose.elastic_seed,
        "diaphragm_shift_mm": round(pose.diaphragm_shift_mm, 3),
        "beam_center_mm": [round(c, 3) for c in pose.center_mm],
        "scapula_shift_mm": {"right": v.scapula_shift_mm[0], "left": v.scapula_shift_mm[1]},
        "clavicle_drop_deg": {"right": v.clavicle_drop_deg[0], "left": v.clavicle_drop_deg[1]},
        "arms": "down" if v.arms_shift_mm[0] > 0 else "raised",  # (lateral views)
        "arms_shift_mm": {"down": v.arms_shift_mm[0], "anterior": v.arms_shift_mm[1]},
        "arm_shaft_mm": v.arm_shaft_mm,
        "arm_angle_deg": {"right": v.arm_angle_deg[0], "left": v.arm_angle_deg[1]},
        "window_px": {"row0": r0, "col0": c0, "rows": hh, "cols": ww},
        "detector_mm": [round(hh * pitch, 1), round(ww * pitch, 1)],
        "shutters_mm": dict(zip(("top", "bottom", "left", "right"), v.shutters_mm, strict=True)),
        "exposure": ex,
        "deviation_index": v.exposure.deviation_index,
        "dose_relative": 10 ** (v.exposure.deviation_index / 10.0),
        "gamma": v.exposure.gamma,
        "blur_mm": v.exposure.motion_blur_mm,
        "flipped": v.flipped,
        "rotated180": v.rotated180,
        "monochrome": v.monochrome,
        "marker": v.marker,
        "burned_in_text": v.text,
        **({"opacities": [asdict(o) for o in pose.opacities]} if pose.opacities else {}),
        **extra,
    }


def _write_sample(
    out: Path,
    sample_id: str,
    view: str,
    split: str,
    seed: int,
    comp: edits.Composed,
    params: dict[str, Any],
    rules: dict[str, Any],
    header: dicomio.Header,
    pitch: float,
) -> dict[str, Any]:
    dicomio.write(out / f"{sample_id}.dcm", comp.stored, header)
    tmp = out / f"{sample_id}_masks.tmp.npz"
    names = [*STRUCTURES, *(k for k in VISIBLE_LUNGS if k in comp.masks)]
    np.savez_compressed(tmp, allow_pickle=False, **{k: comp.masks[k] for k in names})
    tmp.replace(out / f"{sample_id}_masks.npz")
    rows, cols = comp.stored.shape
    doc = {
        "id": sample_id,
        "view": view,
        "view_position": params["view_position"],
        "split": split,
        "seed": seed,
        "shape": [rows, cols],
        "spacing_mm": [pitch, pitch],
        "verdict_expected": None if view != "other" else "not_applicable",
        "params": params,
        "rules": rules,
    }
    if view != "other":
        order = {"pass": 0, "not_evaluable": 0, "warn": 1, "fail": 2}
        worst = max((order[r["status"]] for r in rules.values()), default=0)
        doc["verdict_expected"] = ["pass", "warn", "fail"][worst]
    (out / f"{sample_id}.json").write_text(json.dumps(doc, indent=1))
    return {
        "id": sample_id,
        "view": view,
        "split": split,
        "dcm": f"{sample_id}.dcm",
        "masks": f"{sample_id}_masks.npz",
        "truth": f"{sample_id}.json",
    }


def pose_view(plan: Plan, index: int) -> str:
    g = sampler.rng_for(plan.split, plan.seed, index, 7)
    if g.uniform() < plan.other_fraction:
        return "other"
    if plan.view in ("frontal", "lateral"):
        return plan.view
    return "frontal" if g.uniform() < 2.0 / 3.0 else "lateral"


def make_pose_samples(
    ct: ctmod.PreparedCT, plan: Plan, index: int, out: Path, thresholds: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Render pose `index` of the plan and write its variants. Returns manifest lines, timings."""
    view = pose_view(plan, index)
    g = sampler.rng_for(plan.split, plan.seed, index)
    pose = sampler.draw_pose(g, plan.split, view)
    if plan.opacities > 0 and view != "other":
        go = sampler.rng_for(plan.split, plan.seed, index, 99)
        pose = replace(
            pose, opacities=sampler.draw_opacities(go, plan.opacities, plan.opacity_texture)
        )
    t0 = time.perf_counter()
    proj = render.render(ct, pose, plan.detector)
    frontal = pose.view_position in render.FRONTAL_POSITIONS
    if plan.visible_lungs:  # "other" too: the loader needs every channel (v1.11)
        pitch = plan.detector.pitch_mm if frontal and view != "other" else None
        proj.masks.update(visible_lungs(proj.masks, frontal_pitch_mm=pitch))
    t_render = time.perf_counter() - t0
    lines: list[dict[str, Any]] = []
    t1 = time.perf_counter()
    if view == "other":
        lung_rows = np.nonzero((proj.masks["lung_right"] | proj.masks["lung_left"]).any(axis=1))[0]
        body_rows = np.nonzero(proj.masks["body"].any(axis=1))[0]
        n_var = max(1, plan.variants_per_pose // 2)
        for k in range(n_var):
            gv = sampler.rng_for(plan.split, plan.seed, index, 100 + k)
            bottom = int(lung_rows[-1]) if lung_rows.size else 0
            win = sampler.other_window(
                gv, plan.detector, bottom, (int(body_rows[0]), int(body_rows[-1]))
            )
            if win is None:
                continue
            v = sampler.draw_variant(
                gv,
                plan.detector,
                (0, 1, 0, 1),
                "frontal",
                noise_seed=0,
                realism=plan.realism,
                realism_plain=plan.realism_plain,
            )
            v = replace(
                v,
                window=win,
                scapula_shift_mm=(0.0, 0.0),
                noise_seed=int(gv.integers(2**31)),
                flipped=False,
                rotated180=bool(gv.uniform() < 0.1),
            )
            comp = edits.compose(proj, v, frontal=frontal)
            sid = f"{plan.split}-s{plan.seed}-p{index:05d}-v{k:02d}"
            ei_t = sampler.ei_target(gv)
            params = _params(pose, v, {"ei_target": ei_t}, proj.pitch_mm)
            header = dicomio.Header(
                sample_id=sid,
                view_position=pose.view_position,
                true_position=pose.view_position,
                spacing_mm=(proj.pitch_mm, proj.pitch_mm),
                exposure_index=sampler.exposure_index(ei_t, v.exposure.deviation_index),
                target_exposure_index=ei_t,
                deviation_index=v.exposure.deviation_index,
                kvp=v.exposure.kvp,
                sid_mm=pose.sid_mm,
                monochrome=v.monochrome,
                bits_stored=v.exposure.bits_stored,
                flipped=v.flipped,
                rotated180=v.rotated180,
                seed=plan.seed * 100000 + index,
            )
            lines.append(
                _write_sample(
                    out,
                    sid,
                    "other",
                    plan.split,
                    plan.seed,
                    comp,
                    params,
                    {},
                    header,
                    proj.pitch_mm,
                )
            )
        return lines, {"render_s": t_render, "variants_s": time.perf_counter() - t1}

    ribs = count_ribs(ct, pose, proj if frontal else None)
    lungs_bbox = _bbox(
        proj.masks["lung_right"] | proj.masks["lung_left"], f"{view} projection without lungs"
    )
    for k in range(plan.variants_per_pose):
        gv = sampler.rng_for(plan.split, plan.seed, index, 100 + k)
        v = sampler.draw_variant(
            gv,
            plan.detector,
            lungs_bbox,
            view,
            int(gv.integers(2**31)),
            realism=plan.realism,
            realism_plain=plan.realism_plain,
            clavicles_down=plan.clavicles_down,
        )
        if frontal and plan.scapulae_in_body:
            v = edits.keep_scapulae_in_body(proj, v)
        comp = edits.compose(proj, v, frontal=frontal)
        header_vp, spacing_scale = sampler.header_errors(gv, view, pose.view_position)
        ei_t = sampler.ei_target(gv)
        sid = f"{plan.split}-s{plan.seed}-p{index:05d}-v{k:02d}"
        _r0, _c0, _hh, _ww = v.window
        stored_win = comp.stored_mono2
        params = _params(
            pose,
            v,
            {
                "ei_target": ei_t,
                "ribs_above_right_dome": ribs["count"],
                "ribs_seen": ribs["ribs_seen"],
                "header_view_position": header_vp,
                "header_spacing_scale": spacing_scale,
                "magnification": round(proj.magnification, 4),
            },
            proj.pitch_mm,
        )
        tin = truth.TruthInput(
            view=view,
            full_masks=comp.full_masks,
            field_rect=comp.field_rect,
            window=v.window,
            window_masks=comp.window_masks,
            display=comp.display,
            display_clean=comp.display_clean,
            stored_window=stored_win,
            bits_stored=v.exposure.bits_stored,
            pitch_mm=proj.pitch_mm,
            params=params,
            rib_count=ribs["count"],
            header_view_position=header_vp,
            header_spacing_ok=spacing_scale == 1.0,
        )
        rules = truth.rules_truth(tin, thresholds)
        header = dicomio.Header(
            sample_id=sid,
            view_position=header_vp,
            true_position=pose.view_position,
            spacing_mm=(proj.pitch_mm * spacing_scale, proj.pitch_mm * spacing_scale),
            exposure_index=sampler.exposure_index(ei_t, v.exposure.deviation_index),
            target_exposure_index=ei_t,
            deviation_index=v.exposure.deviation_index,
            kvp=v.exposure.kvp,
            sid_mm=pose.sid_mm,
            monochrome=v.monochrome,
            bits_stored=v.exposure.bits_stored,
            flipped=v.flipped,
            rotated180=v.rotated180,
            seed=plan.seed * 100000 + index,
        )
        lines.append(
            _write_sample(
                out, sid, view, plan.split, plan.seed, comp, params, rules, header, proj.pitch_mm
            )
        )
    return lines, {"render_s": t_render, "variants_s": time.perf_counter() - t1}
