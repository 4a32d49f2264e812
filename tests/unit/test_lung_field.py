"""The medial border of the visible lung fields (visible-v2) on hand-built masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qcnode.synth import generate, visible

PITCH = 1.0  # mm per pixel: the 25 mm vertical opening is 25 px


def _spine_with_processes() -> np.ndarray:
    spine = np.zeros((200, 120), bool)
    spine[:, 50:70] = True  # the vertebral bodies' column, top to bottom of the frame
    for top in range(5, 200, 20):  # transverse processes: 10 px tall, 10 px apart
        spine[top : top + 10, 35:85] = True
    return spine


def test_the_column_keeps_the_bodies_and_drops_processes_and_bronchi() -> None:
    spine = _spine_with_processes()
    trachea = np.zeros_like(spine)
    trachea[0:80, 56:64] = True
    for i in range(30):  # an oblique main bronchus, 45 degrees down and out, 6 px wide
        trachea[80 + i, 64 + i : 70 + i] = True
    column = generate.mediastinal_column(spine, trachea, PITCH)
    assert column[:, 50:70].all()  # to both frame edges (edge-padded opening)
    assert not column[:, :50].any() and not column[:, 70:].any()
    assert not column[85:110, 72:100].any()  # the bronchus is lung field


def test_each_side_keeps_its_largest_piece() -> None:
    column = np.zeros((100, 100), bool)
    column[:, 45:55] = True
    right = np.zeros_like(column)
    right[10:90, 10:62] = True  # crosses the column: a sliver lies beyond it
    left = np.zeros_like(column)
    left[10:90, 58:90] = True
    r, lf = generate.cut_lung_fields(right, left, column)
    assert r[10:90, 10:45].all() and not r[:, 45:].any()
    assert lf[10:90, 58:90].all() and not lf[:, :58].any()


def test_a_stored_set_is_cut_in_place_frontals_only(tmp_path: Path) -> None:
    spine = _spine_with_processes()
    lungs = np.zeros_like(spine)
    lungs[20:180, 10:110] = True
    masks = {
        "spine": spine,
        "trachea": np.zeros_like(spine),
        "lung_right_visible": lungs & (np.arange(120) < 62)[None, :],
        "lung_left_visible": lungs & (np.arange(120) >= 58)[None, :],
    }
    lines = []
    for view in ("frontal", "lateral"):
        np.savez_compressed(tmp_path / f"{view}_masks.npz", **masks)
        doc = {"view": view, "spacing_mm": [PITCH, PITCH]}
        (tmp_path / f"{view}.json").write_text(json.dumps(doc))
        lines.append({"id": view, "masks": f"{view}_masks.npz", "truth": f"{view}.json"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = visible.cut_stored_lung_fields(tmp_path)
    assert result["frontal"] == 1 and result["other_views"] == 1
    assert result["revision"] == generate.LUNG_FIELD_REVISION
    assert 0.15 < result["visible_share_removed_mean"] < 0.25  # 20 of 100 columns
    with np.load(tmp_path / "frontal_masks.npz") as z:
        assert not z["lung_right_visible"][:, 50:].any()
        assert not z["lung_left_visible"][:, :70].any()
        assert z["spine"].sum() == spine.sum()  # nothing else changes
    with np.load(tmp_path / "lateral_masks.npz") as z:
        assert z["lung_right_visible"][20:180, 50:62].all()
    info = json.loads((tmp_path / "visible_lungs.json").read_text())
    assert info["lung_field"]["frontal"] == 1
