"""Overlay Secondary Capture: the overlay picture as an RGB SC image in the source's study."""

from __future__ import annotations

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from qcnode.records import DecodedImage, Prediction, QCResult, View
from qcnode.report import i18n
from qcnode.report.common import (
    ReportOptions,
    copy_patient_and_study,
    report_source,
    series_info,
    set_body_part,
    settle_character_set,
    software_versions,
)
from qcnode.report.overlay import render_overlay

_BIPED = {"A", "P", "R", "L", "H", "F"}
# sc_compression -> (transfer syntax, photometric interpretation as encoded)
_ENCODINGS = {
    "none": (pydicom.uid.ExplicitVRLittleEndian, "RGB"),
    "rle": (pydicom.uid.RLELossless, "RGB"),
    "jpeg": (pydicom.uid.JPEGBaseline8Bit, "YBR_FULL_422"),
}


def _orientation(source: pydicom.Dataset) -> list[str]:
    """The source's PatientOrientation when usable (the overlay keeps rows and columns)."""
    values = [str(v) for v in (source.get("PatientOrientation") or [])]
    if len(values) == 2 and all(v and set(v) <= _BIPED for v in values):
        return values
    return []


def build_overlay_sc(
    source: pydicom.Dataset,
    image: DecodedImage,
    prediction: Prediction | None,
    result: QCResult,
    *,
    options: ReportOptions | None = None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture with the overlay burned in, "NOT FOR DIAGNOSIS"."""
    options = options or ReportOptions()
    source = report_source(source, options)
    info = series_info(source, result.model, "sc", options)
    pixels = render_overlay(
        image, prediction, result, language=options.language, max_size=options.sc_max_size
    )
    orientation = _orientation(source)
    syntax, photometric = _ENCODINGS[options.sc_compression]
    # Patient and study attributes are copied afterwards, verbatim (highdicom's name check
    # would warn about legitimate one-component names like "ward").
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=8,
        coordinate_system="PATIENT",
        # highdicom insists on an orientation; the real value (or an empty Type 2) is set below
        patient_orientation=("L", "F"),
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=info.series_instance_uid,
        series_number=info.series_number,
        sop_instance_uid=info.sop_instance_uid,
        instance_number=info.instance_number,
        manufacturer=options.manufacturer,
        transfer_syntax_uid=syntax,
        series_description=i18n.text("sc_series", options.language),
        manufacturer_model_name="qcnode",
        software_versions=software_versions(options, result.model),
        institution_name=options.institution_name,
    )
    sc.PatientOrientation = orientation  # Type 2: an empty list writes an empty element
    sc.ConversionType = "WSD"  # workstation: drawn by software, not digitised film
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    if options.sc_compression == "jpeg":
        sc.LossyImageCompression = "01"
        sc.LossyImageCompressionMethod = "ISO_10918_1"
        encoded = len(sc.PixelData)
        sc.LossyImageCompressionRatio = f"{pixels.nbytes / max(1, encoded):.2f}"[:16]
    else:
        sc.LossyImageCompression = "00"
    sc.ImageComments = i18n.text("not_for_diagnosis", options.language)
    sc.DerivationDescription = (
        f"{i18n.text('not_for_diagnosis', options.language)}: qcnode QC overlay"
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = Sequence([ref])
    if options.device_serial_number:
        sc.DeviceSerialNumber = options.device_serial_number
    set_body_part(source, sc, is_chest=result.view != View.OTHER)
    copy_patient_and_study(source, sc)
    settle_character_set(source, sc)
    return sc
