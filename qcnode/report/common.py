"""What every result object shares: options, patient/study copy, character set, series info."""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import highdicom as hd
import pydicom
from pydicom import config
from pydicom.charset import convert_encodings, decode_bytes, encode_string, python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.valuerep import MAX_VALUE_LEN, PersonName, validate_value

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


def report_source(source: pydicom.Dataset, options: ReportOptions) -> pydicom.Dataset:
    """The source header as every builder reads it: only the elements pydicom can convert,
    and a Study and Series Instance UID present.

    The node QCs whatever its decoder accepts, and a modality can send an element with an
    unknown VR ("ES") or undecodable bytes in an attribute the decoder never reads; such an
    element would stop the report at the first access (highdicom and the patient/study copy
    read every element), so it is left out of the results, like any other attribute they do
    not copy. A missing or empty Study/Series Instance UID (Type 1; a broken sender) is
    replaced by a UID derived from the source's SOP Instance UID: the results then form a
    study/series of their own for that image, the same on every re-run (docs/report.md).
    """
    clean = _readable(source)
    sop_uid = str(clean.get("SOPInstanceUID") or "")
    for keyword, kind in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")):
        if not _UID_CHARACTERS.fullmatch(str(clean.get(keyword) or "").strip()):
            log.warning("source %s missing or unusable: the results use a derived one", keyword)
            setattr(clean, keyword, uids.source_stand_in_uid(sop_uid, kind, root=options.uid_root))
    for keyword in _BLANK_WHEN_INVALID:
        if keyword in clean and not _valid(clean[keyword]):
            setattr(clean, keyword, None)  # Type 2 (or 3): present and empty
    for keyword in _EQUIPMENT:
        if keyword in clean and not _valid(clean[keyword]):
            del clean[keyword]  # highdicom copies it into the SR's Contributing Equipment
    if "SpecificCharacterSet" in clean and not _known_character_set(clean.SpecificCharacterSet):
        del clean.SpecificCharacterSet  # pydicom decoded its text with the default repertoire
    elif str(clean.get("SpecificCharacterSet") or "") == "GBK":
        # GB18030 encodes every GBK character with the same bytes, and validators (dciodvfy)
        # know its repertoire: results of a GBK study say GB18030, the name's bytes unchanged
        clean.SpecificCharacterSet = "GB18030"
    return clean


# A UID that can be written at all (UI characters, 64 at most). One that is merely odd, such
# as "1.2.03" (a leading zero, common from older modalities), is kept: the PACS files the
# results under the source's study by exact match.
_UID_CHARACTERS = re.compile("[0-9.]{1,64}")
# Copied attributes the PACS does not match on: an unparsable date, time, age or number, or
# text with control characters or undecodable bytes, is written empty rather than copied
# into an invalid object. Identity attributes (patient name and ID, sex, accession number,
# study ID, UIDs) are copied verbatim, whatever they hold.
_BLANK_WHEN_INVALID = (
    "StudyDate",
    "StudyTime",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
    "ReferringPhysicianName",
    "PatientComments",
    "TimezoneOffsetFromUTC",
    "TypeOfPatientID",
)
# The source's acquisition equipment, which highdicom names in the SR (Type 3 there).
_EQUIPMENT = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
)
# Control characters no text VR allows (ESC starts ISO 2022 escapes; ST/LT/UT may hold
# CR, LF, FF and TAB), and the replacement character of bytes the character set could not
# decode.
_BAD_TEXT = {
    "multi-line": re.compile("[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f\ufffd]"),
    "one-line": re.compile("[\x00-\x1a\x1c-\x1f\x7f\ufffd]"),
}
_MULTI_LINE_VRS = frozenset({"ST", "LT", "UT"})


def _valid(elem: pydicom.DataElement) -> bool:
    """Whether every value of ``elem`` is valid for its VR (pydicom's check, and no control
    characters in text)."""
    values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
    bad = _BAD_TEXT["multi-line" if elem.VR in _MULTI_LINE_VRS else "one-line"]
    for value in values:
        if value is None or value == "":
            continue
        text = str(value)
        if elem.VR in _TEXT_VRS and bad.search(text):
            return False
        # the result may be written in UTF-8 (settle_character_set): the limit must hold there
        if len(text.encode("utf-8")) > MAX_VALUE_LEN.get(elem.VR, len(text.encode("utf-8"))):
            return False
        try:
            validate_value(elem.VR, text, config.RAISE)
        except (ValueError, TypeError):
            return False
    return True


def _known_character_set(charset: object) -> bool:
    """Whether every term is a DICOM defined term ("UTF-8" or "ISO_IR 999" are not) and the
    first is not a multi-byte code extension ("ISO 2022 IR 149" alone: those designate G1
    and may only follow a first value; pydicom would write their text without escapes)."""
    terms = [
        str(t).strip() for t in (charset if isinstance(charset, MultiValue | list) else [charset])
    ]
    return all(t in _DEFINED_TERMS for t in terms) and terms[0] not in _CODE_EXTENSIONS_ONLY


_CODE_EXTENSIONS_ONLY = frozenset(
    {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}
)


# pydicom's table also holds aliases ("ISO 2022 GBK") that are not DICOM defined terms
_DEFINED_TERMS = frozenset(
    t for t in python_encoding if re.fullmatch(r"ISO_IR \d+|ISO 2022 IR \d+|GB18030|GBK|", t)
)


def _readable(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``ds`` without the elements (at any depth) that pydicom cannot convert,
    and without pixel data."""
    out = pydicom.Dataset()
    for tag in list(ds.keys()):
        if tag.group == _PIXEL_GROUP:
            continue  # the builders draw from the decoded image, never the source's pixels
        try:
            elem = ds[tag]
            if elem.VR == "SQ" and elem.value is not None:
                items = [_readable(item) for item in elem.value]
                elem = pydicom.DataElement(elem.tag, "SQ", pydicom.Sequence(items))
            else:
                elem = copy.copy(elem)
        except Exception as exc:
            log.debug("leaving an unreadable source element out: %s", type(exc).__name__)
            continue
        out.add(elem)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out


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
        instance_number=_instance_number(source),
    )


def _instance_number(source: pydicom.Dataset) -> int:
    """The source's Instance Number when it is a usable positive integer, else 1."""
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError, OverflowError):
        return 1
    return number if 1 <= number < 2**31 else 1


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


def _text_elements(ds: pydicom.Dataset) -> Iterator[pydicom.DataElement]:
    """Every text element at any depth, in no particular order.

    ``Dataset.values()`` rather than ``iterall``: an SR holds ~20 000 elements, and
    ``iterall``'s sorted, checked access per element was a tenth of the SR's time.
    """
    for elem in ds.values():
        if isinstance(elem, RawDataElement):
            elem = ds[elem.tag]  # as read from a file: converted on access
        if elem.VR == "SQ":
            for item in elem.value or ():
                yield from _text_elements(item)
        elif elem.VR in _TEXT_VRS and elem.value is not None:
            yield elem


def _texts(ds: pydicom.Dataset) -> list[str | PersonName]:
    out: list[str | PersonName] = []
    for elem in _text_elements(ds):
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
    if len(codecs) == 1:
        # one character set: a character it lacks fails here as it would in pydicom, which
        # also logs a warning for every such text (a Latin-1 study's result with "≥")
        try:
            str(value).encode(codecs[0])
        except (UnicodeError, LookupError):
            return False
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
    for elem in _text_elements(ds):
        if elem.VM != 1:
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
    texts = _texts(target)
    if all(_round_trips(t, charset) for t in texts):
        if charset:
            target.SpecificCharacterSet = copy.deepcopy(charset)
        elif "SpecificCharacterSet" in target:
            del target.SpecificCharacterSet
        return
    log.debug("result text needs more than the source character set; using ISO_IR 192")
    if any("\x1b" in str(t) for t in texts):
        _strip_escapes(target)
    target.SpecificCharacterSet = "ISO_IR 192"


_CODE_STRING = re.compile("[A-Z0-9_ ]{1,16}")


def set_body_part(source: pydicom.Dataset, target: pydicom.Dataset, *, is_chest: bool) -> None:
    """Body Part Examined (and so the Laterality condition) of an image-like result series.

    The chest is unpaired, so with BodyPartExamined CHEST Laterality stays absent; for any
    other or an unknown body part, Laterality is present and empty ("unknown"), as PS3.3
    allows. A body part that is not a valid code string even in upper case is unknown.
    """
    body_part = str(source.get("BodyPartExamined") or "").strip().upper()
    if not _CODE_STRING.fullmatch(body_part):  # "chest" is now CHEST; "胸部" is no code string
        body_part = ""
    body_part = body_part or ("CHEST" if is_chest else "")
    if body_part:
        target.BodyPartExamined = body_part
    if body_part != "CHEST":  # unknown, or possibly paired (a KNEE sent to the chest node)
        target.Laterality = None
