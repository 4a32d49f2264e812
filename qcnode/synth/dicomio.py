"""Write a synthetic radiograph as a Digital X-Ray Image (For Presentation) that passes dciodvfy.

UIDs are derived from the sample id (deterministic: the same seed gives the same file).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_UID_PREFIX = "1.2.826.0.1.3680043.10.1021."  # pydicom-style root + qcnode synth arc

# Patient orientation (row, column direction) for the standard display of each position.
_ORIENT = {"PA": ("L", "F"), "AP": ("L", "F"), "LL": ("P", "F"), "RL": ("P", "F")}
_VIEW_CODES = {
    "PA": ("399348003", "postero-anterior"),
    "AP": ("399182000", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}
_FLIP = {"L": "R", "R": "L", "A": "P", "P": "A", "F": "H", "H": "F"}


@dataclass(frozen=True)
class Header:
    sample_id: str
    view_position: str  # as written (may deliberately disagree with the true view)
    true_position: str  # geometry actually rendered (for PatientOrientation)
    spacing_mm: tuple[float, float]  # as written in ImagerPixelSpacing
    exposure_index: float
    target_exposure_index: float
    deviation_index: float
    kvp: float
    sid_mm: float
    monochrome: str
    bits_stored: int
    flipped: bool
    rotated180: bool
    seed: int


def _uid(kind: str, sample_id: str) -> str:
    return str(generate_uid(prefix=_UID_PREFIX, entropy_srcs=[kind, sample_id]))


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def build(pixels: npt.NDArray[np.uint16], h: Header) -> Dataset:
    rows, cols = pixels.shape
    date = dt.date(2026, 1, 1) + dt.timedelta(days=h.seed % 300)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = _uid("sop", h.sample_id)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + h.seed % 8:02d}{h.seed % 60:02d}00"
    ds.AccessionNumber = f"SYN{h.seed:09d}"[:16]
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "qcnode-synth"
    ds.InstitutionName = "Synthetic"
    ds.StationName = "SYNTH01"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST"
    ds.SeriesDescription = f"CHEST {h.view_position}"
    ds.ManufacturerModelName = "DRR"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "qcnode-synth 1"
    ds.PatientName = f"SYNTH^{h.sample_id}"[:64]
    ds.PatientID = h.sample_id[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = "M"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = round(h.kvp, 1)
    ds.DistanceSourceToDetector = round(h.sid_mm, 1)
    ds.ExposureIndex = round(h.exposure_index, 2)
    ds.TargetExposureIndex = round(h.target_exposure_index, 2)
    ds.DeviationIndex = round(h.deviation_index, 2)
    ds.ImagerPixelSpacing = [round(h.spacing_mm[0], 6), round(h.spacing_mm[1], 6)]
    ds.DetectorType = "SCINTILLATOR"
    ds.ViewPosition = h.view_position
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = []
    ds.AnatomicRegionSequence = [_code("51185008", "Thorax")]
    if h.view_position in _VIEW_CODES:
        ds.ViewCodeSequence = [_code(*_VIEW_CODES[h.view_position])]
    ds.StudyInstanceUID = _uid("study", h.sample_id)
    ds.SeriesInstanceUID = _uid("series", h.sample_id)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    r, c = _ORIENT.get(h.true_position, ("L", "F"))
    if h.flipped:
        r = _FLIP[r]
    if h.rotated180:
        r, c = _FLIP[r], _FLIP[c]
    ds.PatientOrientation = [r, c]
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = h.monochrome
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = h.bits_stored
    ds.HighBit = h.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if h.monochrome == "MONOCHROME2" else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if h.monochrome == "MONOCHROME2" else "INVERSE"
    top = (1 << h.bits_stored) - 1
    ds.WindowCenter = top / 2.0
    ds.WindowWidth = float(top + 1)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write(path: Path, pixels: npt.NDArray[np.uint16], h: Header) -> None:
    ds = build(pixels, h)
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
