from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from qcnode.errors import DecodeError, UnsupportedInput
from qcnode.imaging import decode, read_dataset


def _dx(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def test_monochrome1_is_inverted_to_monochrome2_sense() -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))
    m2 = decode(_dx(ramp, "MONOCHROME2"))
    m1 = decode(_dx(4095 - ramp, "MONOCHROME1"))
    assert m2.spacing_mm == (0.2, 0.2)
    np.testing.assert_allclose(m1.pixels, m2.pixels, atol=1e-6)
    assert m2.pixels.dtype == np.float32
    assert m2.pixels.min() == 0.0 and m2.pixels.max() == 1.0


def test_window_maps_to_unit_range() -> None:
    ds = _dx(np.array([[0, 1000, 2000, 4095]], dtype=np.uint16))
    ds.WindowCenter, ds.WindowWidth = 1000, 1000
    out = decode(ds).pixels[0]
    assert out[0] == 0.0 and out[2] == 1.0 and 0.4 < out[1] < 0.6


def test_lossless_j2k_decodes_like_uncompressed() -> None:
    a = decode(Path(get_testdata_file("RG1_UNCR.dcm")))
    b = decode(Path(get_testdata_file("RG1_J2KR.dcm")))
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.meta.view_position == "PA" and a.meta.photometric == "MONOCHROME1"


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    no_pixels = _dx(np.zeros((4, 4), np.uint16))
    del no_pixels.PixelData
    with pytest.raises(UnsupportedInput, match="no pixel data"):
        decode(no_pixels)
    huge = _dx(np.zeros((4, 4), np.uint16))
    huge.Rows, huge.Columns = 60000, 60000
    with pytest.raises(UnsupportedInput, match="too large"):
        decode(huge)
    short = _dx(np.zeros((4, 4), np.uint16))
    short.PixelData = short.PixelData[:10]
    with pytest.raises(DecodeError):
        decode(short)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(DecodeError, match=r"junk\.dcm"):
        decode(junk)


def test_bare_dataset_without_file_meta(tmp_path: Path) -> None:
    ds = _dx(np.arange(16, dtype=np.uint16).reshape(4, 4))
    del ds.file_meta
    path = tmp_path / "bare.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    raw = pydicom.dcmread(path, force=True)
    assert "TransferSyntaxUID" not in raw.file_meta
    assert read_dataset(path).file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert decode(path).pixels.shape == (4, 4)
