"""Random draws of the 3D pose and the 2D variants, with train/eval kept disjoint.

Disjointness (DESIGN §6): every draw comes from a generator seeded by (split, seed, index),
so train and eval never share a stream; the continuous deformation parameters (habitus
scaling, elastic amplitude) are drawn from interleaved, disjoint bins — train uses the even
bins of each range, eval the odd ones — and elastic warp seeds come from disjoint ranges.
Failure modes are over-sampled so that every rule has passing and failing cases.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from qcnode.synth.edits import Variant
from qcnode.synth.physics import Exposure
from qcnode.synth.render import Detector, Opacity, Pose

SPLITS = {"train": 0, "eval": 1, "test": 2}
_BINS = 8


def rng_for(split: str, seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([SPLITS[split], seed, *parts])


def _binned(g: np.random.Generator, lo: float, hi: float, split: str) -> float:
    """Uniform over [lo, hi] restricted to this split's interleaved bins."""
    parity = 0 if split == "train" else 1
    k = int(g.integers(0, _BINS // 2)) * 2 + parity
    width = (hi - lo) / _BINS
    return lo + (k + g.uniform()) * width


def _mix(g: np.random.Generator, p_wide: float, narrow: float, wide: float) -> float:
    if g.uniform() < p_wide:
        return float(g.uniform(-wide, wide))
    return float(np.clip(g.normal(0.0, narrow), -2.5 * narrow, 2.5 * narrow))


def draw_pose(g: np.random.Generator, split: str, view: str) -> Pose:
    """One 3D render's parameters. view: frontal | lateral | other."""
    if view == "frontal":
        vp = "PA" if g.uniform() < 0.75 else "AP"
    elif view == "lateral":
        vp = "LL" if g.uniform() < 0.8 else "RL"
    else:
        vp = str(g.choice(["PA", "AP", "LL"]))
    sid = float(g.uniform(1750, 1850)) if vp != "AP" else float(g.uniform(1000, 1200))
    elastic_seed = int(g.integers(0, 1_000_000)) + SPLITS[split] * 1_000_000
    cz = float(g.normal(0, 12))
    if view == "other":
        cz = float(g.uniform(-330, -270))
    return Pose(
        view_position=vp,
        sid_mm=sid,
        rotation_deg=_mix(g, 0.45, 1.5, 15.0),
        tilt_deg=_mix(g, 0.35, 2.5, 18.0),
        scale=(
            _binned(g, 0.9, 1.1, split),
            _binned(g, 0.88, 1.12, split),
            _binned(g, 0.88, 1.12, split),
        ),
        elastic_mm=_binned(g, 0.0, 10.0, split),
        elastic_seed=elastic_seed,
        diaphragm_shift_mm=float(g.uniform(-100.0, 30.0)),
        center_mm=(float(g.normal(0, 10)), cz),
    )


def _opacity(g: np.random.Generator, side: str) -> Opacity:
    """One side's opacity; the ranges keep it above the domes, where a film shows it."""
    kind = str(g.choice(["basal", "dependent", "blob", "whole"], p=[0.3, 0.3, 0.25, 0.15]))
    if kind == "basal":  # effusion, upright: a meniscus up the chest wall
        return Opacity(
            kind=kind,
            side=side,
            density=float(g.uniform(0.7, 1.0)),
            level=float(g.uniform(0.35, 0.7)),
            meniscus_mm=float(g.uniform(0.0, 60.0)),
            edge_mm=float(g.uniform(5.0, 20.0)),
        )
    if kind == "dependent":  # effusion or oedema layering behind a supine patient: a veil
        return Opacity(
            kind=kind,
            side=side,
            density=float(g.uniform(0.3, 0.9)),
            level=float(g.uniform(0.2, 0.8)),
            edge_mm=float(g.uniform(10.0, 40.0)),
        )
    if kind == "blob":  # consolidation
        return Opacity(
            kind=kind,
            side=side,
            density=float(g.uniform(0.6, 1.0)),
            center=(
                float(g.uniform(0.2, 0.8)),
                float(g.uniform(0.2, 0.8)),
                float(g.uniform(0.25, 0.85)),
            ),
            radius_mm=float(g.uniform(25.0, 70.0)),
            edge_mm=float(g.uniform(5.0, 20.0)),
        )
    return Opacity(kind=kind, side=side, density=float(g.uniform(0.5, 0.95)))


def draw_opacities(
    g: np.random.Generator, share: float, textured: float = 0.0
) -> tuple[Opacity, ...]:
    """Pathology for that share of renders (v1.17): one side, or both (40 %). `textured`
    (v1.18): that share of them is patchy (drawn after the rest, only when > 0, so v1.17
    draws are reproduced)."""
    if g.uniform() >= share:
        return ()
    ops: tuple[Opacity, ...]
    if g.uniform() < 0.4:
        ops = (_opacity(g, "right"), _opacity(g, "left"))
    else:
        ops = (_opacity(g, str(g.choice(["right", "left"]))),)
    if textured > 0:
        ops = tuple(
            replace(o, texture=float(g.uniform(0.4, 0.9)), seed=int(g.integers(2**31)))
            if g.uniform() < textured
            else o
            for o in ops
        )
    return ops


def draw_exposure(g: np.random.Generator, view: str) -> Exposure:
    u = g.uniform()
    if u < 0.6:
        di = float(np.clip(g.normal(0, 0.6), -1.5, 1.5))
    elif u < 0.85:
        di = float(g.uniform(-3.0, 3.0))
    else:
        di = float(g.uniform(3.0, 6.0)) * float(g.choice([-1.0, 1.0]))
    low_kv = g.uniform() < 0.3
    kvp = float(g.uniform(65, 95) if low_kv else g.uniform(100, 125))
    if view == "lateral":
        kvp += 5.0
    return Exposure(
        kvp=kvp,
        deviation_index=di,
        scatter_fraction=float(g.uniform(0.1, 0.6)),
        electronic_noise=float(g.uniform(2.0, 6.0)),
        motion_blur_mm=float(g.uniform(1.0, 8.0)) if g.uniform() < 0.2 else 0.0,
        motion_angle_deg=float(g.uniform(0, 180)),
        extra_blur_mm=float(g.uniform(0.2, 2.0)) if g.uniform() < 0.25 else 0.0,
        grid_lines=float(g.uniform(0.02, 0.08)) if g.uniform() < 0.2 else 0.0,
        grid_period_px=float(g.uniform(2.2, 4.0)),
        mse_strength=float(g.uniform(0.3, 0.8)),
        unsharp=float(g.uniform(0.2, 1.0)),
        tone_slope=float(g.uniform(3.5, 7.0)),
        gamma=float(g.uniform(0.8, 1.25)),
        contrast_scale=float(g.uniform(0.25, 0.55) if g.uniform() < 0.2 else g.uniform(0.7, 1.0)),
        window_low=float(g.uniform(0.1, 0.35) if g.uniform() < 0.15 else g.uniform(-0.05, 0.03)),
        window_high=float(g.uniform(0.65, 0.85) if g.uniform() < 0.15 else g.uniform(0.97, 1.05)),
        bits_stored=int(g.choice([12, 12, 12, 13, 14])),
    )


def draw_window(
    g: np.random.Generator,
    det: Detector,
    lungs_bbox: tuple[int, int, int, int],
    view: str,
) -> tuple[tuple[int, int, int, int], tuple[float, float, float, float]]:
    """Detector window (crop) and shutters, mostly well placed, sometimes cutting anatomy."""
    h, w = det.shape
    p = det.pitch_mm
    sizes = [(430.0, 430.0), (430.0, 350.0), (350.0, 430.0)]  # (height, width) mm
    probs = [0.7, 0.2, 0.1] if view == "frontal" else [0.6, 0.35, 0.05]
    hh_mm, ww_mm = sizes[int(g.choice(3, p=probs))]
    hh, ww = min(h, round(hh_mm / p)), min(w, round(ww_mm / p))
    r0l, r1l, c0l, c1l = lungs_bbox
    cr, cc = (r0l + r1l) / 2.0, (c0l + c1l) / 2.0
    if g.uniform() < 0.7:
        cr += g.normal(0, 10.0 / p)
        cc += g.normal(0, 12.0 / p)
    else:
        cr += g.uniform(-90.0, 90.0) / p
        cc += g.uniform(-70.0, 70.0) / p
    r0 = int(np.clip(round(cr - hh / 2), 0, h - hh))
    c0 = int(np.clip(round(cc - ww / 2), 0, w - ww))
    sh = [0.0, 0.0, 0.0, 0.0]
    if g.uniform() < 0.55:
        sh = [float(g.uniform(0, 50)) for _ in range(4)]
    if g.uniform() < 0.2:  # a tight shutter that may cut into the lungs
        side = int(g.integers(4))
        if view == "lateral" and g.uniform() < 0.5:
            side = 2  # anterior: the only side where a lateral's heart can be cut
        lung_edge = [r0l - r0, (r0 + hh - 1) - r1l, c0l - c0, (c0 + ww - 1) - c1l][side] * p
        # Shutter = distance from the window edge: beyond `lung_edge` it cuts into the lung.
        # Laterals' heart sits ≈25 mm inside the lungs' anterior edge: cut deeper there.
        low, high = (-20.0, 110.0) if view == "lateral" and side == 2 else (-60.0, 12.0)
        sh[side] = float(np.clip(lung_edge + g.uniform(low, high), 0, 200))
    return (r0, c0, hh, ww), (sh[0], sh[1], sh[2], sh[3])


def _scapula(g: np.random.Generator) -> float:
    """Medial shift in mm (negative = lateral): about half the draws clear the lung fields."""
    if g.uniform() < 0.7:
        return float(g.uniform(-90.0, -45.0))
    return float(g.uniform(-45.0, 15.0))


def draw_variant(
    g: np.random.Generator,
    det: Detector,
    lungs_bbox: tuple[int, int, int, int],
    view: str,
    noise_seed: int,
    *,
    realism: bool = False,
    realism_plain: float = 0.0,
    clavicles_down: float = 0.0,
) -> Variant:
    """One sample's 2D parameters. `realism` (v1.13) adds denser bones and more dose, drawn
    after everything else so the other parameters of a seed stay the same; `realism_plain`
    (v1.14) keeps that share of realism samples at the plain v1.12 appearance (one more draw,
    made only when it is > 0, so v1.13 sets are reproduced). `clavicles_down` (v1.15) lowers
    both clavicles of that share of frontals (drawn last, only when > 0)."""
    window, shutters = draw_window(g, det, lungs_bbox, view)
    scap = (0.0, 0.0)
    arms = (0.0, 0.0)
    if view == "frontal":
        # The CT's scapulae project ~45 mm into the lungs: most draws move them laterally.
        scap = (_scapula(g), _scapula(g))
    shaft = 0.0
    angles = (0.0, 0.0)
    if view == "lateral":
        # The CT's raised humeral heads overlap the apices by ~600 mm² in a lateral: "raised
        # clear" moves them up; "down" lowers the heads to the shoulder joint's usual level
        # and adds the humeral shafts the CT lacks, hanging over the lung fields (v1.10; v1.9
        # moved the bare heads 100-220 mm down, a floating ball the network never learnt).
        if g.uniform() < 0.35:
            arms = (float(g.uniform(20, 80)), float(g.uniform(0, 40)))
            shaft = float(g.uniform(220, 300))
            tilt = float(g.uniform(0, 30))
            angles = (tilt + float(g.uniform(-5, 5)), tilt + float(g.uniform(-5, 5)))
        else:
            arms = (-float(g.uniform(45, 90)), float(g.uniform(-10, 10)))
    v = Variant(
        window=window,
        shutters_mm=shutters,
        scapula_shift_mm=scap,
        arms_shift_mm=arms,
        arm_shaft_mm=shaft,
        arm_angle_deg=angles,
        exposure=draw_exposure(g, view),
        flipped=bool(g.uniform() < 0.08),
        rotated180=bool(g.uniform() < 0.05),
        monochrome="MONOCHROME1" if g.uniform() < 0.4 else "MONOCHROME2",
        marker=bool(g.uniform() < 0.85),
        text=bool(g.uniform() < 0.7),
        noise_seed=noise_seed,
    )
    if realism:
        bone = float(g.uniform(1.0, 2.4))
        dose = float(np.exp(g.uniform(0.0, np.log(12.0))))
        if not (realism_plain > 0 and g.uniform() < realism_plain):
            v = replace(v, exposure=replace(v.exposure, bone_scale=bone, dose_scale=dose))
    if clavicles_down > 0 and view == "frontal" and g.uniform() < clavicles_down:
        v = replace(v, clavicle_drop_deg=clavicle_drop(g))
    return v


def clavicle_drop(g: np.random.Generator) -> tuple[float, float]:
    """Degrees (right, left) to lower the clavicles' lateral ends: the CT's ~30° steep
    clavicles (arms raised) become -5…+22°, the range of standing PA films; the two sides
    within a few degrees of each other (shoulders lowered together)."""
    base = float(g.uniform(8.0, 35.0))
    return (base + float(g.uniform(-4.0, 4.0)), base + float(g.uniform(-4.0, 4.0)))


def other_window(
    g: np.random.Generator, det: Detector, lungs_bottom_row: int, body_rows: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """A window below the lungs (abdomen only) for the `other` class, or None if none fits."""
    h, w = det.shape
    p = det.pitch_mm
    top = lungs_bottom_row + round(g.uniform(5, 30) / p)
    bottom = min(h, body_rows[1] + round(g.uniform(-20, 40) / p))
    hh = bottom - top
    if hh < int(120 / p):
        return None
    hh = min(hh, round(430 / p))
    ww = min(w, round(float(g.choice([350.0, 430.0])) / p))
    c0 = int(np.clip((w - ww) // 2 + g.normal(0, 20 / p), 0, w - ww))
    return (top, c0, hh, ww)


def header_errors(g: np.random.Generator, view: str, true_vp: str) -> tuple[str, float]:
    """Occasional header mistakes: a wrong ViewPosition, or a wrong pixel spacing."""
    vp = true_vp
    if g.uniform() < 0.04:
        vp = str(g.choice(["LL", "RL"])) if view == "frontal" else str(g.choice(["PA", "AP"]))
    scale = 1.0
    if g.uniform() < 0.03:
        scale = float(g.choice([0.5, 2.0, 0.1]))
    return vp, scale


def no_noise(v: Variant) -> Variant:
    """For tests: the same variant without random exposure extremes."""
    return replace(v, exposure=Exposure(), flipped=False, rotated180=False)


def ei_target(g: np.random.Generator) -> float:
    return float(g.choice([250.0, 400.0, 500.0]))


def exposure_index(target: float, di: float) -> float:
    return target * math.pow(10.0, di / 10.0)
