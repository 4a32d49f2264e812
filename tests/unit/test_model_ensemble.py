"""Registered ensembles (``[ensembles.NAME]``): the mean of member networks' logits.

Uses the shipped weights (qcnet_d10_w3_s4, qcnet_d15_w3_s4) copied into a temporary registry,
so the members are real networks whose outputs differ; no timing here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from qcnode.errors import ModelError
from qcnode.imaging import decode
from qcnode.model import load_predictor
from qcnode.model.infer import WeightsMeta, ensemble_meta
from qcnode.model.network import LogitMean, build
from qcnode.model.registry import (
    EnsembleEntry,
    ModelEntry,
    Registry,
    load_registry,
)
from qcnode.records import STRUCTURES, VISIBLE_LUNGS
from tests.conftest import radiograph

A, B = "qcnet_d10_w3_s4", "qcnet_d15_w3_s4"


@pytest.fixture(scope="module")
def shipped() -> Registry:
    registry = load_registry()
    if not {A, B} <= set(registry.entries):
        pytest.skip(f"the shipped registry no longer has {A} and {B}")
    return registry


def _registry(
    tmp_path: Path,
    shipped: Registry,
    ensembles: dict[str, tuple[str, ...]],
    *,
    default: str = A,
    change: dict[str, ModelEntry] | None = None,
) -> Path:
    """A registry in tmp_path with copies of the two shipped members and the ensembles."""
    entries = {}
    for name in (A, B):
        entry = shipped.entries[name]
        shutil.copyfile(shipped.verified_path(entry), tmp_path / entry.file)
        entries[name] = (change or {}).get(name, entry)
    registry = Registry(default=default, entries=entries, weights_dir=tmp_path)
    for name, members in ensembles.items():
        registry = registry.with_ensemble(EnsembleEntry(name=name, members=members))
    registry.save(tmp_path / "registry.toml")
    return tmp_path / "registry.toml"


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(2, 1, 256, 256, generator=g)


def test_an_ensemble_of_one_is_that_member_exactly(tmp_path: Path, shipped: Registry) -> None:
    path = _registry(tmp_path, shipped, {"solo": (A,)})
    solo = load_predictor("solo", registry_path=path, device="cpu")
    member = load_predictor(A, registry_path=path, device="cpu")
    x = _batch()
    for got, want in zip(solo.forward(x), member.forward(x), strict=True):
        assert torch.equal(got, want)
    image = decode(radiograph(rows=300, columns=260, seed=7))
    (p,), (q,) = solo.predict([image]), member.predict([image])
    assert p.view == q.view and p.view_probabilities == q.view_probabilities
    assert p.spacing_mm == q.spacing_mm
    for name in STRUCTURES:
        np.testing.assert_array_equal(p.masks[name], q.masks[name])
    # its own identity, derived from the member's checksum
    sha = hashlib.sha256(shipped.entries[A].sha256.encode()).hexdigest()
    assert (solo.info.name, solo.info.sha256) == ("solo", sha)
    assert solo.info.version == f"1.0.0+{sha[:8]}"


def test_two_members_give_the_mean_of_their_logits(tmp_path: Path, shipped: Registry) -> None:
    path = _registry(tmp_path, shipped, {"ens": (A, B)}, default="ens")
    ens = load_predictor(registry_path=path, device="cpu")  # the default may be an ensemble
    a = load_predictor(A, registry_path=path, device="cpu")
    b = load_predictor(B, registry_path=path, device="cpu")
    x = _batch()
    (em, ev), (am, av), (bm, bv) = ens.forward(x), a.forward(x), b.forward(x)
    assert not torch.allclose(am, bm, atol=1e-3)  # the members differ: the test can fail
    torch.testing.assert_close(em, (am + bm) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(ev, (av + bv) / 2, rtol=0, atol=1e-6)
    joined = f"{shipped.entries[A].sha256}\n{shipped.entries[B].sha256}".encode()
    assert ens.info.name == "ens"
    assert ens.info.sha256 == hashlib.sha256(joined).hexdigest()
    (p,) = ens.predict([decode(radiograph(rows=280, columns=280, seed=8))])
    assert set(p.masks) == set(STRUCTURES) and set(p.extra_masks) == set(VISIBLE_LUNGS)
    assert sum(p.view_probabilities.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (("qcnet_d99_w9",), "member 'qcnet_d99_w9' is not a registered model"),
        ((A, "inner"), "nested ensembles are not supported"),
        ((A, A), "lists member 'qcnet_d10_w3_s4' twice"),
        ((), "has no members"),
    ],
)
def test_bad_member_lists_are_refused(
    tmp_path: Path, shipped: Registry, members: tuple[str, ...], message: str
) -> None:
    path = _registry(tmp_path, shipped, {"inner": (A,), "bad": members})
    with pytest.raises(ModelError, match=message):
        load_predictor("bad", registry_path=path, device="cpu")


def test_members_must_agree_on_input_and_outputs(tmp_path: Path, shipped: Registry) -> None:
    other = dataclasses.replace(shipped.entries[B], spacing_mm=2.0)
    path = _registry(tmp_path, shipped, {"ens": (A, B)}, change={B: other})
    with pytest.raises(ModelError, match="differ in spacing_mm"):
        load_predictor("ens", registry_path=path, device="cpu")
    wide = dataclasses.replace(shipped.entries[B], reference_lung_width_mm={"frontal": 400.0})
    path = _registry(tmp_path, shipped, {"ens": (A, B)}, change={B: wide})
    with pytest.raises(ModelError, match="reference lung widths for other views"):
        load_predictor("ens", registry_path=path, device="cpu")


def test_member_weights_files_must_agree() -> None:
    base = WeightsMeta(
        variant=A,
        input_size=256,
        spacing_mm=1.75,
        reference_lung_width_mm={"frontal": 287.0, "lateral": 210.0},
    )
    near = dataclasses.replace(
        base, variant=B, reference_lung_width_mm={"frontal": 289.0, "lateral": 212.0}
    )
    meta = ensemble_meta("ens", [base, near])
    assert meta.reference_lung_width_mm == {"frontal": 288.0, "lateral": 211.0}
    assert meta.variant == f"{A}+{B}" and meta.input_size == 256
    far = dataclasses.replace(near, reference_lung_width_mm={"frontal": 320.0, "lateral": 212.0})
    with pytest.raises(ModelError, match="frontal lung widths differ beyond 2%"):
        ensemble_meta("ens", [base, far])
    with pytest.raises(ModelError, match="differ in input_size"):
        ensemble_meta("ens", [base, dataclasses.replace(near, input_size=320)])
    with pytest.raises(ModelError, match="differ in structures"):
        ensemble_meta(
            "ens", [base, dataclasses.replace(near, structures=STRUCTURES + VISIBLE_LUNGS)]
        )
    with pytest.raises(ValueError, match="different mask channels"):
        LogitMean(
            members=[build("qcnet_d10_w1"), build("qcnet_d10_w1", STRUCTURES + VISIBLE_LUNGS)]
        )


def test_member_checksums_are_verified(tmp_path: Path, shipped: Registry) -> None:
    tampered = dataclasses.replace(shipped.entries[B], sha256="0" * 64)
    path = _registry(tmp_path, shipped, {"ens": (A, B)}, change={B: tampered})
    with pytest.raises(ModelError, match="does not match the registry"):
        load_predictor("ens", registry_path=path, device="cpu")
    path = _registry(tmp_path, shipped, {"ens": (A, B)})
    (tmp_path / shipped.entries[B].file).unlink()
    with pytest.raises(ModelError, match="missing"):
        load_predictor("ens", registry_path=path, device="cpu")


def test_saving_a_retrained_member_keeps_the_ensemble(tmp_path: Path, shipped: Registry) -> None:
    """What ``qcnode train --ship`` does (with_entry + save) must not drop ensembles; a
    replaced member changes the ensemble's derived identity."""
    path = _registry(tmp_path, shipped, {"ens": (A, B)})
    before = load_registry(path)
    info = load_predictor("ens", registry_path=path, device="cpu").info
    retrained = dataclasses.replace(shipped.entries[A], version="9.9.9")
    before.with_entry(retrained).save(path)
    after = load_registry(path)
    assert after.ensembles == before.ensembles and after.entries[A].version == "9.9.9"
    assert set(after.names()) == {A, B, "ens"}
    # stand-in for new weights under the same name: B's file as member A
    moved = dataclasses.replace(shipped.entries[B], name=A)
    after.with_entry(moved).save(path)
    changed = load_predictor("ens", registry_path=path, device="cpu").info
    assert changed.sha256 != info.sha256 and changed.version != info.version


def test_a_name_is_either_a_model_or_an_ensemble(tmp_path: Path, shipped: Registry) -> None:
    path = _registry(tmp_path, shipped, {"ens": (A, B)})
    registry = load_registry(path)
    with pytest.raises(ModelError, match="is a registered weights entry"):
        registry.with_ensemble(EnsembleEntry(name=A, members=(B,)))
    with pytest.raises(ModelError, match="is a registered ensemble"):
        registry.with_entry(dataclasses.replace(shipped.entries[A], name="ens"))
    with pytest.raises(ModelError, match="is an ensemble, not a weights file"):
        registry.get("ens")
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*ens"):
        load_predictor("nope", registry_path=path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text + f'\n[ensembles.{A}]\nmembers = ["{B}"]\n', encoding="utf-8")
    with pytest.raises(ModelError, match="names both a model and an ensemble"):
        load_registry(path)


def test_the_shipped_ensembles_resolve(shipped: Registry) -> None:
    for ensemble in shipped.ensembles.values():
        members = shipped.members(ensemble)
        assert len(members) >= 2
        for entry in members:
            assert shipped.verified_path(entry).is_file()
