"""Training mechanics added for the long CPU recipe: warm-restart schedule, per-structure loss
weights, the configurable sharpening scale. Fast: no training here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest
import torch

from qcnode.errors import QcnodeError
from qcnode.model import data as datamod
from qcnode.model.augment import NONE, AugmentConfig, augment, equalize
from qcnode.model.recipes import RECIPES, Recipe
from qcnode.model.train import (
    TrainResult,
    _lr,
    cycle_ends,
    loss_fn,
    structure_factors,
    train,
)
from qcnode.records import STRUCTURES


def test_single_cycle_schedule_is_the_old_cosine() -> None:
    r = RECIPES["cpu"]
    assert _lr(r, 0) == pytest.approx(r.lr / r.warmup)
    assert _lr(r, r.warmup) == pytest.approx(r.lr)
    assert _lr(r, r.steps - 1) == pytest.approx(0.02 * r.lr, rel=0.05)
    assert cycle_ends(r) == [r.steps]


def test_warm_restarts_jump_back_up_with_decaying_peaks() -> None:
    r = RECIPES["cpu-long"]
    ends = cycle_ends(r)
    assert len(ends) == r.cycles and ends[-1] == r.steps
    for k, end in enumerate(ends[:-1]):
        low, high = _lr(r, end - 1), _lr(r, end)
        assert low < 0.05 * r.lr  # each cycle anneals ...
        assert high == pytest.approx(r.lr * r.cycle_decay ** (k + 1), rel=0.01)  # ... restarts
    assert _lr(r, r.steps - 1) < 0.05 * r.lr


def test_structure_factors_name_real_structures() -> None:
    f = structure_factors(RECIPES["cpu-long"])
    assert f.shape == (len(STRUCTURES),)
    assert f[STRUCTURES.index("lung_right")] == 1.0
    assert f[STRUCTURES.index("humerus_left")] > 1.0
    assert torch.equal(structure_factors(RECIPES["cpu"]), torch.ones(len(STRUCTURES)))


def test_factors_raise_thin_structures_without_lowering_the_others() -> None:
    g = torch.Generator().manual_seed(0)
    n, c, s = 2, len(STRUCTURES), 16
    logits = torch.randn((n, c, s, s), generator=g, requires_grad=True)
    target = (torch.rand((n, c, s, s), generator=g) > 0.5).float()
    weight, views, view_logits = torch.ones((n, c)), torch.tensor([0, 1]), torch.zeros((n, 3))
    factors = torch.ones(c)
    thin = STRUCTURES.index("clavicle_right")
    factors[thin] = 3.0

    def grads(f: torch.Tensor | None) -> torch.Tensor:
        logits.grad = None
        loss, _ = loss_fn(logits, view_logits, target, weight, views, 0.5, f)
        loss.backward()
        assert logits.grad is not None
        return logits.grad.abs().sum(dim=(0, 2, 3))

    plain, weighted = grads(None), grads(factors)
    assert weighted[thin] == pytest.approx(3 * float(plain[thin]), rel=1e-5)
    lung = STRUCTURES.index("lung_left")
    assert weighted[lung] == pytest.approx(float(plain[lung]), rel=1e-5)


def test_sharpen_sigma_is_configurable_and_changes_the_image() -> None:
    x = torch.rand((1, 1, 64, 64), generator=torch.Generator().manual_seed(1))
    valid = torch.ones_like(x, dtype=torch.bool)
    masks = torch.zeros((1, len(STRUCTURES), 64, 64))
    base = dataclasses.replace(NONE, p_sharpen=1.0, p_curve=1e-9)  # only sharpening acts

    def run(sigma: tuple[float, float]) -> torch.Tensor:
        cfg = dataclasses.replace(base, sharpen_sigma=sigma)
        out, _ = augment(x, valid, masks, cfg=cfg, generator=torch.Generator().manual_seed(2))
        return out

    small, large = run((1.0, 1.0)), run((12.0, 12.0))
    assert not torch.allclose(small, large, atol=1e-3)
    assert torch.equal(run((12.0, 12.0)), large)  # seeded: reproducible


def test_equalize_maps_values_to_quantiles_and_keeps_ties() -> None:
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.5, 0.5]])
    eq = equalize(x)
    assert eq.shape == x.shape
    assert torch.all(eq[0] == eq[0, 0])  # a flat border stays flat
    assert eq[0, 0] == pytest.approx(0.5) and eq[1, 1] == pytest.approx(1.0)
    order = torch.argsort(x.flatten())
    assert torch.all(torch.diff(eq.flatten()[order]) >= 0)  # monotone


@pytest.mark.parametrize("knob", ["p_equalize", "p_opacity"])
def test_probability_zero_leaves_the_draws_unchanged(knob: str) -> None:
    """Older recipes keep their batches: a switched-off augmentation draws nothing."""
    x = torch.rand((2, 1, 32, 32), generator=torch.Generator().manual_seed(3))
    valid = torch.ones_like(x, dtype=torch.bool)
    masks = torch.zeros((2, len(STRUCTURES), 32, 32))
    cfg = dataclasses.replace(NONE, p_curve=1.0, p_noise=1.0)

    def run(c: AugmentConfig) -> torch.Tensor:
        out, _ = augment(x, valid, masks, cfg=c, generator=torch.Generator().manual_seed(4))
        return out

    assert torch.equal(run(cfg), run(dataclasses.replace(cfg, **{knob: 0.0})))
    assert not torch.allclose(run(cfg), run(dataclasses.replace(cfg, **{knob: 1.0})))


def _bbox(m: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def test_cut_ends_image_and_masks_at_one_line_inside_the_image() -> None:
    """p_cut: a deep one-sided crop moves exactly one side of the image, and every mask
    ends where the image ends (a lung cut by the border reaches the border)."""
    n = 16
    x = torch.zeros((n, 1, 128, 128))
    valid = torch.zeros_like(x, dtype=torch.bool)
    valid[:, :, 10:110, 20:100] = True  # 100 rows x 80 columns
    x[valid] = 0.5
    masks = torch.zeros((n, len(STRUCTURES), 128, 128))
    masks[:, 0, 10:110, 20:100] = 1.0  # a mask filling the image: it is cut with it
    cfg = dataclasses.replace(NONE, p_cut=1.0, cut_depth=(0.25, 0.25), p_curve=1e-9)
    out, m = augment(x, valid, masks, cfg=cfg, generator=torch.Generator().manual_seed(5))
    sides = set()
    for i in range(n):
        r0, r1, c0, c1 = _bbox(m[i, 0] > 0)
        moved = [(r0 - 10, 0), (110 - r1, 1), (c0 - 20, 2), (100 - c1, 3)]
        cut = [(d, side) for d, side in moved if d != 0]
        assert len(cut) == 1, moved
        depth, side = cut[0]
        assert depth == (25 if side < 2 else 20)
        sides.add(side)
        outside = torch.ones((128, 128), dtype=torch.bool)
        outside[r0:r1, c0:c1] = False
        assert torch.all(out[i, 0][outside] == 0)  # the cut-away image is padding now
    assert sides == {0, 1, 2, 3}
    same = dataclasses.replace(cfg, p_cut=0.0)
    _, kept = augment(x, valid, masks, cfg=same, generator=torch.Generator().manual_seed(5))
    assert torch.equal(kept, masks)


def _add_visible_lungs(samples: list[datamod.Sample]) -> None:
    for s in samples:  # visible lungs: the upper half of each lung
        assert s.masks is not None
        with np.load(s.masks) as z:
            arrays = {k: z[k] for k in z.files}
        upper = (
            np.arange(arrays["lung_right"].shape[0])[:, None] < arrays["lung_right"].shape[0] // 2
        )
        for side in ("right", "left"):
            arrays[f"lung_{side}_visible"] = arrays[f"lung_{side}"] & upper
        np.savez_compressed(s.masks, **arrays)


def test_visible_lung_targets_replace_the_lung_channels(tmp_path: Path) -> None:
    from tests.unit.test_model import _tiny_dataset

    root = _tiny_dataset(tmp_path / "set", n=2)
    samples = datamod.read_synthetic(root)
    with pytest.raises(QcnodeError, match="visible-lung"):
        datamod.load_pack(samples, cache=tmp_path / "c", progress=False, lungs="visible")
    _add_visible_lungs(samples)
    full = datamod.load_pack(samples, cache=tmp_path / "c", progress=False)
    seen = datamod.load_pack(samples, cache=tmp_path / "c", progress=False, lungs="visible")
    lung = STRUCTURES.index("lung_right")
    body = STRUCTURES.index("body")
    a, b = full.masks([0, 1]), seen.masks([0, 1])
    assert 0 < b[:, lung].sum() < a[:, lung].sum()
    assert not (b[:, lung] > a[:, lung]).any()
    assert torch.equal(a[:, body], b[:, body])
    with pytest.raises(QcnodeError, match="unknown lung target"):
        datamod.load_pack(samples, cache=tmp_path / "c", progress=False, lungs="bottom")


def test_both_lung_definitions_train_beside_the_real_negatives(tmp_path: Path) -> None:
    """Negatives carry as many (empty) channels as the chest samples: a `lungs="both"`
    recipe with negatives in its batches once failed at the first step (16 vs 18)."""
    from qcnode.model.train import train
    from tests.unit.test_model import _tiny_dataset

    root = _tiny_dataset(tmp_path / "set", n=2)
    _add_visible_lungs(datamod.read_synthetic(root))
    recipe = dataclasses.replace(
        RECIPES["tiny"], steps=2, batch=4, p_negative=0.5, lungs="both", val_count=0
    )
    result = train(
        variant="qcnet_d10_w1",
        data_dirs=[root],
        out=tmp_path / "out",
        recipe=recipe,
        cache_base=tmp_path / "c",
        progress=False,
    )
    assert len(result.meta.structures) == len(STRUCTURES) + 2
    assert np.isfinite(result.final_loss)


def test_opacity_whitens_inside_the_body_and_leaves_the_air() -> None:
    from qcnode.model.augment import _opacity

    x = torch.zeros((1, 1, 64, 64))
    x[..., 16:, 8:56] = 0.4  # body below an air band, air at the sides
    cfg = dataclasses.replace(NONE, p_opacity=1.0)
    for seed in range(5):
        out = _opacity(x, cfg, torch.Generator().manual_seed(seed))
        assert torch.equal(out[..., :10, :], x[..., :10, :])  # the air above
        assert torch.equal(out[..., :, :3], x[..., :, :3])  # and beside
        body = out[..., 20:, 12:52]
        assert (body >= 0.4).all() and body.max() > 0.45 and body.max() <= 1.0


class _Run(Protocol):
    def __call__(self, out: str, recipe: Recipe, init: Path | None = None) -> TrainResult: ...


def _two_stages(tmp_path: Path) -> tuple[Recipe, _Run]:
    """A tiny first-stage recipe and a runner for (out, recipe, --init) on one tiny set."""
    from tests.unit.test_model import _tiny_dataset

    root = _tiny_dataset(tmp_path / "set", n=2)
    first = dataclasses.replace(RECIPES["tiny"], steps=2, batch=2, val_count=0)

    def run(out: str, recipe: Recipe, init: Path | None = None) -> TrainResult:
        return train(
            variant="qcnet_d10_w1",
            data_dirs=[root],
            out=tmp_path / out,
            recipe=recipe,
            cache_base=tmp_path / "c",
            progress=False,
            init=init,
        )

    return first, run


def test_view_head_recipe_changes_only_the_view_head(tmp_path: Path) -> None:
    """`train_only="view"` (recipe cpu-view): every other tensor, batch-norm statistics
    included, stays bit-identical to the --init weights, so the masks do not change."""
    from qcnode.model.infer import read_weights

    first, run = _two_stages(tmp_path)
    head = dataclasses.replace(first, name="tiny-view", train_only="view", lr=0.1)

    base = run("a", first)
    with pytest.raises(QcnodeError, match="needs --init"):
        run("b", head)
    result = run("b", head, base.weights)
    _, before = read_weights(base.weights)
    _, after = read_weights(result.weights)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("view.") for k in changed), changed


def test_decoder_recipe_keeps_the_encoder_and_view_head(tmp_path: Path) -> None:
    """`train_only="decoder"` (recipe cpu-ft-decoder): the encoder (batch-norm statistics
    included) and the view head stay bit-identical, so views do not change; masks do."""
    from qcnode.model.infer import read_weights

    first, run = _two_stages(tmp_path)
    step2 = dataclasses.replace(first, name="tiny-decoder", train_only="decoder", lr=0.05)
    base = run("a", first)
    result = run("b", step2, base.weights)
    _, before = read_weights(base.weights)
    _, after = read_weights(result.weights)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("up.", "masks.")) for k in changed), changed
    assert any(k.startswith("masks.") for k in changed)


def test_view_logits_alone_equal_the_full_forward() -> None:
    """`QCNet.view_logits` (encoder + head, what cpu-view trains) is the forward's head."""
    from qcnode.model.network import build

    model = build("qcnet_d10_w1").eval()
    x = torch.rand((2, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, views = model(x)
        assert torch.equal(model.view_logits(x), views)


def test_refine_recipe_trains_only_the_refiner(tmp_path: Path) -> None:
    """`train_only="refine"` (recipe cpu-refine): the --init tensors stay bit-identical, the
    refiner is added and trained, and only its channels change at inference."""
    from qcnode.model.infer import _built, read_weights

    first, run = _two_stages(tmp_path)
    refined = ("clavicle_right", "scapula_left")
    step2 = dataclasses.replace(
        first, name="tiny-refine", train_only="refine", refine=refined, lr=0.05, steps=3
    )

    base = run("a", first)
    with pytest.raises(QcnodeError, match="needs --init"):
        run("b", step2)
    result = run("b", step2, base.weights)
    meta0, before = read_weights(base.weights)
    meta1, after = read_weights(result.weights)
    assert meta0.refine == () and meta1.refine == refined
    assert set(after) - set(before) and all(
        k.startswith("refiner.") for k in set(after) - set(before)
    )
    assert all(torch.equal(before[k], after[k]) for k in before)
    net0 = _built(meta0, before, base.weights).eval()
    net1 = _built(meta1, after, result.weights).eval()
    x = torch.rand((1, 1, 64, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (m0, v0), (m1, v1) = net0(x), net1(x)
    assert torch.equal(v0, v1)
    moved = {n for i, n in enumerate(meta1.structures) if not torch.equal(m0[:, i], m1[:, i])}
    assert moved == set(refined)


def test_a_fresh_refiner_changes_nothing_and_names_real_channels() -> None:
    from qcnode.model.network import build

    base = build("qcnet_d10_w1").eval()
    refined = build("qcnet_d10_w1", refine=("scapula_right",)).eval()
    refined.load_state_dict(base.state_dict(), strict=False)
    x = torch.rand((2, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(base(x)[0], refined(x)[0])
    with pytest.raises(ValueError, match="does not output"):
        build("qcnet_d10_w1", refine=("lung_right_visible",))


def test_ship_refuses_an_architecture_name(tmp_path: Path) -> None:
    """`--model qcnet_d10_w3` once meant the session-4 run because `--ship` registered weights
    under the bare variant name; a registry name must say which weights it is."""
    from qcnode.model.infer import WeightsMeta
    from qcnode.model.train import TrainResult, ship

    result = TrainResult(
        weights=tmp_path / "w.pt",
        meta=WeightsMeta(
            variant="qcnet_d10_w1", input_size=256, spacing_mm=1.75, reference_lung_width_mm={}
        ),
        data_version="d",
        seconds=1.0,
        final_loss=0.5,
        val={},
        code_version="c",
    )
    with pytest.raises(QcnodeError, match="architecture name"):
        ship(
            result,
            name="qcnet_d10_w1",
            recipe=RECIPES["tiny"],
            seed=0,
            metrics_doc={},
            make_default=False,
            weights_dir=tmp_path,
        )
    assert not list(tmp_path.iterdir())


def test_data_version_counts_each_folder_on_its_own(tmp_path: Path) -> None:
    """The registry's data version once gave every folder all samples of all folders."""
    from qcnode.model.train import train
    from tests.unit.test_model import _tiny_dataset

    a = _tiny_dataset(tmp_path / "a", n=2)
    b = _tiny_dataset(tmp_path / "b", n=3)
    recipe = dataclasses.replace(RECIPES["tiny"], steps=1, batch=2, val_count=0)
    result = train(
        variant="qcnet_d10_w1",
        data_dirs=[a, b],
        out=tmp_path / "out",
        recipe=recipe,
        cache_base=tmp_path / "c",
        progress=False,
    )
    first, second = result.data_version.split(" + ")
    assert first.startswith(f"{a.name}: 2 samples") and second.startswith(f"{b.name}: 3 samples")


def test_augment_pair_differs_only_by_the_opacity() -> None:
    """`augment_pair` (recipe distill): the first image is `augment`'s own, the second the
    same film with every other transform but without the dense opacities."""
    from qcnode.model.augment import augment_pair

    g = torch.Generator().manual_seed(3)
    canvas = torch.rand((4, 1, 64, 64), generator=g) * 0.6
    canvas[..., :8, :] = 0.0  # air above the body
    valid = torch.ones((4, 1, 64, 64))
    masks = (torch.rand((4, 3, 64, 64), generator=g) > 0.5).float()
    cfg = dataclasses.replace(AugmentConfig(), p_opacity=0.5)
    one, m1 = augment(canvas, valid, masks, cfg=cfg, generator=torch.Generator().manual_seed(9))
    dense, plain, m2 = augment_pair(
        canvas, valid, masks, cfg=cfg, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(one, dense) and torch.equal(m1, m2)
    differs = [not torch.allclose(dense[i], plain[i]) for i in range(4)]
    assert any(differs) and not all(differs)  # p 0.5: some films got an opacity, some not
    nothing = dataclasses.replace(cfg, p_opacity=1.0, opacity=(0.0, 0.0))
    a, b, _ = augment_pair(canvas, valid, masks, cfg=nothing, generator=torch.Generator())
    assert torch.allclose(a, b, atol=1e-6)  # a zero-strength opacity: the same film
    with pytest.raises(ValueError, match="p_opacity"):
        augment_pair(canvas, valid, masks, cfg=NONE, generator=torch.Generator())


def test_distill_loss_is_zero_when_the_student_agrees() -> None:
    from qcnode.model.train import distill_loss

    g = torch.Generator().manual_seed(0)
    t = torch.randn((2, 3, 8, 8), generator=g)
    tv = torch.randn((2, 3), generator=g)
    w = torch.ones((2, 3))
    assert float(distill_loss(t, tv, t, tv, w)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(-t, tv.flip(1), t, tv, w)) > 0.1


def test_distill_can_skip_channels_and_read_the_same_film() -> None:
    from qcnode.model.train import augment_batch, distill_channels, distill_loss

    r = RECIPES["cpu-distill-opacity3d"]
    names = ["lung_right", "heart", "lung_left", "lung_right_visible", "lung_left_visible"]
    names.append("clavicle_left")
    keep = distill_channels(r, names)
    assert keep.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    with pytest.raises(QcnodeError, match="distill_skip"):
        distill_channels(dataclasses.replace(r, distill_skip=("lungs",)), names)
    # A skipped channel's disagreement costs nothing; a kept one's does.
    g = torch.Generator().manual_seed(1)
    t = torch.randn((2, 6, 8, 8), generator=g)
    tv = torch.randn((2, 3), generator=g)
    w = torch.ones((2, 6))
    student = t.clone()
    student[:, 0] = -t[:, 0]
    assert float(distill_loss(student, tv, t, tv, keep * w)) == pytest.approx(0.0, abs=1e-6)
    student[:, 1] = -t[:, 1]
    assert float(distill_loss(student, tv, t, tv, keep * w)) > 0.1
    # Without 2D opacities the teacher reads the very film the student reads.
    batch = {
        "canvas": torch.rand((2, 1, 32, 32), generator=g),
        "valid": torch.ones((2, 1, 32, 32)),
        "masks": torch.zeros((2, 4, 32, 32)),
        "views": torch.zeros(2, dtype=torch.int64),
        "weight": torch.ones((2, 4)),
    }
    out = augment_batch(batch, seed=3, step=0, recipe=r)
    assert torch.equal(out["x"], out["x_plain"])


def test_distill_recipe_needs_init_and_moves_the_whole_network(tmp_path: Path) -> None:
    from qcnode.model.infer import read_weights, save_weights
    from qcnode.model.network import build

    first, run = _two_stages(tmp_path)
    kd = dataclasses.replace(
        first,
        name="tiny-distill",
        distill=1.0,
        truth_weight=0.25,
        lr=0.05,
        augment=dataclasses.replace(first.augment, p_opacity=0.5),
    )
    base = run("a", first)
    with pytest.raises(QcnodeError, match="needs --init"):
        run("b", kd)
    # a teacher whose anatomy-scale reference differs from what this data would give
    meta, state = read_weights(base.weights)
    odd = {"frontal": 123.0, "lateral": 99.0}
    teacher_file = tmp_path / "teacher.pt"
    net = build(meta.variant, meta.structures)
    net.load_state_dict(state)
    save_weights(teacher_file, net, dataclasses.replace(meta, reference_lung_width_mm=odd))
    result = run("b", kd, teacher_file)
    assert np.isfinite(result.final_loss)
    _, after = read_weights(result.weights)
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    assert any(k.startswith("view.") for k in changed)
    assert any(not k.startswith(("view.", "up.", "masks.")) for k in changed)  # the encoder
    assert dict(result.meta.reference_lung_width_mm) == odd  # the student keeps the teacher's
