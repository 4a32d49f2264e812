"""Crashes the fuzzers found, one deterministic input each, pinned as strict xfails.

Each is written up in /work/main/.cache/requests-to-node.md (file, function, what, why)
and listed in harness.KNOWN so that the CI fuzz tests tolerate it meanwhile. When the fix
lands the test passes, strict xfail turns that into a failure: remove the mark and the
KNOWN entry then.
"""

from __future__ import annotations

import contextlib
import math
import struct
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from qcnode.errors import QcnodeError
from qcnode.imaging import decode_dataset, read_dataset
from qcnode.records import View
from tests.conftest import radiograph, write
from tests.fuzz.dicom_inputs import _set
from tests.fuzz.harness import MaskPlan, decode_file, run_rules


def _decode(ds: Dataset, tmp_path: Path) -> None:
    """The worker's decode: it must succeed or raise a QcnodeError (nothing else)."""
    path = write(ds, tmp_path / "in.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(QcnodeError):
            decode_dataset(read_dataset(path))


def test_rows_with_two_values_is_a_decode_error(tmp_path: Path) -> None:
    ds = radiograph(rows=16, columns=16)
    _set(ds, "Rows", struct.pack("<2H", 2, 3))  # legal US bytes, VM 2
    _decode(ds, tmp_path)


def test_empty_rescale_slope_is_decoded_or_refused(tmp_path: Path) -> None:
    ds = radiograph(rows=16, columns=16)
    _set(ds, "RescaleSlope", "")
    _set(ds, "RescaleIntercept", "-1")
    _decode(ds, tmp_path)


def test_deviation_index_is_finite_for_extreme_exposure_indices(tmp_path: Path) -> None:
    ds = radiograph(rows=64, columns=64)
    _set(ds, "ExposureIndex", "1e308")
    _set(ds, "TargetExposureIndex", "0.0001")
    image = decode_file(write(ds, tmp_path / "in.dcm"))
    assert image is not None
    for f in run_rules(image, MaskPlan(view=View.FRONTAL)):  # raises ContractViolation
        assert f.value is None or math.isfinite(f.value)


def test_truncated_deflated_dataset_is_a_decode_error(tmp_path: Path) -> None:
    ds = radiograph(rows=32, columns=32)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = write(ds, tmp_path / "full.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 700])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(QcnodeError):
            decode_dataset(read_dataset(cut))


def _rle_overrun() -> Dataset:
    """An RLE codestream for 32x32 pixels under a header that says 2x1."""
    ds = radiograph(rows=32, columns=32)
    ds.compress(RLELossless)
    ds.Rows, ds.Columns = 2, 1
    return ds


def test_codec_panic_is_a_decode_error(tmp_path: Path) -> None:
    try:
        _decode(_rle_overrun(), tmp_path)
    except Exception:
        raise
    except BaseException as exc:  # pyo3 PanicException is not an Exception
        raise AssertionError(f"{type(exc).__name__} escaped decode: {exc}") from None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_codec_panic_does_not_stop_the_worker(tmp_path: Path) -> None:
    from tests.fuzz.cstore import CStoreTarget
    from tests.fuzz.dicom_inputs import PLACEHOLDER_SOP_UID, encode

    target = CStoreTarget(tmp_path)
    try:
        for ds in (_rle_overrun(), radiograph(rows=64, columns=64)):
            ds.SOPInstanceUID = PLACEHOLDER_SOP_UID
            ds.file_meta.MediaStorageSOPInstanceUID = PLACEHOLDER_SOP_UID
            assert target.send(encode(ds)) == 0
        target.settle(timeout=10)  # the valid image after the bad one is QC'd too
    finally:
        target.close()


def test_nan_window_centre_gives_finite_pixels(tmp_path: Path) -> None:
    ds = radiograph(rows=24, columns=30)
    _set(ds, "WindowCenter", ["nan", "1e30"])
    _set(ds, "WindowWidth", "0.0001")
    ds.VOILUTFunction = "LINEAR_EXACT"
    decode_file(write(ds, tmp_path / "in.dcm"))  # raises ContractViolation


def test_unknown_vr_is_a_decode_error(tmp_path: Path) -> None:
    data = write(radiograph(rows=16, columns=16), tmp_path / "ok.dcm").read_bytes()
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(data.replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00C\x01", 1))
    assert bad.read_bytes() != data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(QcnodeError):
            decode_dataset(read_dataset(bad))


@pytest.mark.parametrize("spacing", [["1e-30", "2"], ["1e308", "1e308"]], ids=["tiny", "huge"])
def test_absurd_header_spacing_does_not_break_the_rules(tmp_path: Path, spacing) -> None:  # type: ignore[no-untyped-def]
    ds = radiograph(rows=11, columns=8)
    _set(ds, "ImagerPixelSpacing", spacing)
    image = decode_file(write(ds, tmp_path / "in.dcm"))
    assert image is not None
    run_rules(image, MaskPlan(view=View.FRONTAL))  # ValueError (block_mean) or value inf


def test_excess_pixel_data_does_not_give_a_3d_image(tmp_path: Path) -> None:
    ds = radiograph(rows=2, columns=2)
    ds.PixelData = bytes(range(22))  # 8 bytes expected
    decode_file(write(ds, tmp_path / "in.dcm"))  # ContractViolation: (2, 2, 2)
