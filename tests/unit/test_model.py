"""The QC network: variants, registry checks, the Predictor contract, training mechanics.

Accuracy is measured by ``qcnode eval`` / docs/MODEL.md, not here. The Predictor tests use
the TEST-ONLY weights in tests/data (a few training steps: right shapes, meaningless masks).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from qcnode.errors import ModelError
from qcnode.imaging import decode
from qcnode.model import load_predictor
from qcnode.model import preprocess as pp
from qcnode.model.network import VIEWS, build, parse_variant, variant_names
from qcnode.model.registry import ModelEntry, Registry, load_registry, sha256_file
from qcnode.records import STRUCTURES, View
from tests.conftest import radiograph, write

TEST_WEIGHTS = Path(__file__).parents[1] / "data" / "testonly_qcnet_tiny.pt"


def test_every_variant_builds_and_has_both_heads() -> None:
    names = variant_names()
    assert len({parse_variant(n).depth for n in names}) >= 3
    assert {parse_variant(n).width for n in names} == {1, 3}
    x = torch.zeros(2, 1, 64, 64)
    for name in names:
        model = build(name).eval()
        with torch.inference_mode():
            masks, views = model(x)
        assert masks.shape == (2, len(STRUCTURES), 64, 64)
        assert views.shape == (2, len(VIEWS))
    with pytest.raises(ValueError, match="unknown model variant"):
        parse_variant("qcnet_d7_w1")


def test_wider_and_deeper_variants_have_more_parameters() -> None:
    def count(name: str) -> int:
        return sum(p.numel() for p in build(name).parameters())

    assert count("qcnet_d10_w1") < count("qcnet_d15_w1") < count("qcnet_d20_w1")
    assert count("qcnet_d15_w1") < count("qcnet_d15_w3")


def test_predictions_follow_the_contract() -> None:
    predictor = load_predictor(weights_path=TEST_WEIGHTS, device="cpu")
    a = decode(radiograph(rows=300, columns=240, seed=1))
    b = dataclasses.replace(decode(radiograph(rows=200, columns=260, seed=2)), spacing_mm=None)
    out = predictor.predict([a, b])
    assert len(out) == 2
    for image, pred in zip([a, b], out, strict=True):
        assert set(pred.masks) == set(STRUCTURES)
        for mask in pred.masks.values():
            assert mask.dtype == np.bool_ and mask.shape == image.pixels.shape
        assert pred.view in VIEWS
        assert sum(pred.view_probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert pred.view == max(pred.view_probabilities, key=lambda v: pred.view_probabilities[v])
    # the header spacing is used unless the anatomy found makes it implausible (then flagged)
    assert out[0].spacing_mm == (0.2, 0.2) or out[0].spacing_estimated
    assert out[1].spacing_estimated and out[1].spacing_mm[0] > 0
    assert predictor.predict([]) == []
    assert predictor.info.sha256 == sha256_file(TEST_WEIGHTS)


def test_prediction_is_deterministic_and_batch_independent() -> None:
    predictor = load_predictor(weights_path=TEST_WEIGHTS, device="cpu")
    images = [decode(radiograph(rows=256, columns=256, seed=s)) for s in (3, 4)]
    together = predictor.predict(images)
    alone = predictor.predict(images[1:])
    again = load_predictor(weights_path=TEST_WEIGHTS, device="cpu").predict(images[1:])
    for name in STRUCTURES:
        np.testing.assert_array_equal(together[1].masks[name], alone[0].masks[name])
        np.testing.assert_array_equal(alone[0].masks[name], again[0].masks[name])
    assert together[1].view_probabilities == pytest.approx(alone[0].view_probabilities, abs=1e-5)


# --- registry -----------------------------------------------------------------------------


def _registry(tmp_path: Path, sha: str | None = None) -> Path:
    weights = tmp_path / "w.pt"
    shutil.copyfile(TEST_WEIGHTS, weights)
    entry = ModelEntry(
        name="tiny",
        file="w.pt",
        sha256=sha or sha256_file(weights),
        variant="qcnet_d10_w1",
        version="0.0.1",
        input_size=pp.INPUT_SIZE,
        spacing_mm=pp.SPACING_MM,
        structures=STRUCTURES,
        views=tuple(str(v) for v in VIEWS),
        reference_lung_width_mm={"frontal": 280.0},
    )
    Registry(default="", entries={}, weights_dir=tmp_path).with_entry(entry).save(
        tmp_path / "registry.toml"
    )
    return tmp_path / "registry.toml"


def test_registry_round_trip_and_checksum(tmp_path: Path) -> None:
    path = _registry(tmp_path)
    registry = load_registry(path)
    assert registry.default == "tiny"
    predictor = load_predictor(registry_path=path, device="cpu")
    assert predictor.info.name == "tiny" and predictor.info.version == "0.0.1"
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_predictor("nope", registry_path=path)


def test_mask_bias_moves_the_operating_point(tmp_path: Path) -> None:
    """A registry entry's mask_bias is added to that channel's logits only: a large positive
    offset grows the mask (a superset), channels without one are unchanged, and the offsets
    survive the registry round trip. Unknown channels are refused."""
    path = _registry(tmp_path)
    images = [decode(_dx(_phantom(300), "MONOCHROME2", 1.0))]
    plain = load_predictor(registry_path=path, device="cpu").predict(images)[0]
    registry = load_registry(path)
    entry = dataclasses.replace(registry.get("tiny"), mask_bias={"heart": 50.0})
    registry.with_entry(entry).save(path)
    assert load_registry(path).get("tiny").mask_bias == {"heart": 50.0}
    biased = load_predictor(registry_path=path, device="cpu").predict(images)[0]
    assert biased.masks["heart"].all() and not plain.masks["heart"].all()
    for name in STRUCTURES:
        if name != "heart":
            assert np.array_equal(biased.masks[name], plain.masks[name]), name
    registry.with_entry(dataclasses.replace(entry, mask_bias={"liver": 1.0})).save(path)
    with pytest.raises(ModelError, match="liver"):
        load_registry(path)


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    path = _registry(tmp_path, sha="0" * 64)
    with pytest.raises(ModelError, match="does not match the registry"):
        load_predictor(registry_path=path)


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    path = _registry(tmp_path)
    (tmp_path / "w.pt").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_predictor(registry_path=path)
    with pytest.raises(ModelError, match="does not exist"):
        load_predictor(weights_path=tmp_path / "absent.pt")


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(ModelError, match="not a qcnode weights file"):
        load_predictor(weights_path=bogus)


def test_shipped_registry_is_consistent() -> None:
    """Every shipped entry's file exists and matches its checksum (what the node checks)."""
    registry = load_registry()
    for entry in registry.entries.values():
        assert registry.verified_path(entry).is_file()
        assert entry.metrics, f"{entry.name} has no recorded metrics"
    for ensemble in registry.ensembles.values():
        assert registry.members(ensemble)  # names registered, compatible entries
    if registry.entries:
        assert registry.default in registry.names()  # a weights entry or an ensemble


# --- preprocessing invariance ---------------------------------------------------------------


def _dx(pixels: np.ndarray, photometric: str, spacing: float) -> Dataset:
    ds = radiograph(rows=pixels.shape[0], columns=pixels.shape[1])
    ds.PhotometricInterpretation = photometric
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def _phantom(n: int) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] / n
    lungs = ((x - 0.3) ** 2 / 0.03 + (y - 0.5) ** 2 / 0.1 < 1) | (
        (x - 0.7) ** 2 / 0.03 + (y - 0.5) ** 2 / 0.1 < 1
    )
    return np.where(lungs, 800, 3000) + (200 * np.sin(12 * x)).astype(int)


def test_monochrome1_and_monochrome2_give_the_same_input() -> None:
    img = _phantom(400)
    a, fa = pp.prepare(decode(_dx(img, "MONOCHROME2", 0.5)).pixels, (0.5, 0.5))
    b, fb = pp.prepare(decode(_dx(4095 - img, "MONOCHROME1", 0.5)).pixels, (0.5, 0.5))
    assert fa == fb
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_half_resolution_with_correct_spacing_gives_the_same_input() -> None:
    img = _phantom(800).astype(np.float32) / 4095
    full, f1 = pp.prepare(img, (0.25, 0.25))
    half_pixels = img.reshape(400, 2, 400, 2).mean(axis=(1, 3))
    half, f2 = pp.prepare(half_pixels, (0.5, 0.5))
    assert f1.height == f2.height and f1.width == f2.width
    assert f1.input_spacing_mm == pytest.approx(pp.SPACING_MM)
    assert float((full - half).abs().mean()) < 0.01


def test_a_field_larger_than_the_canvas_is_shrunk_to_fit() -> None:
    frame = pp.plan_frame(3000, 2000, (0.2, 0.2))
    assert frame.height == pp.INPUT_SIZE and frame.input_spacing_mm == pytest.approx(600 / 256)
    assert pp.plan_frame(1000, 1000, (0.2, 0.2)).height == round(200 / pp.SPACING_MM)


def test_compressed_and_uncompressed_give_the_same_input() -> None:
    data_store = pytest.importorskip("data_store")
    root = Path(data_store.__file__).parent / "data"
    a = decode(root / "RG1_UNCR.dcm")
    b = decode(root / "RG1_J2KR.dcm")
    xa, _ = pp.prepare(a.pixels, (0.2, 0.2))
    xb, _ = pp.prepare(b.pixels, (0.2, 0.2))
    torch.testing.assert_close(xa, xb)


def test_masks_return_to_source_pixels() -> None:
    frame = pp.plan_frame(300, 500, (1.0, 1.0))
    logits = torch.full((len(STRUCTURES), pp.INPUT_SIZE, pp.INPUT_SIZE), -5.0)
    top, left = frame.top, frame.left
    logits[0, top : top + frame.height // 2, left : left + frame.width] = 5.0
    masks = pp.logits_to_source(logits, frame)
    assert masks.shape == (len(STRUCTURES), 300, 500)
    assert abs(masks[0].mean() - 0.5) < 0.02 and masks[0, :140].all() and not masks[0, 160:].any()
    assert not masks[1:].any()


def test_anatomy_spacing_scales_the_guess() -> None:
    frame = pp.plan_frame(1000, 1000, pp.guessed_spacing(1000, 1000))
    new = pp.spacing_from_lung_width(
        100, frame, reference_width_mm=2 * 100 * frame.input_spacing_mm
    )
    assert new == pytest.approx((2 * 0.43, 2 * 0.43))
    assert pp.spacing_from_lung_width(3, frame, 280.0) is None


def test_lungs_cut_by_a_side_of_the_field_do_not_override_the_header() -> None:
    from qcnode.model.infer import lungs_cut_sideways

    frame = pp.plan_frame(1000, 1000, (0.4, 0.4))
    size = 256
    logits = torch.full((len(STRUCTURES), size, size), -5.0)
    c0 = frame.left + 10
    field = STRUCTURES.index("field")
    logits[field, :, c0 : c0 + 200] = 5.0
    lung = STRUCTURES.index("lung_right")
    logits[lung, 60:160, c0 + 12 : c0 + 120] = 5.0  # 12 px inside the field: whole
    assert not lungs_cut_sideways(logits, frame)
    logits[lung, 60:160, c0 + 4 : c0 + 12] = 5.0  # 4 px from the field's side: cut
    assert lungs_cut_sideways(logits, frame)
    logits[field] = 5.0  # no shutter: the image's own side counts
    logits[lung] = -5.0
    logits[lung, 60:160, frame.left + frame.width - 40 : frame.left + frame.width - 3] = 5.0
    assert lungs_cut_sideways(logits, frame)
    logits[lung] = -5.0
    assert not lungs_cut_sideways(logits, frame)


# --- training -----------------------------------------------------------------------------


def _tiny_dataset(root: Path, n: int = 4) -> Path:
    """n phantom 'frontal' images with their masks, in the synthetic data set layout."""
    root.mkdir(parents=True)
    lines = []
    for i in range(n):
        rng = np.random.default_rng(i)
        size = 300 + 20 * i
        img = _phantom(size) + rng.normal(0, 40, (size, size))
        ds = _dx(np.clip(img, 0, 4095), "MONOCHROME2", 1.2)
        write(ds, root / f"s{i}.dcm")
        lungs = decode(root / f"s{i}.dcm").pixels < 0.45
        masks = {name: np.zeros((size, size), bool) for name in STRUCTURES}
        masks["lung_right"] = lungs & (np.arange(size) < size // 2)[None, :]
        masks["lung_left"] = lungs & (np.arange(size) >= size // 2)[None, :]
        masks["body"] = masks["field"] = np.ones((size, size), bool)
        np.savez_compressed(root / f"s{i}_masks.npz", **masks)
        doc = {"id": f"s{i}", "view": "frontal", "dcm": f"s{i}.dcm", "masks": f"s{i}_masks.npz"}
        lines.append(json.dumps(doc))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_training_run_lowers_the_loss_and_resumes_exactly(tmp_path: Path) -> None:
    from qcnode.model.recipes import RECIPES
    from qcnode.model.train import train

    data = _tiny_dataset(tmp_path / "set")
    recipe = dataclasses.replace(RECIPES["tiny"], steps=10, batch=2, checkpoint_every=5)
    kw = {"variant": "qcnet_d10_w1", "data_dirs": [data], "seed": 3, "progress": False}
    full = train(out=tmp_path / "a", recipe=recipe, cache_base=tmp_path / "c", **kw)
    lines = (tmp_path / "a/history.jsonl").read_text().splitlines()
    history = [json.loads(line)["loss"] for line in lines]
    assert len(history) == 10
    assert np.mean(history[-3:]) < 0.85 * np.mean(history[:3])

    train(out=tmp_path / "b", recipe=recipe, cache_base=tmp_path / "c", stop_after=5, **kw)
    assert torch.load(tmp_path / "b/last.pt", weights_only=False)["step"] == 5
    resumed = train(out=tmp_path / "b", recipe=recipe, cache_base=tmp_path / "c", resume=True, **kw)
    a = torch.load(full.weights, weights_only=True)["state_dict"]
    b = torch.load(resumed.weights, weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"{k} differs after resume")
    assert full.meta.reference_lung_width_mm["frontal"] > 100


def test_trained_default_masks_survive_half_resolution() -> None:
    """With the shipped default: half the pixels at the right spacing -> nearly the same
    lungs (Dice > 0.9) on RG1. (An xfail until session 9: the s4 default's right lung on RG1
    read Dice 0.82 between full and half resolution.)"""
    registry = load_registry()
    if not registry.entries:
        pytest.skip("no shipped weights yet")
    data_store = pytest.importorskip("data_store")
    predictor = load_predictor(device="cpu")
    ds = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm")
    ds.ImagerPixelSpacing = [0.2, 0.2]
    full = decode(ds)
    small = dataclasses.replace(
        full,
        pixels=np.ascontiguousarray(full.pixels[:1954:2, :1840:2]),
        spacing_mm=(0.4, 0.4),
    )
    a, b = predictor.predict([full, small])
    assert a.view == View.FRONTAL and b.view == View.FRONTAL
    for name in ("lung_right", "lung_left"):
        big = a.masks[name][:1954:2, :1840:2]
        inter = np.logical_and(big, b.masks[name]).sum()
        assert 2 * inter / (big.sum() + b.masks[name].sum()) > 0.9, name


def test_fill_holes_equals_scipy_on_random_masks() -> None:
    from scipy import ndimage

    from qcnode.model.infer import fill_holes

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(n) for n in rng.integers(1, 120, size=2))
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.97)
        mask = ndimage.binary_opening(mask, iterations=int(rng.integers(0, 3)))
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    ring = np.zeros((20, 20), dtype=bool)
    ring[5:15, 5:15] = True
    ring[8:12, 8:12] = False
    assert fill_holes(ring)[9, 9] and not fill_holes(np.zeros((4, 4), dtype=bool)).any()


def test_percentiles_equal_torch_quantile() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (16, 17, 100, 4097, 65536):
        values = torch.randn(n, generator=gen)
        for q in ((0.01, 0.99), (0.0, 1.0), (0.5,)):
            expected = torch.quantile(values, torch.tensor(q)).tolist()
            assert pp.percentiles(values, q) == pytest.approx(expected, abs=1e-5)  # float32 vs 64


def test_percentiles_are_exact_order_statistics_with_ties() -> None:
    gen = torch.Generator().manual_seed(1)
    for n in (1, 2, 16, 999, 60000):
        for levels in (1, 3, 1000):  # many ties, some, hardly any
            values = torch.randint(0, levels, (n,), generator=gen).float() / 7
            ordered = torch.sort(values).values
            for q in (0.0, 0.01, 0.3, 0.5, 0.99, 1.0):
                pos = q * (n - 1)
                k = int(pos)
                a = float(ordered[k])
                b = float(ordered[k + 1]) if k + 1 < n and pos > k else a
                assert pp.percentiles(values, (q,)) == [a + (b - a) * (pos - k)], (n, levels, q)


def _smooth_logits(rng: np.random.Generator, channels: int) -> torch.Tensor:
    """Random canvas logits with blobs, specks, holes and empty channels."""
    from scipy import ndimage

    noise = rng.standard_normal((channels, pp.INPUT_SIZE, pp.INPUT_SIZE)).astype(np.float32)
    logits = ndimage.uniform_filter(noise, size=(1, 7, 7)) * 12 - float(rng.uniform(-1, 2))
    logits[:, :: int(rng.integers(5, 40))] = -1.0  # stripes cut blobs and make holes
    logits[int(rng.integers(channels))] = -2.0
    return torch.from_numpy(logits)


def test_clean_logits_equal_the_whole_canvas_definition() -> None:
    """The bounding-box version keeps the largest component, fills its holes and moves the
    logits exactly as labelling the whole canvas does."""
    from scipy import ndimage

    from qcnode.model.infer import clean_logits, single_objects

    rng = np.random.default_rng(3)
    single = single_objects(STRUCTURES)
    for _ in range(30):
        logits = _smooth_logits(rng, len(STRUCTURES))
        before = logits.clone()
        want = logits.numpy().copy()
        for c in single:
            pos = want[c] > 0
            labels, n = ndimage.label(pos)
            if n == 0:
                continue
            keep = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
            filled = ndimage.binary_fill_holes(keep)
            drop = pos & ~keep
            want[c][drop] = -np.maximum(np.abs(want[c][drop]), 0.5)
            want[c][filled & ~pos] = 0.5
        got = clean_logits(logits, single)
        assert torch.equal(logits, before)  # the input is left alone
        np.testing.assert_array_equal(got.numpy(), want)


def test_logits_to_source_equals_dense_bilinear() -> None:
    """Bounding boxes and row strips change nothing: the masks equal the dense rows-then-
    columns float32 bilinear of the whole canvas, small and large sources alike."""
    rng = np.random.default_rng(4)
    for rows, cols, spacing in ((307, 307, 1.4), (1500, 1300, 0.3), (90, 400, 1.0)):
        frame = pp.plan_frame(rows, cols, (spacing, spacing))
        logits = _smooth_logits(rng, 5)
        crop = logits[(slice(None), *frame.valid)].numpy()
        y0, y1, wy = pp._axis(crop.shape[1], rows)
        x0, x1, wx = pp._axis(crop.shape[2], cols)
        a = crop[:, y0] * (1 - wy)[:, None] + crop[:, y1] * wy[:, None]
        want = a[:, :, x0] * (1 - wx) + a[:, :, x1] * wx > 0
        got = pp.logits_to_source(logits, frame)
        assert want.any() and not want.all()
        np.testing.assert_array_equal(got, want)
