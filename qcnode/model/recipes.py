"""Training recipes: named, frozen hyper-parameter sets for ``qcnode train`` and the GPU grid
(``qcnode.model.grid``). A registry entry records the recipe its weights were trained with."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from qcnode.model.augment import NONE, AugmentConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: int
    batch: int
    lr: float
    weight_decay: float = 1e-4
    warmup: int = 50
    p_negative: float = 0.06  # share of batch slots drawn from the real non-chest images
    view_weight: float = 0.5
    eval_every: int = 250
    checkpoint_every: int = 50
    val_count: int = 96
    threads: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Cosine schedule with warm restarts: ``cycles`` equal cycles after the warm-up, the
    # k-th peaking at lr * cycle_decay**k. Each cycle ends in a usable checkpoint.
    cycles: int = 1
    cycle_decay: float = 1.0
    # Extra loss weight per structure (name -> factor, others 1): thin bones are a few
    # pixels at 3.5 mm and were under-learnt with equal weights.
    structure_weight: tuple[tuple[str, float], ...] = ()
    # Lung targets: "projection" (whole 3D lungs) or "visible" (cut at the diaphragm; needs
    # data made with `qcnode synth --visible-lungs`).
    lungs: str = "projection"
    # Processes that compute augmented batches (0: the training process itself). A GPU host
    # needs many: augmentation, not the network, is its bottleneck.
    workers: int = 0
    # "view": train the view head alone on the frozen network (masks bit-identical to the
    # --init weights; the decoder is not run); "refine": add a refiner for the ``refine``
    # channels (network.Refiner) and train it alone (every other channel bit-identical);
    # "decoder": the decoder and mask head on the frozen encoder (the view head and its
    # `other` calls bit-identical); "" trains everything.
    train_only: str = ""
    refine: tuple[str, ...] = ()
    # Self-distillation (session 14): > 0 keeps the --init network, frozen, as a teacher and
    # adds this weight times its soft targets to the loss; the teacher sees each film without
    # the dense opacities the student sees (augment_pair), so the student learns to read
    # through them while everything else stays anchored to the teacher's real-film behaviour.
    # ``truth_weight`` scales the usual loss against the synthetic truth.
    distill: float = 0.0
    truth_weight: float = 1.0
    # Channels left out of the distillation term (session 15): the teacher's answer there is
    # what the run is meant to change (its lungs stop at an opacity the student must read
    # through), so only the truth teaches them; everything else stays anchored.
    distill_skip: tuple[str, ...] = ()


# Thin structures: clavicles, scapulae, humeri, ribs, sternum, trachea.
THIN_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("clavicle_right", 3.0),
    ("clavicle_left", 3.0),
    ("scapula_right", 2.0),
    ("scapula_left", 2.0),
    ("humerus_right", 3.0),
    ("humerus_left", 3.0),
    ("ribs_posterior_right", 2.0),
    ("ribs_posterior_left", 2.0),
    ("sternum", 2.0),
    ("trachea", 2.0),
)

# Stronger large-scale contrast processing (vendor multi-scale enhancement on real films).
LONG_AUGMENT = AugmentConfig(sharpen_sigma=(1.0, 16.0), p_sharpen=0.35)
GPU_FT_AUGMENT = AugmentConfig(sharpen_sigma=(1.0, 16.0), p_sharpen=0.35, p_equalize=0.3)


RECIPES: dict[str, Recipe] = {
    # ~1 h on the shared 2-core CPU for qcnet_d15_w3 (0.8-1.2 s per step of 8 there).
    "cpu": Recipe(name="cpu", steps=2000, batch=8, lr=3e-3, eval_every=500),
    # Second stage from the `cpu` weights (--init): a warm restart of the cosine schedule.
    "cpu-ft": Recipe(name="cpu-ft", steps=600, batch=8, lr=1.5e-3, eval_every=300),
    # Session 2's long CPU run from the shipped weights (--init): three warm-restart cosine
    # cycles, thin-structure loss weights, stronger large-scale sharpening.
    "cpu-long": Recipe(
        name="cpu-long",
        steps=6600,
        batch=8,
        lr=2e-3,
        warmup=100,
        eval_every=700,
        checkpoint_every=50,
        cycles=3,
        cycle_decay=0.6,
        structure_weight=THIN_WEIGHTS,
        augment=LONG_AUGMENT,
    ),
    # A short second stage on visible-lung targets (an experiment: how much of the real-film
    # lung gap the label definition explains).
    "cpu-ft-visible": Recipe(
        name="cpu-ft-visible",
        steps=600,
        batch=8,
        lr=1.5e-3,
        eval_every=300,
        structure_weight=THIN_WEIGHTS,
        augment=LONG_AUGMENT,
        lungs="visible",
    ),
    # One GPU host (qcnode.model.grid trains the variant grid on one batch stream): big
    # batches, augmentation in 14 worker processes, both lung definitions; the step count is
    # usually set from a time budget (--minutes).
    "gpu": Recipe(
        name="gpu",
        steps=20000,
        batch=64,
        lr=3e-3,
        warmup=60,
        eval_every=1000,
        checkpoint_every=500,
        val_count=96,
        threads=8,
        structure_weight=THIN_WEIGHTS,
        augment=LONG_AUGMENT,
        lungs="both",
        workers=14,
    ),
    # For tests: a few steps on a handful of images.
    "tiny": Recipe(
        name="tiny",
        steps=12,
        batch=4,
        lr=1e-2,
        warmup=0,
        p_negative=0.0,
        eval_every=1000,
        checkpoint_every=4,
        val_count=0,
        threads=1,
        augment=NONE,
    ),
}
# `cpu-long` on data made with `qcnode synth --visible-lungs` (not yet run).
RECIPES["cpu-long-visible"] = replace(RECIPES["cpu-long"], name="cpu-long-visible", lungs="visible")
# Session 4: `gpu` continued from shipped weights (--init) on regenerated data (generator
# v1.11), augmentation on the GPU, histogram equalisation for transfer.
RECIPES["gpu-ft"] = replace(
    RECIPES["gpu"], name="gpu-ft", lr=2e-3, warmup=40, augment=GPU_FT_AUGMENT
)
# Session 7 (no GPU): the shipped s4 weights continued on this CPU on fresh poses (train-v4,
# generator v1.12): gpu-ft's peak scaled to batch 8, both lung definitions, same augmentation,
# more weight on the bones the rules read but the network places worst (scapulae, ribs).
RECIPES["cpu-ft-both"] = Recipe(
    name="cpu-ft-both",
    steps=6000,
    batch=8,
    lr=3e-4,
    warmup=100,
    eval_every=1500,
    checkpoint_every=50,
    structure_weight=tuple(
        (n, 3.0 if n.startswith(("scapula", "ribs_posterior")) else w) for n, w in THIN_WEIGHTS
    ),
    augment=GPU_FT_AUGMENT,
    lungs="both",
)
# Session 8: the registered qcnet_d10_w3_s8 (H100, generator v1.13 --realism) continued on
# this CPU on local --realism data with deep one-sided cuts added (AugmentConfig.p_cut): on
# real films cropped through an apex or a wall it stopped its lungs short of the new border.
RECIPES["cpu-ft-cut"] = replace(
    RECIPES["cpu-ft-both"],
    name="cpu-ft-cut",
    steps=4000,
    eval_every=2000,
    structure_weight=THIN_WEIGHTS,
    augment=replace(GPU_FT_AUGMENT, p_cut=0.25),
)
# Session 10 (no GPU): the view head alone, from the shipped weights (--init), with dense
# opacities added: real white-out bedside frontals were called lateral. Masks do not change.
RECIPES["cpu-view"] = Recipe(
    name="cpu-view",
    steps=1500,
    batch=16,
    lr=1e-3,
    weight_decay=1e-2,
    warmup=50,
    p_negative=0.1,
    eval_every=1500,
    checkpoint_every=100,
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2, p_opacity=0.35),
    lungs="both",
    train_only="view",
)
# Session 9: gpu-ft with deep one-sided cuts, for a GPU host (on generator v1.14 data: realism
# with a share of the plain look).
RECIPES["gpu-ft-cut"] = replace(
    RECIPES["gpu-ft"], name="gpu-ft-cut", augment=replace(GPU_FT_AUGMENT, p_cut=0.2)
)
# Session 10, for the next GPU host (not yet run): gpu-ft-cut with the dense opacities of
# cpu-view, so that the encoder (not only a head on its frozen features) learns white-out
# bedside frontals; session 10 found the frozen encoder's pooled features call one such real
# film lateral whatever a linear head does with them.
RECIPES["gpu-ft-opacity"] = replace(
    RECIPES["gpu-ft-cut"],
    name="gpu-ft-opacity",
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2, p_opacity=0.2),
)
# Session 11 (no GPU): a refiner for the thin bones the rules read worst on the model's masks
# (scapulae for positioning.scapulae, clavicles for rotation/tilt, posterior ribs for the
# lateral rotation), trained alone on the frozen s10 network: lungs, heart and the view head
# stay bit-identical, so real-film lungs and views cannot get worse.
RECIPES["cpu-refine"] = Recipe(
    name="cpu-refine",
    steps=2400,
    batch=8,
    lr=2e-3,
    weight_decay=1e-4,
    warmup=50,
    p_negative=0.06,
    eval_every=800,
    checkpoint_every=100,
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2),
    lungs="both",
    train_only="refine",
    refine=(
        "clavicle_right",
        "clavicle_left",
        "scapula_right",
        "scapula_left",
        "ribs_posterior_right",
        "ribs_posterior_left",
    ),
)
# Session 11 (no GPU): the same for the lungs (whole and visible), with more deep cuts: the
# model's lungs stop short of a field edge that cuts them (completeness.costophrenic,
# lateral_walls, apices on the model's masks), and real-film lung Dice is a target.
RECIPES["cpu-refine-lungs"] = replace(
    RECIPES["cpu-refine"],
    name="cpu-refine-lungs",
    augment=replace(GPU_FT_AUGMENT, p_cut=0.35),
    refine=("lung_right", "lung_left", "lung_right_visible", "lung_left_visible"),
)
# Session 12 (no GPU): the decoder alone on the frozen s10 encoder, on generator v1.15 data
# whose frontals mostly have lowered clavicles (a standing PA's, not the CT's raised-arm
# ones): the shipped network missed a clavicle on half the real frontals. The view head
# cannot change; the masks re-learn on the mix of old-look and new frontals.
RECIPES["cpu-ft-decoder"] = replace(
    RECIPES["cpu-ft-cut"],
    name="cpu-ft-decoder",
    steps=3000,
    eval_every=1000,
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2),
    train_only="decoder",
)
# Session 13 (no GPU): the lung fields (visible-lung channels) re-learned for the visible-v2
# truth (cut at the mediastinal column, generator v1.16) by a refiner on those two channels
# alone, trained on the frozen s12 network: every other channel, the view head and so every
# rule but the costophrenic angle (the only reader of the visible lungs) stay bit-identical.
RECIPES["cpu-refine-fields"] = replace(
    RECIPES["cpu-refine"],
    name="cpu-refine-fields",
    refine=("lung_right_visible", "lung_left_visible"),
)
# The same with dense opacities (white-out bedside films, whose opaque lung the refiner
# leaves out of the fields): session-13 experiment.
RECIPES["cpu-refine-fields-opacity"] = replace(
    RECIPES["cpu-refine-fields"],
    name="cpu-refine-fields-opacity",
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2, p_opacity=0.35),
)
# Session 14 (no GPU): the whole network (encoder included) taught to read through dense
# opacities by its own frozen copy, which sees the same films without them (self-distillation,
# Recipe.distill): white-out bedside films kept their opaque lungs out of the lung fields and
# one was called lateral, which heads on the frozen encoder could not change (sessions 10, 13).
# The truth loss is kept small: more synthetic training alone costs real-film transfer
# (session 7), the teacher's soft targets hold the rest of the network where it is.
RECIPES["cpu-distill-opacity"] = Recipe(
    name="cpu-distill-opacity",
    steps=2400,
    batch=8,
    lr=2e-4,
    weight_decay=1e-4,
    warmup=100,
    p_negative=0.1,
    eval_every=1200,
    checkpoint_every=100,
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2, p_opacity=0.5),
    lungs="both",
    refine=("lung_right_visible", "lung_left_visible"),
    structure_weight=THIN_WEIGHTS,
    distill=1.0,
    truth_weight=0.25,
)
# Session 15 (no GPU): the whole network from the shipped weights (--init) on data whose
# frontals carry 3D opacities (generator v1.17 `--opacities`: effusions, consolidations,
# white-outs rendered from the CT with the lung-field truth kept), truth-supervised: the 2D
# blobs of session 14's distillation did not teach the opaque bedside films' lung fields.
RECIPES["cpu-ft-opacity3d"] = replace(
    RECIPES["cpu-distill-opacity"],
    name="cpu-ft-opacity3d",
    steps=1600,
    eval_every=800,
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2, p_opacity=0.15),
    distill=0.0,
    truth_weight=1.0,
)
# Session 15, run 3: the same data, the --init network (frozen) anchoring the view and every
# channel but the lungs and lung fields, which the 3D opacities are meant to change, against
# the loss of thin bones and rule accuracy a truth-only fine-tune showed (run 1: clavicles
# -0.04 Dice). p_opacity 0: the teacher reads the same film as the student.
RECIPES["cpu-distill-opacity3d"] = replace(
    RECIPES["cpu-ft-opacity3d"],
    name="cpu-distill-opacity3d",
    augment=replace(GPU_FT_AUGMENT, p_cut=0.2),
    distill=1.0,
    truth_weight=1.0,
    distill_skip=("lung_right", "lung_left", "lung_right_visible", "lung_left_visible"),
)
