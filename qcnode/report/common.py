"""What every result object shares: options, patient/study copy, character set, series info."""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import highdicom as hd
import pydicom
from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.valuerep import PersonName

from qcnode import __version__
from qcnode.config import Settings
from qcnode.errors import ConfigError
from qcnode.records import ModelInfo
from qcnode.report import i18n, uids

log = logging.getLogger(__name__)

KosTitle = Literal["quality_issue", "rejected"]
KosWhen = Literal["fail", "warn", "always"]
ScCompression = Literal["none", "rle", "jpeg"]

DEFAULT_SERIES_NUMBERS: Mapping[str, int] = {"sr": 9901, "sc": 9902, "gsps": 9903, "kos": 9904}


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """How result objects are named and what they say. Built from Settings by the node."""

    language: str = "en"
    manufacturer: str = "qcnode"
    software_version: str = __version__
    institution_name: str | None = None
    device_serial_number: str = "0"
    uid_root: str | None = None  # None: 2.25.<name-based UUID>
    # KOS title: 113010 "Quality Issue"; 113001 "Rejected for Quality Reasons" only on request.
    kos_title: KosTitle = "quality_issue"
    kos_when: KosWhen = "fail"  # which verdicts get a KOS
    sc_max_size: int = 1024  # long side of the image part of the overlay SC, in pixels
    # Overlay SC encoding: none (Explicit VR LE, every PACS), rle (lossless, ~30 % smaller),
    # jpeg (baseline, ~10x smaller; the overlay is not for diagnosis, so lossy is acceptable).
    sc_compression: ScCompression = "none"
    series_numbers: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SERIES_NUMBERS))

    def __post_init__(self) -> None:
        i18n.check_language(self.language)
        if self.kos_title not in ("quality_issue", "rejected"):
            raise ConfigError(f"kos_title {self.kos_title!r} is not quality_issue or rejected")
        if self.kos_when not in ("fail", "warn", "always"):
            raise ConfigError(f"kos_when {self.kos_when!r} is not fail, warn or always")
        if self.sc_compression not in ("none", "rle", "jpeg"):
            raise ConfigError(f"sc_compression {self.sc_compression!r} is not none, rle or jpeg")
        if self.sc_max_size < 256:
            raise ConfigError("sc_max_size must be at least 256 pixels")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ReportOptions:
        """Options from Settings (language, kos_title, kos_when, uid_root, institution_name,
        sc_max_size, sc_compression); ``overrides`` win."""
        values: dict[str, Any] = {
            "language": settings.language,
            "kos_title": settings.kos_title,
            "kos_when": settings.kos_when,
            "uid_root": settings.uid_root or None,
            "institution_name": settings.institution_name or None,
            "sc_max_size": int(settings.sc_max_size),
            "sc_compression": settings.sc_compression,
        }
        values.update(overrides)
        return cls(**values)


def model_version(model: ModelInfo | None) -> str | None:
    return None if model is None else f"{model.name}/{model.version}"


def device_observer(options: ReportOptions, model: ModelInfo | None) -> hd.sr.ObserverContext:
    """The qcnode device as SR/KOS observer; its UID names the device, not the image."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.derived_uid(
                "device",
                options.manufacturer,
                options.device_serial_number,
                root=options.uid_root,
            ),
            name="qcnode",
            manufacturer_name=options.manufacturer,
            model_name=(model.name if model else "qcnode")[:64],
        ),
    )


def software_versions(options: ReportOptions, model: ModelInfo | None) -> list[str]:
    versions = [f"qcnode {options.software_version}"]
    if model is not None:
        versions.append(f"{model.name} {model.version}"[:64])
    return versions


@dataclass(frozen=True)
class SeriesInfo:
    """UIDs and numbers of one result object."""

    kind: str
    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int


def series_info(
    source: pydicom.Dataset, model: ModelInfo | None, kind: str, options: ReportOptions
) -> SeriesInfo:
    version = model_version(model)
    return SeriesInfo(
        kind=kind,
        series_instance_uid=uids.series_uid(
            str(source.SeriesInstanceUID), version, kind, root=options.uid_root
        ),
        series_number=options.series_numbers.get(kind, DEFAULT_SERIES_NUMBERS[kind]),
        sop_instance_uid=uids.instance_uid(
            str(source.SOPInstanceUID), version, kind, root=options.uid_root
        ),
        # Images of one source series share a result series: number them like the source.
        instance_number=max(1, int(source.get("InstanceNumber") or 1)),
    )


# Patient, General Study and Patient Study attributes copied verbatim from the source, so
# that results file under the same patient and study in every PACS.
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "TimezoneOffsetFromUTC",
)


# Type 2 patient/study attributes highdicom reads from the evidence (and validates strictly:
# a one-component name warns, an unknown sex raises). It gets them empty; the real values
# are copied verbatim afterwards by copy_patient_and_study.
_EVIDENCE_BLANKS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)
_PIXEL_GROUP = 0x7FE0


def evidence_header(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source header as highdicom should see it: no pixels, no character set, blank
    patient/study Type 2 attributes, a VOI window only when centre and width are both present
    and finite."""
    header = pydicom.Dataset()
    for elem in source:
        if elem.tag.group != _PIXEL_GROUP:
            header.add(copy.copy(elem))  # own elements: blanking must not touch the source
    for keyword in _EVIDENCE_BLANKS:
        setattr(header, keyword, None)
    for keyword in ("PatientName", "ReferringPhysicianName"):
        setattr(header, keyword, "")
    # highdicom rejects valid ISO 2022 sets ("\\ISO 2022 IR 58"); settle_character_set
    # writes the character set of every result object afterwards
    if "SpecificCharacterSet" in header:
        del header.SpecificCharacterSet
    if not _window_usable(source):
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
            if keyword in header:
                delattr(header, keyword)
    return header


def _window_usable(source: pydicom.Dataset) -> bool:
    centre, width = source.get("WindowCenter"), source.get("WindowWidth")
    if centre is None and width is None:
        return True
    try:
        c = [float(v) for v in (centre if isinstance(centre, MultiValue | list) else [centre])]
        w = [float(v) for v in (width if isinstance(width, MultiValue | list) else [width])]
    except (TypeError, ValueError):
        return False
    return len(c) == len(w) > 0 and all(math.isfinite(v) for v in c + w) and min(w) > 0


def copy_patient_and_study(source: pydicom.Dataset, target: pydicom.Dataset) -> None:
    """Copy patient/study attributes present in the source (Type 2 ones stay, even empty)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])


_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


def _texts(ds: pydicom.Dataset) -> list[str | PersonName]:
    out: list[str | PersonName] = []
    for elem in ds.iterall():
        if elem.VR not in _TEXT_VRS or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
        for value in values:
            out.append(value if isinstance(value, PersonName) else str(value))
    return out


_ISO2022_ESCAPE = re.compile("\x1b[\x20-\x2f]*[\x30-\x7e]")


def _round_trips(value: str | PersonName, charset: Any) -> bool:
    """Whether pydicom writes ``value`` in ``charset`` so that it reads back unchanged.

    Stricter than "every character exists in the repertoire": pydicom writes GB2312 text
    for "\\ISO 2022 IR 58" without the escape sequences and cannot read it back.
    """
    if str(value).isascii():
        return True
    if not charset:
        return False  # default repertoire: ASCII only
    codecs = convert_encodings(charset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            if isinstance(value, PersonName):  # per component, original bytes when unchanged
                again = PersonName(value.encode(codecs), encodings=codecs)
                return str(again) == str(value)
            encoded = encode_string(value, codecs)
            return bool(decode_bytes(encoded, codecs, set()) == value)
        except (UnicodeError, LookupError, ValueError, UserWarning):
            return False


def _strip_escapes(ds: pydicom.Dataset) -> None:
    """Drop ISO 2022 escape sequences that pydicom leaves in decoded text (IR 58 sources),
    before the text is written in UTF-8."""
    for elem in ds.iterall():
        if elem.VR not in _TEXT_VRS or elem.value is None or elem.VM != 1:
            continue
        text = str(elem.value)
        if "\x1b" in text:
            clean = _ISO2022_ESCAPE.sub("", text)
            elem.value = PersonName(clean) if elem.VR == "PN" else clean


def settle_character_set(source: pydicom.Dataset, target: pydicom.Dataset) -> None:
    """Use the source's character set when every text round-trips in it; else ISO_IR 192.

    Kept, the patient's name is written back byte for byte (pydicom keeps the original
    bytes). Switching to UTF-8 is needed when, say, Chinese text goes into a Latin-1 study;
    the name is then re-encoded from its decoded form, which is the same name.
    """
    charset = source.get("SpecificCharacterSet")
    if all(_round_trips(t, charset) for t in _texts(target)):
        if charset:
            target.SpecificCharacterSet = copy.deepcopy(charset)
        elif "SpecificCharacterSet" in target:
            del target.SpecificCharacterSet
        return
    log.debug("result text needs more than the source character set; using ISO_IR 192")
    _strip_escapes(target)
    target.SpecificCharacterSet = "ISO_IR 192"


def set_body_part(source: pydicom.Dataset, target: pydicom.Dataset, *, is_chest: bool) -> None:
    """Body Part Examined (and so the Laterality condition) of an image-like result series.

    The chest is unpaired, so with BodyPartExamined present Laterality stays absent; when
    the body part is unknown, Laterality is present and empty ("unknown"), as PS3.3 allows.
    """
    body_part = str(source.get("BodyPartExamined") or "") or ("CHEST" if is_chest else "")
    if body_part:
        target.BodyPartExamined = body_part
    else:
        target.Laterality = None
