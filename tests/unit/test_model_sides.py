"""split_sides: a left/right pair the network mixed up is put on its own sides of the midline,
the sides read from the heart as a film hangs; a clean pair stays as drawn (hand-built canvas
logits with known geometry)."""

from __future__ import annotations

import numpy as np
import torch

from qcnode.model.infer import HEART_SIDE_PX, SIDE_MARGIN_PX, midline, split_sides
from qcnode.records import STRUCTURES

S = 128
MID = 64
NAMES = STRUCTURES


def _canvas(heart_cols: tuple[int, int], spine: bool = True) -> torch.Tensor:
    logits = torch.full((len(NAMES), S, S), -4.0)
    if spine:
        logits[NAMES.index("spine"), 8:120, MID - 3 : MID + 4] = 4.0
    logits[NAMES.index("heart"), 60:100, heart_cols[0] : heart_cols[1]] = 4.0
    return logits


def _pos(logits: torch.Tensor, name: str) -> np.ndarray:
    return (logits[NAMES.index(name)] > 0).numpy()


def _box(rows: slice, cols: slice) -> np.ndarray:
    out = np.zeros((S, S), dtype=bool)
    out[rows, cols] = True
    return out


def test_one_channel_over_both_lungs_is_split_at_the_spine() -> None:
    logits = _canvas(heart_cols=(66, 92))  # heart on the image right: a film as it hangs
    logits[NAMES.index("lung_right"), 20:100, 16:58] = 3.0  # the patient's right lung ...
    logits[NAMES.index("lung_right"), 20:100, 72:114] = 2.0  # ... and over the left lung too
    logits[NAMES.index("lung_left"), 40:80, 90:100] = 1.0  # the left channel: a fragment
    out = split_sides(logits, NAMES)
    right, left = _pos(out, "lung_right"), _pos(out, "lung_left")
    near = MID + SIDE_MARGIN_PX  # within the margin the pair stays as drawn
    assert np.array_equal(
        right, _box(slice(20, 100), slice(16, 58)) | _box(slice(20, 100), slice(72, near + 1))
    )
    assert np.array_equal(left[:, near + 1 :], _box(slice(20, 100), slice(72, 114))[:, near + 1 :])
    assert float(out[NAMES.index("lung_left"), 60, 95]) == 2.0  # the pair's larger logit
    assert float(out[NAMES.index("lung_right"), 60, 95]) < 0


def test_a_clean_pair_stays_as_drawn_even_when_swapped() -> None:
    """Each channel on one side: the network's call stands (a mirrored synthetic film whose
    rotation brings the heart to the midline), and nothing near the midline is cut."""
    logits = _canvas(heart_cols=(66, 92))
    logits[NAMES.index("lung_left"), 20:100, 16:60] = 3.0
    logits[NAMES.index("lung_right"), 20:100, 70:114] = 3.0
    logits[NAMES.index("clavicle_right"), 10:14, 40:70] = 2.0  # a medial end over the spine
    assert torch.equal(split_sides(logits, NAMES), logits)


def test_a_mirrored_film_keeps_anatomical_sides() -> None:
    logits = _canvas(heart_cols=(36, 52))  # heart centre 20 px left of the spine
    assert MID - 44 >= HEART_SIDE_PX
    logits[NAMES.index("lung_left"), 20:100, 16:58] = 3.0
    logits[NAMES.index("lung_left"), 20:100, 72:114] = 3.0  # both lungs in one channel
    out = split_sides(logits, NAMES)
    far_left, far_right = slice(16, MID - SIDE_MARGIN_PX), slice(MID + SIDE_MARGIN_PX + 1, 114)
    assert _pos(out, "lung_right")[20:100, far_right].all()
    assert not _pos(out, "lung_right")[:, : MID - SIDE_MARGIN_PX].any()
    assert _pos(out, "lung_left")[20:100, far_left].all()
    assert not _pos(out, "lung_left")[:, MID + SIDE_MARGIN_PX + 1 :].any()


def test_a_heart_near_the_midline_reads_as_a_correctly_hung_film() -> None:
    """Real films' heart masks are fragments near the spine: only a heart clearly left of
    the midline (HEART_SIDE_PX) says mirrored."""
    logits = _canvas(heart_cols=(56, 69))  # centre 62: 2 px left of the spine
    logits[NAMES.index("clavicle_left"), 10:14, 20:50] = 2.0
    logits[NAMES.index("clavicle_left"), 10:14, 80:110] = 2.0  # both clavicles, one label
    out = split_sides(logits, NAMES)
    assert _pos(out, "clavicle_right")[10:14, 20:50].all()
    assert _pos(out, "clavicle_left")[10:14, 80:110].all()
    assert not _pos(out, "clavicle_left")[:, :50].any()


def test_the_midline_follows_a_tilted_spine_and_falls_back_to_the_lungs() -> None:
    logits = torch.full((len(NAMES), S, S), -4.0)
    for row in range(8, 120):  # spine drifting 1 px right every 4 rows
        c = 40 + row // 4
        logits[NAMES.index("spine"), row, c - 2 : c + 3] = 4.0
    line = midline(logits, NAMES)
    assert line is not None
    assert abs(line[16] - 44) < 0.6 and abs(line[112] - 68) < 0.6
    logits[NAMES.index("spine")] = -4.0
    assert midline(logits, NAMES) is None  # neither spine nor lungs
    logits[NAMES.index("lung_right"), 20:100, 20:40] = 1.0
    logits[NAMES.index("lung_left"), 20:100, 80:100] = 1.0
    line = midline(logits, NAMES)
    assert line is not None and np.allclose(line, 59.5)


def test_without_a_midline_nothing_changes() -> None:
    logits = torch.full((len(NAMES), S, S), -4.0)
    logits[NAMES.index("heart"), 60:80, 60:80] = 1.0
    assert torch.equal(split_sides(logits, NAMES), logits)
