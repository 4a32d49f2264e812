"""``qcnode bench --what e2e`` on a few images: real radiographs, the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from qcnode.config import Settings
from qcnode.e2e_bench import SYNTH, bench_e2e, e2e_inputs, fresh_copy


def test_fresh_copy_is_a_new_instance_of_a_new_study() -> None:
    source = dcmread(sorted(SYNTH.glob("*.dcm"))[0])
    copy = fresh_copy(source)
    for tag in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert copy[tag].value != source[tag].value, tag
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    assert copy.PixelData == source.PixelData


def test_inputs_are_rg1_and_the_committed_synthetic_views() -> None:
    inputs = e2e_inputs()
    assert [p.name for p in inputs["rg1"]] == ["RG1_UNCR.dcm"]
    views = {dcmread(p, stop_before_pixels=True).SOPClassUID for p in inputs["synth"]}
    assert len(inputs["synth"]) >= 3 and views


def test_e2e_bench_delivers_sr_and_sc_of_every_image_to_orthanc(tmp_path: Path) -> None:
    """The bench itself fails when an image is not analysed or an object is missing at
    the PACS; here its numbers must also cover every image sent."""
    out = bench_e2e(Settings(data_dir=tmp_path), kinds=("synth",), latency_images=2, burst_images=3)
    synth = out["synth"]
    assert out["images_sent"] == 1 + 2 + 3
    assert out["instances_at_pacs"] == 2 * out["images_sent"]  # an SR and an SC each
    assert "not_applicable" not in synth["verdicts"] and "other" not in synth["views"]
    assert sum(synth["verdicts"].values()) == 5
    assert synth["latency_s"]["n"] == 2 and 0 < synth["latency_s"]["p50"] < 60
    assert synth["sustained_images_per_s"] > 0
    for stage in ("decode", "model", "rules"):
        assert synth["stage_ms_median"][stage] > 0, stage
    assert str(out["model"]).startswith("qcnet_")


def test_unknown_input_kind_is_an_error() -> None:
    from qcnode.errors import QcnodeError

    with pytest.raises(QcnodeError, match="unknown e2e input kind"):
        e2e_inputs(["nonsense"])


def test_e2e_bench_fails_loudly_on_images_the_node_does_not_analyse_as_chests(
    tmp_path: Path,
) -> None:
    """A DX whose header says hand: verdict not_applicable, no SR, so no numbers.

    (Until session 9 this was a phantom chest that the session-4 model called "other"; the
    session-9 model reads it as a frontal chest, so the header decides here, model-free.)"""
    from qcnode.errors import QcnodeError
    from qcnode.node_bench import dx_dataset

    hand = tmp_path / "hand.dcm"
    ds = dx_dataset(400, 360)
    ds.BodyPartExamined = "HAND"
    ds.save_as(hand, enforce_file_format=True)
    with pytest.raises(QcnodeError, match=r"not_applicable|view other"):
        bench_e2e(
            Settings(data_dir=tmp_path / "node"),
            files={"hand": [hand]},
            latency_images=1,
            burst_images=1,
        )
