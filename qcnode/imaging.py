"""Decode and normalise radiographs: DICOM (any supported transfer syntax) or plain images.

Output is a DecodedImage: float32 in [0, 1], MONOCHROME2 sense, the header's pixel spacing
(None when missing or zero) and the header facts the rules and reports need.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.errors
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import generate_uid

from qcnode.errors import DecodeError, UnsupportedInput
from qcnode.records import DecodedImage, FloatImage, ImageMeta

log = logging.getLogger(__name__)

# Plausible detector pixel spacing (mm); a value outside is treated as absent so that the
# anatomy-based estimate takes over instead of a 1e-30 mm grid exhausting memory.
SPACING_RANGE_MM = (0.01, 5.0)
# Codec bugs surface as any exception type, and Rust codecs (pylibjpeg-rle) even raise pyo3's
# PanicException, a BaseException: everything but interpreter exits becomes a DecodeError.
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)

# Largest radiograph we accept (a 43x43 cm detector at 0.1 mm is 4300x4300): anything bigger
# is refused before decoding, so a malicious header cannot make us allocate gigabytes.
MAX_PIXELS = 12_000 * 12_000
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def read_dataset(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file (Part 10, or a bare dataset as some modalities write)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPClassUID" not in ds and "PixelData" not in ds:
            raise DecodeError(f"{path.name}: not a DICOM dataset")
        _ensure_transfer_syntax(ds)
    except DecodeError:
        raise
    except _FATAL:
        raise
    except BaseException as exc:  # zlib.error, NotImplementedError (unknown VR), ...
        raise DecodeError(f"{path.name}: not a readable DICOM file ({exc})") from exc
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """A bare dataset (no Part 10 meta) still tells its encoding: record it for decoding."""
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    encoding = ds.original_encoding  # (is_implicit_VR, is_little_endian) as read
    if encoding[0] is None:
        return
    if not hasattr(ds, "file_meta"):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    implicit, little = encoding
    ds.file_meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian
        if implicit
        else pydicom.uid.ExplicitVRLittleEndian
        if little
        else pydicom.uid.ExplicitVRBigEndian
    )


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value) if value is not None else ""


def _int(ds: Dataset, keyword: str) -> int:
    """A single non-negative integer, or 0 (a multi-valued or odd value is not a size)."""
    value = ds.get(keyword, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and np.isfinite(number) else None


def header_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """(row, column) mm per pixel at the detector, and the attribute it came from."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        low, high = SPACING_RANGE_MM
        if low <= row <= high and low <= col <= high:
            return (row, col), keyword
    return None, ""


def image_meta(ds: Dataset) -> ImageMeta:
    """Header facts (no pixels); tolerant of missing attributes."""
    file_meta = getattr(ds, "file_meta", None)
    return ImageMeta(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        modality=_text(ds, "Modality"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        photometric=_text(ds, "PhotometricInterpretation"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        view_position=_text(ds, "ViewPosition").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        image_laterality=_text(ds, "ImageLaterality"),
        patient_orientation=tuple(str(v) for v in ds.get("PatientOrientation", []) or []),
        exposure_index=_number(ds, "ExposureIndex"),
        target_exposure_index=_number(ds, "TargetExposureIndex"),
        deviation_index=_number(ds, "DeviationIndex"),
        station_name=_text(ds, "StationName"),
        operators_name=_text(ds, "OperatorsName"),
        manufacturer=_text(ds, "Manufacturer"),
        pixel_spacing_source=header_spacing(ds)[1],
        transfer_syntax_uid=str(getattr(file_meta, "TransferSyntaxUID", "") or ""),
    )


def _output_range(ds: Dataset) -> tuple[float, float]:
    """Value range of the VOI output as pydicom's windowing produces it (stored bit depth)."""
    bits = int(ds.get("BitsStored", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _to_unit_range(values: np.ndarray, low: float, high: float) -> FloatImage:
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values.astype(np.float64) - low) / (high - low)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)


def normalise_pixels(ds: Dataset, stored: np.ndarray) -> FloatImage:
    """Modality LUT, VOI LUT/window, MONOCHROME1 inversion → [0, 1] MONOCHROME2 sense."""
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:  # colour: ITU-R 601 luma
        rgb = stored.astype(np.float32)
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return _to_unit_range(grey, 0.0, float(2 ** int(ds.get("BitsStored", 8)) - 1))
    try:
        values = apply_modality_lut(stored, ds)
    except Exception as exc:  # malformed rescale/LUT: the stored values still show the image
        log.debug("modality LUT not usable, using stored values: %s", exc)
        values = stored
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        try:
            windowed = apply_voi_lut(values, ds, index=0)
            if not np.all(np.isfinite(windowed)):
                raise ValueError("the VOI window is not finite")
            if "VOILUTSequence" in ds:
                lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                low, high = 0.0, float(2**lut_bits - 1)
            else:
                low, high = _output_range(ds)
            out = _to_unit_range(windowed, low, high)
        except Exception as exc:  # malformed VOI data of every kind: use the value range
            log.debug("VOI not usable, falling back to the value range: %s", exc)
            has_voi = False
    if not has_voi:
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        low, high = (float(np.min(finite)), float(np.max(finite))) if finite.size else (0.0, 0.0)
        out = _to_unit_range(values, low, high)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


def decode_dataset(ds: Dataset) -> DecodedImage:
    """Decode a dataset that carries pixel data; any failure is a DecodeError/UnsupportedInput."""
    try:
        return _decode_dataset(ds)
    except (DecodeError, UnsupportedInput):
        raise
    except _FATAL:
        raise
    except BaseException as exc:
        raise DecodeError(f"the dataset cannot be decoded: {type(exc).__name__}: {exc}") from exc


def _decode_dataset(ds: Dataset) -> DecodedImage:
    meta = image_meta(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise UnsupportedInput("the dataset has no pixel data")
    if meta.rows <= 0 or meta.columns <= 0:
        raise UnsupportedInput(f"invalid image size {meta.rows}x{meta.columns}")
    if meta.rows * meta.columns > MAX_PIXELS:
        raise UnsupportedInput(f"image of {meta.rows}x{meta.columns} pixels is too large")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        stored = ds.pixel_array
    except _FATAL:
        raise
    except BaseException as exc:  # pydicom and codecs raise many types (and panics)
        raise DecodeError(f"pixel data cannot be decoded: {exc}") from exc
    if frames > 1:
        stored = stored[0]
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    expected = (meta.rows, meta.columns) if samples == 1 else (meta.rows, meta.columns, samples)
    if stored.shape != expected:
        raise DecodeError(f"pixel data shape {stored.shape} does not match the header")
    spacing, _ = header_spacing(ds)
    return DecodedImage(pixels=normalise_pixels(ds, stored), spacing_mm=spacing, meta=meta)


def decode(source: Path | Dataset) -> DecodedImage:
    """Decode a DICOM file or dataset; plain image files (PNG, JPEG) are accepted too."""
    if isinstance(source, Dataset):
        return decode_dataset(source)
    path = Path(source)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        return decode_picture(path)
    return decode_dataset(read_dataset(path))


def decode_picture(path: Path, *, spacing_mm: tuple[float, float] | None = None) -> DecodedImage:
    """A plain picture (no header): greyscale [0, 1], no spacing unless given.

    The SOP Instance UID is derived from the file content so that results are stable.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            arr = np.asarray(img.convert("I;16") if mode in ("I", "I;16") else img.convert("L"))
    except (OSError, ValueError) as exc:
        raise DecodeError(f"{path.name}: not a readable picture ({exc})") from exc
    high = 65535.0 if arr.dtype == np.uint16 else 255.0
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = ImageMeta(
        sop_instance_uid=generate_uid(entropy_srcs=[digest]),
        sop_class_uid="",
        modality="",
        rows=int(arr.shape[0]),
        columns=int(arr.shape[1]),
        photometric="MONOCHROME2",
    )
    return DecodedImage(pixels=_to_unit_range(arr, 0.0, high), spacing_mm=spacing_mm, meta=meta)


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """Non-PHI identifiers for logs."""
    return {"sop_class": _text(ds, "SOPClassUID"), "modality": _text(ds, "Modality")}
