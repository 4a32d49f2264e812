"""Inputs for the report tests: synthetic DX sources, RG1, example results, SR walking."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from qcnode.imaging import decode
from qcnode.records import DecodedImage

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def roundtrip(ds: Dataset, **read_kw: object) -> Dataset:
    """Write to bytes and read back, as a received file would be read."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf, **read_kw)  # type: ignore[arg-type]


def source_dataset(
    *,
    rows: int = 320,
    columns: int = 256,
    charset: str | list[str] | None = None,
    patient_name: str = "Test^Synthetic",
    photometric: str = "MONOCHROME2",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1001",
    sop_uid: str = "1.2.826.0.1.3680043.8.498.1001.1",
) -> Dataset:
    """A small DX chest header with smooth pixels; ``charset`` sets SpecificCharacterSet."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = DX
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1000"
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = "QC0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "056Y"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.StudyDescription = "Chest PA"
    ds.AccessionNumber = "ACC42"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyID = "7"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 3
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    y, x = np.mgrid[0:rows, 0:columns]
    pixels = 2000 + 1500 * np.sin(x / columns * np.pi) * np.cos(y / rows * 2.0)
    ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
    return roundtrip(ds)


def rg1_path() -> Path:
    """pydicom-data's real CR chest radiograph (MONOCHROME1, zero PixelSpacing)."""
    return Path(str(get_testdata_file("RG1_UNCR.dcm")))


def header_and_image(ds: Dataset) -> tuple[Dataset, DecodedImage]:
    """What the worker has: the header (read without pixels) and the decoded image."""
    header = roundtrip(ds, stop_before_pixels=True)
    return header, decode(ds)


def content_items(ds: Dataset) -> Iterator[tuple[Dataset, tuple[Dataset, ...]]]:
    """Every SR content item with its ancestors (root first), depth first."""

    def walk(
        items: list[Dataset], parents: tuple[Dataset, ...]
    ) -> Iterator[tuple[Dataset, tuple[Dataset, ...]]]:
        for item in items:
            yield item, parents
            yield from walk(list(item.get("ContentSequence", [])), (*parents, item))

    yield from walk(list(ds.get("ContentSequence", [])), (ds,))


def concept(item: Dataset) -> tuple[str, str]:
    """(code value, scheme) of an item's concept name."""
    code = item.ConceptNameCodeSequence[0]
    return str(code.get("CodeValue") or code.get("LongCodeValue")), str(code.CodingSchemeDesignator)


def code_value(item: Dataset) -> tuple[str, str]:
    code = item.ConceptCodeSequence[0]
    return str(code.get("CodeValue") or code.get("LongCodeValue")), str(code.CodingSchemeDesignator)
