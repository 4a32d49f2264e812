"""Cheap 2D variants of one projection: every edit moves image and masks together.

Order: movable bones (scapulae medially, arms down) → detector window (crop / centring /
detector size) → collimation shutters (the exposed `field`) → physics and processing →
burned-in text and L/R markers → quantisation → mirroring / 180° rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from qcnode.records import STRUCTURES
from qcnode.synth import physics
from qcnode.synth.ct import BONE_CHANNELS
from qcnode.synth.render import Projection

_A = TypeVar("_A", npt.NDArray[np.float32], npt.NDArray[np.bool_])

_SCAPULAE = BONE_CHANNELS.index("scapulae")
_HUMERI = BONE_CHANNELS.index("humeri")
_CLAVICLES = BONE_CHANNELS.index("clavicles")
CLAVICLE_PIVOT_MM = 10.0  # the medial end: the innermost 10 mm, as rules.positioning reads it

# Humeral shaft added to arms-down laterals (the CT holds only the proximal humerus, cut by
# its top slice): a cortical tube of adult size, and the arm's soft tissue around it.
SHAFT_OUTER_MM = 11.0
SHAFT_INNER_MM = 6.5
SHAFT_BONE_FRACTION = 1.0  # compact cortical bone (the CT scale: HU ≈ 1540)
ARM_RADIUS_MM = 40.0
ARM_TAPER_MM = 40.0  # the arm's soft tissue fades over this length at both ends


@dataclass(frozen=True)
class Variant:
    """All 2D parameters of one sample (recorded in its truth)."""

    window: tuple[int, int, int, int]  # (row0, col0, height, width) in projection pixels
    shutters_mm: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # top bottom left right
    scapula_shift_mm: tuple[float, float] = (0.0, 0.0)  # (right, left), medial, detector plane
    # Frontal: each clavicle turned about its medial end, lateral end down (degrees, right /
    # left; v1.15). The CT's raised arms hold the clavicles ~30° steep; a standing PA's are
    # near horizontal.
    clavicle_drop_deg: tuple[float, float] = (0.0, 0.0)
    arms_shift_mm: tuple[float, float] = (0.0, 0.0)  # (down, anterior), lateral views
    # Arms down (laterals): humeral shaft length below the head's centre (0 = no shaft) and
    # its angle from the vertical per side (right, left), positive = distal end anterior.
    arm_shaft_mm: float = 0.0
    arm_angle_deg: tuple[float, float] = (0.0, 0.0)
    exposure: physics.Exposure = field(default_factory=physics.Exposure)
    flipped: bool = False
    rotated180: bool = False
    monochrome: str = "MONOCHROME2"
    marker: bool = True
    text: bool = True
    noise_seed: int = 0


@dataclass(frozen=True, eq=False)
class Composed:
    """A finished variant: stored pixels, masks, and what truth needs."""

    stored: npt.NDArray[np.uint16]  # final orientation, photometric applied
    masks: dict[str, npt.NDArray[np.bool_]]  # STRUCTURES (+ *_visible), final orientation
    display: npt.NDArray[np.float32]  # [0,1] MONOCHROME2 sense, window orientation, pre-text
    display_clean: npt.NDArray[np.float32]  # the same without quantum/electronic noise
    full_masks: dict[str, npt.NDArray[np.bool_]]  # projection frame, un-cropped, after moves
    field_rect: tuple[int, int, int, int]  # exposed rows [r0, r1) cols [c0, c1), projection frame
    window_masks: dict[str, npt.NDArray[np.bool_]]  # window frame, clipped to the field
    stored_mono2: npt.NDArray[np.uint16]  # window frame, MONOCHROME2 sense, quantised


def _shift(a: _A, dy: int, dx: int) -> _A:
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def humeral_shaft(
    head: npt.NDArray[np.bool_], length_mm: float, angle_deg: float, pitch: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Projected bone (cm), arm soft tissue (cm) and mask of a humeral shaft on a lateral.

    The tube starts at the centre of the projected head and runs towards the feet, tilted
    anteriorly (the image's left) by ``angle_deg``. Bone is the exact chord through a
    cortical shell, so the mask (outer radius) and the pixels agree by construction.
    """
    h, w = head.shape
    rows, cols = np.nonzero(head)
    c_r, c_c = float(rows.mean()), float(cols.mean())
    a = np.radians(angle_deg)
    d_r, d_c = np.cos(a), -np.sin(a)  # unit axis in (row, col); anterior = smaller columns
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = (rr - c_r) * pitch, (cc - c_c) * pitch
    along = y * d_r + x * d_c
    across = np.abs(y * d_c - x * d_r)
    inside = (along >= 0) & (along <= length_mm)
    outer = np.sqrt(np.clip(SHAFT_OUTER_MM**2 - across**2, 0.0, None))
    inner = np.sqrt(np.clip(SHAFT_INNER_MM**2 - across**2, 0.0, None))
    bone = np.where(inside, 2.0 * (outer - inner) * SHAFT_BONE_FRACTION / 10.0, 0.0)
    # The arm's soft tissue: a cylinder of ARM_RADIUS_MM around the shaft, fading in above
    # the head (the shoulder) and out at the elbow, so it has no hard ends.
    fade = np.clip(
        np.minimum(along + ARM_RADIUS_MM, length_mm + ARM_TAPER_MM - along) / ARM_TAPER_MM,
        0.0,
        1.0,
    )
    chord = 2.0 * np.sqrt(np.clip(ARM_RADIUS_MM**2 - across**2, 0.0, None))
    soft = chord * fade * fade * (3.0 - 2.0 * fade)  # smoothstep
    mask = inside & (across < SHAFT_OUTER_MM)
    return bone.astype(np.float32), (soft / 10.0).astype(np.float32), mask


MAX_SCAPULA_OUTSIDE_BODY = 0.02  # of the moved scapula's projected area


def keep_scapulae_in_body(proj: Projection, v: Variant) -> Variant:
    """The variant with each lateral scapula shift shortened until the moved scapula lies
    inside the body outline (≤ 2 % outside): up to v1.9 a 60–90 mm draw left on average
    10 % of the scapula floating in air beside the chest wall (docs/SYNTH.md)."""
    body = proj.masks["body"]
    p = proj.pitch_mm
    out = list(v.scapula_shift_mm)
    for i, (side, sign) in enumerate((("right", 1), ("left", -1))):
        m = proj.masks[f"scapula_{side}"]
        area = int(m.sum())
        steps = round(out[i] / p)
        if area == 0 or steps >= 0:  # medial shifts stay over the thorax
            continue
        while steps < 0 and (_shift(m, 0, steps * sign) & ~body).sum() > (
            MAX_SCAPULA_OUTSIDE_BODY * area
        ):
            steps += 1
        out[i] = max(out[i], steps * p)
    if tuple(out) == v.scapula_shift_mm:
        return v
    return replace(v, scapula_shift_mm=(out[0], out[1]))


def lower_clavicle(
    bone: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    deg: float,
    lateral: int,
    pitch: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """One clavicle's projected bone and mask turned ``deg`` about its medial end, lateral end
    down. ``lateral`` is the column direction of the lateral end (-1: the image's left).

    The pivot is the centre of the innermost ``CLAVICLE_PIVOT_MM``, the point the rotation
    and tilt rules read, so that the truth's medial-end landmarks stay where they were.
    """
    rows, cols = np.nonzero(mask)
    medial = cols * -lateral * pitch
    sel = medial >= medial.max() - CLAVICLE_PIVOT_MM
    pivot = np.array([rows[sel].mean(), cols[sel].mean()])
    # Output (row, col) → input: the inverse turn. A positive turn of the lateral end
    # downwards is clockwise on the screen for the image's right side (rows grow down).
    phi = np.radians(deg) * lateral
    c, s = np.cos(phi), np.sin(phi)
    matrix = np.array([[c, -s], [s, c]])
    offset = pivot - matrix @ pivot
    turned = ndimage.affine_transform(bone, matrix, offset=offset, order=1, cval=0.0)
    turned_mask = ndimage.affine_transform(
        mask.astype(np.float32), matrix, offset=offset, order=1, cval=0.0
    )
    return turned.astype(np.float32), turned_mask >= 0.5


def move_bones(
    proj: Projection, v: Variant, frontal: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], dict[str, npt.NDArray[np.bool_]]]:
    """Scapulae medially (frontal) or arms down/forward (lateral), line integrals and masks.

    Each move carries only its own bone channel (scapulae / humeri), so the pixels of the
    other bone and its mask stay together where their projections overlap.
    """
    water = proj.water_cm.copy()
    bone = proj.bone_cm.copy()
    masks = {k: m.copy() for k, m in proj.masks.items()}
    p = proj.pitch_mm
    if frontal:
        for side, sign in (("right", 1), ("left", -1)):
            mm = v.scapula_shift_mm[0 if side == "right" else 1]
            dx = round(mm / p) * sign  # right scapula is on the image's left (PA/AP)
            if dx:
                m = masks[f"scapula_{side}"]
                part = np.where(m, bone[_SCAPULAE], 0.0).astype(np.float32)
                bone[_SCAPULAE] = bone[_SCAPULAE] - part + _shift(part, 0, dx)
                masks[f"scapula_{side}"] = _shift(m, 0, dx)
        for i, (side, lateral) in enumerate((("right", -1), ("left", 1))):
            m = masks[f"clavicle_{side}"]
            if v.clavicle_drop_deg[i] and m.any():
                part = np.where(m, bone[_CLAVICLES], 0.0).astype(np.float32)
                turned, masks[f"clavicle_{side}"] = lower_clavicle(
                    part, m, v.clavicle_drop_deg[i], lateral, p
                )
                bone[_CLAVICLES] = bone[_CLAVICLES] - part + turned
        return water, bone, masks
    dy = round(v.arms_shift_mm[0] / p)
    dx = -round(v.arms_shift_mm[1] / p)  # anterior is the image's left (lateral)
    if dy or dx:
        arms = masks["humerus_right"] | masks["humerus_left"]
        part = np.where(arms, bone[_HUMERI], 0.0).astype(np.float32)
        bone[_HUMERI] = bone[_HUMERI] - part + _shift(part, dy, dx)
        for side in ("right", "left"):
            masks[f"humerus_{side}"] = _shift(masks[f"humerus_{side}"], dy, dx)
    if v.arm_shaft_mm > 0:  # arms down: shafts and the arms' soft tissue
        for i, side in enumerate(("right", "left")):
            head = masks[f"humerus_{side}"]
            if not head.any():
                continue
            b, s, m = humeral_shaft(head, v.arm_shaft_mm, v.arm_angle_deg[i], p)
            bone[_HUMERI] = bone[_HUMERI] + b
            water = water + s
            masks[f"humerus_{side}"] = head | m
    elif dy > 0:  # session-2 recipe (no shaft): a soft-tissue sleeve around the moved heads
        moved = np.where(masks["humerus_right"] | masks["humerus_left"], bone[_HUMERI], 0.0)
        sleeve = physics.gaussian(
            torch.from_numpy((moved > 0.05).astype(np.float32)), 12.0 / p
        ).numpy()
        water = water + 9.0 * np.clip(sleeve * 1.6, 0.0, 1.0).astype(np.float32)
    return water, bone, masks


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()


def burn_in(
    y: npt.NDArray[np.float32], v: Variant, frontal: bool, rng: np.random.Generator, pitch: float
) -> npt.NDArray[np.float32]:
    """White text (station, date) and an L/R marker on the patient's side, as modalities do."""
    h, w = y.shape
    img = Image.fromarray(np.round(y * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    size = max(8, round(rng.uniform(6.0, 12.0) / pitch))
    if v.text:
        txt = (
            rng.choice(["DR ROOM 2", "ST-04", "XR1", "PORTABLE", "CHEST"])
            + " "
            + (
                f"{int(rng.integers(2015, 2026))}-{int(rng.integers(1, 13)):02d}-"
                f"{int(rng.integers(1, 29)):02d}"
            )
        )
        corner = int(rng.integers(4))
        x = 4 if corner % 2 == 0 else max(4, w - 4 - size * len(txt) // 2)
        yy = 4 if corner < 2 else max(4, h - size - 6)
        draw.text((x, yy), txt, fill=250, font=_font(size))
    if v.marker:
        msize = max(10, round(rng.uniform(12.0, 20.0) / pitch))
        letter = "R" if frontal else str(rng.choice(["L", "R"]))
        # Patient's right is on the image's left for frontal views (before any mirroring).
        x = int(rng.uniform(0.04, 0.15) * w) if letter == "R" or not frontal else int(0.85 * w)
        yy = int(rng.uniform(0.05, 0.3) * h)
        draw.text((x, yy), letter, fill=255, font=_font(msize))
    text = np.asarray(img, dtype=np.float32) / 255.0
    drawn = np.abs(text - np.round(y * 255) / 255.0) > 1e-6
    return np.where(drawn, text, y).astype(np.float32)


def compose(
    proj: Projection,
    v: Variant,
    *,
    frontal: bool,
    moved: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], dict[str, npt.NDArray[np.bool_]]]
    | None = None,
) -> Composed:
    water, bone, full = moved if moved is not None else move_bones(proj, v, frontal)
    r0, c0, hh, ww = v.window
    p = proj.pitch_mm
    st, sb, sl, sr = (round(s / p) for s in v.shutters_mm)
    field_win = np.zeros((hh, ww), bool)
    field_win[st : hh - sb, sl : ww - sr] = True
    rect = (r0 + st, r0 + hh - sb, c0 + sl, c0 + ww - sr)
    sub = (slice(r0, r0 + hh), slice(c0, c0 + ww))
    w_water = water[sub]
    w_bone = bone[:, sub[0], sub[1]].sum(axis=0)
    rng = np.random.default_rng(v.noise_seed)
    rel, rel_clean = physics.detect(w_water, w_bone, field_win, v.exposure, p, rng)
    y, norm = physics.process(rel, field_win, v.exposure, p)
    y_clean, _ = physics.process(rel_clean, field_win, v.exposure, p, norm=norm)
    y_text = burn_in(y, v, frontal, rng, p)
    stored = physics.quantise(y_text, v.exposure.bits_stored)
    win_masks: dict[str, npt.NDArray[np.bool_]] = {}
    extras = [k for k in full if k.endswith("_visible")]  # optional visible-lung masks
    for name in (*STRUCTURES, *extras):
        if name == "field":
            win_masks[name] = field_win.copy()
        else:
            win_masks[name] = full[name][sub] & field_win
    out_masks = dict(win_masks)
    stored_mono2 = stored.copy()
    if v.monochrome == "MONOCHROME1":
        stored = ((1 << v.exposure.bits_stored) - 1 - stored).astype(np.uint16)
    if v.flipped:
        stored = stored[:, ::-1]
        out_masks = {k: m[:, ::-1] for k, m in out_masks.items()}
    if v.rotated180:
        stored = stored[::-1, ::-1]
        out_masks = {k: m[::-1, ::-1] for k, m in out_masks.items()}
    return Composed(
        stored=np.ascontiguousarray(stored),
        masks={k: np.ascontiguousarray(m) for k, m in out_masks.items()},
        display=y,
        display_clean=y_clean,
        full_masks=full,
        field_rect=rect,
        window_masks=win_masks,
        stored_mono2=stored_mono2,
    )
