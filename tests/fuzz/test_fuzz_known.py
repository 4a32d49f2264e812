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
from pydicom.uid import DeflatedExplicitVRLittleEndian

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


@pytest.mark.xfail(strict=True, reason="request 1: image_meta int() of a multi-valued Rows")
def test_rows_with_two_values_is_a_decode_error(tmp_path: Path) -> None:
    ds = radiograph(rows=16, columns=16)
    _set(ds, "Rows", struct.pack("<2H", 2, 3))  # legal US bytes, VM 2
    _decode(ds, tmp_path)


@pytest.mark.xfail(strict=True, reason="request 2: normalise_pixels with an empty RescaleSlope")
def test_empty_rescale_slope_is_decoded_or_refused(tmp_path: Path) -> None:
    ds = radiograph(rows=16, columns=16)
    _set(ds, "RescaleSlope", "")
    _set(ds, "RescaleIntercept", "-1")
    _decode(ds, tmp_path)


@pytest.mark.xfail(strict=True, reason="request 3: deviation index overflows to infinity")
def test_deviation_index_is_finite_for_extreme_exposure_indices(tmp_path: Path) -> None:
    ds = radiograph(rows=64, columns=64)
    _set(ds, "ExposureIndex", "1e308")
    _set(ds, "TargetExposureIndex", "0.0001")
    image = decode_file(write(ds, tmp_path / "in.dcm"))
    assert image is not None
    for f in run_rules(image, MaskPlan(view=View.FRONTAL)):  # raises ContractViolation
        assert f.value is None or math.isfinite(f.value)


@pytest.mark.xfail(strict=True, reason="request 6: read_dataset lets zlib.error through")
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
