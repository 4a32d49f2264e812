"""The GPU recipe's parts, run on the CPU: packed sets, visible-lung channels, grid training.

Fast: a few steps of the smallest variant on a handful of phantom images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qcnode.errors import ModelError, QcnodeError
from qcnode.model import data as datamod
from qcnode.model.grid import export_packs, train_grid, widen
from qcnode.model.infer import WeightsMeta, load_predictor, read_weights, save_weights
from qcnode.model.network import build
from qcnode.model.recipes import RECIPES
from qcnode.records import STRUCTURES, VISIBLE_LUNGS

BOTH = STRUCTURES + VISIBLE_LUNGS


def _with_visible_lungs(root: Path) -> Path:
    """Add visible lungs (the upper half of each lung) to a tiny set's masks."""
    for s in datamod.read_synthetic(root):
        assert s.masks is not None
        with np.load(s.masks) as z:
            arrays = {k: z[k] for k in z.files}
        rows = arrays["lung_right"].shape[0]
        upper = np.arange(rows)[:, None] < rows // 2
        for side in ("right", "left"):
            arrays[f"lung_{side}_visible"] = arrays[f"lung_{side}"] & upper
        np.savez_compressed(s.masks, **arrays)
    return root


def _tiny_set(tmp_path: Path, n: int = 4) -> Path:
    from tests.unit.test_model import _tiny_dataset

    return _with_visible_lungs(_tiny_dataset(tmp_path / "set", n=n))


def test_both_lung_targets_add_the_visible_lungs_after_the_structures(tmp_path: Path) -> None:
    samples = datamod.read_synthetic(_tiny_set(tmp_path, n=2))
    cache = tmp_path / "c"
    full = datamod.load_pack(samples, cache=cache, progress=False)
    both = datamod.load_pack(samples, cache=cache, progress=False, lungs="both")
    assert datamod.channels("both") == BOTH
    assert both.bits.shape[1] == len(BOTH) and full.bits.shape[1] == len(STRUCTURES)
    a, b = full.masks([0, 1]), both.masks([0, 1])
    assert torch.equal(a, b[:, : len(STRUCTURES)])
    lung, seen = STRUCTURES.index("lung_right"), BOTH.index("lung_right_visible")
    assert 0 < b[:, seen].sum() < b[:, lung].sum()
    # the combined-from-cache item equals a freshly encoded one
    fresh = datamod.load_pack(samples, cache=tmp_path / "c2", progress=False, lungs="both")
    assert np.array_equal(fresh.bits, both.bits)


def test_pack_file_round_trip_is_within_one_level(tmp_path: Path) -> None:
    samples = datamod.read_synthetic(_tiny_set(tmp_path, n=3))
    pack = datamod.load_pack(samples, cache=tmp_path / "c", progress=False, lungs="both")
    datamod.save_pack_file(pack, tmp_path / "p.npz", structures=BOTH)
    back, names = datamod.load_pack_file(tmp_path / "p.npz")
    assert names == BOTH and back.ids == pack.ids
    err = (back.canvas.float() - pack.canvas.float().clamp(0, 1)).abs().max()
    assert float(err) <= 0.5 / datamod.PACK_LEVELS + 1e-3  # rounding + float16 storage
    assert np.array_equal(back.bits, pack.bits)
    assert torch.equal(back.rect, pack.rect) and torch.equal(back.views, pack.views)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(QcnodeError, match="not a qcnode training pack"):
        datamod.load_pack_file(tmp_path / "other.npz")


def test_uncompressed_pack_and_parallel_cache_match_the_serial_lzma_pack(tmp_path: Path) -> None:
    samples = datamod.read_synthetic(_tiny_set(tmp_path, n=3))
    serial = datamod.load_pack(samples, cache=tmp_path / "c1", progress=False, lungs="both")
    parallel = datamod.load_pack(
        samples, cache=tmp_path / "c2", progress=False, lungs="both", workers=2
    )
    assert parallel.ids == serial.ids and np.array_equal(parallel.bits, serial.bits)
    assert torch.equal(parallel.canvas, serial.canvas)
    for codec in ("lzma", "none"):
        datamod.save_pack_file(serial, tmp_path / f"{codec}.npz", structures=BOTH, codec=codec)
    a, _ = datamod.load_pack_file(tmp_path / "lzma.npz")
    b, _ = datamod.load_pack_file(tmp_path / "none.npz")
    assert torch.equal(a.canvas, b.canvas) and np.array_equal(a.bits, b.bits)
    assert (tmp_path / "none.npz").stat().st_size > (tmp_path / "lzma.npz").stat().st_size
    with pytest.raises(QcnodeError, match="unknown pack codec"):
        datamod.save_pack_file(serial, tmp_path / "x.npz", structures=BOTH, codec="zip")


def test_widen_starts_visible_lungs_as_copies_of_the_projected_lungs() -> None:
    torch.manual_seed(0)
    old = build("qcnet_d10_w1").eval()
    new = build("qcnet_d10_w1", BOTH).eval()
    widen(new, old.state_dict(), STRUCTURES)
    x = torch.randn(1, 1, 256, 256)
    with torch.inference_mode():
        a, _ = old(x)
        b, _ = new(x)
    torch.testing.assert_close(b[:, : len(STRUCTURES)], a)
    torch.testing.assert_close(b[:, len(STRUCTURES)], a[:, 0])  # right lung
    torch.testing.assert_close(b[:, len(STRUCTURES) + 1], a[:, 1])


def test_grid_trains_two_variants_on_one_stream_and_weights_serve(tmp_path: Path) -> None:
    data = _tiny_set(tmp_path, n=4)
    recipe = dataclasses.replace(
        RECIPES["tiny"], lungs="both", steps=8, val_count=0, p_negative=0.0
    )
    export = dataclasses.replace(recipe, val_count=2)
    sizes = export_packs(
        [data],
        tmp_path / "packs",
        recipe=export,
        include_negatives=False,
        cache_base=tmp_path / "c",
    )
    assert sizes["train.npz"] >= 2
    init = tmp_path / "init.pt"
    meta = WeightsMeta(
        variant="qcnet_d10_w1", input_size=256, spacing_mm=1.75, reference_lung_width_mm={}
    )
    save_weights(init, build("qcnet_d10_w1"), meta)  # 16 channels: widened on load
    results = train_grid(
        variants=["qcnet_d10_w1", "qcnet_d10_w1:ft"],
        packs=tmp_path / "packs",
        out=tmp_path / "out",
        recipe=recipe,
        seed=1,
        device="cpu",
        init={"qcnet_d10_w1:ft": init},
        progress=False,
    )
    assert [r.label for r in results] == ["qcnet_d10_w1", "qcnet_d10_w1:ft"]
    assert results[1].init == "init.pt" and results[0].init == ""
    history = [json.loads(x) for x in (tmp_path / "out/history.jsonl").read_text().splitlines()]
    assert len(history) == 8
    for label in ("qcnet_d10_w1", "qcnet_d10_w1:ft"):
        losses = [h[label] for h in history]
        assert np.mean(losses[-3:]) < np.mean(losses[:3])
    weights = tmp_path / "out/qcnet_d10_w1-ft.pt"
    meta2, _ = read_weights(weights)
    assert meta2.structures == BOTH and meta2.variant == "qcnet_d10_w1"
    from qcnode.imaging import decode
    from tests.conftest import radiograph

    image = decode(radiograph(rows=300, columns=240, seed=1))
    pred = load_predictor(weights_path=weights, device="cpu").predict([image])[0]
    assert set(pred.masks) == set(STRUCTURES)
    assert set(pred.extra_masks) == set(VISIBLE_LUNGS)
    assert all(m.shape == image.pixels.shape for m in pred.extra_masks.values())


def test_weights_with_unknown_channels_are_refused(tmp_path: Path) -> None:
    model = build("qcnet_d10_w1", (*STRUCTURES, "kidney"))
    meta = WeightsMeta(
        variant="qcnet_d10_w1", input_size=256, spacing_mm=1.75, reference_lung_width_mm={}
    )
    save_weights(tmp_path / "w.pt", model, meta)
    with pytest.raises(ModelError, match="other structures"):
        read_weights(tmp_path / "w.pt")


def test_augmenting_on_the_training_device_gives_the_same_run(tmp_path: Path) -> None:
    """Workers that only gather + augmentation in the trainer = workers that augment (on a
    CPU exactly; on a GPU up to float rounding, same draws)."""
    data = _tiny_set(tmp_path, n=4)
    recipe = dataclasses.replace(RECIPES["tiny"], lungs="both", steps=4, val_count=0)
    export = dataclasses.replace(recipe, val_count=2)
    export_packs(
        [data], tmp_path / "packs", recipe=export, include_negatives=False, cache_base=tmp_path
    )
    weights = {}
    for where in ("workers", "device"):
        train_grid(
            variants=["qcnet_d10_w1"],
            packs=tmp_path / "packs",
            out=tmp_path / where,
            recipe=recipe,
            seed=2,
            device="cpu",
            progress=False,
            augment_on=where,
        )
        weights[where] = read_weights(tmp_path / where / "qcnet_d10_w1.pt")[1]
    for key, value in weights["workers"].items():
        torch.testing.assert_close(weights["device"][key], value, msg=key)
    with pytest.raises(QcnodeError, match="augment_on"):
        train_grid(
            variants=["qcnet_d10_w1"],
            packs=tmp_path / "packs",
            out=tmp_path / "x",
            recipe=recipe,
            device="cpu",
            augment_on="gpu",
        )
