"""Codes used by the result objects: CID 6135 quality findings, UCUM units, our own scheme.

Rule IDs and verdicts have no standard codes, so they live in a private coding scheme
(designator ``99QCNODE``, declared in each object's Coding Scheme Identification Sequence);
everything that has a standard code uses it.
"""

from __future__ import annotations

from functools import cache

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from qcnode.records import Family, Finding, Status, Verdict
from qcnode.report import i18n

SCHEME = "99QCNODE"
SCHEME_NAME = "qcnode quality-control rule catalogue"


def scheme_identification() -> CodingSchemeIdentificationItem:
    return CodingSchemeIdentificationItem(
        designator=SCHEME, name=SCHEME_NAME, responsible_organization="qcnode project"
    )


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


# Concept names (private): what a qcnode verdict / rule status / threshold is.
VERDICT = private("verdict", "QC verdict")
RULE = private("rule", "QC rule")
RULE_STATUS = private("status", "QC rule status")
THRESHOLD = private("threshold", "QC threshold")
FAMILY = private("family", "QC rule family")


# Codes are made once and shared by every object, like the constants above: a failing
# radiograph's SR names ~250 codes, and building each anew was a tenth of its time.
@cache
def status_code(status: Status | Verdict) -> CodedConcept:
    """pass / warn / fail / not_evaluable / not_applicable / error as a coded value."""
    return private(str(status), i18n.status_name(status, "en"))


@cache
def rule_code(rule: str) -> CodedConcept:
    return private(rule, i18n.rule_title(rule, "en"))


@cache
def family_code(family: Family) -> CodedConcept:
    return private(str(family), i18n.family_name(family, "en"))


# CID 6135 "Image Quality Finding". Every rule maps to the code that names what goes wrong
# when it fails; exposure.deviation_index depends on the sign of the value.
_DCM = codes.DCM
_RULE_FINDING = {
    "exposure.saturation": _DCM.OverExposed,
    "exposure.noise": _DCM.UnderExposed,
    "exposure.spine_through_heart": _DCM.UnderExposed,
    "exposure.contrast": _DCM.InappropriateImageProcessing,
    "exposure.sharpness": _DCM.MotionBlur,
    "positioning.orientation": _DCM.InappropriateImageProcessing,
    "metadata.view": _DCM.OtherFailure,
    "metadata.spacing": _DCM.OtherFailure,
}
_FAMILY_FINDING = {
    Family.COMPLETENESS: _DCM.Positioning,
    Family.ORGANS: _DCM.Positioning,
    Family.POSITIONING: _DCM.Positioning,
    Family.EXPOSURE: _DCM.OtherFailure,
    Family.METADATA: _DCM.OtherFailure,
}


def quality_finding(finding: Finding) -> CodedConcept:
    """The CID 6135 code for a finding (meaningful when it warns or fails)."""
    if finding.rule == "exposure.deviation_index" and finding.value is not None:
        code = _DCM.OverExposed if finding.value > 0 else _DCM.UnderExposed
    else:
        code = _RULE_FINDING.get(finding.rule) or _FAMILY_FINDING.get(
            finding.family, _DCM.OtherFailure
        )
    return concept(code)


@cache
def concept(code: Code) -> CodedConcept:
    """A standard code (pydicom's ``codes``) as a shared highdicom coded concept."""
    return CodedConcept(
        value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
    )


# DCM 111050 "Quality Assessment" values (CID 6044). A fail means "does not meet the QC
# standard"; whether the image is unusable is the reader's call, so 111235 is never used.
def quality_assessment(verdict: Verdict) -> CodedConcept | None:
    if verdict == Verdict.PASS:
        code = _DCM.UsableMeetsTheQualityControlStandard
    elif verdict in (Verdict.WARN, Verdict.FAIL):
        code = _DCM.UsableDoesNotMeetTheQualityControlStandard
    else:
        return None
    return concept(code)


_UCUM_MEANING = {
    "mm": "millimeter",
    "cm": "centimeter",
    "deg": "degree",
    "{ribs}": "ribs",
    "1": "no units",
    "%": "percent",
    "mm2": "square millimeter",
    "ms": "millisecond",
}


@cache
def ucum(unit: str | None) -> CodedConcept:
    """A UCUM unit as a coded concept; ``None`` (a pure number) is UCUM ``1``."""
    unit = unit or "1"
    return CodedConcept(value=unit, scheme_designator="UCUM", meaning=_UCUM_MEANING.get(unit, unit))


LANGUAGE_CODES = {
    "en": CodedConcept(value="en", scheme_designator="RFC5646", meaning="English"),
    "zh": CodedConcept(value="zh", scheme_designator="RFC5646", meaning="Chinese"),
}
