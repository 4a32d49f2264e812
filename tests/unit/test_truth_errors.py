"""A CT or projection that cannot yield the synthetic truth is a readable QcnodeError (one line
from ``qcnode synth``), still a ValueError for callers that catch that. No CT needed: tiny
hand-made masks and label volumes."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from qcnode.errors import QcnodeError
from qcnode.synth import ct as ctmod
from qcnode.synth import generate, pose, render, truth

SHAPE = (60, 50)


def _truth_input(view: str, **masks: np.ndarray) -> truth.TruthInput:
    """A sample whose full masks hold only ``masks`` (every other structure empty)."""
    empty = np.zeros(SHAPE, bool)
    full = {name: masks.get(name, empty) for name in ("lung_right", "lung_left")}
    image = np.zeros(SHAPE, np.float32)
    return truth.TruthInput(
        view=view,
        full_masks=full,
        field_rect=(0, SHAPE[0], 0, SHAPE[1]),
        window=(0, 0, *SHAPE),
        window_masks=dict(full),
        display=image,
        display_clean=image,
        stored_window=np.zeros(SHAPE, np.uint16),
        bits_stored=12,
        pitch_mm=1.0,
        params={},
        rib_count=10,
        header_view_position="PA" if view == "frontal" else "LL",
        header_spacing_ok=True,
    )


def _lung() -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[10:40, 5:20] = True
    return m


@pytest.mark.parametrize(
    ("view", "masks", "reason"),
    [
        ("frontal", {"lung_left": _lung()}, "frontal projection without both lungs"),
        ("frontal", {}, "frontal projection without both lungs"),
        ("lateral", {}, "lateral projection without lungs"),
    ],
)
def test_a_projection_without_lungs_is_a_truth_error(
    view: str, masks: dict[str, np.ndarray], reason: str
) -> None:
    with pytest.raises(truth.TruthError, match=reason) as caught:
        truth.rules_truth(_truth_input(view, **masks), truth.load_thresholds())
    assert isinstance(caught.value, QcnodeError) and isinstance(caught.value, ValueError)


@pytest.fixture
def fake_ct(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """``ctmod.load`` returns a tiny label volume (1 mm voxels, z up) built from the dict the
    test fills: {structure: list of (z, y, x) voxels}; the landmark cache is emptied around."""
    voxels: dict[str, list[tuple[int, int, int]]] = {}

    def load() -> SimpleNamespace:
        soft = np.zeros((60, 20, 20), np.int64)
        bone = np.zeros((60, 20, 20), np.int64)
        for name, pts in voxels.items():
            bits, bit = (
                (bone, ctmod.BONE_BITS[name])
                if name in ctmod.BONE_BITS
                else (soft, ctmod.SOFT_BITS[name])
            )
            for z, y, x in pts:
                bits[z, y, x] |= 1 << bit
        return SimpleNamespace(
            soft_bits=torch.from_numpy(soft.astype(np.float32)),
            bone_bits=torch.from_numpy(bone.astype(np.float32)),
            spacing_mm=(1.0, 1.0, 1.0),
            origin_index=(0.0, 0.0, 0.0),
        )

    monkeypatch.setattr(ctmod, "load", load)
    pose.ct_landmarks.cache_clear()
    yield voxels
    pose.ct_landmarks.cache_clear()


CLAVICLES = {"clavicle_right": [(40, 15, 3)], "clavicle_left": [(40, 15, 16)]}
SPINE_AT_LEVEL = {"spine": [(40, 2, 10), (41, 3, 10)]}
LUNGS = {"lung_right": [(50, 10, 5)], "lung_left": [(50, 10, 14)]}


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({}, "no clavicle_right in the CT's labels"),
        ({"clavicle_right": [(40, 15, 3)]}, "no clavicle_left in the CT's labels"),
        (CLAVICLES, "no spine in the CT's labels"),
        ({**CLAVICLES, "spine": [(5, 2, 10)]}, "no spine at the clavicle heads' level"),
        ({**CLAVICLES, **SPINE_AT_LEVEL, "lung_right": [(50, 10, 5)]}, "no lung_left"),
    ],
)
def test_a_ct_without_the_pose_landmarks_is_ct_invalid(
    fake_ct: dict[str, Any], labels: dict[str, list[tuple[int, int, int]]], reason: str
) -> None:
    fake_ct.update(labels)
    with pytest.raises(ctmod.CTInvalidError, match=reason) as caught:
        pose.apparent_rotation({})
    assert isinstance(caught.value, QcnodeError) and isinstance(caught.value, ValueError)


def test_the_fake_ct_with_every_landmark_gives_landmarks(fake_ct: dict[str, Any]) -> None:
    """The fixture itself reads right: with all labels present the landmarks come out."""
    fake_ct.update({**CLAVICLES, **SPINE_AT_LEVEL, **LUNGS})
    lm = pose.ct_landmarks()
    assert lm.clavicle_right == (3.0, 15.0, 40.0) and lm.clavicle_left == (16.0, 15.0, 40.0)
    assert lm.spinous == (10.0, 2.5, 40.5)  # mean of the posterior-most voxel per level
    assert lm.apex == (9.5, 10.0, 50.0)


@pytest.fixture
def lungless_render(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """``render.render`` gives empty masks (a CT whose labels lack the lungs), except the
    right lung on a PA when the dict says so; the column reads of the rib count see nothing."""
    seen = {"right_lung_on_pa": False}

    def fake_render(_ct: object, pose_: render.Pose, det: render.Detector) -> render.Projection:
        masks = {n: np.zeros(det.shape, bool) for n in (*ctmod.SOFT_BITS, *ctmod.BONE_BITS)}
        if seen["right_lung_on_pa"] and pose_.view_position == "PA":
            masks["lung_right"][40:120, 30:80] = True
        h, w = det.shape
        return render.Projection(
            water_cm=np.zeros(det.shape, np.float32),
            bone_cm=np.zeros((len(ctmod.BONE_CHANNELS), h, w), np.float32),
            masks=masks,
            pitch_mm=det.pitch_mm,
            pose=pose_,
            magnification=1.0,
        )

    def no_bits(_ct: object, _pose: render.Pose, det: render.Detector, _col: int) -> np.ndarray:
        return np.zeros(det.shape[0], np.int64)

    monkeypatch.setattr(render, "render", fake_render)
    monkeypatch.setattr(render, "soft_bits_along_column", no_bits)
    monkeypatch.setattr(render, "rib_indices_along_column", lambda *_a, **_k: [])
    return seen


@pytest.mark.parametrize(
    ("view", "right_lung_on_pa", "reason"),
    [
        ("frontal", False, r"^frontal projection without the right lung \(rib count\): no truth"),
        ("lateral", False, r"^frontal projection without the right lung \(rib count\): no truth"),
        ("lateral", True, r"^lateral projection without lungs: no truth for this sample$"),
    ],
)
def test_a_pose_whose_projection_lacks_the_lungs_is_a_truth_error(
    lungless_render: dict[str, bool],
    tmp_path: Any,
    view: str,
    right_lung_on_pa: bool,
    reason: str,
) -> None:
    """generate.make_pose_samples stops on it before the truth (bounding boxes of the lungs
    for the rib count and the collimation draw), as a TruthError, not numpy's IndexError."""
    lungless_render["right_lung_on_pa"] = right_lung_on_pa
    plan = generate.Plan(
        split="train", seed=0, view=view, other_fraction=0.0, detector=generate._COUNT_DET
    )
    ct: Any = None  # the fake renders do not read it
    with pytest.raises(truth.TruthError, match=reason) as caught:
        generate.make_pose_samples(ct, plan, 0, tmp_path, truth.load_thresholds())
    assert isinstance(caught.value, QcnodeError)
    assert not list(tmp_path.iterdir())  # nothing written
